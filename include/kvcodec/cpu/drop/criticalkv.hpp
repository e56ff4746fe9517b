// kvcodec/cpu/drop/criticalkv.hpp — the `criticalkv` and `criticaladakv` stages (Feng et al. 2025,
// "Identify Critical KV Cache in LLM Inference from an Output Perturbation Perspective"; kvpress
// CriticalKVPress, CriticalAdaKVPress). A token's attention weight alone misjudges its effect on the
// head's output, which is weight x value: so each head's budget is chosen in two stages.
//   1. the scorer's best floor(first x budget) tokens (its protected tokens count among them);
//   2. the rest by (score + epsilon) x ||v||_1, the token's value L1 norm.
// The paper and kvpress use ||W_o v||_1, the value through the head's output projection; a KV cache
// does not carry W_o, so kvcodec uses ||v||_1 (W_o = identity), which keeps the correction's sense:
// a token with a small value moves the output little. Scores of a scorer that may be negative (knorm,
// keydiff, lagkv) are first shifted by their minimum so that the product keeps their order.
// criticaladakv first gives each head its Ada-KV budget (the safeguard alpha, pooled normalised
// scores: cpu/drop/adakv.hpp), then runs both stages within each head's budget.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcodec/cpu/drop/adakv.hpp"
#include "kvcodec/cpu/drop/scorers.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

/// One head's scores s[0, n) rewritten for a budget b: the best floor(first x b) tokens (protected
/// ones counting first, `taken` of them, marked in `mark`) get +inf; the others (score - shift +
/// epsilon) x ||v_j||_1 (shift: the lowest candidate score when it is negative; NaN stays NaN).
/// `v` is the head's first value row, `D` values per row.
inline void critical_rescale(double* s, std::int64_t n, const std::vector<std::uint8_t>& mark, std::int64_t taken, std::int64_t b,
                             const drop::config& c, const float* v, std::int64_t D, std::vector<std::uint64_t>& codes) {
  const std::int64_t k1 = std::max<std::int64_t>(0, static_cast<std::int64_t>(std::floor(c.first * static_cast<double>(b))) - taken);
  codes.clear();
  double mn = HUGE_VAL;
  for (std::int64_t j = 0; j < n; ++j)
    if (!mark[static_cast<std::size_t>(j)]) {
      const double x = rank_less::key(s[j]);
      codes.push_back(rank_code(x));
      if (std::isfinite(x)) mn = std::min(mn, x);
    }
  std::uint64_t thr = ~std::uint64_t{0};
  std::size_t eq = 0;
  const std::size_t k = std::min(static_cast<std::size_t>(k1), codes.size());
  if (k > 0) {
    thr = kth_largest(codes.data(), codes.size(), k);
    std::size_t gt = 0;
    for (std::int64_t j = 0; j < n; ++j) gt += !mark[static_cast<std::size_t>(j)] && rank_code(rank_less::key(s[j])) > thr ? 1 : 0;
    eq = k - gt;
  }
  const double shift = mn < 0 ? -mn : 0.0;
  for (std::int64_t j = 0; j < n; ++j) {
    if (mark[static_cast<std::size_t>(j)]) continue;
    const std::uint64_t code = rank_code(rank_less::key(s[j]));
    if (k > 0 && (code > thr || (code == thr && eq > 0))) {
      if (code == thr) --eq;
      s[j] = HUGE_VAL;
      continue;
    }
    if (std::isnan(s[j])) continue;
    const float* row = v + j * D;
    double l1 = 0;
    for (std::int64_t d = 0; d < D; ++d) l1 += std::fabs(static_cast<double>(row[d]));
    s[j] = (s[j] + shift + c.epsilon) * l1;
  }
}

/// What both presses share: the value rows of a head.
template <class S>
struct critical_base : S {
  using S::S;
  const float* value_rows(int l, int g) const {
    const std::size_t T = static_cast<std::size_t>(this->kv.shape.tokens), D = static_cast<std::size_t>(this->kv.shape.head_dim);
    return this->kv.values[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(g) * T * D;
  }
};

/// Scorer S with CriticalKV's two stages over one budget for every head.
template <class S>
struct critical_over : critical_base<S> {
  using critical_base<S>::critical_base;
  void operator()(int l, std::int64_t b, layer_scores& out) const {
    S::operator()(l, b, out);
    const std::int64_t n = this->n;
    std::vector<std::uint8_t> mark(static_cast<std::size_t>(n), 0);
    const std::int64_t taken = mark_protected(out.prot, b, mark);
    std::vector<std::uint64_t> codes;
    for (int g = 0; g < this->kv.shape.kv_heads; ++g)
      critical_rescale(out.s.data() + static_cast<std::size_t>(g) * static_cast<std::size_t>(n), n, mark, taken, b, this->c, this->value_rows(l, g),
                       this->kv.shape.head_dim, codes);
  }
};

/// Scorer S with Ada-KV's head budgets, then CriticalKV's two stages within each head's budget.
template <class S>
struct critical_ada_over : critical_base<S> {
  using critical_base<S>::critical_base;
  static constexpr bool pooled = true;
  std::vector<std::vector<std::int32_t>> pick_pooled(int l, const layer_scores& ls, int H, std::int64_t n, std::int64_t b) const {
    const auto budgets = pick_adakv(ls, H, n, b, this->c.alpha);
    std::vector<std::vector<std::int32_t>> kept(static_cast<std::size_t>(H));
    std::vector<double> s(static_cast<std::size_t>(n));
    std::vector<std::uint64_t> codes;
    pick_scratch ps;
    for (int h = 0; h < H; ++h) {
      const std::int64_t bh = static_cast<std::int64_t>(budgets[static_cast<std::size_t>(h)].size());
      std::vector<std::uint8_t> mark(static_cast<std::size_t>(n), 0);
      const std::int64_t taken = mark_protected(ls.prot, bh, mark);
      std::copy_n(ls.s.data() + static_cast<std::size_t>(h) * static_cast<std::size_t>(n), n, s.data());
      critical_rescale(s.data(), n, mark, taken, bh, this->c, this->value_rows(l, h), this->kv.shape.head_dim, codes);
      pick_head(s.data(), n, ls.prot, bh, kept[static_cast<std::size_t>(h)], ps);
    }
    return kept;
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under a `criticalkv` configuration (cpu/drop/select.hpp), scored by c.scorer.
inline kept_sets select_criticalkv(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_scored<drop_detail::critical_over>(kv, c, threads);
}

/// Kept sets of `kv` under a `criticaladakv` configuration, scored by c.scorer.
inline kept_sets select_criticaladakv(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_scored<drop_detail::critical_ada_over>(kv, c, threads);
}

}  // namespace kvcodec::cpu
