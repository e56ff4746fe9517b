// kvcodec/eval/attention.hpp — attention-output fidelity of a reconstructed KV cache.
//
// For every layer l, query head h (kv head g = h / (q_heads / kv_heads), GQA) and evaluated query
// position i, with causal masking by index (i attends to keys 0..i):
//   s_j = q_i . k_j / sqrt(head_dim),  p = softmax(s),  o_i = sum_j p_j v_j            (original K/V)
//   s^_j likewise with the reconstructed K^, restricted to A = {j <= i kept in (l, g)}, p^ = softmax
//   over A, o^_i = sum_{j in A} p^_j v^_j                      (same queries, from the original cache)
// Reported (scaled dot-product attention, Vaswani et al. 2017; the metric follows KV-compression studies
// such as SnapKV/H2O that compare attention outputs and distributions):
//   rel_error    = sqrt(sum_rows ||o - o^||^2) / sqrt(sum_rows ||o||^2)  (0 if both 0, +inf if only o is 0)
//   dropped_mass = mean over rows of sum_{j <= i, j not in A} p_j: the original attention mass on
//                  dropped tokens (0 for a dense reconstruction)
//   kl           = mean over rows with A non-empty of KL(p~ || p^) in nats, p~ = p restricted to A and
//                  renormalised (so kl measures distortion on the kept support and dropped_mass the
//                  loss of support; for a dense reconstruction p~ = p). Computed from log-sum-exp of
//                  the scores, clamped at 0 per row against rounding.
//   rows / empty_rows: rows evaluated, and rows whose A is empty (o^ = 0, left out of kl only).
// Options: query window [query_begin, query_end) (select with one window, measure on a later one);
// max_rows: each (layer, query head) evaluates ceil(max_rows / (layers * q_heads)) positions at a
// deterministic stride with a per-head phase. Memory is O(tokens + head_dim) per thread; work is split
// across (layer, query head) and partial sums are combined in order, so results do not depend on the
// thread count. The original must be dense, finite and carry queries; a non-finite reconstruction
// yields non-finite metrics.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/eval_attention.hpp"
#include "kvcodec/eval/metrics.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::eval {

struct attention_options {
  std::int64_t query_begin = 0;
  std::int64_t query_end = -1;  ///< -1 = tokens
  std::int64_t max_rows = 0;    ///< 0 = every row of the window
  unsigned threads = 0;         ///< 0 = hardware concurrency
};

struct attention_metrics {
  double rel_error = 0.0;
  double kl = 0.0;
  double dropped_mass = 0.0;
  std::int64_t rows = 0;
  std::int64_t empty_rows = 0;
};

/// Dot product of n floats, accumulated in double with four independent partial sums.
KVCODEC_HD inline double dot_f32(const float* a, const float* b, std::int64_t n) noexcept {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<double>(a[i]) * b[i];
    s1 += static_cast<double>(a[i + 1]) * b[i + 1];
    s2 += static_cast<double>(a[i + 2]) * b[i + 2];
    s3 += static_cast<double>(a[i + 3]) * b[i + 3];
  }
  for (; i < n; ++i) s0 += static_cast<double>(a[i]) * b[i];
  return (s0 + s1) + (s2 + s3);
}

/// log(sum_j exp(s_j)) over j < n with mask[j] != 0 (mask == nullptr: all); -inf when none.
KVCODEC_HD inline double log_sum_exp(const double* s, const std::uint8_t* mask, std::int64_t n) noexcept {
  double m = -HUGE_VAL;
  for (std::int64_t j = 0; j < n; ++j)
    if ((!mask || mask[j]) && s[j] > m) m = s[j];
  if (m == -HUGE_VAL) return m;
  double z = 0.0;
  for (std::int64_t j = 0; j < n; ++j)
    if (!mask || mask[j]) z += std::exp(s[j] - m);
  return m + std::log(z);
}

