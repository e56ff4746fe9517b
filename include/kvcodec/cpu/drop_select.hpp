// kvcodec/cpu/drop_select.hpp — CPU scorers and kept-set selection of the token-dropping stages.
//
// Every method scores the keys of the compressed prefix [0, n) (n = obs_end, or all tokens) per
// (layer, kv head), names the tokens it protects in priority order (sinks, observation window, most
// recent), and keeps the protected tokens first and then the highest scores, up to the budget
// (ties: lower index first; a NaN score ranks last; partial selection with nth_element). Tokens at
// or after n are always kept. adakv replaces the per-head top-k by a pooled top-k over the heads of
// a layer (Ada-KV). Memory-bound scorers (knorm, keydiff, tova, expected-attention) read each key
// from memory once with 16-lane f32 fma kernels (core/drop_score.hpp) that have bit-identical AVX2
// paths chosen at run time (core/simd.hpp; KVCODEC_NO_SIMD=1 forces the scalar path). Window attention
// (snapkv, pyramidkv, h2o) stacks the queries of a GQA group and computes Q K^T over blocks of at
// most 256 query rows (an AVX2/FMA 6 x 16 register tile over packed keys, or an Eigen f32 GEMM
// without AVX2), with an exact softmax per row on the block, so memory is O(256 x tokens) per
// layer, never O(tokens^2). Layers are scored in parallel; the result does
// not depend on the thread count. Sources: kvpress presses (SnapKV, TOVA, ObservedAttention,
// ExpectedAttention, KNorm, KeyDiff, PyramidKV, AdaKV, Random), and the papers in
// stage/drop_attention.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "kvcodec/core/random.hpp"
#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/rope.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/cpu/policy.hpp"
#include "kvcodec/stage/drop_common.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

using drop::method;

inline bool needs_queries(const drop::config& c) {
  const method m = c.m == method::adakv ? c.scorer : c.m;
  return m == method::h2o || m == method::snapkv || m == method::tova || m == method::expected_attention ||
         m == method::pyramidkv;
}

inline std::string where_of(const drop::config& c) { return "drop stage '" + c.name + "'"; }

/// RoPE of the cache's keys and queries from its metadata (`rope`, `rope_theta`, `post_rope`);
/// nullopt when the cache declares none or says it is stored pre-RoPE.
struct rope_meta {
  rope_style style = rope_style::interleaved_pairs;
  double theta = 10000.0;
};

inline std::optional<rope_meta> rope_of(const kv_cache& kv, const std::string& where) {
  const auto it = kv.metadata.find("rope");
  if (it == kv.metadata.end() || it->second.empty() || it->second == "none") return std::nullopt;
  const auto pr = kv.metadata.find("post_rope");
  if (pr != kv.metadata.end() && (pr->second == "false" || pr->second == "0")) return std::nullopt;
  rope_meta r;
  const auto st = parse_rope_style(it->second);
  if (!st) throw_bad_input(where, "metadata 'rope'", "interleaved-pairs or rotate-half", "'" + it->second + "'");
  r.style = *st;
  const auto th = kv.metadata.find("rope_theta");
  if (th != kv.metadata.end()) {
    double v = 0;
    if (!kvcodec::detail::from_text(th->second, v) || !(v > 1.0) || !std::isfinite(v))
      throw_bad_input(where, "metadata 'rope_theta'", "a finite number > 1", "'" + th->second + "'");
    r.theta = v;
  }
  if (kv.shape.head_dim % 2 != 0) throw_bad_input(where, "head_dim", "an even number (RoPE pairs)", std::to_string(kv.shape.head_dim));
  return r;
}

inline std::int64_t position_of(const kv_cache& kv, std::int64_t t) {
  return kv.positions.empty() ? t : kv.positions[static_cast<std::size_t>(t)];
}

