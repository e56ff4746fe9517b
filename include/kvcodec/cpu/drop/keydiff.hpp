// kvcodec/cpu/drop/keydiff.hpp — the `keydiff` stage (Park et al. 2025): keep the keys least similar to
// the mean normalised key of the head; score = -cos(k, anchor). Norms and the anchor come from one read
// of the keys, the dot products from a second (cpu/drop/rows.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kvcodec/cpu/drop/rows.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

struct keydiff_scorer : scorer_base {
  using scorer_base::scorer_base;
  void operator()(int l, std::int64_t, layer_scores& out) const {
    const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim), N = static_cast<std::size_t>(n);
    std::vector<float> anchor(D);
    std::vector<double> xy(N);
    for (int g = 0; g < kv.shape.kv_heads; ++g) {
      double* s = out.s.data() + static_cast<std::size_t>(g) * N;
      std::fill(anchor.begin(), anchor.end(), 0.0f);
      norm_anchor_rows(key_row(l, g, 0), N, D, s, anchor.data());
      double yy = 0.0;
      for (auto& x : anchor) {
        x /= static_cast<float>(n);
        yy += static_cast<double>(x) * x;
      }
      dot_rows(key_row(l, g, 0), N, D, anchor.data(), 1, xy.data(), N);
      cosine_scores(s, xy.data(), yy, N);
    }
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under a `keydiff` configuration (cpu/drop/select.hpp).
inline kept_sets select_keydiff(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_with<drop_detail::keydiff_scorer>(kv, c, threads);
}

}  // namespace kvcodec::cpu
