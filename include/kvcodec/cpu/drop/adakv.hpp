// kvcodec/cpu/drop/adakv.hpp — the `adakv` stage (Ada-KV, Feng et al. 2024): head-wise budgets over
// any scorer. The scorer named by `scorer` (snapkv, h2o, tova, expected-attention, knorm, keydiff, lagkv) scores
// the layer; each head keeps its protected tokens and a safeguard of alpha of its uniform share, and
// the rest of the layer's budget (heads x budget) goes to the best of the scores pooled over the heads,
// each head's normalised to sum to one.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/cpu/drop/scorers.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

/// Ada-KV over one layer: protected tokens in every head, a safeguard of floor(alpha * r) best
/// tokens per head (r = b - protected), the remaining heads x r - heads x safeguard tokens chosen
/// by pooled scores normalised per head (made non-negative, divided by their sum in token order).
inline std::vector<std::vector<std::int32_t>> pick_adakv(const layer_scores& ls, int H, std::int64_t n, std::int64_t b, double alpha) {
  std::vector<std::vector<std::int32_t>> kept(static_cast<std::size_t>(H));
  std::vector<std::uint8_t> mark(static_cast<std::size_t>(n), 0);
  const std::int64_t r = b - mark_protected(ls.prot, b, mark);
  const std::int64_t safe = static_cast<std::int64_t>(std::floor(alpha * static_cast<double>(r)));
  struct entry {
    double v;
    std::int32_t h, t;
  };
  std::vector<entry> pool;
  std::vector<ranked> cand;
  std::vector<std::vector<std::uint8_t>> chosen(static_cast<std::size_t>(H), mark);
  for (int h = 0; h < H; ++h) {
    if (r <= 0) continue;
    auto& ch = chosen[static_cast<std::size_t>(h)];
    const double* s = ls.s.data() + static_cast<std::size_t>(h) * static_cast<std::size_t>(n);
    cand.clear();
    double mn = HUGE_VAL;
    for (std::int64_t j = 0; j < n; ++j)
      if (!mark[static_cast<std::size_t>(j)]) {
        cand.push_back(ranked{rank_less::key(s[j]), static_cast<std::int32_t>(j)});
        mn = std::min(mn, cand.back().v);
      }
    const double shift = mn < 0 ? -mn : 0.0;
    double sum = 0;
    for (const auto& e : cand) sum += e.v + shift;
    const bool finite_sum = std::isfinite(sum) && sum > 0;
    const std::size_t k = std::min<std::size_t>(static_cast<std::size_t>(safe), cand.size());
    if (k < cand.size()) std::nth_element(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(k), cand.end(), ranked_before);
    for (std::size_t i = 0; i < k; ++i) ch[static_cast<std::size_t>(cand[i].t)] = 1;
    for (std::size_t i = k; i < cand.size(); ++i) {
      const double v = finite_sum ? (cand[i].v + shift) / sum : 1.0 / static_cast<double>(cand.size());
      pool.push_back(entry{std::isnan(v) ? -HUGE_VAL : v, static_cast<std::int32_t>(h), cand[i].t});
    }
  }
  const std::size_t want = static_cast<std::size_t>(std::max<std::int64_t>(0, H * (r - safe)));
  const std::size_t k = std::min(want, pool.size());
  if (k < pool.size())
    std::nth_element(pool.begin(), pool.begin() + static_cast<std::ptrdiff_t>(k), pool.end(), [](const entry& a, const entry& b2) {
      if (a.v != b2.v) return a.v > b2.v;
      if (a.h != b2.h) return a.h < b2.h;
      return a.t < b2.t;
    });
  for (std::size_t i = 0; i < k; ++i) chosen[static_cast<std::size_t>(pool[i].h)][static_cast<std::size_t>(pool[i].t)] = 1;
  for (int h = 0; h < H; ++h) {
    const auto& ch = chosen[static_cast<std::size_t>(h)];
    auto& kh = kept[static_cast<std::size_t>(h)];
    for (std::int64_t j = 0; j < n; ++j)
      if (ch[static_cast<std::size_t>(j)] == 1) kh.push_back(static_cast<std::int32_t>(j));
  }
  return kept;
}

/// Scorer S with Ada-KV's pooled choice over the heads of a layer in place of a top-k per head.
template <class S>
struct adakv_over : S {
  using S::S;
  static constexpr bool pooled = true;
  std::vector<std::vector<std::int32_t>> pick_pooled(int, const layer_scores& ls, int H, std::int64_t n, std::int64_t b) const {
    return pick_adakv(ls, H, n, b, this->c.alpha);
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under an `adakv` configuration (cpu/drop/select.hpp), scored by c.scorer
/// (cpu/drop/scorers.hpp).
inline kept_sets select_adakv(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_scored<drop_detail::adakv_over>(kv, c, threads);
}

}  // namespace kvcodec::cpu