/// Uniform budget per (layer, head) over a prefix of n tokens.
inline std::int64_t budget_of(const drop::config& c, std::int64_t n) {
  if (c.tokens > 0) {
    if (c.tokens > n)
      throw_bad_input(where_of(c), "tokens", "a budget <= the compressed prefix (" + std::to_string(n) + " tokens)",
                      std::to_string(c.tokens));
    return c.tokens;
  }
  return std::clamp<std::int64_t>(std::llround(c.keep * static_cast<double>(n)), 1, n);
}

/// Per-layer budgets of PyramidKV: arithmetic from 2b - b/beta (layer 0) down to b/beta (last),
/// the top clipped at n (the bottom then rises to keep the mean), summing to layers x b exactly.
inline std::vector<std::int64_t> pyramid_budgets(std::int64_t b, std::int64_t n, int layers, double beta) {
  std::vector<std::int64_t> out(static_cast<std::size_t>(layers), b);
  if (layers <= 1) return out;
  double mn = static_cast<double>(b) / beta, mx = 2.0 * static_cast<double>(b) - mn;
  if (mx > static_cast<double>(n)) {
    mx = static_cast<double>(n);
    mn = 2.0 * static_cast<double>(b) - mx;
  }
  const double step = (mx - mn) / static_cast<double>(layers - 1);
  std::int64_t sum = 0;
  for (int l = 0; l < layers; ++l) {
    out[static_cast<std::size_t>(l)] = std::clamp<std::int64_t>(std::llround(mx - l * step), 1, n);
    sum += out[static_cast<std::size_t>(l)];
  }
  std::int64_t diff = static_cast<std::int64_t>(layers) * b - sum;
  for (int pass = 0; diff != 0 && pass < 2 * layers + 2; ++pass)
    for (int l = 0; l < layers && diff != 0; ++l) {
      auto& x = out[static_cast<std::size_t>(diff > 0 ? l : layers - 1 - l)];
      if (diff > 0 && x < n) ++x, --diff;
      else if (diff < 0 && x > 1) --x, ++diff;
    }
  return out;
}

/// Deterministic uniform value in [0, 1) of (seed, layer, head, token) (splitmix64 finaliser).
inline double hash_uniform(std::uint64_t seed, std::uint64_t l, std::uint64_t h, std::uint64_t t) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull ^ (l << 48) ^ (h << 32) ^ t;
  for (int r = 0; r < 2; ++r) x = splitmix64_next(x);
  return static_cast<double>(x >> 11) * 0x1.0p-53;
}

// ---- row kernels: scalar references (core/drop_score.hpp) and bit-identical AVX2 paths ----

#if KVCODEC_X86_DISPATCH
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
#endif

#if KVCODEC_X86_DISPATCH
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
#endif

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

/// Scratch of the window-attention GEMM: stacked queries, a block of scores, column sums, packed keys.
struct attn_scratch {
  std::vector<float> q, s, col, kp;
};

#if KVCODEC_X86_DISPATCH
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
#endif

