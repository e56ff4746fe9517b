// kvcodec/cpu/entropy_model.hpp — static context models shared by the `rans` and `ac` coders:
// symbol-domain token prediction, column grouping (which columns share a table), table fitting and
// the serialisation of a model.
//
// Prediction (lossless, in the symbol domain, CacheGen's token locality): rows are split into
// groups of `group` rows; the first row of a group (the anchor) is coded as is, every other row as
// the centred modular residual r = (s - ref + floor(A/2)) mod A against ref = the anchor's symbol
// in the same column (`anchor`) or the previous row's (`prev`, one group = the whole plane). Anchor
// and residual rows form two sub-planes with their own models; groups decode independently.
// `linear` is per-channel linear prediction from the previous row (row 0 is the anchor): column c
// has a centre m_c (an integer symbol) and a coefficient k_c / 16 (k_c in 0..16, least squares on
// the centred symbols, clamped), ref = clamp(m_c + floor((k_c (s_prev - m_c) + 8) / 16), 0, A-1)
// in integer arithmetic; k = 16 is `prev`, k = 0 predicts the centre. Coefficients are serialised
// per column as varint m_c, u8 k_c (where: see the coder).
// Grouping: `pooled` (one table), `channel` (one per column), or a map of columns to k groups
// (columns ranked by the entropy of their histogram, split into k equal runs); `auto` picks the
// candidate with the fewest payload + table bits. Models: `hist` (normalised histogram, serialised
// by core/freq_table) or `geometric` (two-sided geometric around a centre, 4 bytes: centre x2 and
// ratio in Q16; the table is built with integer arithmetic only, so it is bit-identical everywhere).
// Serialised model: u8 grouping (0 pooled, 1 channel, 2 map), [map: varint k, packed column ids],
// u8 model kind, then per group the table (hist) or centre2:u16, ratio:u16 (geometric).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "kvcodec/core/freq_table.hpp"
#include "kvcodec/core/pred.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/cpu/pack.hpp"
#include "kvcodec/format/bytes.hpp"

