// kvcodec/core/expected_attention.hpp — expected-attention's math (cpu/drop/expected_attention.hpp,
// kvpress ExpectedAttentionPress) as host/device steps over explicit arrays, shared by the CPU scorer, the
// CUDA selection (cuda/drop/expected_attention.cuh) and its host emulation
// (drop_expected_select_emulated, run in CI):
//   tables (expected_tables, host): the average RoPE rotation over the `future` positions after the
//     prefix and each window query's own angles;
//   1. expected_stats, per (layer, query head): the window's queries un-rotated (rope_undo_table, f32
//      results), their mean (and covariance) in double, moved by the average rotation;
//   2. expected_logit, per (layer, query head, key j >= sink): drop_dot16 of the key with the f32 mean
//      / sqrt(d), or drop_expected_logit with the covariance;
//   3. expected_softmax, per (layer, query head): the logits' maximum and drop_exp sum over 4 lanes
//      (exp_shift_sum's order), the numerators in place;
//   4. expected_score, per (layer, kv head, key): the group's probabilities / group summed head by head,
//      times the value norm (drop_sumsq16).
// Every step is the CPU scorer's arithmetic in its order (the lane kernels are the AVX2 kernels' scalar
// references), so scores and kept sets equal the CPU's bit for bit.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/drop_topk.hpp"
#include "kvcodec/core/kv_address.hpp"
#include "kvcodec/core/rope.hpp"

namespace kvcodec {

/// x[0, D) un-rotated with precomputed cos/sin of its angles (pairs laid out as `style`), each result
/// rounded to f32.
KVCODEC_HD inline void rope_undo_table(float* x, std::size_t D, const double* cs, const double* sn, rope_style style) noexcept {
  const std::size_t half = D / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const std::size_t i0 = style == rope_style::interleaved_pairs ? 2 * i : i;
    const std::size_t i1 = style == rope_style::interleaved_pairs ? 2 * i + 1 : i + half;
    const double x0 = x[i0], x1 = x[i1], c = cs[i], s = sn[i];
    x[i0] = static_cast<float>(x0 * c - x1 * s);
    x[i1] = static_cast<float>(x0 * s + x1 * c);
  }
}

/// The RoPE tables, the same for every layer: the average rotation over the `future` positions after
/// the prefix (cbar, sbar; D/2 each: 1 and 0 without RoPE) and cos/sin of every window query's own
/// angles (qc, qs; window x D/2; empty without RoPE).
struct expected_prep {
  std::vector<double> cbar, sbar, qc, qs;
};

/// positions: the cache's token positions (empty: token t is at position t).
inline expected_prep expected_tables(std::size_t D, std::int64_t n, std::int64_t window, std::int64_t future, bool rope, double theta,
                                     const std::vector<std::int32_t>& positions) {
  const std::size_t half = D / 2;
  const auto pos = [&](std::int64_t t) -> std::int64_t { return positions.empty() ? t : positions[static_cast<std::size_t>(t)]; };
  expected_prep ep;
  ep.cbar.assign(half, 1.0);
  ep.sbar.assign(half, 0.0);
  if (!rope) return ep;
  const std::int64_t p0 = pos(n - 1) + 1;
  for (std::size_t i = 0; i < half; ++i) {
    double cs = 0, sn = 0;
    for (std::int64_t p = p0; p < p0 + future; ++p) {
      const double a = rope_angle(p, i, D, theta);
      cs += std::cos(a);
      sn += std::sin(a);
    }
    ep.cbar[i] = cs / static_cast<double>(future);
    ep.sbar[i] = sn / static_cast<double>(future);
  }
  const std::int64_t w = window < n ? window : n;
  ep.qc.resize(static_cast<std::size_t>(w) * half);
  ep.qs.resize(static_cast<std::size_t>(w) * half);
  for (std::int64_t i = 0; i < w; ++i)
    for (std::size_t k = 0; k < half; ++k) {
      const double a = -1.0 * rope_angle(pos(n - w + i), k, D, theta);
      ep.qc[static_cast<std::size_t>(i) * half + k] = std::cos(a);
      ep.qs[static_cast<std::size_t>(i) * half + k] = std::sin(a);
    }
  return ep;
}

