// kvcodec/cpu/x86/drop.hpp — AVX2 / FMA kernels of the token-dropping scorers.
//
// Row kernels (sum of squares, dot products against up to 4 queries at once, the KeyDiff anchor, exp,
// max with NaN detection, -sqrt, cosine) equal their scalar references bit for bit: the lane kernels
// of core/drop_score.hpp (element a of a row goes to float lane a % 16, each lane an fma chain in
// increasing a, lanes added in drop_lane_sum16's order) and the loops of cpu/drop/rows.hpp. The window
// attention kernels (keys packed into 16-key panels, a 6 x 16 register tile for Q K^T, an exact
// softmax per row with a Cephes expf) are the vector path of cpu/drop/window_attention.hpp, whose
// other path is an Eigen GEMM. Compiled only where core/simd.hpp can dispatch; cpu/drop/ picks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/simd.hpp"

#if KVCODEC_X86_DISPATCH
namespace kvcodec::cpu::drop_detail {

// ---- row kernels ----------------------------------------------------------------------------------

/// drop_lane_sum16 of the accumulators a0 (lanes 0-7) and a1 (lanes 8-15), after the tail elements
/// a in [d8, D) of x (times y, or x itself when y is null) went to lane a % 16.
KVCODEC_TARGET_AVX2 inline float lane_finish16(__m256 a0, __m256 a1, const float* x, const float* y, std::size_t d8, std::size_t D) {
  if (d8 < D) {
    alignas(32) float L[16];
    _mm256_store_ps(L, a0);
    _mm256_store_ps(L + 8, a1);
    for (std::size_t a = d8; a < D; ++a) L[a % 16] = std::fma(x[a], y ? y[a] : x[a], L[a % 16]);
    a0 = _mm256_load_ps(L);
    a1 = _mm256_load_ps(L + 8);
  }
  const __m256 t = _mm256_add_ps(a0, a1);
  const __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  const __m128 v = _mm_add_ps(u, _mm_movehl_ps(u, u));
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));
}

KVCODEC_TARGET_AVX2 inline void sumsq_rows_avx2(const float* X, std::size_t rows, std::size_t D, double* out) {
  const std::size_t d8 = D & ~std::size_t{7}, d16 = D & ~std::size_t{15};
  for (std::size_t r = 0; r < rows; ++r) {
    const float* x = X + r * D;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (std::size_t c = 0; c < d16; c += 16) {
      const __m256 v0 = _mm256_loadu_ps(x + c), v1 = _mm256_loadu_ps(x + c + 8);
      a0 = _mm256_fmadd_ps(v0, v0, a0);
      a1 = _mm256_fmadd_ps(v1, v1, a1);
    }
    if (d16 < d8) {
      const __m256 v0 = _mm256_loadu_ps(x + d16);
      a0 = _mm256_fmadd_ps(v0, v0, a0);
    }
    out[r] = static_cast<double>(lane_finish16(a0, a1, x, nullptr, d8, D));
  }
}

/// out[q * ostride + r] = drop_dot16(X + r D, y[q], D) for q < MQ, r < rows.
template <int MQ>
KVCODEC_TARGET_AVX2 inline void dot_rows_tile_avx2(const float* X, std::size_t rows, std::size_t D, const float* const* y, double* out,
                                                   std::size_t ostride) {
  const std::size_t d8 = D & ~std::size_t{7}, d16 = D & ~std::size_t{15};
  for (std::size_t r = 0; r < rows; ++r) {
    const float* x = X + r * D;
    __m256 a[MQ][2];
    for (int i = 0; i < MQ; ++i) a[i][0] = a[i][1] = _mm256_setzero_ps();
    for (std::size_t c = 0; c < d16; c += 16) {
      const __m256 v0 = _mm256_loadu_ps(x + c), v1 = _mm256_loadu_ps(x + c + 8);
      for (int i = 0; i < MQ; ++i) {
        a[i][0] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(y[i] + c), a[i][0]);
        a[i][1] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(y[i] + c + 8), a[i][1]);
      }
    }
    if (d16 < d8) {
      const __m256 v0 = _mm256_loadu_ps(x + d16);
      for (int i = 0; i < MQ; ++i) a[i][0] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(y[i] + d16), a[i][0]);
    }
    for (int i = 0; i < MQ; ++i) out[static_cast<std::size_t>(i) * ostride + r] = static_cast<double>(lane_finish16(a[i][0], a[i][1], x, y[i], d8, D));
  }
}