/// out[0..d) += w * v[0..d)
KVCODEC_HD inline void axpy_f32(double w, const float* v, double* out, std::int64_t d) noexcept {
  for (std::int64_t c = 0; c < d; ++c) out[c] += w * v[c];
}

namespace detail {


inline void check_finite(const std::vector<std::vector<float>>& t, const std::string& field) {
  for (std::size_t l = 0; l < t.size(); ++l)
    for (std::size_t i = 0; i < t[l].size(); ++i)
      if (!is_finite_f32(t[l][i]))
        throw_bad_input("compare_attention original", field + "[" + std::to_string(l) + "]", "finite values",
                        std::to_string(t[l][i]) + " at element " + std::to_string(i));
}

}  // namespace detail

/// What compare_attention evaluates: the query window [qb, qb + nq), per rows of each of `tasks`
/// (layer, query head) pairs (attention_row_pos), scores scaled by `scale`.
struct attention_plan {
  std::int64_t qb = 0, nq = 0, per = 0, tasks = 0;
  double scale = 1.0;
};

/// Checks the two caches and the options as compare_attention does (its throws) and plans the rows.
inline attention_plan plan_attention(const kv_cache& original, const kv_cache& reconstructed, const attention_options& opt) {
  original.validate("compare_attention original");
  reconstructed.validate("compare_attention reconstructed");
  if (!original.has_queries() || original.shape.q_heads <= 0)
    throw_bad_input("compare_attention original", "queries", "query tensors (q_heads > 0)", "none");
  if (!original.kept.empty())
    throw_bad_input("compare_attention original", "kept", "a dense cache (no kept sets)", "token-dropped cache");
  const kv_shape& a = original.shape;
  const kv_shape& b = reconstructed.shape;
  const auto dims = [](const kv_shape& s) {
    return std::to_string(s.layers) + "x" + std::to_string(s.kv_heads) + "x" + std::to_string(s.tokens) + "x" +
           std::to_string(s.head_dim);
  };
  if (a.layers != b.layers || a.kv_heads != b.kv_heads || a.head_dim != b.head_dim || a.tokens != b.tokens)
    throw_bad_input("compare_attention reconstructed", "shape (layers x kv_heads x tokens x head_dim)", dims(a),
                    dims(b));
  const std::int64_t T = a.tokens;
  const std::int64_t qb = opt.query_begin, qe = opt.query_end < 0 ? T : opt.query_end;
  if (qb < 0 || qb >= qe || qe > T)
    throw_usage("compare_attention: query window [" + std::to_string(qb) + ", " + std::to_string(qe) +
                ") must be non-empty and inside [0, " + std::to_string(T) + ")");
  if (opt.max_rows < 0) throw_usage("compare_attention: max_rows must be >= 0, found " + std::to_string(opt.max_rows));
  detail::check_finite(original.keys, "keys");
  detail::check_finite(original.values, "values");
  detail::check_finite(original.queries, "queries");
  attention_plan p;
  p.qb = qb, p.nq = qe - qb, p.tasks = static_cast<std::int64_t>(a.layers) * a.q_heads, p.per = p.nq;
  if (opt.max_rows > 0) p.per = std::clamp<std::int64_t>((opt.max_rows + p.tasks - 1) / p.tasks, 1, p.nq);
  p.scale = 1.0 / std::sqrt(static_cast<double>(a.head_dim));
  return p;
}

/// The metrics of the tasks' sums, combined in task order.
inline attention_metrics metrics_of(const std::vector<attention_sums>& sums) {
  attention_sums tot;
  for (const auto& x : sums) {
    tot.out_sq += x.out_sq;
    tot.err_sq += x.err_sq;
    tot.kl += x.kl;
    tot.dropped += x.dropped;
    tot.rows += x.rows;
    tot.empty += x.empty;
  }
  attention_metrics m;
  m.rows = tot.rows;
  m.empty_rows = tot.empty;
  if (tot.err_sq == 0.0) m.rel_error = 0.0;
  else if (tot.out_sq == 0.0) m.rel_error = std::numeric_limits<double>::infinity();
  else m.rel_error = std::sqrt(tot.err_sq) / std::sqrt(tot.out_sq);
  m.kl = tot.rows > tot.empty ? tot.kl / static_cast<double>(tot.rows - tot.empty) : 0.0;
  m.dropped_mass = tot.rows > 0 ? tot.dropped / static_cast<double>(tot.rows) : 0.0;
  return m;
}

