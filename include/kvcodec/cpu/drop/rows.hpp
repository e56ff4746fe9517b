// kvcodec/cpu/drop/rows.hpp — row kernels shared by the token-dropping scorers: squared norms, dot
// products of keys with a few query vectors, the KeyDiff anchor, the KNorm and cosine scores, and a
// softmax accumulated into per-token sums.
//
// Each runs the AVX2 kernel of cpu/x86/drop.hpp when core/simd.hpp allows (KVCODEC_NO_SIMD=1 forces the
// scalar path) and its scalar reference otherwise (the lane kernels of core/drop_score.hpp, the loops
// here); both give the same bits.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/cpu/x86/drop.hpp"

namespace kvcodec::cpu::drop_detail {

/// s[j] = -sqrt(s[j]) for j < n (the KNorm score).
inline void neg_sqrt_rows(double* s, std::size_t n) {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return neg_sqrt_avx2(s, n);
#endif
  for (std::size_t j = 0; j < n; ++j) s[j] = -std::sqrt(s[j]);
}

/// KeyDiff score from squared norms s, dot products xy with the anchor and its squared norm yy:
/// s[j] = -(xy[j] / sqrt(s[j] yy)) where s[j] > 0 and yy > 0, else -0.
inline void cosine_scores(double* s, const double* xy, double yy, std::size_t n) {
  if (!(yy > 0.0)) {
    std::fill(s, s + n, -0.0);
    return;
  }
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return cosine_scores_avx2(s, xy, yy, n);
#endif
  for (std::size_t j = 0; j < n; ++j) s[j] = s[j] > 0.0 ? -(xy[j] / std::sqrt(s[j] * yy)) : -0.0;
}

/// out[r] = drop_sumsq16(X + r D, D) for r < rows.
inline void sumsq_rows(const float* X, std::size_t rows, std::size_t D, double* out) {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return sumsq_rows_avx2(X, rows, D, out);
#endif
  for (std::size_t r = 0; r < rows; ++r) out[r] = static_cast<double>(drop_sumsq16(X + r * D, D));
}

/// out[q * ostride + r] = drop_dot16(X + r D, Y + q D, D) for q < m, r < rows.
inline void dot_rows(const float* X, std::size_t rows, std::size_t D, const float* Y, int m, double* out, std::size_t ostride) {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return dot_rows_avx2(X, rows, D, Y, m, out, ostride);
#endif
  for (int q = 0; q < m; ++q)
    for (std::size_t r = 0; r < rows; ++r)
      out[static_cast<std::size_t>(q) * ostride + r] = static_cast<double>(drop_dot16(X + r * D, Y + static_cast<std::size_t>(q) * D, D));
}

/// out[r] = drop_sumsq16(row r), and per block of 8 rows drop_anchor_block(anchor, block, inv)
/// with inv[r] = drop_inv_norm(out[r]) (one read of the keys from memory; the block stays in L1).
inline void norm_anchor_rows(const float* X, std::size_t rows, std::size_t D, double* out, float* anchor) {
  for (std::size_t r0 = 0; r0 < rows; r0 += 8) {
    const std::size_t nb = std::min<std::size_t>(8, rows - r0);
    float inv[8];
    sumsq_rows(X + r0 * D, nb, D, out + r0);
    for (std::size_t r = 0; r < nb; ++r) inv[r] = drop_inv_norm(out[r0 + r]);
#if KVCODEC_X86_DISPATCH
    if (simd::avx2()) {
      anchor_block_avx2(anchor, X + r0 * D, nb, D, inv);
      continue;
    }
#endif
    drop_anchor_block(anchor, X + r0 * D, nb, D, inv);
  }
}

/// x[i] = drop_exp(x[i] - m) for i < n; returns their sum over 4 lanes i % 4, (L0+L2)+(L1+L3).
inline double exp_shift_sum_ref(double* x, std::size_t n, double m) {
  double L[4] = {0, 0, 0, 0};
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = drop_exp(x[i] - m);
    L[i % 4] += x[i];
  }
  return (L[0] + L[2]) + (L[1] + L[3]);
}

/// Largest non-NaN x[i] (-inf if none); nan = whether some x[i] is NaN.
inline double max_nan_ref(const double* x, std::size_t n, bool& nan) {
  double m = -HUGE_VAL;
  nan = false;
  for (std::size_t i = 0; i < n; ++i) {
    m = x[i] > m ? x[i] : m;
    nan |= x[i] != x[i];
  }
  return m;
}

/// acc[j] += w * softmax_j(l) over j < n; l is overwritten. A row with a NaN, or whose maximum is
/// infinite, adds nothing.
inline void softmax_add(double* l, std::size_t n, double w, double* acc) {
  bool nan = false;
  double m = 0.0, z = 0.0;
#if KVCODEC_X86_DISPATCH
  const bool fast = simd::avx2();
  m = fast ? max_nan_avx2(l, n, nan) : max_nan_ref(l, n, nan);
  if (nan || !std::isfinite(m)) return;
  z = fast ? exp_shift_sum_avx2(l, n, m) : exp_shift_sum_ref(l, n, m);
#else
  m = max_nan_ref(l, n, nan);
  if (nan || !std::isfinite(m)) return;
  z = exp_shift_sum_ref(l, n, m);
#endif
  const double c = w / z;
  for (std::size_t j = 0; j < n; ++j) acc[j] += l[j] * c;
}

}  // namespace kvcodec::cpu::drop_detail
