// kvcodec/cpu/drop_select.hpp — CPU scorers and kept-set selection of the token-dropping stages.
//
// Every method scores the keys of the compressed prefix [0, n) (n = obs_end, or all tokens) per
// (layer, kv head), names the tokens it protects in priority order (sinks, observation window, most
// recent), and keeps the protected tokens first and then the highest scores, up to the budget
// (ties: lower index first; a NaN score ranks last; partial selection with nth_element). Tokens at
// or after n are always kept. adakv replaces the per-head top-k by a pooled top-k over the heads of
// a layer (Ada-KV). Memory-bound scorers (knorm, keydiff, tova, expected-attention) read each key
// once or twice with double-lane kernels (core/drop_score.hpp) that have bit-identical AVX2 paths
// chosen at run time (core/simd.hpp; KVCODEC_NO_SIMD=1 forces the scalar path). Window attention
// (snapkv, pyramidkv, h2o) stacks the queries of a GQA group and computes Q K^T with an Eigen f32
// GEMM over blocks of at most 256 query rows, with an exact softmax per row on the block, so memory
// is O(256 x tokens) per layer, never O(tokens^2). Layers are scored in parallel; the result does
// not depend on the thread count. Sources: kvpress presses (SnapKV, TOVA, ObservedAttention,
// ExpectedAttention, KNorm, KeyDiff, PyramidKV, AdaKV, Random), and the papers in
// stage/drop_attention.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
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
KVCODEC_TARGET_AVX2 inline double lane_finish_avx2(__m256d a0, __m256d a1, const float* x, const double* y, std::size_t d8,
                                                   std::size_t D) {
  if (d8 == D) {
    const __m256d t = _mm256_add_pd(a0, a1);
    const __m128d u = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    return _mm_cvtsd_f64(_mm_add_sd(u, _mm_unpackhi_pd(u, u)));
  }
  alignas(32) double L[8];
  _mm256_store_pd(L, a0);
  _mm256_store_pd(L + 4, a1);
  for (std::size_t a = d8; a < D; ++a)
    L[a - d8] = std::fma(static_cast<double>(x[a]), y ? y[a] : static_cast<double>(x[a]), L[a - d8]);
  return drop_lane_sum(L);
}

KVCODEC_TARGET_AVX2 inline void sumsq_rows_avx2(const float* X, std::size_t rows, std::size_t D, double* out) {
  const std::size_t d8 = D & ~std::size_t{7};
  for (std::size_t r = 0; r < rows; ++r) {
    const float* x = X + r * D;
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    for (std::size_t c = 0; c < d8; c += 8) {
      const __m256 v = _mm256_loadu_ps(x + c);
      const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
      a0 = _mm256_fmadd_pd(lo, lo, a0);
      a1 = _mm256_fmadd_pd(hi, hi, a1);
    }
    out[r] = lane_finish_avx2(a0, a1, x, nullptr, d8, D);
  }
}