namespace kvcodec::cpu::em {

enum class pred_kind : std::uint8_t { none = 0, prev = 1, anchor = 2, linear = 3 };
enum class grouping : std::uint8_t { pooled = 0, channel = 1, map = 2 };
enum class model_kind : std::uint8_t { hist = 0, geometric = 1 };

inline pred_kind parse_pred(const std::string& s) {
  return s == "prev" ? pred_kind::prev : s == "anchor" ? pred_kind::anchor : s == "linear" ? pred_kind::linear : pred_kind::none;
}

/// How a coder chooses its models (from the stage parameters).
struct model_options {
  std::string ctx = "auto";    ///< pooled | channel | auto
  std::string model = "auto";  ///< hist | geometric | auto
  int prob_bits = 12;
  std::uint32_t max_channel_tables = 64;  ///< auto considers `channel` only up to this many columns
};

/// One (sub)plane's model: columns -> groups -> tables.
struct plane_model {
  grouping kind = grouping::pooled;
  model_kind model = model_kind::hist;
  std::uint32_t alphabet = 1, cols = 1, groups = 1;
  /// Table of each column; a model with one group may leave it empty (parse_model does: a pooled
  /// model's map would cost 4 bytes per column that no byte of the stream backs).
  std::vector<std::uint32_t> group_of_col;
  std::vector<freq_table> tables;
  std::vector<std::uint16_t> center2, ratio;  ///< geometric parameters per group
};

// ---- prediction -----------------------------------------------------------------------------

/// Row r is an anchor row under (pred, group).
inline bool is_anchor_row(pred_kind p, std::uint32_t group, std::uint32_t r) {
  if (p == pred_kind::none) return true;
  if (p == pred_kind::prev || p == pred_kind::linear) return r == 0;
  return r % group == 0;
}

using kvcodec::pred_residual;  // core/pred.hpp: shared with the batch decoders' restore step
using kvcodec::pred_restore;

/// Per-column linear predictors of one plane (pred=linear): centre[c], coef[c] in 0..16.
struct linear_coefs {
  std::vector<std::uint16_t> centre;
  std::vector<std::uint8_t> coef;
};

using kvcodec::linear_ref;  // ref = clamp(m + floor((k (prev - m) + 8) / 16), 0, A - 1) (core/pred.hpp)

/// Least-squares sums of (previous row, row) pairs per column, accumulated over planes.
struct linear_sums {
  std::vector<double> n, sx, sy, sxx, sxy;  ///< x = previous row's symbol, y = this row's
  void add(const symbol_plane& p) {
    const std::size_t C = p.cols;
    if (n.empty()) n.assign(C, 0), sx.assign(C, 0), sy.assign(C, 0), sxx.assign(C, 0), sxy.assign(C, 0);
    for (std::uint32_t r = 1; r < p.rows; ++r) {
      const std::uint16_t* row = p.sym.data() + static_cast<std::size_t>(r) * C;
      const std::uint16_t* prev = row - C;
      for (std::size_t c = 0; c < C; ++c) {
        const double x = prev[c], y = row[c];
        n[c] += 1, sx[c] += x, sy[c] += y, sxx[c] += x * x, sxy[c] += x * y;
      }
    }
  }
  /// The fitted predictors for `cols` columns of alphabet A (centre = rounded mean, coefficient =
  /// the slope clamped to [0, 1] in sixteenths; columns without pairs predict their centre).
  linear_coefs fit(std::uint32_t cols, std::uint32_t A) const {
    linear_coefs lc;
    lc.centre.assign(cols, static_cast<std::uint16_t>(A / 2));
    lc.coef.assign(cols, 0);
    for (std::size_t c = 0; c < cols && c < n.size(); ++c) {
      if (n[c] < 1) continue;
      const double mx = sx[c] / n[c], my = sy[c] / n[c];
      const double var = sxx[c] / n[c] - mx * mx, cov = sxy[c] / n[c] - mx * my;
      const double m = std::clamp(std::round(my), 0.0, static_cast<double>(A - 1));
      const double k = var > 1e-12 ? std::clamp(std::round(16.0 * cov / var), 0.0, 16.0) : 0.0;
      lc.centre[c] = static_cast<std::uint16_t>(m);
      lc.coef[c] = static_cast<std::uint8_t>(k);
    }
    return lc;
  }
};

inline void serialize_linear(const linear_coefs& lc, bytes& out) {
  byte_writer w(out);
  for (std::size_t c = 0; c < lc.centre.size(); ++c) {
    w.put_varint(lc.centre[c]);
    w.put<std::uint8_t>(lc.coef[c]);
  }
}

inline linear_coefs parse_linear(byte_reader& r, std::uint32_t cols, std::uint32_t A) {
  linear_coefs lc;
  lc.centre.resize(cols);
  lc.coef.resize(cols);
  for (std::uint32_t c = 0; c < cols; ++c) {
    lc.centre[c] = static_cast<std::uint16_t>(r.get_varint_max("linear predictor centre", A - 1));
    lc.coef[c] = r.get<std::uint8_t>("linear predictor coefficient");
    if (lc.coef[c] > 16) throw_corrupt(r.what(), "linear predictor coefficient " + std::to_string(lc.coef[c]) + " above 16");
  }
  return lc;
}

/// Splits a plane into anchor rows and residual rows (either may be empty); lc is required for
/// pred=linear and ignored otherwise.
inline void split_plane(const symbol_plane& p, pred_kind pk, std::uint32_t group, std::vector<std::uint16_t>& anchors,
                        std::vector<std::uint16_t>& resid, const linear_coefs* lc = nullptr) {
  anchors.clear();
  resid.clear();
  const std::uint32_t C = p.cols, A = p.alphabet;
  for (std::uint32_t r = 0; r < p.rows; ++r) {
    const std::uint16_t* row = p.sym.data() + static_cast<std::size_t>(r) * C;
    if (is_anchor_row(pk, group, r)) {
      anchors.insert(anchors.end(), row, row + C);
    } else if (pk == pred_kind::linear) {
      const std::uint16_t* ref = row - C;
      for (std::uint32_t c = 0; c < C; ++c) resid.push_back(pred_residual(row[c], linear_ref(ref[c], lc->centre[c], lc->coef[c], A), A));
    } else {
      const std::uint32_t rr = pk == pred_kind::prev ? r - 1 : r - r % group;
      const std::uint16_t* ref = p.sym.data() + static_cast<std::size_t>(rr) * C;
      for (std::uint32_t c = 0; c < C; ++c) resid.push_back(pred_residual(row[c], ref[c], A));
    }
  }
}

/// Inverse of split_plane into p.sym (p.rows, p.cols, p.alphabet set).
inline void merge_plane(symbol_plane& p, pred_kind pk, std::uint32_t group, const std::vector<std::uint16_t>& anchors,
                        const std::vector<std::uint16_t>& resid, const linear_coefs* lc = nullptr) {
  const std::uint32_t C = p.cols, A = p.alphabet;
  p.sym.resize(static_cast<std::size_t>(p.rows) * C);
  std::size_t ia = 0, ir = 0;
  for (std::uint32_t r = 0; r < p.rows; ++r) {
    std::uint16_t* row = p.sym.data() + static_cast<std::size_t>(r) * C;
    if (is_anchor_row(pk, group, r)) {
      std::copy_n(anchors.data() + ia, C, row);
      ia += C;
    } else if (pk == pred_kind::linear) {
      const std::uint16_t* ref = row - C;
      for (std::uint32_t c = 0; c < C; ++c) row[c] = pred_restore(resid[ir + c], linear_ref(ref[c], lc->centre[c], lc->coef[c], A), A);
      ir += C;
    } else {
      const std::uint32_t rr = pk == pred_kind::prev ? r - 1 : r - r % group;
      const std::uint16_t* ref = p.sym.data() + static_cast<std::size_t>(rr) * C;
      for (std::uint32_t c = 0; c < C; ++c) row[c] = pred_restore(resid[ir + c], ref[c], A);
      ir += C;
    }
  }
}

/// Row-sequential predictions (prev, linear) keep the anchor (row 0) and the residual rows in plane
/// order, so a decoder writes both sub-planes straight into p.sym and restores the rows in place.
inline bool contiguous_pred(pred_kind pk) { return pk == pred_kind::prev || pk == pred_kind::linear; }

namespace detail {
/// Row r of a linear (k, m given) or prev (k = nullptr) prediction restored in place from row - C.
inline std::uint32_t restore_row_scalar(std::uint16_t* row, const std::uint16_t* prev, std::uint32_t c0, std::uint32_t C,
                                        const std::int32_t* m, const std::int32_t* k, std::int32_t a) {
  const std::int32_t half = a / 2;
  for (std::uint32_t c = c0; c < C; ++c) {
    std::int32_t ref = prev[c];
    if (k != nullptr) {
      ref = m[c] + ((k[c] * (ref - m[c]) + 8) >> 4);
      ref = ref < 0 ? 0 : ref > a - 1 ? a - 1 : ref;
    }
    std::int32_t v = static_cast<std::int32_t>(row[c]) + ref - half;  // in (-A, 2A)
    v = v < 0 ? v + a : v;
    v = v >= a ? v - a : v;
    row[c] = static_cast<std::uint16_t>(v);
  }
  return C;
}
#if KVCODEC_X86_DISPATCH
/// The same for the largest multiple of 8 of C; returns how many columns were done.
KVCODEC_TARGET_AVX2 inline std::uint32_t restore_row_avx2(std::uint16_t* row, const std::uint16_t* prev, std::uint32_t C,
                                                          const std::int32_t* m, const std::int32_t* k, std::int32_t a) {
  const __m256i av = _mm256_set1_epi32(a), am1 = _mm256_set1_epi32(a - 1), halfv = _mm256_set1_epi32(a / 2);
  const __m256i zero = _mm256_setzero_si256(), eight = _mm256_set1_epi32(8);
  std::uint32_t c = 0;
  for (; c + 8 <= C; c += 8) {
    __m256i ref = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(prev + c)));
    if (k != nullptr) {
      const __m256i mv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + c));
      const __m256i kv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + c));
      ref = _mm256_add_epi32(mv, _mm256_srai_epi32(_mm256_add_epi32(_mm256_mullo_epi32(kv, _mm256_sub_epi32(ref, mv)), eight), 4));
      ref = _mm256_min_epi32(_mm256_max_epi32(ref, zero), am1);
    }
    __m256i v = _mm256_sub_epi32(_mm256_add_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c))), ref), halfv);
    v = _mm256_add_epi32(v, _mm256_and_si256(_mm256_cmpgt_epi32(zero, v), av));
    v = _mm256_sub_epi32(v, _mm256_andnot_si256(_mm256_cmpgt_epi32(av, v), av));
    const __m256i p16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(v, v), 0x88);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(row + c), _mm256_castsi256_si128(p16));
  }
  return c;
}
#endif
}  // namespace detail