/// acc[j] += sum over the query heads of kv head g and the queries i in [qb, qe) of
/// softmax_j(q_i . k_j / sqrt(d)) over j <= i. Q K^T is computed over blocks of at most 256 stacked
/// query rows (so the score block is at most 256 x qe floats): with AVX2 by a 6 x 16 FMA register
/// tile over keys packed once per head into 16-key panels (O(qe x d) floats), otherwise by an Eigen
/// f32 GEMM. Each row's softmax is exact on the block (max, exp, sum). A row with a NaN or an
/// infinite maximum adds nothing.
inline void attention_colsum(const kv_cache& kv, int l, int g, std::int64_t qb, std::int64_t qe, double* acc, attn_scratch& sc) {
  using rmat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using arr = Eigen::Array<float, Eigen::Dynamic, 1>;
  const std::int64_t T = kv.shape.tokens, D = kv.shape.head_dim;
  const int group = kv.shape.q_heads / kv.shape.kv_heads;
  const float* K = kv.keys[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(g) * static_cast<std::size_t>(T * D);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  const std::int64_t R = std::max<std::int64_t>(1, 256 / group);
#if KVCODEC_X86_DISPATCH
  const bool fast = simd::avx2();
  if (fast) pack_keys16(K, qe, static_cast<std::size_t>(D), sc.kp);
#else
  const bool fast = false;
#endif
  for (std::int64_t r0 = qb; r0 < qe; r0 += R) {
    const std::int64_t rows = std::min(R, qe - r0), kmax = r0 + rows, M = group * rows;
    const std::int64_t ld = fast ? (kmax + 15) / 16 * 16 : kmax;
    sc.q.resize(static_cast<std::size_t>(M * D));
    for (int h = 0; h < group; ++h) {
      const float* Q = kv.queries[static_cast<std::size_t>(l)].data() +
                       static_cast<std::size_t>(g * group + h) * static_cast<std::size_t>(T * D) + static_cast<std::size_t>(r0 * D);
      std::copy_n(Q, static_cast<std::size_t>(rows * D), sc.q.data() + static_cast<std::size_t>(h * rows * D));
    }
    sc.s.resize(static_cast<std::size_t>(M * ld));
    sc.col.assign(static_cast<std::size_t>(kmax), 0.0f);
#if KVCODEC_X86_DISPATCH
    if (fast) qk_block_avx2(sc.q.data(), M, rows, r0, static_cast<std::size_t>(D), sc.kp.data(), sc.s.data(), static_cast<std::size_t>(ld));
#endif
    if (!fast) {
      Eigen::Map<rmat> S(sc.s.data(), M, kmax);
      S.noalias() = Eigen::Map<const rmat>(sc.q.data(), M, D) * Eigen::Map<const rmat>(K, kmax, D).transpose();
    }
    for (std::int64_t r = 0; r < M; ++r) {
      const std::int64_t lim = r0 + r % rows + 1;
#if KVCODEC_X86_DISPATCH
      if (fast) {
        softmax_col_avx2(sc.s.data() + static_cast<std::size_t>(r * ld), lim, scale, sc.col.data());
        continue;
      }
#endif
      Eigen::Map<arr> row(sc.s.data() + static_cast<std::size_t>(r * ld), lim);
      const float m = row.maxCoeff();
      row = ((row - m) * scale).exp();
      const float z = row.sum();
      if (!std::isfinite(z) || !(z > 0.0f)) continue;
      Eigen::Map<arr>(sc.col.data(), lim) += row * (1.0f / z);
    }
    for (std::int64_t j = 0; j < kmax; ++j) acc[j] += static_cast<double>(sc.col[static_cast<std::size_t>(j)]);
  }
}

/// Scores of one layer: s[h * n + j] for kv head h and token j < n (higher = keep), and the
/// protected tokens in priority order (shared by every head).
struct layer_scores {
  std::vector<double> s;
  std::vector<std::int32_t> prot;
};

inline void protect_recent(std::vector<std::int32_t>& prot, std::int64_t n, std::int64_t count, std::int64_t floor_index = 0) {
  for (std::int64_t t = n - 1; t >= floor_index && count > 0; --t, --count) prot.push_back(static_cast<std::int32_t>(t));
}

inline void check_window(const drop::config& c, std::int64_t w, std::int64_t n) {
  if (w > n)
    throw_bad_input(where_of(c), "window", "a window <= the compressed prefix (" + std::to_string(n) + " tokens)",
                    std::to_string(w));
}

/// RoPE tables of expected-attention, the same for every layer: the average rotation over the
/// `future` positions after the prefix (cbar, sbar; D/2 each) and cos/sin of every window query's
/// own angles (qc, qs; window x D/2), so un-rotating a query costs no transcendental calls.
struct expected_prep {
  std::vector<double> cbar, sbar, qc, qs;
};

inline expected_prep prepare_expected(const kv_cache& kv, const drop::config& c, std::int64_t n, const std::optional<rope_meta>& rope) {
  const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim), half = D / 2;
  expected_prep ep;
  ep.cbar.assign(half, 1.0);
  ep.sbar.assign(half, 0.0);
  if (!rope) return ep;
  const std::int64_t p0 = position_of(kv, n - 1) + 1;
  for (std::size_t i = 0; i < half; ++i) {
    double cs = 0, sn = 0;
    for (std::int64_t p = p0; p < p0 + c.future; ++p) {
      const double a = rope_angle(p, i, D, rope->theta);
      cs += std::cos(a);
      sn += std::sin(a);
    }
    ep.cbar[i] = cs / static_cast<double>(c.future);
    ep.sbar[i] = sn / static_cast<double>(c.future);
  }
  const std::int64_t w = std::min(c.window, n);
  ep.qc.resize(static_cast<std::size_t>(w) * half);
  ep.qs.resize(static_cast<std::size_t>(w) * half);
  for (std::int64_t i = 0; i < w; ++i)
    for (std::size_t k = 0; k < half; ++k) {
      const double a = -1.0 * rope_angle(position_of(kv, n - w + i), k, D, rope->theta);
      ep.qc[static_cast<std::size_t>(i) * half + k] = std::cos(a);
      ep.qs[static_cast<std::size_t>(i) * half + k] = std::sin(a);
    }
  return ep;
}

