// kvcodec/cpu/drop/knorm.hpp — the `knorm` stage (Devoto et al. 2024): keep the keys with the lowest L2
// norm; score = -||k||, from one read of each key (cpu/drop/rows.hpp).
#pragma once

#include <cstdint>
#include <vector>

#include "kvcodec/cpu/drop/rows.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

struct knorm_scorer : scorer_base {
  using scorer_base::scorer_base;
  void operator()(int l, std::int64_t, layer_scores& out) const {
    const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim), N = static_cast<std::size_t>(n);
    for (int g = 0; g < kv.shape.kv_heads; ++g) {
      double* s = out.s.data() + static_cast<std::size_t>(g) * N;
      sumsq_rows(key_row(l, g, 0), N, D, s);
      neg_sqrt_rows(s, N);
    }
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under a `knorm` configuration (cpu/drop/select.hpp).
inline kept_sets select_knorm(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_with<drop_detail::knorm_scorer>(kv, c, threads);
}

}  // namespace kvcodec::cpu
