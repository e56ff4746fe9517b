// kvcodec/core/adakv.hpp — Ada-KV's head-wise budgets (cpu/drop/adakv.hpp) as host/device steps over a
// window scorer's coder (core/window_attention.hpp), shared by the CUDA selection (cuda/drop/adakv.cuh)
// and its host emulation (drop_adakv_select_emulated, run in CI). Per layer, with b the uniform budget:
//   1. the protected tokens (t >= protect_from): the newest P = min(b, n - protect_from) are kept in every
//      head, the others are no candidates; r = b - P, safe = floor(alpha r);
//   2. each head's candidates t < protect_from: its minimum key (NaN as -inf) and the sum of key + shift
//      in token order (shift = -min when min < 0), one thread per head as the CPU loops (adakv_stat);
//   3. each head's safeguard: its `safe` best candidates (adakv_safe_coder, ties to the lower token);
//   4. the pool: every other candidate of every head with value (key + shift) / sum (1 / count when the
//      sum is not finite and positive), the layer's best heads x (r - safe), ties to the lower head, then
//      the lower token (adakv_pool_code).
// Kept sets are a mask [layer][head][token < n]; tokens from n on are kept by the caller. The steps take
// any coder with the window coder's members (drop_scored adapts the other scorers': their protected
// tokens, sinks and the newest, are those of priority >= 0, the first P by priority kept).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <vector>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/drop_topk.hpp"
#include "kvcodec/core/window_attention.hpp"

