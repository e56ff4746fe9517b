// kvcodec/cpu/drop_select.hpp — CPU scorers and kept-set selection of the token-dropping stages.
//
// Every method scores the keys of the compressed prefix [0, n) (n = obs_end, or all tokens) per
// (layer, kv head), names the tokens it protects in priority order (sinks, observation window, most
// recent), and keeps the protected tokens first and then the highest scores, up to the budget
// (ties: lower index first; a NaN score ranks last). Tokens at or after n are always kept. adakv
// replaces the per-head top-k by a pooled top-k over the heads of a layer (Ada-KV). Attention-based
// scores recompute q.k row by row with an online softmax, so memory is O(tokens + head_dim^2) per
// layer, never O(tokens^2). Layers are scored in parallel; the result does not depend on the thread
// count. Sources: kvpress presses (SnapKV, TOVA, ObservedAttention, ExpectedAttention, KNorm,
// KeyDiff, PyramidKV, AdaKV, Random), and the papers named in stage/drop_attention.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "kvcodec/core/random.hpp"
#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/rope.hpp"
#include "kvcodec/cpu/policy.hpp"
#include "kvcodec/eval/attention.hpp"
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

/// acc[j] += softmax_j(q_i . k_j / sqrt(d)) over j <= i, for queries i in [qb, qe) of query head hq.
/// `row` is scratch of at least qe doubles.
inline void accumulate_attention(const kv_cache& kv, int l, int hq, std::int64_t qb, std::int64_t qe, double* acc,
                                 std::vector<double>& row) {
  const std::int64_t T = kv.shape.tokens, D = kv.shape.head_dim;
  const int group = kv.shape.q_heads / kv.shape.kv_heads;
  const float* K = kv.keys[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(hq / group) * static_cast<std::size_t>(T * D);
  const float* Q = kv.queries[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(hq) * static_cast<std::size_t>(T * D);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  row.resize(static_cast<std::size_t>(std::max<std::int64_t>(qe, 1)));
  for (std::int64_t i = qb; i < qe; ++i) {
    drop_softmax_state st;
    for (std::int64_t j = 0; j <= i; ++j) {
      const double s = eval::dot_f32(Q + i * D, K + j * D, D) * scale;
      row[static_cast<std::size_t>(j)] = s;
      drop_softmax_push(st, s);
    }
    const double lse = drop_softmax_lse(st);
    if (lse == -HUGE_VAL || std::isnan(lse)) continue;
    for (std::int64_t j = 0; j <= i; ++j) acc[j] += std::exp(row[static_cast<std::size_t>(j)] - lse);
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

/// Expected attention (kvpress ExpectedAttentionPress), on post-RoPE queries: the last `window`
/// queries are un-rotated at their own positions, their mean and covariance taken, then moved by
/// the average RoPE rotation over the `future` positions after the prefix.
inline void score_expected(const kv_cache& kv, const drop::config& c, int l, std::int64_t n, layer_scores& out,
                           const std::optional<rope_meta>& rope) {
  const int H = kv.shape.kv_heads, HQ = kv.shape.q_heads, group = HQ / H;
  const std::int64_t T = kv.shape.tokens;
  const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim);
  const std::int64_t w = c.window, sink = std::min(c.sink, n);
  check_window(c, w, n);
  std::vector<double> cbar(D / 2, 1.0), sbar(D / 2, 0.0);
  if (rope) {
    const std::int64_t p0 = position_of(kv, n - 1) + 1;
    for (std::size_t i = 0; i < D / 2; ++i) {
      double cs = 0, sn = 0;
      for (std::int64_t p = p0; p < p0 + c.future; ++p) {
        const double a = rope_angle(p, i, D, rope->theta);
        cs += std::cos(a);
        sn += std::sin(a);
      }
      cbar[i] = cs / static_cast<double>(c.future);
      sbar[i] = sn / static_cast<double>(c.future);
    }
  }
  std::vector<double> mu(D), cov(D * D), logit(static_cast<std::size_t>(n));
  std::vector<float> q(D);
  for (int hq = 0; hq < HQ; ++hq) {
    const float* Q = kv.queries[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(hq) * static_cast<std::size_t>(T) * D;
    std::fill(mu.begin(), mu.end(), 0.0);
    std::fill(cov.begin(), cov.end(), 0.0);
    for (std::int64_t i = n - w; i < n; ++i) {
      std::copy_n(Q + static_cast<std::size_t>(i) * D, D, q.begin());
      if (rope) rope_undo(q.data(), D, position_of(kv, i), rope->theta, rope->style);
      for (std::size_t a = 0; a < D; ++a) mu[a] += q[a];
      for (std::size_t a = 0; a < D; ++a)
        for (std::size_t b = 0; b < D; ++b) cov[a * D + b] += static_cast<double>(q[a]) * q[b];
    }
    const double inv = 1.0 / static_cast<double>(w);
    for (auto& x : mu) x *= inv;
    for (std::size_t a = 0; a < D; ++a)
      for (std::size_t b = 0; b < D; ++b) cov[a * D + b] = cov[a * D + b] * inv - mu[a] * mu[b];
    if (rope) {
      drop_block_rotate(mu.data(), D, 1, cbar.data(), sbar.data(), rope->style);
      for (std::size_t col = 0; col < D; ++col) drop_block_rotate(cov.data() + col, D, D, cbar.data(), sbar.data(), rope->style);
      for (std::size_t r = 0; r < D; ++r) drop_block_rotate(cov.data() + r * D, D, 1, cbar.data(), sbar.data(), rope->style);
    }
    const int g = hq / group;
    const float* K = kv.keys[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(g) * static_cast<std::size_t>(T) * D;
    drop_softmax_state st;
    for (std::int64_t j = sink; j < n; ++j) {
      logit[static_cast<std::size_t>(j)] = drop_expected_logit(K + static_cast<std::size_t>(j) * D, mu.data(), c.cov ? cov.data() : nullptr, D);
      drop_softmax_push(st, logit[static_cast<std::size_t>(j)]);
    }
    const double lse = drop_softmax_lse(st);
    double* s = out.s.data() + static_cast<std::size_t>(g) * static_cast<std::size_t>(n);
    for (std::int64_t j = sink; j < n; ++j) s[j] += std::exp(logit[static_cast<std::size_t>(j)] - lse) / group;
  }
  if (c.vnorm)
    for (int g = 0; g < H; ++g) {
      const float* V = kv.values[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(g) * static_cast<std::size_t>(T) * D;
      double* s = out.s.data() + static_cast<std::size_t>(g) * static_cast<std::size_t>(n);
      for (std::int64_t j = sink; j < n; ++j) s[j] *= drop_l2_norm(V + static_cast<std::size_t>(j) * D, D);
    }
  for (std::int64_t t = 0; t < sink; ++t) out.prot.push_back(static_cast<std::int32_t>(t));
}

/// Scores of layer l with method m for budget b (b only shapes h2o's recent share).
inline layer_scores score_layer(const kv_cache& kv, const drop::config& c, method m, int l, std::int64_t n, std::int64_t b,
                                const std::optional<rope_meta>& rope) {
  const int H = kv.shape.kv_heads;
  const std::int64_t T = kv.shape.tokens;
  const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim);
  layer_scores out;
  out.s.assign(static_cast<std::size_t>(H) * static_cast<std::size_t>(n), 0.0);
  const auto key_row = [&](int g, std::int64_t j) {
    return kv.keys[static_cast<std::size_t>(l)].data() + (static_cast<std::size_t>(g) * static_cast<std::size_t>(T) + static_cast<std::size_t>(j)) * D;
  };
  std::vector<double> row, acc(static_cast<std::size_t>(n));
  switch (m) {
    case method::random:
      for (int g = 0; g < H; ++g)
        for (std::int64_t j = 0; j < n; ++j)
          out.s[static_cast<std::size_t>(g) * static_cast<std::size_t>(n) + static_cast<std::size_t>(j)] =
              hash_uniform(static_cast<std::uint64_t>(c.seed), static_cast<std::uint64_t>(l), static_cast<std::uint64_t>(g), static_cast<std::uint64_t>(j));
      break;
    case method::streamingllm:
      for (std::int64_t t = 0; t < std::min(c.sink, n); ++t) out.prot.push_back(static_cast<std::int32_t>(t));
      protect_recent(out.prot, n, n, std::min(c.sink, n));
      break;
    case method::knorm:
      for (int g = 0; g < H; ++g)
        for (std::int64_t j = 0; j < n; ++j)
          out.s[static_cast<std::size_t>(g) * static_cast<std::size_t>(n) + static_cast<std::size_t>(j)] = -drop_l2_norm(key_row(g, j), D);
      break;
    case method::keydiff:
      for (int g = 0; g < H; ++g) {
        std::vector<double> anchor(D, 0.0);
        for (std::int64_t j = 0; j < n; ++j) {
          const float* k = key_row(g, j);
          const double nk = drop_l2_norm(k, D);
          if (nk > 0)
            for (std::size_t a = 0; a < D; ++a) anchor[a] += k[a] / nk;
        }
        for (auto& x : anchor) x /= static_cast<double>(n);
        for (std::int64_t j = 0; j < n; ++j)
          out.s[static_cast<std::size_t>(g) * static_cast<std::size_t>(n) + static_cast<std::size_t>(j)] = -drop_cosine(key_row(g, j), anchor.data(), D);
      }
      break;
    case method::h2o: {
      const std::int64_t w = c.window == 0 ? n : c.window;
      check_window(c, w, n);
      const std::int64_t qb = n - w;
      const int group = kv.shape.q_heads / H;
      for (int hq = 0; hq < kv.shape.q_heads; ++hq) {
        std::fill(acc.begin(), acc.end(), 0.0);
        accumulate_attention(kv, l, hq, qb, n, acc.data(), row);
        double* s = out.s.data() + static_cast<std::size_t>(hq / group) * static_cast<std::size_t>(n);
        for (std::int64_t j = 0; j < n; ++j) s[j] += acc[static_cast<std::size_t>(j)] / static_cast<double>(n - std::max(j, qb)) / group;
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
      std::vector<double> pooled(static_cast<std::size_t>(n));
      for (int hq = 0; hq < kv.shape.q_heads; ++hq) {
        std::fill(acc.begin(), acc.end(), 0.0);
        accumulate_attention(kv, l, hq, qb, n, acc.data(), row);
        drop_avg_pool(acc.data(), pooled.data(), qb, c.kernel);
        double* s = out.s.data() + static_cast<std::size_t>(hq / group) * static_cast<std::size_t>(n);
        for (std::int64_t j = 0; j < qb; ++j) s[j] += pooled[static_cast<std::size_t>(j)] / static_cast<double>(w) / group;
      }
      protect_recent(out.prot, n, w);
      break;
    }
    case method::tova: {
      for (int hq = 0; hq < kv.shape.q_heads; ++hq) accumulate_attention(kv, l, hq, n - 1, n, acc.data(), row);
      for (int g = 0; g < H; ++g)
        for (std::int64_t j = 0; j < n; ++j)
          out.s[static_cast<std::size_t>(g) * static_cast<std::size_t>(n) + static_cast<std::size_t>(j)] = acc[static_cast<std::size_t>(j)] / kv.shape.q_heads;
      out.prot.push_back(static_cast<std::int32_t>(n - 1));
      break;
    }
    case method::expected_attention: score_expected(kv, c, l, n, out, rope); break;
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

/// Tokens of one head: the first min(b, |prot|) protected, then the best-scored others up to b.
inline std::vector<std::int32_t> pick_head(const double* s, std::int64_t n, const std::vector<std::int32_t>& prot, std::int64_t b) {
  std::vector<std::uint8_t> is_prot(static_cast<std::size_t>(n), 0);
  std::vector<std::int32_t> out;
  for (auto t : prot) {
    if (static_cast<std::int64_t>(out.size()) >= b) break;
    if (!is_prot[static_cast<std::size_t>(t)]) out.push_back(t);
    is_prot[static_cast<std::size_t>(t)] = 1;
  }
  for (auto t : prot) is_prot[static_cast<std::size_t>(t)] = 1;
  const std::int64_t rest = b - static_cast<std::int64_t>(out.size());
  if (rest > 0) {
    std::vector<std::int32_t> cand;
    for (std::int64_t j = 0; j < n; ++j)
      if (!is_prot[static_cast<std::size_t>(j)]) cand.push_back(static_cast<std::int32_t>(j));
    const auto k = std::min<std::size_t>(static_cast<std::size_t>(rest), cand.size());
    std::nth_element(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(k), cand.end(), rank_less{s});
    out.insert(out.end(), cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(k));
  }
  std::sort(out.begin(), out.end());
  return out;
}

/// Ada-KV over one layer: protected tokens in every head, a safeguard of floor(alpha * r) best
/// tokens per head (r = b - protected), the remaining heads x r - heads x safeguard tokens chosen
/// by pooled scores normalised per head (made non-negative, divided by their sum).
inline std::vector<std::vector<std::int32_t>> pick_adakv(const layer_scores& ls, int H, std::int64_t n, std::int64_t b, double alpha) {
  std::vector<std::vector<std::int32_t>> kept(static_cast<std::size_t>(H));
  std::vector<std::uint8_t> is_prot(static_cast<std::size_t>(n), 0);
  std::vector<std::int32_t> taken;
  for (auto t : ls.prot) {
    if (static_cast<std::int64_t>(taken.size()) >= b) break;
    if (!is_prot[static_cast<std::size_t>(t)]) taken.push_back(t);
    is_prot[static_cast<std::size_t>(t)] = 1;
  }
  for (auto t : ls.prot) is_prot[static_cast<std::size_t>(t)] = 1;
  const std::int64_t r = b - static_cast<std::int64_t>(taken.size());
  const std::int64_t safe = static_cast<std::int64_t>(std::floor(alpha * static_cast<double>(r)));
  struct entry {
    double v;
    std::int32_t h, t;
  };
  std::vector<entry> pool;
  for (int h = 0; h < H; ++h) {
    auto& kh = kept[static_cast<std::size_t>(h)];
    kh = taken;
    if (r <= 0) continue;
    const double* s = ls.s.data() + static_cast<std::size_t>(h) * static_cast<std::size_t>(n);
    std::vector<std::int32_t> cand;
    double mn = HUGE_VAL;
    for (std::int64_t j = 0; j < n; ++j)
      if (!is_prot[static_cast<std::size_t>(j)]) {
        cand.push_back(static_cast<std::int32_t>(j));
        mn = std::min(mn, rank_less::key(s[j]));
      }
    std::sort(cand.begin(), cand.end(), rank_less{s});
    const double shift = mn < 0 ? -mn : 0.0;
    double sum = 0;
    for (auto t : cand) sum += rank_less::key(s[t]) + shift;
    const bool finite_sum = std::isfinite(sum) && sum > 0;
    const std::size_t k = std::min<std::size_t>(static_cast<std::size_t>(safe), cand.size());
    kh.insert(kh.end(), cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(k));
    for (std::size_t i = k; i < cand.size(); ++i) {
      const double v = finite_sum ? (rank_less::key(s[cand[i]]) + shift) / sum : 1.0 / static_cast<double>(cand.size());
      pool.push_back(entry{std::isnan(v) ? -HUGE_VAL : v, static_cast<std::int32_t>(h), cand[i]});
    }
  }
  const std::size_t want = static_cast<std::size_t>(std::max<std::int64_t>(0, H * (r - safe)));
  const std::size_t k = std::min(want, pool.size());
  std::nth_element(pool.begin(), pool.begin() + static_cast<std::ptrdiff_t>(k), pool.end(), [](const entry& a, const entry& b2) {
    if (a.v != b2.v) return a.v > b2.v;
    if (a.h != b2.h) return a.h < b2.h;
    return a.t < b2.t;
  });
  for (std::size_t i = 0; i < k; ++i) kept[static_cast<std::size_t>(pool[i].h)].push_back(pool[i].t);
  for (auto& kh : kept) std::sort(kh.begin(), kh.end());
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

  kept_sets out(static_cast<std::size_t>(L), std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(H)));
  const int nt = threads > 0 ? threads : par.threads();
  parallel_for(nt, static_cast<std::size_t>(L), [&](std::size_t li) {
    const int l = static_cast<int>(li);
    const std::int64_t bl = budgets[li];
    const layer_scores ls = score_layer(kv, c, m, l, n, bl, rope);
    if (c.m == method::adakv) {
      out[li] = pick_adakv(ls, H, n, bl, c.alpha);
    } else {
      for (int h = 0; h < H; ++h)
        out[li][static_cast<std::size_t>(h)] = pick_head(ls.s.data() + static_cast<std::size_t>(h) * static_cast<std::size_t>(n), n, ls.prot, bl);
    }
    for (auto& kh : out[li])
      for (std::int64_t t = n; t < T; ++t) kh.push_back(static_cast<std::int32_t>(t));
  });
  return out;
}

}  // namespace kvcodec::cpu
