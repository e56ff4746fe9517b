// kvcodec/cpu/drop/select.hpp — what every CPU token-dropping stage shares: the budget, the layer's
// scores, and the choice of the kept tokens from them; each method (cpu/drop/<method>.hpp) brings
// only its scorer.
//
// Every method scores the keys of the compressed prefix [0, n) (n = obs_end, or all tokens) per
// (layer, kv head), names the tokens it protects in priority order (sinks, observation window, most
// recent), and keeps the protected tokens first and then the highest scores, up to the budget
// (ties: lower index first; a NaN score ranks last; the k-th best found by a radix select). Tokens at
// or after n are always kept. Layers are scored in parallel; the result does not depend on the
// thread count. Sources: kvpress presses (SnapKV, TOVA, ObservedAttention, ExpectedAttention, KNorm,
// KeyDiff, PyramidKV, AdaKV, Random), and the papers in stage/drop_attention.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/cpu/policy.hpp"
#include "kvcodec/stage/drop_common.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::cpu::drop_detail {

using drop::method;

inline std::string where_of(const drop::config& c) { return "drop stage '" + c.name + "'"; }

/// The stage name of a scoring method (a press that wraps a scorer runs it under its own name).
inline std::string_view drop_method_name(method m) {
  switch (m) {
    case method::h2o: return "h2o";
    case method::snapkv: return "snapkv";
    case method::tova: return "tova";
    case method::expected_attention: return "expected-attention";
    case method::pyramidkv: return "pyramidkv";
    default: return "";
  }
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
inline std::uint64_t rank_code(double v) { return drop_rank_code(v); }

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

/// Everything a scorer shares: the cache, the configuration and the end n of the compressed prefix.
/// A scorer derives from this, is built once per selection (its constructor checks its parameters
/// against the cache and precomputes what every layer needs) and then scores layers, possibly in
/// parallel: operator()(l, b, out) fills out.s (kv head h, token j < n at h * n + j; zeroed before the
/// call) and out.prot for budget b. The defaults: no queries needed, one budget for every layer, the
/// top b of each head kept (adakv and pyramidkv override the last two).
struct scorer_base {
  static constexpr bool needs_queries = false;
  static constexpr bool pooled = false;
  const kv_cache& kv;
  const drop::config& c;
  std::int64_t n;

  scorer_base(const kv_cache& kv_, const drop::config& c_, std::int64_t n_) : kv(kv_), c(c_), n(n_) {}
  static std::vector<std::int64_t> layer_budgets(const drop::config&, std::int64_t b, std::int64_t, int layers) {
    return std::vector<std::int64_t>(static_cast<std::size_t>(layers), b);
  }
  /// Row j of kv head g's keys in layer l.
  const float* key_row(int l, int g, std::int64_t j) const {
    const std::size_t T = static_cast<std::size_t>(kv.shape.tokens), D = static_cast<std::size_t>(kv.shape.head_dim);
    return kv.keys[static_cast<std::size_t>(l)].data() + (static_cast<std::size_t>(g) * T + static_cast<std::size_t>(j)) * D;
  }
};

/// Kept sets of `kv` under drop configuration `c`, scored by `Scorer` (see the header comment).
/// Throws bad_input for a cache without the queries the scorer needs, a prefix, budget or window
/// larger than the cache, or a cache that is already token-dropped.
template <class Scorer>
kept_sets select_with(const kv_cache& kv, const drop::config& c, int threads) {
  const std::string where = where_of(c);
  kv.validate(where + " input");
  if (!kv.kept.empty()) throw_bad_input(where, "kept", "a dense cache (no kept sets)", "a cache that is already token-dropped");
  if (Scorer::needs_queries && (!kv.has_queries() || kv.shape.q_heads <= 0))
    throw_bad_input(where, "queries",
                    "query tensors in the kv cache (q_heads > 0, e.g. a dump with queries.{layer}); " + c.name +
                        (c.name != drop_method_name(c.m) ? " with this scorer" : "") +
                        " needs them; methods that work without queries: random, streamingllm, knorm, keydiff, lagkv",
                    "none");
  const std::int64_t T = kv.shape.tokens;
  if (c.obs_end > T)
    throw_bad_input(where, "obs_end", "a prefix end <= the cache's " + std::to_string(T) + " tokens", std::to_string(c.obs_end));
  const std::int64_t n = c.obs_end < 0 ? T : c.obs_end;
  const std::int64_t b = budget_of(c, n);
  const int L = kv.shape.layers, H = kv.shape.kv_heads;
  const std::vector<std::int64_t> budgets = Scorer::layer_budgets(c, b, n, L);
  const Scorer score(kv, c, n);

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
    ls.s.assign(static_cast<std::size_t>(H) * static_cast<std::size_t>(n), 0.0);
    ls.prot.clear();
    score(l, bl, ls);
    if constexpr (Scorer::pooled) {
      out[li] = score.pick_pooled(l, ls, H, n, bl);
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

}  // namespace kvcodec::cpu::drop_detail
