// kvcodec/cpu/drop/random.hpp — the `random` stage (kvpress RandomPress; a baseline): every token of the
// prefix scored by a deterministic uniform hash of (seed, layer, kv head, token), so the choice depends
// on those alone.
#pragma once

#include <cstdint>
#include <vector>

#include "kvcodec/core/drop_topk.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

/// Deterministic uniform value in [0, 1) of (seed, layer, head, token) (core/drop_topk.hpp, shared
/// with the GPU scorer).
inline double hash_uniform(std::uint64_t seed, std::uint64_t l, std::uint64_t h, std::uint64_t t) { return drop_hash_uniform(seed, l, h, t); }

struct random_scorer : scorer_base {
  using scorer_base::scorer_base;
  void operator()(int l, std::int64_t, layer_scores& out) const {
    const std::size_t N = static_cast<std::size_t>(n);
    for (int g = 0; g < kv.shape.kv_heads; ++g)
      for (std::int64_t j = 0; j < n; ++j)
        out.s[static_cast<std::size_t>(g) * N + static_cast<std::size_t>(j)] =
            hash_uniform(static_cast<std::uint64_t>(c.seed), static_cast<std::uint64_t>(l), static_cast<std::uint64_t>(g), static_cast<std::uint64_t>(j));
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under a `random` configuration (cpu/drop/select.hpp).
inline kept_sets select_random(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_with<drop_detail::random_scorer>(kv, c, threads);
}

}  // namespace kvcodec::cpu
