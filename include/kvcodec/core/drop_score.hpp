// kvcodec/core/drop_score.hpp — per-element scoring math of the token-dropping stages.
//
// Streaming (online) softmax over one query's scores (Milakov & Gimelshein 2018): a running maximum
// and a running sum rescaled whenever the maximum grows, so the log-normaliser of a row is known
// after one pass with O(1) state; key L2 norms (KNorm, Devoto et al. 2024); cosine to an anchor
// (KeyDiff, Park et al. 2025); the expected-attention logit mu.k/sqrt(d) + k^T Sigma k / (2d)
// (kvpress ExpectedAttentionPress); average pooling with zero padding (SnapKV, Li et al. 2024, as
// torch avg_pool1d with count_include_pad); and the block-diagonal "average RoPE rotation" applied
// to a vector of doubles. The lane kernels (drop_sumsq16, drop_dot16, drop_anchor_block, drop_exp)
// are the scalar references of the AVX2 kernels in cpu/x86/drop.hpp: element a of a row goes to
// float lane a % 16 (two 8-float accumulators), each lane is an fma chain in increasing a, and
// drop_lane_sum16 adds the lanes in the order the vector code does, so both paths give the same bits. Invariant: every function works on
// explicit pointers and state, allocates nothing and throws nothing (KVCODEC_HD).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/rope.hpp"