/// In place: rows 1.. of p.sym hold residuals (row 0 the anchor); replaces them by the symbols.
/// Same result as merge_plane (vector path runtime-dispatched, bit-identical).
inline void restore_rows_inplace(symbol_plane& p, pred_kind pk, const linear_coefs* lc) {
  const std::uint32_t C = p.cols;
  const std::int32_t a = static_cast<std::int32_t>(p.alphabet);
  std::vector<std::int32_t> m, k;
  if (pk == pred_kind::linear) {
    m.assign(lc->centre.begin(), lc->centre.end());
    k.assign(lc->coef.begin(), lc->coef.end());
  }
  const std::int32_t* mp = pk == pred_kind::linear ? m.data() : nullptr;
  const std::int32_t* kp = pk == pred_kind::linear ? k.data() : nullptr;
#if KVCODEC_X86_DISPATCH
  const bool vec = simd::avx2();
#endif
  for (std::uint32_t r = 1; r < p.rows; ++r) {
    std::uint16_t* row = p.sym.data() + static_cast<std::size_t>(r) * C;
    std::uint32_t c0 = 0;
#if KVCODEC_X86_DISPATCH
    if (vec) c0 = detail::restore_row_avx2(row, row - C, C, mp, kp, a);
#endif
    detail::restore_row_scalar(row, row - C, c0, C, mp, kp, a);
  }
}

