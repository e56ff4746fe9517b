// kvcodec/core/chunkkv.hpp — ChunkKV (cpu/drop/chunkkv.hpp) on the GPU path: a scorer's coder wrapped so
// that every token carries its chunk's mean score (the CPU scorer's values, NaN as -inf, summed in token
// order), so whole chunks are kept or dropped together; the scorer's protected tokens stay protected.
// Wraps any coder with raw(l, h, t) (the CPU scorer's value) and priority(t) (-1: scored): the window
// scorers' (core/window_attention.hpp), lagkv's and expected-attention's. The GPU selections take it as
// their Wrap (cuda/drop/chunkkv.cuh), and so do their host emulations.
#pragma once

#include <cstdint>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/drop_topk.hpp"

namespace kvcodec {

template <class Coder>
struct drop_chunk_coder {
  Coder c;
  std::int64_t chunk = 10, n = 0;
  KVCODEC_HD std::uint64_t operator()(int l, std::int64_t h, std::int64_t t) const noexcept {
    const std::int64_t p = c.priority(t);
    if (p >= 0) return drop_protected_code(static_cast<std::uint64_t>(p));
    const std::int64_t t0 = t / chunk * chunk, t1 = t0 + chunk < n ? t0 + chunk : n;
    double sum = 0.0;
    for (std::int64_t j = t0; j < t1; ++j) {
      const double v = c.raw(l, h, j);
      sum += v != v ? -HUGE_VAL : v;
    }
    return drop_rank_code(sum / static_cast<double>(t1 - t0));
  }
};

/// The Wrap of chunkkv with chunks of `chunk` tokens over a prefix of n.
struct drop_chunk_wrap {
  std::int64_t chunk = 10, n = 0;
  template <class Coder>
  drop_chunk_coder<Coder> operator()(const Coder& c) const {
    return {c, chunk, n};
  }
};

}  // namespace kvcodec