/// One expected-attention selection: keys, values (the keys' layout and dtype) and queries, the
/// prefix, the parameters, the tables, and the steps' arrays (in the memory space of the code that runs).
struct expected_args {
  drop_source k, q;
  const void* const* v = nullptr;
  int layers = 0, heads = 0, group = 1;
  std::int64_t n = 0, window = 64, sink = 4;
  bool cov = false, vnorm = true, rope = false;
  rope_style style = rope_style::interleaved_pairs;
  const double *cbar = nullptr, *sbar = nullptr, *qc = nullptr, *qs = nullptr;
  double* mu = nullptr;      ///< [(l * q_heads + hq) * D + a]
  float* muf = nullptr;      ///< the same, rounded to f32 (the no-cov logits')
  double* covm = nullptr;    ///< [(l * q_heads + hq) * D * D] (cov only)
  double* logit = nullptr;   ///< [(l * q_heads + hq) * m + j], m = n - sinks; then the softmax numerators
  double* coef = nullptr;    ///< [l * q_heads + hq]: (1 / group) / z, or NaN for a head that adds nothing
  double* score = nullptr;   ///< [(l * heads + g) * n + t]
};

KVCODEC_HD inline std::int64_t expected_sinks(const expected_args& a) noexcept { return a.sink < a.n ? a.sink : a.n; }
KVCODEC_HD inline std::int64_t expected_keys(const expected_args& a) noexcept { return a.n - expected_sinks(a); }
KVCODEC_HD inline std::int64_t expected_qheads(const expected_args& a) noexcept { return static_cast<std::int64_t>(a.heads) * a.group; }

/// Step 1, item i = l * q_heads + hq: the window's mean (and covariance), rotated by the average RoPE.
KVCODEC_HD inline void expected_stats(const expected_args& a, std::int64_t i) noexcept {
  const std::int64_t HQ = expected_qheads(a), D = a.k.head_dim, w = a.window;
  const int l = static_cast<int>(i / HQ);
  const std::int64_t hq = i % HQ;
  double* mu = a.mu + i * D;
  double* cov = a.cov ? a.covm + i * D * D : nullptr;
  for (std::int64_t c = 0; c < D; ++c) mu[c] = 0.0;
  if (cov)
    for (std::int64_t c = 0; c < D * D; ++c) cov[c] = 0.0;
  float q[drop_max_head_dim];
  for (std::int64_t t = a.n - w; t < a.n; ++t) {
    for (std::int64_t c = 0; c < D; ++c) q[c] = kv_load(a.q.k[l], a.q.layout, a.q.dtype_code, hq, t, c);
    if (a.rope) {
      const std::size_t half = static_cast<std::size_t>(D / 2), r = static_cast<std::size_t>(t - (a.n - w));
      rope_undo_table(q, static_cast<std::size_t>(D), a.qc + r * half, a.qs + r * half, a.style);
    }
    for (std::int64_t c = 0; c < D; ++c) mu[c] += q[c];
    if (cov)
      for (std::int64_t x = 0; x < D; ++x)
        for (std::int64_t y = 0; y < D; ++y) cov[x * D + y] += static_cast<double>(q[x]) * q[y];
  }
  const double inv = 1.0 / static_cast<double>(w);
  for (std::int64_t c = 0; c < D; ++c) mu[c] *= inv;
  if (cov)
    for (std::int64_t x = 0; x < D; ++x)
      for (std::int64_t y = 0; y < D; ++y) cov[x * D + y] = cov[x * D + y] * inv - mu[x] * mu[y];
  if (a.rope) {
    const std::size_t d = static_cast<std::size_t>(D);
    drop_block_rotate(mu, d, 1, a.cbar, a.sbar, a.style);
    if (cov) {
      for (std::size_t col = 0; col < d; ++col) drop_block_rotate(cov + col, d, d, a.cbar, a.sbar, a.style);
      for (std::size_t r = 0; r < d; ++r) drop_block_rotate(cov + r * d, d, 1, a.cbar, a.sbar, a.style);
    }
  }
  for (std::int64_t c = 0; c < D; ++c) a.muf[i * D + c] = static_cast<float>(mu[c]);
}

