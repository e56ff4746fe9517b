// kvcodec/cpu/drop/pyramidkv.hpp — the `pyramidkv` stage (PyramidKV, Cai et al. 2024): snapkv's scores
// (cpu/drop/snapkv.hpp) with per-layer budgets on an arithmetic schedule decreasing with depth, summing
// to the same total as a uniform budget.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kvcodec/core/window_attention.hpp"
#include "kvcodec/cpu/drop/snapkv.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

using kvcodec::pyramid_budgets;  // core/window_attention.hpp (the GPU selection uses it too)

struct pyramidkv_scorer : snapkv_scorer {
  using snapkv_scorer::snapkv_scorer;
  static std::vector<std::int64_t> layer_budgets(const drop::config& c, std::int64_t b, std::int64_t n, int layers) {
    return pyramid_budgets(b, n, layers, c.beta);
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under a `pyramidkv` configuration (cpu/drop/select.hpp).
inline kept_sets select_pyramidkv(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_with<drop_detail::pyramidkv_scorer>(kv, c, threads);
}

}  // namespace kvcodec::cpu