/// rope_undo with precomputed cos/sin (same arithmetic, so the same floats).
inline void rope_undo_table(float* x, std::size_t D, const double* cs, const double* sn, rope_style style) {
  const std::size_t half = D / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const std::size_t i0 = style == rope_style::interleaved_pairs ? 2 * i : i;
    const std::size_t i1 = style == rope_style::interleaved_pairs ? 2 * i + 1 : i + half;
    const double x0 = x[i0], x1 = x[i1], c = cs[i], s = sn[i];
    x[i0] = static_cast<float>(x0 * c - x1 * s);
    x[i1] = static_cast<float>(x0 * s + x1 * c);
  }
}

/// Expected attention (kvpress ExpectedAttentionPress), on post-RoPE queries: the last `window`
/// queries are un-rotated at their own positions, their mean (and with `cov` their covariance)
/// taken, then moved by the average RoPE rotation over the `future` positions after the prefix.
/// The mean logits of a GQA group come from one pass over its keys (dot_rows).
inline void score_expected(const kv_cache& kv, const drop::config& c, int l, std::int64_t n, layer_scores& out,
                           const std::optional<rope_meta>& rope, const expected_prep& ep) {
  const int H = kv.shape.kv_heads, HQ = kv.shape.q_heads, group = HQ / H;
  const std::int64_t T = kv.shape.tokens;
  const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim);
  const std::int64_t w = c.window, sink = std::min(c.sink, n);
  const std::size_t m = static_cast<std::size_t>(n - sink);
  check_window(c, w, n);
  const double* cbar = ep.cbar.data();
  const double* sbar = ep.sbar.data();
  std::vector<double> mus(static_cast<std::size_t>(group) * D), cov(c.cov ? D * D : 0), logit(static_cast<std::size_t>(group) * m);
  std::vector<double> vv(c.vnorm ? m : 0);
  std::vector<float> q(D), musf(mus.size());
  const double inv = 1.0 / static_cast<double>(w), rd = std::sqrt(static_cast<double>(D));
  for (int g = 0; g < H; ++g) {
    const float* K = kv.keys[static_cast<std::size_t>(l)].data() + (static_cast<std::size_t>(g) * static_cast<std::size_t>(T) + static_cast<std::size_t>(sink)) * D;
    double* s = out.s.data() + static_cast<std::size_t>(g) * static_cast<std::size_t>(n) + static_cast<std::size_t>(sink);
    for (int h = 0; h < group; ++h) {
      const int hq = g * group + h;
      const float* Q = kv.queries[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(hq) * static_cast<std::size_t>(T) * D;
      double* mu = mus.data() + static_cast<std::size_t>(h) * D;
      std::fill(mu, mu + D, 0.0);
      std::fill(cov.begin(), cov.end(), 0.0);
      for (std::int64_t i = n - w; i < n; ++i) {
        std::copy_n(Q + static_cast<std::size_t>(i) * D, D, q.begin());
        if (rope) rope_undo_table(q.data(), D, ep.qc.data() + static_cast<std::size_t>(i - (n - w)) * (D / 2), ep.qs.data() + static_cast<std::size_t>(i - (n - w)) * (D / 2), rope->style);
        for (std::size_t a = 0; a < D; ++a) mu[a] += q[a];
        if (c.cov)
          for (std::size_t a = 0; a < D; ++a)
            for (std::size_t b = 0; b < D; ++b) cov[a * D + b] += static_cast<double>(q[a]) * q[b];
      }
      for (std::size_t a = 0; a < D; ++a) mu[a] *= inv;
      if (c.cov)
        for (std::size_t a = 0; a < D; ++a)
          for (std::size_t b = 0; b < D; ++b) cov[a * D + b] = cov[a * D + b] * inv - mu[a] * mu[b];
      if (rope) {
        drop_block_rotate(mu, D, 1, cbar, sbar, rope->style);
        if (c.cov) {
          for (std::size_t col = 0; col < D; ++col) drop_block_rotate(cov.data() + col, D, D, cbar, sbar, rope->style);
          for (std::size_t r = 0; r < D; ++r) drop_block_rotate(cov.data() + r * D, D, 1, cbar, sbar, rope->style);
        }
      }
      if (c.cov)
        for (std::size_t j = 0; j < m; ++j)
          logit[static_cast<std::size_t>(h) * m + j] = drop_expected_logit(K + j * D, mu, cov.data(), D);
    }
    if (!c.cov) {
      for (std::size_t i = 0; i < mus.size(); ++i) musf[i] = static_cast<float>(mus[i]);
      dot_rows(K, m, D, musf.data(), group, logit.data(), m);
      const double ird = 1.0 / rd;
      for (auto& x : logit) x *= ird;
    }
    for (int h = 0; h < group; ++h) softmax_add(logit.data() + static_cast<std::size_t>(h) * m, m, 1.0 / group, s);
    if (c.vnorm) {
      const float* V = kv.values[static_cast<std::size_t>(l)].data() + (static_cast<std::size_t>(g) * static_cast<std::size_t>(T) + static_cast<std::size_t>(sink)) * D;
      sumsq_rows(V, m, D, vv.data());
      for (std::size_t j = 0; j < m; ++j) s[j] *= std::sqrt(vv[j]);
    }
  }
  for (std::int64_t t = 0; t < sink; ++t) out.prot.push_back(static_cast<std::int32_t>(t));
}

