// kvcodec/cpu/drop/expected_attention.hpp — the `expected-attention` stage (kvpress ExpectedAttentionPress): on
// post-RoPE queries, the last `window` queries are un-rotated at their own positions, their mean (and
// with `cov` their covariance) taken, then moved by the average RoPE rotation over the `future`
// positions after the prefix; score = softmax of mu.k/sqrt(d) (+ k^T Sigma k/(2d)), times ||v||. The
// first `sink` tokens are kept. Defaults differ from kvpress: docs/codecs/drop.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/expected_attention.hpp"
#include "kvcodec/core/rope.hpp"
#include "kvcodec/cpu/drop/rows.hpp"
#include "kvcodec/stage/params.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

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


/// RoPE tables of expected-attention (core/expected_attention.hpp's expected_tables, which the GPU path
/// uses too).
inline expected_prep prepare_expected(const kv_cache& kv, const drop::config& c, std::int64_t n, const std::optional<rope_meta>& rope) {
  return expected_tables(static_cast<std::size_t>(kv.shape.head_dim), n, c.window, c.future, rope.has_value(), rope ? rope->theta : 10000.0, kv.positions);
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

struct expected_attention_scorer : scorer_base {
  static constexpr bool needs_queries = true;
  std::optional<rope_meta> rope;
  expected_prep ep;
  expected_attention_scorer(const kv_cache& kv_, const drop::config& c_, std::int64_t n_)
      : scorer_base(kv_, c_, n_), rope(rope_of(kv, where_of(c))) {
    check_window(c, c.window, n);
    ep = prepare_expected(kv, c, n, rope);
  }
  void operator()(int l, std::int64_t, layer_scores& out) const { score_expected(kv, c, l, n, out, rope, ep); }
};

}  // namespace drop_detail

/// Kept sets of `kv` under an `expected-attention` configuration (cpu/drop/select.hpp).
inline kept_sets select_expected_attention(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_with<drop_detail::expected_attention_scorer>(kv, c, threads);
}

}  // namespace kvcodec::cpu
