// kvcodec/cpu/drop/chunkkv.hpp — the `chunkkv` stage (Liu et al. 2025, ChunkKV: "Semantic-Preserving KV
// Cache Compression"; kvpress ChunkKVPress): any scorer's token scores averaged over fixed chunks of
// `chunk` tokens, so whole chunks are kept or dropped together and a phrase is not cut into pieces.
// Every token of a chunk carries the chunk's mean score (NaN scores count as the chunk's lowest); the
// scorer's protected tokens stay protected; ties go to the lower index, so at most one chunk per head
// is cut by the budget.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "kvcodec/core/error.hpp"
#include "kvcodec/cpu/drop/scorers.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

/// Scorer S with its scores replaced by their mean over chunks of c.chunk tokens.
template <class S>
struct chunk_over : S {
  using S::S;
  void operator()(int l, std::int64_t b, layer_scores& out) const {
    S::operator()(l, b, out);
    const std::int64_t n = this->n, C = this->c.chunk;
    for (int g = 0; g < this->kv.shape.kv_heads; ++g) {
      double* s = out.s.data() + static_cast<std::size_t>(g) * static_cast<std::size_t>(n);
      for (std::int64_t t0 = 0; t0 < n; t0 += C) {
        const std::int64_t t1 = std::min(n, t0 + C);
        double sum = 0;
        for (std::int64_t j = t0; j < t1; ++j) sum += rank_less::key(s[j]);
        const double mean = sum / static_cast<double>(t1 - t0);
        for (std::int64_t j = t0; j < t1; ++j) s[j] = mean;
      }
    }
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under a `chunkkv` configuration (cpu/drop/select.hpp), scored by c.scorer
/// (cpu/drop/scorers.hpp).
inline kept_sets select_chunkkv(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_scored<drop_detail::chunk_over>(kv, c, threads);
}

}  // namespace kvcodec::cpu