/// Attention fidelity of `reconstructed` against `original` (see the header comment for definitions).
/// Throws bad_input if the original has no queries, kept sets or non-finite values, or the shapes
/// differ; throws usage for an empty or out-of-range query window or a negative max_rows.
inline attention_metrics compare_attention(const kv_cache& original, const kv_cache& reconstructed,
                                           attention_options opt = {}) {
  const attention_plan plan = plan_attention(original, reconstructed, opt);
  const kv_shape& a = original.shape;
  const std::int64_t T = a.tokens, D = a.head_dim;
  const int HQ = a.q_heads, group = a.q_heads / a.kv_heads;
  const std::int64_t qb = plan.qb, nq = plan.nq, tasks = plan.tasks, per = plan.per;
  const double scale = plan.scale;

  std::vector<attention_sums> sums(static_cast<std::size_t>(tasks));
  detail::run_tasks(tasks, opt.threads, [&](std::int64_t task) {
    const int l = static_cast<int>(task / HQ), h = static_cast<int>(task % HQ), g = h / group;
    const auto ls = static_cast<std::size_t>(l);
    const std::size_t kv_off = static_cast<std::size_t>(g) * static_cast<std::size_t>(T * D);
    const float* K = original.keys[ls].data() + kv_off;
    const float* V = original.values[ls].data() + kv_off;
    const float* Kr = reconstructed.keys[ls].data() + kv_off;
    const float* Vr = reconstructed.values[ls].data() + kv_off;
    const float* Q = original.queries[ls].data() + static_cast<std::size_t>(h) * static_cast<std::size_t>(T * D);
    std::vector<std::uint8_t> mask;
    detail::kept_mask(reconstructed, l, g, mask);
    std::vector<std::uint8_t> dropped(mask.size());
    for (std::size_t j = 0; j < mask.size(); ++j) dropped[j] = mask[j] ? 0 : 1;
    std::vector<double> s(static_cast<std::size_t>(T)), sr(static_cast<std::size_t>(T), 0.0);
    std::vector<double> o(static_cast<std::size_t>(D)), orec(static_cast<std::size_t>(D));
    attention_sums acc;
    for (std::int64_t k = 0; k < per; ++k) {
      const std::int64_t i = attention_row_pos(task, k, qb, nq, per);
      const std::int64_t n = i + 1;
      const float* q = Q + i * D;
      for (std::int64_t j = 0; j < n; ++j) {
        s[static_cast<std::size_t>(j)] = dot_f32(q, K + j * D, D) * scale;
        if (mask[static_cast<std::size_t>(j)]) sr[static_cast<std::size_t>(j)] = dot_f32(q, Kr + j * D, D) * scale;
      }
      const double lse = log_sum_exp(s.data(), nullptr, n);
      const double lse_kept = log_sum_exp(s.data(), mask.data(), n);
      const double lse_rec = log_sum_exp(sr.data(), mask.data(), n);
      const double lse_drop = log_sum_exp(s.data(), dropped.data(), n);
      std::fill(o.begin(), o.end(), 0.0);
      std::fill(orec.begin(), orec.end(), 0.0);
      double kl = 0.0;
      for (std::int64_t j = 0; j < n; ++j) {
        const double sj = s[static_cast<std::size_t>(j)];
        axpy_f32(std::exp(sj - lse), V + j * D, o.data(), D);
        if (mask[static_cast<std::size_t>(j)]) {
          const double lp = sj - lse_kept, lq = sr[static_cast<std::size_t>(j)] - lse_rec;
          axpy_f32(std::exp(lq), Vr + j * D, orec.data(), D);
          kl += std::exp(lp) * (lp - lq);
        }
      }
      double err_sq = 0.0, out_sq = 0.0;
      for (std::int64_t c = 0; c < D; ++c) {
        const double e = o[static_cast<std::size_t>(c)] - orec[static_cast<std::size_t>(c)];
        err_sq += e * e;
        out_sq += o[static_cast<std::size_t>(c)] * o[static_cast<std::size_t>(c)];
      }
      attention_sums_add(acc, err_sq, out_sq, kl, lse, lse_kept, lse_drop);
    }
    sums[static_cast<std::size_t>(task)] = acc;
  });
  return metrics_of(sums);
}