/// out[q * ostride + r] = drop_dot16(X + r D, Y + q D, D) for q < m, r < rows.
KVCODEC_TARGET_AVX2 inline void dot_rows_avx2(const float* X, std::size_t rows, std::size_t D, const float* Y, int m, double* out,
                                              std::size_t ostride) {
  for (int q0 = 0; q0 < m; q0 += 4) {
    const int mq = std::min(4, m - q0);
    const float* y[4];
    for (int i = 0; i < mq; ++i) y[i] = Y + static_cast<std::size_t>(q0 + i) * D;
    double* o = out + static_cast<std::size_t>(q0) * ostride;
    if (mq == 4) dot_rows_tile_avx2<4>(X, rows, D, y, o, ostride);
    else if (mq == 3) dot_rows_tile_avx2<3>(X, rows, D, y, o, ostride);
    else if (mq == 2) dot_rows_tile_avx2<2>(X, rows, D, y, o, ostride);
    else dot_rows_tile_avx2<1>(X, rows, D, y, o, ostride);
  }
}

/// drop_anchor_block on rows [0, rows) of X (rows <= 8).
KVCODEC_TARGET_AVX2 inline void anchor_block_avx2(float* anchor, const float* X, std::size_t rows, std::size_t D, const float* inv) {
  const float* xr[8];
  __m256 iv[8];
  std::size_t k = 0;
  for (std::size_t r = 0; r < rows; ++r)
    if (inv[r] != 0.0f) xr[k] = X + r * D, iv[k++] = _mm256_set1_ps(inv[r]);
  const std::size_t d8 = D & ~std::size_t{7};
  for (std::size_t c = 0; c < d8; c += 8) {
    __m256 t = _mm256_setzero_ps();
    for (std::size_t i = 0; i < k; ++i) t = _mm256_fmadd_ps(_mm256_loadu_ps(xr[i] + c), iv[i], t);
    _mm256_storeu_ps(anchor + c, _mm256_add_ps(_mm256_loadu_ps(anchor + c), t));
  }
  for (std::size_t a = d8; a < D; ++a) {
    float t = 0.0f;
    for (std::size_t i = 0; i < k; ++i) t = std::fma(xr[i][a], _mm256_cvtss_f32(iv[i]), t);
    anchor[a] += t;
  }
}

/// drop_exp of 4 doubles.
KVCODEC_TARGET_AVX2 inline __m256d exp4_avx2(__m256d x0) {
  const __m256d lo = _mm256_set1_pd(-708.0), hi = _mm256_set1_pd(709.0);
  const __m256d v = _mm256_min_pd(_mm256_max_pd(x0, lo), hi);
  const __m256d k = _mm256_round_pd(_mm256_mul_pd(v, _mm256_set1_pd(1.4426950408889634)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256d r = _mm256_fmadd_pd(k, _mm256_set1_pd(-1.9082149292705877e-10), _mm256_fmadd_pd(k, _mm256_set1_pd(-0.69314718036912382), v));
  __m256d p = _mm256_set1_pd(1.0 / 479001600.0);
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 39916800.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 3628800.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 362880.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 40320.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 5040.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 720.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 120.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 24.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 6.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0.5));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
  const __m256i kb = _mm256_castpd_si256(_mm256_add_pd(k, _mm256_set1_pd(6755399441055744.0)));
  const __m256i e = _mm256_slli_epi64(_mm256_add_epi64(kb, _mm256_set1_epi64x(1023)), 52);
  __m256d res = _mm256_mul_pd(p, _mm256_castsi256_pd(e));
  res = _mm256_blendv_pd(res, _mm256_setzero_pd(), _mm256_cmp_pd(x0, lo, _CMP_LT_OQ));
  res = _mm256_blendv_pd(res, _mm256_set1_pd(HUGE_VAL), _mm256_cmp_pd(x0, hi, _CMP_GT_OQ));
  return _mm256_blendv_pd(res, x0, _mm256_cmp_pd(x0, x0, _CMP_UNORD_Q));
}

