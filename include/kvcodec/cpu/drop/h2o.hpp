// kvcodec/cpu/drop/h2o.hpp — the `h2o` stage (H2O, Zhang et al. 2023; kvpress ObservedAttentionPress):
// the attention each key receives from the observed queries (cpu/drop/window_attention.hpp), divided
// by how many of them could see it, plus a `recent` share of the budget for the newest tokens.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kvcodec/cpu/drop/window_attention.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

struct h2o_scorer : scorer_base {
  static constexpr bool needs_queries = true;
  h2o_scorer(const kv_cache& kv_, const drop::config& c_, std::int64_t n_) : scorer_base(kv_, c_, n_) {
    if (c.window > 0) check_window(c, c.window, n);
  }
  void operator()(int l, std::int64_t b, layer_scores& out) const {
    const int H = kv.shape.kv_heads;
    const std::size_t N = static_cast<std::size_t>(n);
    const std::int64_t w = c.window == 0 ? n : c.window;
    check_window(c, w, n);
    const std::int64_t qb = n - w;
    const int group = kv.shape.q_heads / H;
    std::vector<double> acc(N);
    attn_scratch sc;
    for (int g = 0; g < H; ++g) {
      std::fill(acc.begin(), acc.end(), 0.0);
      attention_colsum(kv, l, g, qb, n, acc.data(), sc);
      double* s = out.s.data() + static_cast<std::size_t>(g) * N;
      for (std::int64_t j = 0; j < n; ++j) s[j] = acc[static_cast<std::size_t>(j)] / static_cast<double>(n - std::max(j, qb)) / group;
    }
    protect_recent(out.prot, n, std::llround(c.recent * static_cast<double>(b)));
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under an `h2o` configuration (cpu/drop/select.hpp).
inline kept_sets select_h2o(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_with<drop_detail::h2o_scorer>(kv, c, threads);
}

}  // namespace kvcodec::cpu