/// Scores of layer l with method m for budget b (b only shapes h2o's recent share).
inline void score_layer(const kv_cache& kv, const drop::config& c, method m, int l, std::int64_t n, std::int64_t b,
                        const std::optional<rope_meta>& rope, const expected_prep* ep, layer_scores& out) {
  const int H = kv.shape.kv_heads;
  const std::int64_t T = kv.shape.tokens;
  const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim), N = static_cast<std::size_t>(n);
  out.s.assign(static_cast<std::size_t>(H) * N, 0.0);
  out.prot.clear();
  const auto key_row = [&](int g, std::int64_t j) {
    return kv.keys[static_cast<std::size_t>(l)].data() + (static_cast<std::size_t>(g) * static_cast<std::size_t>(T) + static_cast<std::size_t>(j)) * D;
  };
  switch (m) {
    case method::random:
      for (int g = 0; g < H; ++g)
        for (std::int64_t j = 0; j < n; ++j)
          out.s[static_cast<std::size_t>(g) * N + static_cast<std::size_t>(j)] =
              hash_uniform(static_cast<std::uint64_t>(c.seed), static_cast<std::uint64_t>(l), static_cast<std::uint64_t>(g), static_cast<std::uint64_t>(j));
      break;
    case method::streamingllm:
      for (std::int64_t t = 0; t < std::min(c.sink, n); ++t) out.prot.push_back(static_cast<std::int32_t>(t));
      protect_recent(out.prot, n, n, std::min(c.sink, n));
      break;
    case method::knorm:
      for (int g = 0; g < H; ++g) {
        double* s = out.s.data() + static_cast<std::size_t>(g) * N;
        sumsq_rows(key_row(g, 0), N, D, s);
        neg_sqrt_rows(s, N);
      }
      break;
    case method::keydiff: {
      std::vector<float> anchor(D);
      std::vector<double> xy(N);
      for (int g = 0; g < H; ++g) {
        double* s = out.s.data() + static_cast<std::size_t>(g) * N;
        std::fill(anchor.begin(), anchor.end(), 0.0f);
        norm_anchor_rows(key_row(g, 0), N, D, s, anchor.data());
        double yy = 0.0;
        for (auto& x : anchor) {
          x /= static_cast<float>(n);
          yy += static_cast<double>(x) * x;
        }
        dot_rows(key_row(g, 0), N, D, anchor.data(), 1, xy.data(), N);
        cosine_scores(s, xy.data(), yy, N);
      }
      break;
    }
    case method::h2o: {
      const std::int64_t w = c.window == 0 ? n : c.window;
      check_window(c, w, n);
      const std::int64_t qb = n - w;
      const int group = kv.shape.q_heads / H;
      std::vector<double> acc(N);
      attn_scratch sc;
      for (int g = 0; g < H; ++g) {
        std::fill(acc.begin(), acc.end(), 0.0);
        attention_colsum(kv, l, g, qb, n, acc.data(), sc);
        double* s = out.s.data() + static_cast<std::size_t>(g) * N;
        for (std::int64_t j = 0; j < n; ++j) s[j] = acc[static_cast<std::size_t>(j)] / static_cast<double>(n - std::max(j, qb)) / group;
      }
      protect_recent(out.prot, n, std::llround(c.recent * static_cast<double>(b)));
      break;
    }
    case method::snapkv:
    case method::pyramidkv: {
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
      break;
    }
    case method::tova: {
      const int HQ = kv.shape.q_heads, group = HQ / H;
      const double scale = 1.0 / std::sqrt(static_cast<double>(D));
      std::vector<double> acc(N, 0.0), logit(static_cast<std::size_t>(group) * N);
      std::vector<float> qd(static_cast<std::size_t>(group) * D);
      for (int g = 0; g < H; ++g) {
        for (int h = 0; h < group; ++h) {
          const float* q = kv.queries[static_cast<std::size_t>(l)].data() +
                           (static_cast<std::size_t>(g * group + h) * static_cast<std::size_t>(T) + static_cast<std::size_t>(n - 1)) * D;
          std::copy_n(q, D, qd.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(h) * D));
        }
        dot_rows(key_row(g, 0), N, D, qd.data(), group, logit.data(), N);
        for (auto& x : logit) x *= scale;
        for (int h = 0; h < group; ++h) softmax_add(logit.data() + static_cast<std::size_t>(h) * N, N, 1.0, acc.data());
      }
      for (int g = 0; g < H; ++g)
        for (std::size_t j = 0; j < N; ++j) out.s[static_cast<std::size_t>(g) * N + j] = acc[j] / HQ;
      out.prot.push_back(static_cast<std::int32_t>(n - 1));
      break;
    }
    case method::expected_attention: score_expected(kv, c, l, n, out, rope, *ep); break;
    case method::adakv: break;
  }
}