inline std::uint32_t anchor_rows(pred_kind pk, std::uint32_t group, std::uint32_t rows) {
  if (pk == pred_kind::none) return rows;
  if (pk == pred_kind::prev || pk == pred_kind::linear) return rows ? 1 : 0;
  return (rows + group - 1) / group;
}

// ---- histograms and tables ------------------------------------------------------------------

/// Adds the symbols to histograms h[bin_of[i % cols] * A + s] (bin_of = nullptr: bin = column),
/// symbols checked against A. h must be sized by the caller.
inline void add_hist(const std::uint16_t* s, std::size_t n, std::uint32_t cols, std::uint32_t A, const std::uint32_t* bin_of,
                     std::uint32_t* h, const std::string& where) {
  // Row by row with the bins' offsets precomputed; an out-of-alphabet symbol is counted in bin 0
  // of its table and reported after the pass (the histogram is then discarded with the error).
  std::vector<std::size_t> base(cols);
  for (std::uint32_t c = 0; c < cols; ++c) base[c] = static_cast<std::size_t>(bin_of ? bin_of[c] : c) * A;
  std::uint32_t worst = 0;
  if (cols == 1) {
    std::uint32_t* hb = h + base[0];
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t v = s[i];
      worst = v > worst ? v : worst;
      ++hb[v < A ? v : 0];
    }
  }
  // Grouped columns: neighbouring columns of one group with equal symbols hit the same counter back
  // to back (a store-forwarding chain), so four interleaved copies of the counters are summed at the end.
  std::uint32_t nb = 0;
  if (bin_of != nullptr && cols > 1)
    for (std::uint32_t c = 0; c < cols; ++c) nb = std::max(nb, bin_of[c] + 1);
  if (nb > 0 && std::size_t{nb} * A > (std::size_t{1} << 13)) nb = 0;  // too large: one copy
  if (nb > 0) {
    const std::size_t hs = std::size_t{nb} * A;
    std::vector<std::uint32_t> h4(4 * hs, 0);
    for (std::size_t i = 0; i < n; i += cols) {
      const std::size_t m = std::min<std::size_t>(cols, n - i);
      const std::uint16_t* row = s + i;
      for (std::size_t c = 0; c < m; ++c) {
        const std::uint32_t v = row[c];
        worst = v > worst ? v : worst;
        ++h4[(c & 3) * hs + base[c] + (v < A ? v : 0)];
      }
    }
    for (std::size_t k = 0; k < hs; ++k) h[k] += h4[k] + h4[hs + k] + h4[2 * hs + k] + h4[3 * hs + k];
  }
  for (std::size_t i = 0; cols > 1 && nb == 0 && i < n; i += cols) {
    const std::size_t m = std::min<std::size_t>(cols, n - i);
    const std::uint16_t* row = s + i;
    for (std::size_t c = 0; c < m; ++c) {
      const std::uint32_t v = row[c];
      worst = v > worst ? v : worst;
      ++h[base[c] + (v < A ? v : 0)];
    }
  }
  if (n > 0 && worst >= A)
    for (std::size_t i = 0; i < n; ++i)
      if (s[i] >= A) throw_bad_input(where, "symbol[" + std::to_string(i) + "]", "< alphabet " + std::to_string(A), std::to_string(s[i]));
}