/// x[i] = drop_exp(x[i]) for i < n.
KVCODEC_TARGET_AVX2 inline void exp_avx2(double* x, std::size_t n) {
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(x + i, exp4_avx2(_mm256_loadu_pd(x + i)));
  for (; i < n; ++i) x[i] = drop_exp(x[i]);
}

/// exp_shift_sum_ref (below) with 4-double vectors.
KVCODEC_TARGET_AVX2 inline double exp_shift_sum_avx2(double* x, std::size_t n, double m) {
  const std::size_t n4 = n & ~std::size_t{3};
  const __m256d vm = _mm256_set1_pd(m);
  __m256d z = _mm256_setzero_pd();
  for (std::size_t i = 0; i < n4; i += 4) {
    const __m256d e = exp4_avx2(_mm256_sub_pd(_mm256_loadu_pd(x + i), vm));
    _mm256_storeu_pd(x + i, e);
    z = _mm256_add_pd(z, e);
  }
  alignas(32) double L[4];
  _mm256_store_pd(L, z);
  for (std::size_t i = n4; i < n; ++i) {
    x[i] = drop_exp(x[i] - m);
    L[i - n4] += x[i];
  }
  return (L[0] + L[2]) + (L[1] + L[3]);
}

/// max_nan_ref (below) with 4-double vectors.
KVCODEC_TARGET_AVX2 inline double max_nan_avx2(const double* x, std::size_t n, bool& nan) {
  const std::size_t n4 = n & ~std::size_t{3};
  __m256d vm = _mm256_set1_pd(-HUGE_VAL), un = _mm256_setzero_pd();
  for (std::size_t i = 0; i < n4; i += 4) {
    const __m256d v = _mm256_loadu_pd(x + i);
    vm = _mm256_max_pd(v, vm);
    un = _mm256_or_pd(un, _mm256_cmp_pd(v, v, _CMP_UNORD_Q));
  }
  alignas(32) double L[4];
  _mm256_store_pd(L, vm);
  double m = std::max(std::max(L[0], L[1]), std::max(L[2], L[3]));
  nan = _mm256_movemask_pd(un) != 0;
  for (std::size_t i = n4; i < n; ++i) {
    m = x[i] > m ? x[i] : m;
    nan |= x[i] != x[i];
  }
  return m;
}

KVCODEC_TARGET_AVX2 inline void neg_sqrt_avx2(double* s, std::size_t n) {
  std::size_t j = 0;
  const __m256d nz = _mm256_set1_pd(-0.0);
  for (; j + 4 <= n; j += 4) _mm256_storeu_pd(s + j, _mm256_xor_pd(_mm256_sqrt_pd(_mm256_loadu_pd(s + j)), nz));
  for (; j < n; ++j) s[j] = -std::sqrt(s[j]);
}

KVCODEC_TARGET_AVX2 inline void cosine_scores_avx2(double* s, const double* xy, double yy, std::size_t n) {
  std::size_t j = 0;
  const __m256d vyy = _mm256_set1_pd(yy), z = _mm256_setzero_pd(), nz = _mm256_set1_pd(-0.0);
  for (; j + 4 <= n; j += 4) {
    const __m256d v = _mm256_loadu_pd(s + j);
    const __m256d c = _mm256_xor_pd(_mm256_div_pd(_mm256_loadu_pd(xy + j), _mm256_sqrt_pd(_mm256_mul_pd(v, vyy))), nz);
    _mm256_storeu_pd(s + j, _mm256_blendv_pd(nz, c, _mm256_cmp_pd(v, z, _CMP_GT_OQ)));
  }
  for (; j < n; ++j) s[j] = s[j] > 0.0 ? -(xy[j] / std::sqrt(s[j] * yy)) : -0.0;
}

