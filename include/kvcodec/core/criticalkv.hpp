// kvcodec/core/criticalkv.hpp — CriticalKV's two stages (cpu/drop/criticalkv.hpp) as host/device steps
// over a window scorer's coder (core/window_attention.hpp: snapkv, h2o, tova), shared by the CUDA
// selection (cuda/drop/criticalkv.cuh) and its host emulation (drop_criticalkv_select_emulated, run in
// CI), and over the other scorers' coders through drop_scored (core/adakv.hpp). Per (layer, head), with
// b the uniform budget and the protected tokens (priority >= 0: the CPU scorer's protected list, every
// one of them out of the candidates, the first min(b, P) by priority kept):
//   1. stage 1: the candidates' best k = min(max(0, floor(first x b) - taken), candidates) by the
//      scorer's value, ties to the lower token (critical_stage1_coder, the
//      selection of cuda/drop/select.cuh), marked;
//   2. shift = -(the lowest finite candidate value) when it is negative, else 0 (critical_shift, a
//      thread per head in token order as the CPU);
//   3. the final code of every token (critical_final_coder): protected by priority, stage-1 tokens
//      +inf, NaN as NaN, the others (value + shift + epsilon) x ||v_t||_1 (the value row's L1 norm,
//      in double in channel order as the CPU); then the b best, ties to the lower token.
// criticaladakv: Ada-KV's mask (core/adakv.hpp) gives each head its budget b_h first; both stages
// then run within b_h (per-head sizes: the selection with a budget per segment, select_ragged).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcodec/core/adakv.hpp"
#include "kvcodec/core/config.hpp"
#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/drop_topk.hpp"
#include "kvcodec/core/window_attention.hpp"

namespace kvcodec {

/// The budgets of one criticalkv selection: protected tokens kept (taken), stage 1's size per head.
struct critical_budget {
  std::int64_t b = 0, taken = 0, k1 = 0;
};

template <class C>
KVCODEC_HD critical_budget critical_budget_of(const C& c, std::int64_t b, double first) noexcept {
  critical_budget out;
  out.b = b;
  const std::int64_t prot = c.protected_count(), cand = c.n - prot;
  out.taken = b < prot ? b : prot;
  std::int64_t k = static_cast<std::int64_t>(floor(first * static_cast<double>(b))) - out.taken;
  k = k < 0 ? 0 : k;
  out.k1 = k < cand ? k : cand;
  return out;
}

/// Stage 1's coder: a candidate's value code; protected tokens 0, below every candidate.
template <class C>
struct critical_stage1_coder {
  C c;
  KVCODEC_HD std::uint64_t operator()(int l, std::int64_t h, std::int64_t t) const noexcept { return c.priority(t) < 0 ? drop_rank_code(c.raw(l, h, t)) : 0; }
};

/// Step 2 for head (l, h): the shift of its candidates' values (NaN as -inf, infinities skipped).
template <class C>
KVCODEC_HD double critical_shift(const C& c, int l, std::int64_t h) noexcept {
  double mn = HUGE_VAL;
  for (std::int64_t t = 0; t < c.n; ++t) {
    if (c.priority(t) >= 0) continue;
    const double x = c.raw(l, h, t);
    if (x == x && x - x == 0.0 && x < mn) mn = x;
  }
  return mn < 0 ? -mn : 0.0;
}

/// Step 3's coder: see the file comment. v: the value rows (drop_source over the cache's values);
/// stage1: [l][h][t < n] marks of stage 1; shift: [l][h].
template <class C>
struct critical_final_coder {
  C c;
  drop_source v;
  const std::uint8_t* stage1 = nullptr;
  const double* shift = nullptr;
  double epsilon = 1e-4;
  KVCODEC_HD std::uint64_t operator()(int l, std::int64_t h, std::int64_t t) const noexcept {
    const std::int64_t p = c.priority(t);
    if (p >= 0) return drop_protected_code(static_cast<std::uint64_t>(p));
    const std::int64_t seg = static_cast<std::int64_t>(l) * c.heads + h;
    if (stage1[seg * c.n + t] != 0) return drop_rank_code(HUGE_VAL);
    const double x = c.raw(l, h, t);
    if (x != x) return drop_rank_code(x);
    double l1 = 0.0;
    for (std::int64_t d = 0; d < v.head_dim; ++d) l1 += fabs(static_cast<double>(drop_load(v, l, h, t, d)));
    return drop_rank_code((x + shift[seg] + epsilon) * l1);
  }
};

/// CriticalKV over a scorer's coder (scores computed), emulated on the host as the GPU runs it with
/// uniform budget b: b kept tokens per (layer, head), head after head, each increasing (the protected
/// ones among them).
template <class C>
std::vector<std::int32_t> drop_criticalkv_emulated(const C& c, int layers, std::int64_t b, double first, double epsilon, const drop_source& v) {
  const std::size_t segs = static_cast<std::size_t>(layers) * static_cast<std::size_t>(c.heads), n = static_cast<std::size_t>(c.n);
  const critical_budget bud = critical_budget_of(c, b, first);
  std::vector<std::uint8_t> stage1(segs * n, 0);
  if (bud.k1 > 0) {
    const auto kept = drop_select_emulated(critical_stage1_coder<C>{c}, layers, c.heads, c.n, bud.k1);
    for (std::size_t i = 0; i < kept.size(); ++i) stage1[i / static_cast<std::size_t>(bud.k1) * n + static_cast<std::size_t>(kept[i])] = 1;
  }
  std::vector<double> shift(segs);
  for (std::size_t s = 0; s < segs; ++s)
    shift[s] = critical_shift(c, static_cast<int>(s / static_cast<std::size_t>(c.heads)), static_cast<std::int64_t>(s % static_cast<std::size_t>(c.heads)));
  return drop_select_emulated(critical_final_coder<C>{c, v, stage1.data(), shift.data(), epsilon}, layers, c.heads, c.n, bud.b);
}

/// CriticalKV over a window scorer, emulated on the host as the GPU runs it.
inline std::vector<std::int32_t> drop_criticalkv_select_emulated(const drop_window_plan& p, double first, double epsilon, const drop_source& v) {
  const window_scores_emulated ws(p);
  return drop_criticalkv_emulated(ws.coder, p.a.layers, p.budgets[0], first, epsilon, v);
}

/// criticaladakv's per-head budgets: each head's Ada-KV budget (its kept tokens in the adakv mask),
/// then stage 1's size within it (critical_budget_of with that budget).
template <class C>
KVCODEC_HD void critical_ada_budgets(const C& c, const std::uint8_t* ada_mask, double first, std::int64_t seg, std::int64_t* budget, std::int64_t* k1) noexcept {
  std::int64_t bh = 0;
  for (std::int64_t t = 0; t < c.n; ++t) bh += ada_mask[seg * c.n + t] != 0 ? 1 : 0;
  budget[seg] = bh;
  k1[seg] = critical_budget_of(c, bh, first).k1;
}

/// The host emulation of select_ragged (cuda/drop/select.cuh): mask [seg][t < n] of each segment's
/// budget[seg] best tokens by coder's codes, ties to the lower token.
template <class Coder>
std::vector<std::uint8_t> drop_select_ragged_emulated(const Coder& coder, int layers, int heads, std::int64_t n, const std::vector<std::int64_t>& budget) {
  const std::size_t N = static_cast<std::size_t>(n);
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(layers) * static_cast<std::size_t>(heads) * N, 0);
  std::vector<std::uint64_t> code(N);
  std::vector<std::int32_t> idx(N);
  for (std::size_t seg = 0; seg < budget.size(); ++seg) {
    for (std::size_t t = 0; t < N; ++t) code[t] = coder(static_cast<int>(seg / static_cast<std::size_t>(heads)), static_cast<std::int64_t>(seg % static_cast<std::size_t>(heads)), static_cast<std::int64_t>(t));
    for (std::size_t t = 0; t < N; ++t) idx[t] = static_cast<std::int32_t>(t);
    std::stable_sort(idx.begin(), idx.end(), [&](std::int32_t x, std::int32_t y) { return code[static_cast<std::size_t>(x)] > code[static_cast<std::size_t>(y)]; });
    for (std::int64_t k = 0; k < budget[seg]; ++k) mask[seg * N + static_cast<std::size_t>(idx[static_cast<std::size_t>(k)])] = 1;
  }
  return mask;
}