/// Per-column histograms (cols x A), symbols checked against A.
inline void column_hist(const std::uint16_t* s, std::size_t n, std::uint32_t cols, std::uint32_t A, std::vector<std::uint32_t>& h,
                        const std::string& where) {
  h.assign(static_cast<std::size_t>(cols) * A, 0);
  add_hist(s, n, cols, A, nullptr, h.data(), where);
}

/// Sum of column histograms into group histograms.
inline std::vector<std::uint32_t> group_hist(const std::vector<std::uint32_t>& colh, std::uint32_t A, const std::vector<std::uint32_t>& gof,
                                             std::uint32_t groups) {
  std::vector<std::uint32_t> g(static_cast<std::size_t>(groups) * A, 0);
  for (std::size_t c = 0; c < gof.size(); ++c)
    for (std::uint32_t s = 0; s < A; ++s) g[gof[c] * A + s] += colh[c * A + s];
  return g;
}

/// Empirical entropy (bits) of the symbols under a grouping: sum over groups of the histogram entropy.
inline double grouped_entropy(const std::vector<std::uint32_t>& gh, std::uint32_t A, std::uint32_t groups) {
  double b = 0;
  for (std::uint32_t g = 0; g < groups; ++g) b += entropy_bits(gh.data() + static_cast<std::size_t>(g) * A, A);
  return b;
}

/// Two-sided geometric table: weight of symbol k is ratio^|k - centre| (Q16 arithmetic), every
/// symbol gets >= 1; the integer-only construction is identical on every platform.
inline freq_table geometric_table(std::uint16_t center2, std::uint16_t ratio, std::uint32_t A, int prob_bits) {
  const std::uint32_t T = 1u << prob_bits;
  if (A > T) throw_bad_input("geometric_table", "alphabet", "<= 2^prob_bits", std::to_string(A));
  std::vector<std::uint64_t> w(A);
  std::uint64_t W = 0;
  for (std::uint32_t k = 0; k < A; ++k) {
    const std::uint32_t d2 = 2 * k > center2 ? 2 * k - center2 : center2 - 2 * k;  // 2 |k - c|
    std::uint64_t v = 1u << 16;
    for (std::uint32_t i = 0; i + 1 < d2 && v; i += 2) v = (v * ratio) >> 16;
    if (d2 & 1u) v = (v * (ratio + (1u << 16))) >> 17;  // half step: mean of 1 and ratio
    w[k] = v;
    W += v;
  }
  std::vector<std::uint32_t> f(A, 1);
  std::uint32_t used = A;
  if (W > 0)
    for (std::uint32_t k = 0; k < A; ++k) {
      const std::uint32_t add = static_cast<std::uint32_t>((w[k] * (T - A)) / W);
      f[k] += add;
      used += add;
    }
  const std::uint32_t top = static_cast<std::uint32_t>(std::max_element(w.begin(), w.end()) - w.begin());
  f[top] += T - used;
  return make_freq_table(std::move(f), prob_bits);
}

