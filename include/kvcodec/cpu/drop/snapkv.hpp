// kvcodec/cpu/drop/snapkv.hpp — the `snapkv` stage (SnapKV, Li et al. 2024): the mean attention of the last
// `window` queries (cpu/drop/window_attention.hpp), average-pooled with `kernel`, averaged over each
// GQA group; the window itself is always kept. pyramidkv and adakv reuse this scorer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/cpu/drop/window_attention.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

struct snapkv_scorer : scorer_base {
  static constexpr bool needs_queries = true;
  snapkv_scorer(const kv_cache& kv_, const drop::config& c_, std::int64_t n_) : scorer_base(kv_, c_, n_) { check_window(c, c.window, n); }
  void operator()(int l, std::int64_t, layer_scores& out) const {
    const int H = kv.shape.kv_heads;
    const std::size_t N = static_cast<std::size_t>(n);
    const std::int64_t w = c.window;
    check_window(c, w, n);
    const std::int64_t qb = n - w;
    const int group = kv.shape.q_heads / H;
    std::vector<double> acc(N), pooled(N);
    attn_scratch sc;
    for (int g = 0; g < H; ++g) {
      std::fill(acc.begin(), acc.end(), 0.0);
      attention_colsum(kv, l, g, qb, n, acc.data(), sc);
      drop_avg_pool(acc.data(), pooled.data(), qb, c.kernel);
      double* s = out.s.data() + static_cast<std::size_t>(g) * N;
      for (std::int64_t j = 0; j < qb; ++j) s[j] = pooled[static_cast<std::size_t>(j)] / static_cast<double>(w) / group;
    }
    protect_recent(out.prot, n, w);
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under a `snapkv` configuration (cpu/drop/select.hpp).
inline kept_sets select_snapkv(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_with<drop_detail::snapkv_scorer>(kv, c, threads);
}

}  // namespace kvcodec::cpu