/// Step 2, item i = (l * q_heads + hq) * m + j: the logit of key sinks + j for query head hq.
KVCODEC_HD inline void expected_logit(const expected_args& a, std::int64_t i) noexcept {
  const std::int64_t m = expected_keys(a), HQ = expected_qheads(a), D = a.k.head_dim, lh = i / m, j = i % m;
  const int l = static_cast<int>(lh / HQ);
  const std::int64_t g = lh % HQ / a.group;
  float row[drop_max_head_dim];
  drop_load_row(a.k, l, g, expected_sinks(a) + j, row);
  if (a.cov) {
    a.logit[i] = drop_expected_logit(row, a.mu + lh * D, a.covm + lh * D * D, static_cast<std::size_t>(D));
  } else {
    const double ird = 1.0 / std::sqrt(static_cast<double>(D));
    a.logit[i] = static_cast<double>(drop_dot16(row, a.muf + lh * D, static_cast<std::size_t>(D))) * ird;
  }
}

/// Step 3, item i = l * q_heads + hq: the maximum, the numerators drop_exp(x - max) in place and their
/// sum over 4 lanes, as softmax_add; coef = (1 / group) / sum, NaN when the head adds nothing.
KVCODEC_HD inline void expected_softmax(const expected_args& a, std::int64_t i) noexcept {
  const std::int64_t m = expected_keys(a);
  double* x = a.logit + i * m;
  double mx = -HUGE_VAL;
  bool nan = false;
  for (std::int64_t j = 0; j < m; ++j) {
    mx = x[j] > mx ? x[j] : mx;
    nan |= x[j] != x[j];
  }
  if (nan || !(mx - mx == 0.0)) {
    a.coef[i] = bit_cast_hd<double>(0x7ff8000000000000ull);
    return;
  }
  double L[4] = {0, 0, 0, 0};
  for (std::int64_t j = 0; j < m; ++j) {
    x[j] = drop_exp(x[j] - mx);
    L[j % 4] += x[j];
  }
  a.coef[i] = (1.0 / static_cast<double>(a.group)) / ((L[0] + L[2]) + (L[1] + L[3]));
}

/// Step 4, item i = (l * heads + g) * m + j: key sinks + j's score.
KVCODEC_HD inline void expected_score(const expected_args& a, std::int64_t i) noexcept {
  const std::int64_t m = expected_keys(a), seg = i / m, j = i % m, s0 = expected_sinks(a);
  const int l = static_cast<int>(seg / a.heads);
  const std::int64_t g = seg % a.heads;
  double s = 0.0;
  for (int h = 0; h < a.group; ++h) {
    const std::int64_t lh = static_cast<std::int64_t>(l) * expected_qheads(a) + g * a.group + h;
    const double c = a.coef[lh];
    if (c == c) s += a.logit[lh * m + j] * c;
  }
  if (a.vnorm) {
    float row[drop_max_head_dim];
    const int D = a.k.head_dim < drop_max_head_dim ? a.k.head_dim : drop_max_head_dim;
    for (int c = 0; c < D; ++c) row[c] = kv_load(a.v[l], a.k.layout, a.k.dtype_code, g, s0 + j, c);
    s *= std::sqrt(static_cast<double>(drop_sumsq16(row, static_cast<std::size_t>(D))));
  }
  a.score[seg * a.n + s0 + j] = s;
}