/// Geometric parameters fitted to a histogram (encoder only; the decoder reads them).
inline void fit_geometric(const std::uint32_t* h, std::uint32_t A, std::uint16_t& center2, std::uint16_t& ratio) {
  double n = 0, mean = 0;
  for (std::uint32_t s = 0; s < A; ++s) n += h[s], mean += static_cast<double>(h[s]) * s;
  if (n == 0) {
    center2 = static_cast<std::uint16_t>(A - 1);
    ratio = 1;
    return;
  }
  // Centre: the mode (most probable symbol), the natural peak of a KV symbol histogram.
  const std::uint32_t mode = static_cast<std::uint32_t>(std::max_element(h, h + A) - h);
  center2 = static_cast<std::uint16_t>(2 * mode);
  double mad = 0;
  for (std::uint32_t s = 0; s < A; ++s) mad += static_cast<double>(h[s]) * std::fabs(static_cast<double>(s) - mode);
  mad /= n;
  const double q = mad <= 1e-9 ? 0.0 : (std::sqrt(1.0 + mad * mad) - 1.0) / mad;  // E|k| = 2q/(1-q^2)
  ratio = static_cast<std::uint16_t>(std::clamp(q * 65536.0, 1.0, 65535.0));
}

inline double varint_bytes(std::uint32_t v) { return v < 128 ? 1 : v < 16384 ? 2 : 3; }

/// Bits of a serialised normalised table (for the model choice).
inline double table_bits(const freq_table& t) { return static_cast<double>(serialize(t).size()) * 8.0; }