/// Ranking key: higher score first, NaN last, then lower index.
struct rank_less {
  const double* s;
  static double key(double v) { return std::isnan(v) ? -HUGE_VAL : v; }
  bool operator()(std::int32_t a, std::int32_t b) const {
    const double x = key(s[a]), y = key(s[b]);
    return x != y ? x > y : a < b;
  }
};

/// A candidate token with its ranking key (NaN mapped to -inf).
struct ranked {
  double v;
  std::int32_t t;
};
inline bool ranked_before(const ranked& a, const ranked& b) { return a.v != b.v ? a.v > b.v : a.t < b.t; }

/// Per-layer scratch of the selection, reused across heads.
struct pick_scratch {
  std::vector<std::uint8_t> mark;
  std::vector<std::uint64_t> code, cand;
};

/// Order-preserving integer code of a ranking key (rank_less::key; -0 is coded as +0, so equal keys
/// have equal codes and a larger key a larger code).
inline std::uint64_t rank_code(double v) {
  std::uint64_t b = 0;
  if (v != 0.0) std::memcpy(&b, &v, sizeof b);
  return (b >> 63) ? ~b : b | (std::uint64_t{1} << 63);
}

/// The k-th largest (1 <= k <= n) of a[0, n) (reordered): radix select on bytes from the top while
/// more than 64 candidates remain, then nth_element.
inline std::uint64_t kth_largest(std::uint64_t* a, std::size_t n, std::size_t k) {
  for (int shift = 56; n > 64 && shift >= 0; shift -= 8) {
    std::uint32_t h[256] = {};
    for (std::size_t i = 0; i < n; ++i) ++h[(a[i] >> shift) & 255];
    int bk = 255;
    for (; bk > 0 && h[bk] < k; --bk) k -= h[bk];
    std::size_t m = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (static_cast<int>((a[i] >> shift) & 255) == bk) a[m++] = a[i];
    n = m;
  }
  std::nth_element(a, a + (k - 1), a + n, [](std::uint64_t x, std::uint64_t y) { return x > y; });
  return a[k - 1];
}