// ---- window attention -----------------------------------------------------------------------------

/// Keys [0, n) of K (n x D row-major) into panels of 16 keys: kp[(p D + a) 16 + i] = K[(16 p + i) D + a],
/// zero past n (8 x 8 register transposes for whole blocks, element by element for the rest).
KVCODEC_TARGET_AVX2 inline void pack_keys16(const float* K, std::int64_t n, std::size_t D, std::vector<float>& kp) {
  const std::size_t np = static_cast<std::size_t>((n + 15) / 16);
  kp.resize(np * D * 16);
  const std::size_t d8 = D & ~std::size_t{7};
  const std::int64_t n8 = n & ~std::int64_t{7};
  for (std::int64_t j0 = 0; j0 < n8; j0 += 8) {
    float* dst = kp.data() + static_cast<std::size_t>(j0 / 16) * D * 16 + static_cast<std::size_t>(j0 % 16);
    const float* src = K + static_cast<std::size_t>(j0) * D;
    for (std::size_t a = 0; a < d8; a += 8) {
      __m256 r[8], t[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + static_cast<std::size_t>(i) * D + a);
      for (int i = 0; i < 8; i += 2) t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
      }
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + (a + static_cast<std::size_t>(i)) * 16, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (a + static_cast<std::size_t>(i) + 4) * 16, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
      }
    }
    for (std::size_t a = d8; a < D; ++a)
      for (int i = 0; i < 8; ++i) dst[a * 16 + static_cast<std::size_t>(i)] = src[static_cast<std::size_t>(i) * D + a];
  }
  for (std::int64_t j = n8; j < static_cast<std::int64_t>(np * 16); ++j) {
    float* dst = kp.data() + static_cast<std::size_t>(j / 16) * D * 16 + static_cast<std::size_t>(j % 16);
    for (std::size_t a = 0; a < D; ++a) dst[a * 16] = j < n ? K[static_cast<std::size_t>(j) * D + a] : 0.0f;
  }
}

/// S[q ld + i] = Q[q] . key i of the 16-key panel P, for q < MR: an MR x 16 register tile,
/// broadcasting one query element against the 16 packed keys per step of head_dim.
template <int MR>
KVCODEC_TARGET_AVX2 inline void qk_tile_avx2(const float* Q, std::size_t D, const float* P, float* S, std::size_t ld) {
  __m256 acc[MR][2];
  for (int q = 0; q < MR; ++q) acc[q][0] = acc[q][1] = _mm256_setzero_ps();
  for (std::size_t a = 0; a < D; ++a) {
    const __m256 k0 = _mm256_loadu_ps(P + a * 16), k1 = _mm256_loadu_ps(P + a * 16 + 8);
    for (int q = 0; q < MR; ++q) {
      const __m256 b = _mm256_broadcast_ss(Q + static_cast<std::size_t>(q) * D + a);
      acc[q][0] = _mm256_fmadd_ps(b, k0, acc[q][0]);
      acc[q][1] = _mm256_fmadd_ps(b, k1, acc[q][1]);
    }
  }
  for (int q = 0; q < MR; ++q) {
    _mm256_storeu_ps(S + static_cast<std::size_t>(q) * ld, acc[q][0]);
    _mm256_storeu_ps(S + static_cast<std::size_t>(q) * ld + 8, acc[q][1]);
  }
}