/// Fits a model to per-column histograms (cols x A). `table_weight` scales the table cost (1 when
/// the tables are stored with the data, smaller when shared over many blocks).
inline plane_model fit_model(const std::vector<std::uint32_t>& colh, std::uint32_t cols, std::uint32_t A, const model_options& o,
                             double table_weight = 1.0) {
  struct cand {
    grouping kind;
    std::uint32_t groups;
    std::vector<std::uint32_t> gof;
  };
  std::vector<cand> cands;
  auto add_pooled = [&] { cands.push_back({grouping::pooled, 1, std::vector<std::uint32_t>(cols, 0)}); };
  auto add_channel = [&] {
    std::vector<std::uint32_t> g(cols);
    std::iota(g.begin(), g.end(), 0u);
    cands.push_back({grouping::channel, cols, std::move(g)});
  };
  if (o.ctx == "pooled") add_pooled();
  else if (o.ctx == "channel") add_channel();
  else {
    add_pooled();
    if (cols <= o.max_channel_tables && cols > 1) add_channel();
    std::vector<double> ent(cols);
    for (std::uint32_t c = 0; c < cols; ++c) ent[c] = entropy_bits(colh.data() + static_cast<std::size_t>(c) * A, A);
    std::vector<std::uint32_t> order(cols);
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) { return ent[a] < ent[b]; });
    for (std::uint32_t k : {2u, 4u, 8u, 16u}) {
      if (k >= cols) break;
      std::vector<std::uint32_t> g(cols);
      for (std::uint32_t i = 0; i < cols; ++i) g[order[i]] = static_cast<std::uint32_t>(static_cast<std::uint64_t>(i) * k / cols);
      cands.push_back({grouping::map, k, std::move(g)});
    }
  }
  const bool try_hist = o.model != "geometric", try_geo = o.model != "hist";
  double best = std::numeric_limits<double>::infinity();
  plane_model out;
  // The ranked-run groupings nest (group g of 16 runs lies in group g k / 16 of k runs, k | 16), so their
  // histograms and the pooled one are sums of the 16-run histograms: one pass over the columns, not five.
  std::vector<std::uint32_t> gh16;
  for (const auto& c : cands)
    if (c.kind == grouping::map && c.groups == 16) gh16 = group_hist(colh, A, c.gof, 16);
  const auto merged = [&](std::uint32_t k) {
    std::vector<std::uint32_t> g(static_cast<std::size_t>(k) * A, 0);
    for (std::uint32_t j = 0; j < 16; ++j) {
      const std::uint32_t* src = gh16.data() + static_cast<std::size_t>(j) * A;
      std::uint32_t* dst = g.data() + static_cast<std::size_t>(j * k / 16) * A;
      for (std::uint32_t a = 0; a < A; ++a) dst[a] += src[a];
    }
    return g;
  };
  for (auto& c : cands) {
    const bool nested = !gh16.empty() && (c.kind == grouping::map || c.kind == grouping::pooled) && 16 % c.groups == 0;
    const auto gh = nested ? (c.groups == 16 ? gh16 : merged(c.groups)) : group_hist(colh, A, c.gof, c.groups);
    double map_bits = c.kind == grouping::map ? 8.0 * (varint_bytes(c.groups) + std::ceil(cols * symbol_bits(c.groups) / 8.0)) : 0.0;
    for (int mk = 0; mk < 2; ++mk) {
      if ((mk == 0 && !try_hist) || (mk == 1 && !try_geo)) continue;
      plane_model m;
      m.kind = c.kind;
      m.model = mk == 0 ? model_kind::hist : model_kind::geometric;
      m.alphabet = A;
      m.cols = cols;
      m.groups = c.groups;
      m.group_of_col = c.gof;
      double bits = 8.0 + map_bits * table_weight;
      for (std::uint32_t g = 0; g < c.groups; ++g) {
        const std::uint32_t* h = gh.data() + static_cast<std::size_t>(g) * A;
        if (mk == 0) {
          m.tables.push_back(normalize_freqs(h, A, o.prob_bits));
          bits += table_bits(m.tables.back()) * table_weight;
        } else {
          std::uint16_t c2, q;
          fit_geometric(h, A, c2, q);
          m.center2.push_back(c2);
          m.ratio.push_back(q);
          m.tables.push_back(geometric_table(c2, q, A, o.prob_bits));
          bits += 32.0 * table_weight;
        }
        bits += code_length_bits(h, A, m.tables.back());
      }
      if (bits < best) {
        best = bits;
        out = std::move(m);
      }
    }
  }
  return out;
}

inline void serialize_model(const plane_model& m, bytes& out) {
  byte_writer w(out);
  w.put<std::uint8_t>(static_cast<std::uint8_t>(m.kind));
  if (m.kind == grouping::map) {
    w.put_varint(m.groups);
    std::vector<std::uint16_t> ids(m.group_of_col.begin(), m.group_of_col.end());
    pack_bits(ids.data(), ids.size(), symbol_bits(m.groups), out);
  }
  w.put<std::uint8_t>(static_cast<std::uint8_t>(m.model));
  for (std::uint32_t g = 0; g < m.groups; ++g) {
    if (m.model == model_kind::hist) {
      const auto t = serialize(m.tables[g]);
      w.put_bytes(t.data(), t.size());
    } else {
      w.put<std::uint16_t>(m.center2[g]);
      w.put<std::uint16_t>(m.ratio[g]);
    }
  }
}

/// Smallest serialised table: a geometric table is 4 bytes, a histogram at least prob_bits, alphabet,
/// a zero run, a run length and one frequency (5 varints).
inline constexpr std::size_t min_table_bytes = 4;