/// Marks (mark[t] = 1) the first min(b, |prot|) distinct protected tokens and returns how many;
/// every protected token gets mark 2 or 1 (2: protected but beyond the budget).
inline std::int64_t mark_protected(const std::vector<std::int32_t>& prot, std::int64_t b, std::vector<std::uint8_t>& mark) {
  std::int64_t taken = 0;
  for (auto t : prot) {
    auto& x = mark[static_cast<std::size_t>(t)];
    if (x) continue;
    x = taken < b ? 1 : 2;
    taken += taken < b ? 1 : 0;
  }
  return taken;
}

/// Tokens of one head (appended to `out` in increasing order): the first min(b, |prot|) protected,
/// then the best-scored others up to b. The k-th best key is found by a radix select over the keys'
/// order-preserving codes; then every key above it is taken and, of the keys equal to it, the lowest
/// indices (the order of ranked_before).
inline void pick_head(const double* s, std::int64_t n, const std::vector<std::int32_t>& prot, std::int64_t b,
                      std::vector<std::int32_t>& out, pick_scratch& ps) {
  ps.mark.assign(static_cast<std::size_t>(n), 0);
  const std::int64_t rest = b - mark_protected(prot, b, ps.mark);
  if (rest > 0) {
    ps.code.resize(static_cast<std::size_t>(n));
    ps.cand.clear();
    for (std::int64_t j = 0; j < n; ++j)
      if (!ps.mark[static_cast<std::size_t>(j)]) {
        const std::uint64_t c = rank_code(rank_less::key(s[j]));
        ps.code[static_cast<std::size_t>(j)] = c;
        ps.cand.push_back(c);
      }
    const auto k = std::min<std::size_t>(static_cast<std::size_t>(rest), ps.cand.size());
    if (k == ps.cand.size()) {
      for (auto& x : ps.mark) x = x == 0 ? 1 : x;
    } else {
      std::size_t gt = 0;
      const std::uint64_t thr = kth_largest(ps.cand.data(), ps.cand.size(), k);
      for (std::int64_t j = 0; j < n; ++j)
        gt += !ps.mark[static_cast<std::size_t>(j)] && ps.code[static_cast<std::size_t>(j)] > thr ? 1 : 0;
      std::size_t eq = k - gt;
      for (std::int64_t j = 0; j < n; ++j) {
        auto& x = ps.mark[static_cast<std::size_t>(j)];
        if (x) continue;
        const std::uint64_t c = ps.code[static_cast<std::size_t>(j)];
        if (c > thr) x = 1;
        else if (c == thr && eq > 0) x = 1, --eq;
      }
    }
  }
  for (std::int64_t j = 0; j < n; ++j)
    if (ps.mark[static_cast<std::size_t>(j)] == 1) out.push_back(static_cast<std::int32_t>(j));
}

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

}  // namespace drop_detail


