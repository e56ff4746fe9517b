// kvcodec/cpu/drop/pyramidkv.hpp — the `pyramidkv` stage (PyramidKV, Cai et al. 2024): snapkv's scores
// (cpu/drop/snapkv.hpp) with per-layer budgets on an arithmetic schedule decreasing with depth, summing
// to the same total as a uniform budget.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kvcodec/cpu/drop/snapkv.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

/// Per-layer budgets of PyramidKV: arithmetic from 2b - b/beta (layer 0) down to b/beta (last),
/// the top clipped at n (the bottom then rises to keep the mean), summing to layers x b exactly.
inline std::vector<std::int64_t> pyramid_budgets(std::int64_t b, std::int64_t n, int layers, double beta) {
  std::vector<std::int64_t> out(static_cast<std::size_t>(layers), b);
  if (layers <= 1) return out;
  double mn = static_cast<double>(b) / beta, mx = 2.0 * static_cast<double>(b) - mn;
  if (mx > static_cast<double>(n)) {
    mx = static_cast<double>(n);
    mn = 2.0 * static_cast<double>(b) - mx;
  }
  const double step = (mx - mn) / static_cast<double>(layers - 1);
  std::int64_t sum = 0;
  for (int l = 0; l < layers; ++l) {
    out[static_cast<std::size_t>(l)] = std::clamp<std::int64_t>(std::llround(mx - l * step), 1, n);
    sum += out[static_cast<std::size_t>(l)];
  }
  std::int64_t diff = static_cast<std::int64_t>(layers) * b - sum;
  for (int pass = 0; diff != 0 && pass < 2 * layers + 2; ++pass)
    for (int l = 0; l < layers && diff != 0; ++l) {
      auto& x = out[static_cast<std::size_t>(diff > 0 ? l : layers - 1 - l)];
      if (diff > 0 && x < n) ++x, --diff;
      else if (diff < 0 && x > 1) --x, ++diff;
    }
  return out;
}

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