/// out[q * ostride + r] = drop_dot8(X + r D, Y + q D, D) for q < m, r < rows.
KVCODEC_TARGET_AVX2 inline void dot_rows_avx2(const float* X, std::size_t rows, std::size_t D, const double* Y, int m, double* out,
                                              std::size_t ostride) {
  const std::size_t d8 = D & ~std::size_t{7};
  for (int q0 = 0; q0 < m; q0 += 4) {
    const int mq = std::min(4, m - q0);
    for (std::size_t r = 0; r < rows; ++r) {
      const float* x = X + r * D;
      __m256d a[4][2];
      for (int i = 0; i < 4; ++i) a[i][0] = a[i][1] = _mm256_setzero_pd();
      if (mq == 4) {
        for (std::size_t c = 0; c < d8; c += 8) {
          const __m256 v = _mm256_loadu_ps(x + c);
          const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
          for (int i = 0; i < 4; ++i) {
            const double* y = Y + static_cast<std::size_t>(q0 + i) * D + c;
            a[i][0] = _mm256_fmadd_pd(lo, _mm256_loadu_pd(y), a[i][0]);
            a[i][1] = _mm256_fmadd_pd(hi, _mm256_loadu_pd(y + 4), a[i][1]);
          }
        }
      } else {
        for (std::size_t c = 0; c < d8; c += 8) {
          const __m256 v = _mm256_loadu_ps(x + c);
          const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
          for (int i = 0; i < mq; ++i) {
            const double* y = Y + static_cast<std::size_t>(q0 + i) * D + c;
            a[i][0] = _mm256_fmadd_pd(lo, _mm256_loadu_pd(y), a[i][0]);
            a[i][1] = _mm256_fmadd_pd(hi, _mm256_loadu_pd(y + 4), a[i][1]);
          }
        }
      }
      for (int i = 0; i < mq; ++i)
        out[static_cast<std::size_t>(q0 + i) * ostride + r] = lane_finish_avx2(a[i][0], a[i][1], x, Y + static_cast<std::size_t>(q0 + i) * D, d8, D);
    }
  }
}

KVCODEC_TARGET_AVX2 inline void axpy_avx2(double* y, const float* x, double c, std::size_t n) {
  const __m256d vc = _mm256_set1_pd(c);
  const std::size_t n4 = n & ~std::size_t{3};
  for (std::size_t a = 0; a < n4; a += 4)
    _mm256_storeu_pd(y + a, _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + a)), vc, _mm256_loadu_pd(y + a)));
  for (std::size_t a = n4; a < n; ++a) y[a] = std::fma(static_cast<double>(x[a]), c, y[a]);
}

/// out[r] = drop_sumsq8(row r) and, in row order, anchor += row r / sqrt(out[r]) where out[r] > 0.
KVCODEC_TARGET_AVX2 inline void norm_anchor_rows_avx2(const float* X, std::size_t rows, std::size_t D, double* out, double* anchor) {
  for (std::size_t r = 0; r < rows; ++r) {
    sumsq_rows_avx2(X + r * D, 1, D, out + r);
    if (out[r] > 0) axpy_avx2(anchor, X + r * D, 1.0 / std::sqrt(out[r]), D);
  }
}

/// x[i] = drop_exp(x[i]) for i < n.
KVCODEC_TARGET_AVX2 inline void exp_avx2(double* x, std::size_t n) {
  std::size_t i = 0;
  const __m256d lo = _mm256_set1_pd(-708.0), hi = _mm256_set1_pd(709.0);
  for (; i + 4 <= n; i += 4) {
    const __m256d x0 = _mm256_loadu_pd(x + i);
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
    res = _mm256_blendv_pd(res, x0, _mm256_cmp_pd(x0, x0, _CMP_UNORD_Q));
    _mm256_storeu_pd(x + i, res);
  }
  for (; i < n; ++i) x[i] = drop_exp(x[i]);
}
#endif

/// out[r] = drop_sumsq8(X + r D, D) for r < rows.
inline void sumsq_rows(const float* X, std::size_t rows, std::size_t D, double* out) {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return sumsq_rows_avx2(X, rows, D, out);
#endif
  for (std::size_t r = 0; r < rows; ++r) out[r] = drop_sumsq8(X + r * D, D);
}

/// out[q * ostride + r] = drop_dot8(X + r D, Y + q D, D) for q < m, r < rows.
inline void dot_rows(const float* X, std::size_t rows, std::size_t D, const double* Y, int m, double* out, std::size_t ostride) {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return dot_rows_avx2(X, rows, D, Y, m, out, ostride);
#endif
  for (int q = 0; q < m; ++q)
    for (std::size_t r = 0; r < rows; ++r) out[static_cast<std::size_t>(q) * ostride + r] = drop_dot8(X + r * D, Y + static_cast<std::size_t>(q) * D, D);
}