/// Host copies of what the GPU form of compare_attention reads (core/eval_attention.hpp): the caches'
/// per-layer bases (f32, [head][token][dim]), the reconstruction's kept mask per (layer, kv head) and
/// room for the rows. `a` points into this object (its pointers are host pointers).
struct attention_tiles {
  eattn_args a;
  std::vector<const void*> k, v, kr, vr, q;
  std::vector<std::uint8_t> kept;  ///< empty for a dense reconstruction
  std::vector<eattn_row> rows;
};

/// Fills t for the planned comparison (plan_attention) of two host caches.
inline void attention_tiles_of(const kv_cache& original, const kv_cache& reconstructed, const attention_plan& p, attention_tiles& t) {
  const kv_shape& s = original.shape;
  const auto bases = [](const std::vector<std::vector<float>>& layers, std::vector<const void*>& out) {
    out.clear();
    for (const auto& l : layers) out.push_back(l.data());
  };
  bases(original.keys, t.k), bases(original.values, t.v), bases(reconstructed.keys, t.kr), bases(reconstructed.values, t.vr), bases(original.queries, t.q);
  t.kept.clear();
  if (!reconstructed.kept.empty()) {
    std::vector<std::uint8_t> m;
    for (int l = 0; l < s.layers; ++l)
      for (int g = 0; g < s.kv_heads; ++g) {
        detail::kept_mask(reconstructed, l, g, m);
        t.kept.insert(t.kept.end(), m.begin(), m.end());
      }
  }
  t.rows.assign(static_cast<std::size_t>(p.tasks * p.per), eattn_row{});
  eattn_args& a = t.a;
  const auto src = [&](const std::vector<const void*>& base) {
    drop_source d;
    d.k = base.data(), d.head_dim = s.head_dim, d.dtype_code = 0;
    d.layout.s_head = s.tokens * s.head_dim, d.layout.s_token = s.head_dim;
    return d;
  };
  a.k = src(t.k), a.v = src(t.v), a.kr = src(t.kr), a.vr = src(t.vr), a.q = src(t.q);
  a.kept = t.kept.empty() ? nullptr : t.kept.data();
  a.layers = s.layers, a.kv_heads = s.kv_heads, a.q_heads = s.q_heads;
  a.tokens = s.tokens, a.qb = p.qb, a.nq = p.nq, a.per = p.per, a.scale = p.scale;
  a.rows = t.rows.data();
}

/// compare_attention through the GPU kernels' tile phases, run on the host (attention_rows_emulated,
/// then a task's rows summed in order): what cuda::compare_attention computes, within rounding of the CPU.
inline attention_metrics compare_attention_emulated(const kv_cache& original, const kv_cache& reconstructed, const attention_options& opt = {}) {
  const attention_plan p = plan_attention(original, reconstructed, opt);
  attention_tiles t;
  attention_tiles_of(original, reconstructed, p, t);
  attention_rows_emulated(t.a);
  std::vector<attention_sums> sums(static_cast<std::size_t>(p.tasks));
  for (std::int64_t task = 0; task < p.tasks; ++task) sums[static_cast<std::size_t>(task)] = eattn_task_sums(t.a, task);
  return metrics_of(sums);
}

}  // namespace kvcodec::eval