/// The scores as a coder: the sinks first, in order, then the scores.
struct drop_expected_coder {
  const double* score = nullptr;
  int heads = 1;
  std::int64_t n = 0, sinks = 0;
  /// Priority of a protected token (0 kept first), -1 for a scored one.
  KVCODEC_HD std::int64_t priority(std::int64_t t) const noexcept { return t < sinks ? t : -1; }
  /// The CPU scorer's value of token t (0 for the sinks).
  KVCODEC_HD double raw(int l, std::int64_t h, std::int64_t t) const noexcept { return t < sinks ? 0.0 : score[(static_cast<std::int64_t>(l) * heads + h) * n + t]; }
  KVCODEC_HD std::uint64_t operator()(int l, std::int64_t h, std::int64_t t) const noexcept {
    return t < sinks ? drop_protected_code(static_cast<std::uint64_t>(t)) : drop_rank_code(raw(l, h, t));
  }
};

/// Array sizes (elements) of the steps.
struct expected_sizes {
  std::size_t mu = 0, cov = 0, logit = 0, coef = 0, score = 0;
};

inline expected_sizes expected_sizes_of(const expected_args& a) {
  const std::size_t lh = static_cast<std::size_t>(a.layers) * static_cast<std::size_t>(expected_qheads(a)), D = static_cast<std::size_t>(a.k.head_dim);
  return {lh * D, a.cov ? lh * D * D : 0, lh * static_cast<std::size_t>(expected_keys(a)), lh,
          static_cast<std::size_t>(a.layers) * static_cast<std::size_t>(a.heads) * static_cast<std::size_t>(a.n)};
}

/// The GPU expected-attention steps emulated on the host, item by item (`ep`: expected_tables of the
/// same parameters); returns then(coder), the coder valid during the call; `scores` (optional) receives
/// the score array ([(l * heads + g) * n + t], from the sinks on).
template <class Then>
auto drop_expected_emulated_with(expected_args a, const expected_prep& ep, const Then& then, std::vector<double>* scores = nullptr) {
  const expected_sizes sz = expected_sizes_of(a);
  std::vector<double> mu(sz.mu), cov(sz.cov), logit(sz.logit), coef(sz.coef), score(sz.score, 0.0);
  std::vector<float> muf(sz.mu);
  a.cbar = ep.cbar.data(), a.sbar = ep.sbar.data(), a.qc = ep.qc.data(), a.qs = ep.qs.data();
  a.mu = mu.data(), a.muf = muf.data(), a.covm = cov.data(), a.logit = logit.data(), a.coef = coef.data(), a.score = score.data();
  const std::int64_t lh = static_cast<std::int64_t>(sz.coef), m = expected_keys(a);
  for (std::int64_t i = 0; i < lh; ++i) expected_stats(a, i);
  for (std::int64_t i = 0; i < lh * m; ++i) expected_logit(a, i);
  for (std::int64_t i = 0; i < lh; ++i) expected_softmax(a, i);
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(a.layers) * a.heads * m; ++i) expected_score(a, i);
  auto out = then(drop_expected_coder{score.data(), a.heads, a.n, expected_sinks(a)});
  if (scores) *scores = std::move(score);
  return out;
}

/// The GPU expected-attention selection emulated on the host: the four steps, then each head's b best
/// by drop_expected_coder (or by wrap(coder)).
template <class Wrap = drop_same_coder>
std::vector<std::int32_t> drop_expected_select_emulated(const expected_args& a, const expected_prep& ep, std::int64_t b, std::vector<double>* scores = nullptr,
                                                        const Wrap& wrap = {}) {
  return drop_expected_emulated_with(
      a, ep, [&](const drop_expected_coder& c) { return drop_select_emulated(wrap(c), a.layers, a.heads, a.n, b); }, scores);
}

}  // namespace kvcodec