/// criticaladakv over a scorer's coder, emulated on the host as the GPU runs it: Ada-KV's mask
/// (safeguard alpha, uniform budget b) gives each head its budget b_h; then CriticalKV's two stages
/// within b_h. The mask [l][h][t < n].
template <class C>
std::vector<std::uint8_t> drop_criticaladakv_emulated(const C& c, int layers, std::int64_t b, double alpha, double first, double epsilon, const drop_source& v) {
  const std::size_t segs = static_cast<std::size_t>(layers) * static_cast<std::size_t>(c.heads);
  const std::vector<std::uint8_t> ada = drop_adakv_mask_emulated(c, layers, b, alpha);
  std::vector<std::int64_t> budget(segs), k1(segs);
  for (std::size_t s = 0; s < segs; ++s) critical_ada_budgets(c, ada.data(), first, static_cast<std::int64_t>(s), budget.data(), k1.data());
  const std::vector<std::uint8_t> stage1 = drop_select_ragged_emulated(critical_stage1_coder<C>{c}, layers, c.heads, c.n, k1);
  std::vector<double> shift(segs);
  for (std::size_t s = 0; s < segs; ++s)
    shift[s] = critical_shift(c, static_cast<int>(s / static_cast<std::size_t>(c.heads)), static_cast<std::int64_t>(s % static_cast<std::size_t>(c.heads)));
  return drop_select_ragged_emulated(critical_final_coder<C>{c, v, stage1.data(), shift.data(), epsilon}, layers, c.heads, c.n, budget);
}

/// criticaladakv over a window scorer, emulated on the host as the GPU runs it.
inline std::vector<std::uint8_t> drop_criticaladakv_select_emulated(const drop_window_plan& p, double alpha, double first, double epsilon, const drop_source& v) {
  const window_scores_emulated ws(p);
  return drop_criticaladakv_emulated(ws.coder, p.a.layers, p.budgets[0], alpha, first, epsilon, v);
}

}  // namespace kvcodec
