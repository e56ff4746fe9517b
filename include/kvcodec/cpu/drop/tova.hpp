// kvcodec/cpu/drop/tova.hpp — the `tova` stage (TOVA, Oren et al. 2024): the attention of the last query
// averaged over all query heads, from one pass over each GQA group's keys (cpu/drop/rows.hpp); the
// last token is kept.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcodec/cpu/drop/rows.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

struct tova_scorer : scorer_base {
  static constexpr bool needs_queries = true;
  using scorer_base::scorer_base;
  void operator()(int l, std::int64_t, layer_scores& out) const {
    const int H = kv.shape.kv_heads, HQ = kv.shape.q_heads, group = HQ / H;
    const std::int64_t T = kv.shape.tokens;
    const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim), N = static_cast<std::size_t>(n);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    std::vector<double> acc(N, 0.0), logit(static_cast<std::size_t>(group) * N);
    std::vector<float> qd(static_cast<std::size_t>(group) * D);
    for (int g = 0; g < H; ++g) {
      for (int h = 0; h < group; ++h) {
        const float* q = kv.queries[static_cast<std::size_t>(l)].data() +
                         (static_cast<std::size_t>(g * group + h) * static_cast<std::size_t>(T) + static_cast<std::size_t>(n - 1)) * D;
        std::copy_n(q, D, qd.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(h) * D));
      }
      dot_rows(key_row(l, g, 0), N, D, qd.data(), group, logit.data(), N);
      for (auto& x : logit) x *= scale;
      for (int h = 0; h < group; ++h) softmax_add(logit.data() + static_cast<std::size_t>(h) * N, N, 1.0, acc.data());
    }
    for (int g = 0; g < H; ++g)
      for (std::size_t j = 0; j < N; ++j) out.s[static_cast<std::size_t>(g) * N + j] = acc[j] / HQ;
    out.prot.push_back(static_cast<std::int32_t>(n - 1));
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under a `tova` configuration (cpu/drop/select.hpp).
inline kept_sets select_tova(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_with<drop_detail::tova_scorer>(kv, c, threads);
}

}  // namespace kvcodec::cpu