/// Parses a model for a plane of (cols, A); every field is checked (corrupt on violation). Nothing
/// sized by cols is allocated unless the bytes left can back it: a pooled model (and a map of one
/// group) keeps no column map (group_of_col empty), a channel model needs a table per column, a map
/// needs its packed column ids.
inline plane_model parse_model(byte_reader& r, std::uint32_t cols, std::uint32_t A, int prob_bits) {
  plane_model m;
  m.alphabet = A;
  m.cols = cols;
  const auto k = r.get<std::uint8_t>("grouping");
  if (k > 2) throw_corrupt(r.what(), "field 'grouping': expected 0..2, found " + std::to_string(k));
  m.kind = static_cast<grouping>(k);
  if (m.kind == grouping::pooled) {
    m.groups = 1;
  } else if (m.kind == grouping::channel) {
    m.groups = cols;
    if (static_cast<std::uint64_t>(cols) * min_table_bytes > r.remaining())
      throw_corrupt(r.what(), "channel model of " + std::to_string(cols) + " columns needs " + std::to_string(cols) +
                                  " tables, more than the " + std::to_string(r.remaining()) + " bytes left can hold");
    m.group_of_col.resize(cols);
    std::iota(m.group_of_col.begin(), m.group_of_col.end(), 0u);
  } else {
    m.groups = static_cast<std::uint32_t>(r.get_varint_max("groups", std::max<std::uint32_t>(cols, 1)));
    if (m.groups == 0) throw_corrupt(r.what(), "field 'groups': expected >= 1, found 0");
    if (static_cast<std::uint64_t>(m.groups) * min_table_bytes > r.remaining())
      throw_corrupt(r.what(), "model of " + std::to_string(m.groups) + " groups needs " + std::to_string(m.groups) +
                                  " tables, more than the " + std::to_string(r.remaining()) + " bytes left can hold");
    const unsigned bw = symbol_bits(m.groups);
    const auto src = r.get_bytes((static_cast<std::size_t>(cols) * bw + 7) / 8, "column groups");
    if (m.groups > 1) {  // bw >= 1: the ids are backed by cols / 8 bytes at least
      std::vector<std::uint16_t> ids(cols);
      unpack_bits(src.data(), cols, bw, ids.data());
      m.group_of_col.assign(ids.begin(), ids.end());
      for (auto g : m.group_of_col)
        if (g >= m.groups) throw_corrupt(r.what(), "column group " + std::to_string(g) + " >= " + std::to_string(m.groups));
    }
  }
  const auto mk = r.get<std::uint8_t>("model");
  if (mk > 1) throw_corrupt(r.what(), "field 'model': expected 0 or 1, found " + std::to_string(mk));
  m.model = static_cast<model_kind>(mk);
  for (std::uint32_t g = 0; g < m.groups; ++g) {
    if (m.model == model_kind::hist) {
      std::size_t used = 0;
      byte_reader peek = r;
      const auto span = peek.get_bytes(peek.remaining(), "table");
      freq_table t = parse_freq_table(span.data(), span.size(), &used);
      r.get_bytes(used, "table");
      if (t.prob_bits != prob_bits || t.alphabet() != A)
        throw_corrupt(r.what(), "table " + std::to_string(g) + ": expected prob_bits " + std::to_string(prob_bits) + " and alphabet " +
                                    std::to_string(A) + ", found " + std::to_string(t.prob_bits) + " and " + std::to_string(t.alphabet()));
      m.tables.push_back(std::move(t));
    } else {
      const auto c2 = r.get<std::uint16_t>("centre");
      const auto q = r.get<std::uint16_t>("ratio");
      if (c2 > 2 * (A - 1)) throw_corrupt(r.what(), "geometric centre " + std::to_string(c2 / 2) + " outside alphabet " + std::to_string(A));
      m.center2.push_back(c2);
      m.ratio.push_back(q);
      m.tables.push_back(geometric_table(c2, q, A, prob_bits));
    }
  }
  return m;
}

}  // namespace kvcodec::cpu::em