namespace kvcodec {

/// A scorer's coder seen as the presses over a scorer read it (adakv, criticalkv): `c` gives the CPU
/// scorer's value raw(l, h, t) and each token's protected priority(t) (-1: scored; 0 kept first); the
/// press adds the shape and the protected count. The window scorers' drop_window_coder has the same
/// members itself (score, raw, priority, protected_count, heads, n); this adapts knorm's, keydiff's,
/// lagkv's and expected-attention's coders (core/drop_topk.hpp, core/lagkv.hpp, core/expected_attention.hpp).
template <class Coder>
struct drop_scored {
  Coder c;
  int heads = 1;
  std::int64_t n = 0, protected_tokens = 0;
  KVCODEC_HD double raw(int l, std::int64_t h, std::int64_t t) const noexcept { return c.raw(l, h, t); }
  KVCODEC_HD double score(int l, std::int64_t h, std::int64_t t) const noexcept { return c.raw(l, h, t); }
  KVCODEC_HD std::int64_t priority(std::int64_t t) const noexcept { return c.priority(t); }
  KVCODEC_HD std::int64_t protected_count() const noexcept { return protected_tokens; }
};

/// A head's normalisation of its candidates' scores.
struct adakv_head_stat {
  double shift = 0.0, sum = 0.0;
  std::int64_t count = 0;
  std::uint32_t finite = 0;  ///< sum finite and > 0
};

/// The ranking key of a score: NaN as -inf (cpu/drop/select.hpp rank_less::key).
KVCODEC_HD inline double adakv_key(double v) noexcept { return v != v ? -HUGE_VAL : v; }

/// Step 2 for head (l, h): its candidates (the tokens it does not protect), in token order as the CPU.
template <class C>
KVCODEC_HD adakv_head_stat adakv_stat(const C& c, int l, std::int64_t h) noexcept {
  adakv_head_stat st;
  double mn = HUGE_VAL;
  for (std::int64_t t = 0; t < c.n; ++t) {
    if (c.priority(t) >= 0) continue;
    const double v = adakv_key(c.score(l, h, t));
    mn = v < mn ? v : mn;
  }
  st.shift = mn < 0 ? -mn : 0.0;
  for (std::int64_t t = 0; t < c.n; ++t)
    if (c.priority(t) < 0) st.sum += adakv_key(c.score(l, h, t)) + st.shift;
  st.count = c.n - c.protected_count();
  st.finite = st.sum - st.sum == 0.0 && st.sum > 0.0 ? 1u : 0u;
  return st;
}

/// Step 3's coder: a candidate's score code; protected tokens code 0, below every candidate.
template <class C>
struct adakv_safe_coder {
  C c;
  KVCODEC_HD std::uint64_t operator()(int l, std::int64_t h, std::int64_t t) const noexcept { return c.priority(t) < 0 ? drop_rank_code(c.score(l, h, t)) : 0; }
};

/// Step 4: the pool code of token t of head (l, h), or 0 when it is no pool candidate (protected, or
/// already in the mask as a safeguard). mask: [l][h][t], nonzero = kept.
template <class C>
KVCODEC_HD std::uint64_t adakv_pool_code(const C& c, const adakv_head_stat* stats, const std::uint8_t* mask, int l, std::int64_t h, std::int64_t t) noexcept {
  const std::int64_t seg = static_cast<std::int64_t>(l) * c.heads + h;
  if (c.priority(t) >= 0 || mask[seg * c.n + t] != 0) return 0;
  const adakv_head_stat& st = stats[seg];
  const double v = st.finite != 0 ? (adakv_key(c.score(l, h, t)) + st.shift) / st.sum : 1.0 / static_cast<double>(st.count);
  return drop_rank_code(v);
}

/// The budgets of one layer: P protected kept, the safeguard per head, the pool's size.
struct adakv_budget {
  std::int64_t protected_kept = 0, safe = 0, pool = 0;
};

template <class C>
KVCODEC_HD adakv_budget adakv_budget_of(const C& c, std::int64_t b, double alpha) noexcept {
  adakv_budget out;
  const std::int64_t prot = c.protected_count(), cand = c.n - prot;
  out.protected_kept = b < prot ? b : prot;
  const std::int64_t r = b - out.protected_kept;
  out.safe = static_cast<std::int64_t>(std::floor(alpha * static_cast<double>(r)));
  const std::int64_t want = static_cast<std::int64_t>(c.heads) * (r - out.safe), avail = static_cast<std::int64_t>(c.heads) * (cand - out.safe);
  out.pool = want < 0 ? 0 : want < avail ? want : avail;
  return out;
}

/// Mask item i of [layers][heads][n]: 1 for the protected tokens every head keeps (the first P by priority).
template <class C>
KVCODEC_HD std::uint8_t adakv_protected_mark(const C& c, const adakv_budget& bud, std::int64_t i) noexcept {
  const std::int64_t p = c.priority(i % c.n);
  return p >= 0 && p < bud.protected_kept ? 1 : 0;
}

/// Ada-KV over a scorer's coder (scores computed: window_scores_emulated, or a scorer's emulated steps),
/// emulated on the host as the GPU runs it with uniform budget b: the mask [l][h][t < n].
template <class C>
std::vector<std::uint8_t> drop_adakv_mask_emulated(const C& c, int layers, std::int64_t b, double alpha) {
  const std::size_t segs = static_cast<std::size_t>(layers) * static_cast<std::size_t>(c.heads), n = static_cast<std::size_t>(c.n);
  const adakv_budget bud = adakv_budget_of(c, b, alpha);
  std::vector<adakv_head_stat> stats(segs);
  for (std::size_t s = 0; s < segs; ++s) stats[s] = adakv_stat(c, static_cast<int>(s / static_cast<std::size_t>(c.heads)), static_cast<std::int64_t>(s % static_cast<std::size_t>(c.heads)));
  std::vector<std::uint8_t> mask(segs * n);
  for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = adakv_protected_mark(c, bud, static_cast<std::int64_t>(i));
  if (bud.safe > 0) {
    const auto safe = drop_select_emulated(adakv_safe_coder<C>{c}, layers, c.heads, c.n, bud.safe);
    for (std::size_t i = 0; i < safe.size(); ++i) mask[i / static_cast<std::size_t>(bud.safe) * n + static_cast<std::size_t>(safe[i])] = 1;
  }
  if (bud.pool > 0) {
    const std::size_t items = static_cast<std::size_t>(c.heads) * n;
    std::vector<std::uint64_t> code(items);
    std::vector<std::int32_t> idx(items);
    for (int l = 0; l < layers; ++l) {
      for (std::size_t i = 0; i < items; ++i)
        code[i] = adakv_pool_code(c, stats.data(), mask.data(), l, static_cast<std::int64_t>(i / n), static_cast<std::int64_t>(i % n));
      std::iota(idx.begin(), idx.end(), 0);
      std::stable_sort(idx.begin(), idx.end(), [&](std::int32_t x, std::int32_t y) { return code[static_cast<std::size_t>(x)] > code[static_cast<std::size_t>(y)]; });
      for (std::int64_t k = 0; k < bud.pool; ++k) mask[static_cast<std::size_t>(l) * items + static_cast<std::size_t>(idx[static_cast<std::size_t>(k)])] = 1;
    }
  }
  return mask;
}

/// Ada-KV over a window scorer, emulated on the host as the GPU runs it: the mask [l][h][t < n].
inline std::vector<std::uint8_t> drop_adakv_select_emulated(const drop_window_plan& p, double alpha) {
  const window_scores_emulated ws(p);
  return drop_adakv_mask_emulated(ws.coder, p.a.layers, p.budgets[0], alpha);
}

}  // namespace kvcodec