/// Scores of the M stacked query rows of a block (row r is query r0 + r % rows) against the packed
/// keys, panel by panel (the panel stays in L1 while every 6-row tile passes over it), each tile
/// only up to the panel holding its last causal key.
KVCODEC_TARGET_AVX2 inline void qk_block_avx2(const float* Q, std::int64_t M, std::int64_t rows, std::int64_t r0, std::size_t D,
                                              const float* kp, float* S, std::size_t ld) {
  const std::int64_t tiles = (M + 5) / 6;
  std::int64_t npmax = 0;
  for (std::int64_t p = 0;; ++p) {
    for (std::int64_t t = 0; t < tiles; ++t) {
      const std::int64_t i = 6 * t;
      const int mr = static_cast<int>(std::min<std::int64_t>(6, M - i));
      std::int64_t lim = 0;
      for (std::int64_t r = i; r < i + mr; ++r) lim = std::max(lim, r0 + r % rows + 1);
      const std::int64_t np = (lim + 15) / 16;
      npmax = std::max(npmax, np);
      if (p >= np) continue;
      const float* q = Q + static_cast<std::size_t>(i) * D;
      const float* P = kp + static_cast<std::size_t>(p) * D * 16;
      float* o = S + static_cast<std::size_t>(i) * ld + static_cast<std::size_t>(p) * 16;
      switch (mr) {
        case 6: qk_tile_avx2<6>(q, D, P, o, ld); break;
        case 5: qk_tile_avx2<5>(q, D, P, o, ld); break;
        case 4: qk_tile_avx2<4>(q, D, P, o, ld); break;
        case 3: qk_tile_avx2<3>(q, D, P, o, ld); break;
        case 2: qk_tile_avx2<2>(q, D, P, o, ld); break;
        default: qk_tile_avx2<1>(q, D, P, o, ld); break;
      }
    }
    if (p + 1 >= npmax) break;
  }
}

/// exp of 8 floats (Cephes expf: x = n ln2 + r, degree-5 polynomial in r, times 2^n), input
/// clamped to [-88.38, 88.38]; NaN stays NaN. Relative error about 2 ulp.
KVCODEC_TARGET_AVX2 inline __m256 exp8_avx2(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-88.3762626647949f), _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/// col[j] += softmax_j(row * scale) over j < lim (row is overwritten); a row with a NaN or an
/// infinite maximum adds nothing.
KVCODEC_TARGET_AVX2 inline void softmax_col_avx2(float* row, std::int64_t lim, float scale, float* col) {
  const std::int64_t l8 = lim & ~std::int64_t{7};
  __m256 vm = _mm256_set1_ps(-HUGE_VALF);
  for (std::int64_t j = 0; j < l8; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(row + j));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  float m = std::max(_mm_cvtss_f32(h), _mm_cvtss_f32(_mm_shuffle_ps(h, h, 1)));
  for (std::int64_t j = l8; j < lim; ++j) m = row[j] > m ? row[j] : m;
  const __m256 vms = _mm256_set1_ps(m * scale), vs = _mm256_set1_ps(scale);
  __m256 vz = _mm256_setzero_ps();
  for (std::int64_t j = 0; j < l8; j += 8) {
    const __m256 e = exp8_avx2(_mm256_fmsub_ps(_mm256_loadu_ps(row + j), vs, vms));
    _mm256_storeu_ps(row + j, e);
    vz = _mm256_add_ps(vz, e);
  }
  __m128 t = _mm_add_ps(_mm256_castps256_ps128(vz), _mm256_extractf128_ps(vz, 1));
  t = _mm_add_ps(t, _mm_movehl_ps(t, t));
  float z = _mm_cvtss_f32(t) + _mm_cvtss_f32(_mm_shuffle_ps(t, t, 1));
  for (std::int64_t j = l8; j < lim; ++j) {
    row[j] = std::exp((row[j] - m) * scale);
    z += row[j];
  }
  if (!std::isfinite(z) || !(z > 0.0f)) return;
  const float iz = 1.0f / z;
  const __m256 viz = _mm256_set1_ps(iz);
  for (std::int64_t j = 0; j < l8; j += 8)
    _mm256_storeu_ps(col + j, _mm256_fmadd_ps(_mm256_loadu_ps(row + j), viz, _mm256_loadu_ps(col + j)));
  for (std::int64_t j = l8; j < lim; ++j) col[j] += row[j] * iz;
}

}  // namespace kvcodec::cpu::drop_detail
#endif