namespace kvcodec {

/// Online softmax state: after pushing s_1..s_n, log(sum exp s_i) = m + log(z).
struct drop_softmax_state {
  double m = -HUGE_VAL;
  double z = 0.0;
};

KVCODEC_HD inline void drop_softmax_push(drop_softmax_state& st, double s) noexcept {
  if (s > st.m) {
    st.z = st.z * std::exp(st.m - s) + 1.0;
    st.m = s;
  } else {
    st.z += std::exp(s - st.m);
  }
}

/// log-sum-exp of the pushed scores; -inf when nothing (or only -inf) was pushed.
KVCODEC_HD inline double drop_softmax_lse(const drop_softmax_state& st) noexcept {
  return st.z > 0.0 && st.m != -HUGE_VAL ? st.m + std::log(st.z) : -HUGE_VAL;
}

/// Order-preserving code of a score: NaN as -inf, -0 as +0; a larger score has a larger code (the
/// CPU selector's ranking key, cpu/drop/select.hpp, and the GPU selection's sort key).
KVCODEC_HD inline std::uint64_t drop_rank_code(double v) noexcept {
  if (v != v) v = -HUGE_VAL;
  std::uint64_t b = 0;
  if (v != 0.0) std::memcpy(&b, &v, sizeof b);
  return (b >> 63) ? ~b : b | (std::uint64_t{1} << 63);
}

/// L2 norm of n floats, accumulated in double.
KVCODEC_HD inline double drop_l2_norm(const float* x, std::size_t n) noexcept {
  double s = 0.0;
  for (std::size_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return std::sqrt(s);
}

/// Sum of the 16 lanes of drop_sumsq16 / drop_dot16: t_i = L_i + L_{i+8}, then
/// ((t0+t4)+(t2+t6)) + ((t1+t5)+(t3+t7)).
KVCODEC_HD inline float drop_lane_sum16(const float* L) noexcept {
  float t[8];
  for (int i = 0; i < 8; ++i) t[i] = L[i] + L[i + 8];
  return ((t[0] + t[4]) + (t[2] + t[6])) + ((t[1] + t[5]) + (t[3] + t[7]));
}

/// Sum of x[a]^2 over a < n in float: element a goes to lane a % 16, an fma chain in increasing a.
KVCODEC_HD inline float drop_sumsq16(const float* x, std::size_t n) noexcept {
  float L[16] = {};
  for (std::size_t a = 0; a < n; ++a) L[a % 16] = std::fma(x[a], x[a], L[a % 16]);
  return drop_lane_sum16(L);
}

/// Sum of x[a] y[a] over a < n in float, lane layout of drop_sumsq16.
KVCODEC_HD inline float drop_dot16(const float* x, const float* y, std::size_t n) noexcept {
  float L[16] = {};
  for (std::size_t a = 0; a < n; ++a) L[a % 16] = std::fma(x[a], y[a], L[a % 16]);
  return drop_lane_sum16(L);
}

/// Inverse norm used by the KeyDiff anchor: 1/sqrt(ss) rounded to float when ss > 0, else 0 (the
/// row is skipped).
KVCODEC_HD inline float drop_inv_norm(double ss) noexcept { return ss > 0.0 ? static_cast<float>(1.0 / std::sqrt(ss)) : 0.0f; }

/// anchor[a] += t_a with t_a = fma chain over the rows r < rows of the block (increasing r, rows
/// with inv[r] == 0 skipped) of X[r D + a] * inv[r], starting from 0.
KVCODEC_HD inline void drop_anchor_block(float* anchor, const float* X, std::size_t rows, std::size_t D, const float* inv) noexcept {
  for (std::size_t a = 0; a < D; ++a) {
    float t = 0.0f;
    for (std::size_t r = 0; r < rows; ++r)
      if (inv[r] != 0.0f) t = std::fma(X[r * D + a], inv[r], t);
    anchor[a] += t;
  }
}

/// exp(x) within about 2 ulp: x = k ln2 + r with |r| <= ln2/2, degree-12 Taylor polynomial in r
/// (Horner, fma), times 2^k. Below -708 gives 0 (no subnormals), above 709 +inf, NaN stays NaN.
KVCODEC_HD inline double drop_exp(double x) noexcept {
  if (x != x) return x;
  if (!(x >= -708.0)) return 0.0;
  if (x > 709.0) return HUGE_VAL;
  const double k = std::nearbyint(x * 1.4426950408889634);
  const double r = std::fma(k, -1.9082149292705877e-10, std::fma(k, -0.69314718036912382, x));
  double p = 1.0 / 479001600.0;
  p = std::fma(p, r, 1.0 / 39916800.0);
  p = std::fma(p, r, 1.0 / 3628800.0);
  p = std::fma(p, r, 1.0 / 362880.0);
  p = std::fma(p, r, 1.0 / 40320.0);
  p = std::fma(p, r, 1.0 / 5040.0);
  p = std::fma(p, r, 1.0 / 720.0);
  p = std::fma(p, r, 1.0 / 120.0);
  p = std::fma(p, r, 1.0 / 24.0);
  p = std::fma(p, r, 1.0 / 6.0);
  p = std::fma(p, r, 0.5);
  p = std::fma(p, r, 1.0);
  p = std::fma(p, r, 1.0);
  const std::uint64_t bits = static_cast<std::uint64_t>(static_cast<std::int64_t>(k) + 1023) << 52;
  return p * bit_cast_hd<double>(bits);
}

/// Cosine similarity of x (floats) and anchor (doubles); 0 when either has zero norm.
KVCODEC_HD inline double drop_cosine(const float* x, const double* anchor, std::size_t n) noexcept {
  double xy = 0.0, xx = 0.0, yy = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    xy += static_cast<double>(x[i]) * anchor[i];
    xx += static_cast<double>(x[i]) * x[i];
    yy += anchor[i] * anchor[i];
  }
  return xx > 0.0 && yy > 0.0 ? xy / std::sqrt(xx * yy) : 0.0;
}

/// Expected-attention logit of key k under a Gaussian query N(mu, cov) (cov: d x d row-major, may be
/// null): mu.k / sqrt(d) + k^T cov k / (2 d).
KVCODEC_HD inline double drop_expected_logit(const float* k, const double* mu, const double* cov, std::size_t d) noexcept {
  double lin = 0.0;
  for (std::size_t i = 0; i < d; ++i) lin += mu[i] * k[i];
  double quad = 0.0;
  if (cov) {
    for (std::size_t i = 0; i < d; ++i) {
      double row = 0.0;
      for (std::size_t j = 0; j < d; ++j) row += cov[i * d + j] * k[j];
      quad += static_cast<double>(k[i]) * row;
    }
  }
  return lin / std::sqrt(static_cast<double>(d)) + quad / (2.0 * static_cast<double>(d));
}

/// out[j] = (1/kernel) * sum of in[j - kernel/2 .. j + kernel/2] inside [0, n) (zero padding).
/// kernel must be odd and >= 1; out and in must not overlap.
KVCODEC_HD inline void drop_avg_pool(const double* in, double* out, std::int64_t n, std::int64_t kernel) noexcept {
  const std::int64_t r = kernel / 2;
  double window = 0.0;
  for (std::int64_t j = 0; j < r && j < n; ++j) window += in[j];
  for (std::int64_t j = 0; j < n; ++j) {
    if (j + r < n) window += in[j + r];
    if (j - r - 1 >= 0) window -= in[j - r - 1];
    out[j] = window / static_cast<double>(kernel);
  }
}

/// Applies the block rotation [[c, -s], [s, c]] of pair i (c = cbar[i], s = sbar[i]) to the d
/// elements x[0], x[stride], ..., x[(d-1) stride], pairs laid out as `style` (core/rope.hpp).
KVCODEC_HD inline void drop_block_rotate(double* x, std::size_t d, std::size_t stride, const double* cbar,
                                         const double* sbar, rope_style style) noexcept {
  const std::size_t half = d / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const std::size_t i0 = style == rope_style::interleaved_pairs ? 2 * i : i;
    const std::size_t i1 = style == rope_style::interleaved_pairs ? 2 * i + 1 : i + half;
    const double a = x[i0 * stride], b = x[i1 * stride];
    x[i0 * stride] = cbar[i] * a - sbar[i] * b;
    x[i1 * stride] = sbar[i] * a + cbar[i] * b;
  }
}

}  // namespace kvcodec