/// Kept sets of `kv` under drop configuration `c` (see the header comment). Throws bad_input for a
/// cache without the queries a method needs, a prefix, budget or window larger than the cache, or a
/// cache that is already token-dropped.
inline kept_sets drop_select(const kv_cache& kv, const drop::config& c, int threads = 0) {
  using namespace drop_detail;
  const std::string where = where_of(c);
  kv.validate(where + " input");
  if (!kv.kept.empty()) throw_bad_input(where, "kept", "a dense cache (no kept sets)", "a cache that is already token-dropped");
  if (needs_queries(c) && (!kv.has_queries() || kv.shape.q_heads <= 0))
    throw_bad_input(where, "queries",
                    "query tensors in the kv cache (q_heads > 0, e.g. a dump with queries.{layer}); " + c.name +
                        (c.m == method::adakv ? " with this scorer" : "") +
                        " needs them; methods that work without queries: random, streamingllm, knorm, keydiff",
                    "none");
  const std::int64_t T = kv.shape.tokens;
  if (c.obs_end > T)
    throw_bad_input(where, "obs_end", "a prefix end <= the cache's " + std::to_string(T) + " tokens", std::to_string(c.obs_end));
  const std::int64_t n = c.obs_end < 0 ? T : c.obs_end;
  const std::int64_t b = budget_of(c, n);
  const int L = kv.shape.layers, H = kv.shape.kv_heads;
  const std::vector<std::int64_t> budgets =
      c.m == method::pyramidkv ? pyramid_budgets(b, n, L, c.beta) : std::vector<std::int64_t>(static_cast<std::size_t>(L), b);
  const method m = c.m == method::adakv ? c.scorer : c.m;
  const std::optional<rope_meta> rope = m == method::expected_attention ? rope_of(kv, where) : std::nullopt;
  if (m == method::snapkv || m == method::pyramidkv || m == method::expected_attention) check_window(c, c.window, n);
  if (m == method::h2o && c.window > 0) check_window(c, c.window, n);

  const expected_prep ep = m == method::expected_attention ? prepare_expected(kv, c, n, rope) : expected_prep{};
  kept_sets out(static_cast<std::size_t>(L), std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(H)));
  const int nt = threads > 0 ? threads : par.threads();
  struct layer_work {
    layer_scores ls;
    pick_scratch ps;
  };
  std::vector<std::unique_ptr<layer_work>> pool;  // scratch reused across layers (no per-layer heap churn)
  std::mutex pool_m;
  parallel_for(nt, static_cast<std::size_t>(L), [&](std::size_t li) {
    const int l = static_cast<int>(li);
    const std::int64_t bl = budgets[li];
    std::unique_ptr<layer_work> w;
    {
      const std::lock_guard<std::mutex> lk(pool_m);
      if (!pool.empty()) w = std::move(pool.back()), pool.pop_back();
    }
    if (!w) w = std::make_unique<layer_work>();
    layer_scores& ls = w->ls;
    score_layer(kv, c, m, l, n, bl, rope, &ep, ls);
    if (c.m == method::adakv) {
      out[li] = pick_adakv(ls, H, n, bl, c.alpha);
    } else {
      pick_scratch& ps = w->ps;
      for (int h = 0; h < H; ++h) {
        auto& kh = out[li][static_cast<std::size_t>(h)];
        kh.reserve(static_cast<std::size_t>(bl + T - n));
        pick_head(ls.s.data() + static_cast<std::size_t>(h) * static_cast<std::size_t>(n), n, ls.prot, bl, kh, ps);
      }
    }
    for (auto& kh : out[li])
      for (std::int64_t t = n; t < T; ++t) kh.push_back(static_cast<std::int32_t>(t));
    const std::lock_guard<std::mutex> lk(pool_m);
    pool.push_back(std::move(w));
  });
  return out;
}

}  // namespace kvcodec::cpu