/// out[r] = drop_sumsq8(row r) and, in row order, anchor += row r / sqrt(out[r]) where out[r] > 0.
inline void norm_anchor_rows(const float* X, std::size_t rows, std::size_t D, double* out, double* anchor) {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return norm_anchor_rows_avx2(X, rows, D, out, anchor);
#endif
  for (std::size_t r = 0; r < rows; ++r) {
    out[r] = drop_sumsq8(X + r * D, D);
    if (out[r] > 0) drop_axpy(anchor, X + r * D, 1.0 / std::sqrt(out[r]), D);
  }
}

inline void exp_rows(double* x, std::size_t n) {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return exp_avx2(x, n);
#endif
  for (std::size_t i = 0; i < n; ++i) x[i] = drop_exp(x[i]);
}

/// acc[j] += w * softmax_j(l) over j < n; l is overwritten. A row with a NaN, or whose maximum is
/// infinite, adds nothing.
inline void softmax_add(double* l, std::size_t n, double w, double* acc) {
  double m = -HUGE_VAL;
  bool nan = false;
  for (std::size_t j = 0; j < n; ++j) {
    m = l[j] > m ? l[j] : m;
    nan |= l[j] != l[j];
  }
  if (nan || !std::isfinite(m)) return;
  for (std::size_t j = 0; j < n; ++j) l[j] -= m;
  exp_rows(l, n);
  double z = 0.0;
  for (std::size_t j = 0; j < n; ++j) z += l[j];
  const double c = w / z;
  for (std::size_t j = 0; j < n; ++j) acc[j] += l[j] * c;
}

/// Scratch of the window-attention GEMM: stacked queries, a block of scores, column sums.
struct attn_scratch {
  std::vector<float> q, s, col;
};

/// acc[j] += sum over the query heads of kv head g and the queries i in [qb, qe) of
/// softmax_j(q_i . k_j / sqrt(d)) over j <= i. Q K^T is an Eigen f32 GEMM over blocks of at most 256
/// stacked query rows (so the score block is at most 256 x qe floats); each row's softmax is exact
/// on the block (max, exp, sum). A row with a NaN or an infinite maximum adds nothing.
inline void attention_colsum(const kv_cache& kv, int l, int g, std::int64_t qb, std::int64_t qe, double* acc, attn_scratch& sc) {
  using rmat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using arr = Eigen::Array<float, Eigen::Dynamic, 1>;
  const std::int64_t T = kv.shape.tokens, D = kv.shape.head_dim;
  const int group = kv.shape.q_heads / kv.shape.kv_heads;
  const float* K = kv.keys[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(g) * static_cast<std::size_t>(T * D);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  const std::int64_t R = std::max<std::int64_t>(1, 256 / group);
  for (std::int64_t r0 = qb; r0 < qe; r0 += R) {
    const std::int64_t rows = std::min(R, qe - r0), kmax = r0 + rows, M = group * rows;
    sc.q.resize(static_cast<std::size_t>(M * D));
    for (int h = 0; h < group; ++h) {
      const float* Q = kv.queries[static_cast<std::size_t>(l)].data() +
                       static_cast<std::size_t>(g * group + h) * static_cast<std::size_t>(T * D) + static_cast<std::size_t>(r0 * D);
      std::copy_n(Q, static_cast<std::size_t>(rows * D), sc.q.data() + static_cast<std::size_t>(h * rows * D));
    }
    sc.s.resize(static_cast<std::size_t>(M * kmax));
    sc.col.assign(static_cast<std::size_t>(kmax), 0.0f);
    Eigen::Map<rmat> S(sc.s.data(), M, kmax);
    S.noalias() = Eigen::Map<const rmat>(sc.q.data(), M, D) * Eigen::Map<const rmat>(K, kmax, D).transpose();
    for (std::int64_t r = 0; r < M; ++r) {
      const std::int64_t lim = r0 + r % rows + 1;
      Eigen::Map<arr> row(sc.s.data() + static_cast<std::size_t>(r * kmax), lim);
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
  std::vector<float> q(D);
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
      dot_rows(K, m, D, mus.data(), group, logit.data(), m);
      for (auto& x : logit) x /= rd;
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
inline layer_scores score_layer(const kv_cache& kv, const drop::config& c, method m, int l, std::int64_t n, std::int64_t b,
                                const std::optional<rope_meta>& rope, const expected_prep* ep) {
  const int H = kv.shape.kv_heads;
  const std::int64_t T = kv.shape.tokens;
  const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim), N = static_cast<std::size_t>(n);
  layer_scores out;
  out.s.assign(static_cast<std::size_t>(H) * N, 0.0);
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
        for (std::size_t j = 0; j < N; ++j) s[j] = -std::sqrt(s[j]);
      }
      break;
    case method::keydiff: {
      std::vector<double> anchor(D), xy(N);
      for (int g = 0; g < H; ++g) {
        double* s = out.s.data() + static_cast<std::size_t>(g) * N;
        std::fill(anchor.begin(), anchor.end(), 0.0);
        norm_anchor_rows(key_row(g, 0), N, D, s, anchor.data());
        double yy = 0.0;
        for (auto& x : anchor) {
          x /= static_cast<double>(n);
          yy += x * x;
        }
        dot_rows(key_row(g, 0), N, D, anchor.data(), 1, xy.data(), N);
        for (std::size_t j = 0; j < N; ++j) s[j] = s[j] > 0.0 && yy > 0.0 ? -(xy[j] / std::sqrt(s[j] * yy)) : -0.0;
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
      std::vector<double> acc(N, 0.0), qd(static_cast<std::size_t>(group) * D), logit(static_cast<std::size_t>(group) * N);
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
  return out;
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
  std::vector<ranked> cand;
};

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
/// then the best-scored others up to b.
inline void pick_head(const double* s, std::int64_t n, const std::vector<std::int32_t>& prot, std::int64_t b,
                      std::vector<std::int32_t>& out, pick_scratch& ps) {
  ps.mark.assign(static_cast<std::size_t>(n), 0);
  const std::int64_t rest = b - mark_protected(prot, b, ps.mark);
  if (rest > 0) {
    ps.cand.clear();
    for (std::int64_t j = 0; j < n; ++j)
      if (!ps.mark[static_cast<std::size_t>(j)]) ps.cand.push_back(ranked{rank_less::key(s[j]), static_cast<std::int32_t>(j)});
    const auto k = std::min<std::size_t>(static_cast<std::size_t>(rest), ps.cand.size());
    if (k < ps.cand.size()) std::nth_element(ps.cand.begin(), ps.cand.begin() + static_cast<std::ptrdiff_t>(k), ps.cand.end(), ranked_before);
    for (std::size_t i = 0; i < k; ++i) ps.mark[static_cast<std::size_t>(ps.cand[i].t)] = 1;
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
  parallel_for(nt, static_cast<std::size_t>(L), [&](std::size_t li) {
    const int l = static_cast<int>(li);
    const std::int64_t bl = budgets[li];
    const layer_scores ls = score_layer(kv, c, m, l, n, bl, rope, &ep);
    if (c.m == method::adakv) {
      out[li] = pick_adakv(ls, H, n, bl, c.alpha);
    } else {
      pick_scratch ps;
      for (int h = 0; h < H; ++h) {
        auto& kh = out[li][static_cast<std::size_t>(h)];
        kh.reserve(static_cast<std::size_t>(bl + T - n));
        pick_head(ls.s.data() + static_cast<std::size_t>(h) * static_cast<std::size_t>(n), n, ls.prot, bl, kh, ps);
      }
    }
    for (auto& kh : out[li])
      for (std::int64_t t = n; t < T; ++t) kh.push_back(static_cast<std::int32_t>(t));
  });
  return out;
}

}  // namespace kvcodec::cpu
