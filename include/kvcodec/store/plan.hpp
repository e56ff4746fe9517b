// kvcodec/store/plan.hpp — choosing a compression level and a storage tier per context (AdaptCache /
// EVICPRESS style) to maximise a quality/delay utility under per-tier capacities.
//
// Utility. Context i, stored at level l in tier t, is worth
//     U(i, l, t) = w_i * ( -kl_i(l) - alpha * ( latency_t + bytes_i(l) / bandwidth_t + decode_s_i(l) ) )
// where w_i is the context's access weight (expected uses), kl_i(l) the quality loss of level l on that
// context (attention KL from `kvcodec eval`: 0 for a lossless level), bytes_i(l) its stored size,
// decode_s_i(l) the measured time to decode it, and alpha the delay weight (KL units per second of
// expected loading delay). A plan gives every context one (level, tier) with the bytes in each tier
// within its capacity; the last tier is taken as unbounded (the remote store), so a plan always exists.
//
// Solver. With up to two bounded tiers and a few hundred contexts, a dynamic programme over the
// contexts, each bounded capacity cut into buckets (sizes rounded up, so its plans always fit), gives a
// near-optimal start; from it, and from "every context at its best level in the last tier", greedy
// moves by marginal utility per bounded byte (EVICPRESS's rule: the move that gains most per byte it
// adds, a move that frees bytes first) run until none gains, then pair exchanges (two contexts changed
// at once, one making room for the other) while one gains; the better result is kept. Every single
// fixed level is solved the same way with only that level allowed; the planner returns the best plan
// found, so it is never worse than a fixed level, and reports each fixed level's utility beside it.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"

namespace kvcodec::store {

struct tier_spec {
  std::string name;
  double capacity_bytes = std::numeric_limits<double>::infinity();
  double bandwidth_bytes_s = 1e9;
  double latency_s = 0;
};

struct level_profile {
  std::string spec;     ///< e.g. "kvc:level=5"
  double bytes = 0;     ///< stored size of the context at this level
  double kl = 0;        ///< quality loss (attention KL)
  double decode_s = 0;  ///< measured decode time
};

struct context_profile {
  std::string name;
  double weight = 1;                  ///< access weight
  std::vector<level_profile> levels;  ///< the same specs, in the same order, for every context
};

struct placement {
  std::size_t level = 0, tier = 0;
};

struct plan_result {
  std::vector<placement> choice;       ///< per context
  std::vector<double> tier_bytes;      ///< bytes used per tier
  double utility = 0;
  std::string source;                  ///< "planner" or "fixed level <spec>" (the best candidate)
  std::vector<double> fixed_utility;   ///< per level: the best plan using only that level
};

inline double utility_of(const context_profile& c, const level_profile& l, const tier_spec& t, double alpha) {
  return c.weight * (-l.kl - alpha * (t.latency_s + l.bytes / t.bandwidth_bytes_s + l.decode_s));
}

namespace detail {

inline void check_plan_input(const std::vector<context_profile>& cs, const std::vector<tier_spec>& ts) {
  if (ts.empty()) throw_usage("store plan: no tiers");
  if (cs.empty()) throw_usage("store plan: no contexts");
  const std::size_t L = cs[0].levels.size();
  if (L == 0) throw_usage("store plan: no levels");
  for (const auto& c : cs) {
    if (c.levels.size() != L) throw_usage("store plan: context '" + c.name + "' has " + std::to_string(c.levels.size()) + " levels, expected " + std::to_string(L));
    if (!(c.weight >= 0)) throw_usage("store plan: context '" + c.name + "': weight must be >= 0");
    for (const auto& l : c.levels)
      if (!(l.bytes >= 0) || !(l.kl >= 0) || !(l.decode_s >= 0)) throw_usage("store plan: context '" + c.name + "', " + l.spec + ": negative or NaN profile");
  }
  for (const auto& t : ts)
    if (!(t.bandwidth_bytes_s > 0) || !(t.capacity_bytes >= 0) || !(t.latency_s >= 0)) throw_usage("store plan: tier '" + t.name + "': bad capacity, bandwidth or latency");
}

/// Greedy improvement from `start` over the allowed levels (mask). Last tier unbounded.
inline plan_result greedy(const std::vector<context_profile>& cs, const std::vector<tier_spec>& ts, double alpha, const std::vector<bool>& allowed,
                          std::vector<placement> start) {
  const std::size_t N = cs.size(), L = cs[0].levels.size(), T = ts.size();
  const auto cap = [&](std::size_t t) { return t + 1 == T ? std::numeric_limits<double>::infinity() : ts[t].capacity_bytes; };
  std::vector<double> used(T, 0);
  for (std::size_t i = 0; i < N; ++i) used[start[i].tier] += cs[i].levels[start[i].level].bytes;
  while (true) {
    double best_key = 0, best_gain = 0;
    std::size_t bi = N;
    placement bp;
    for (std::size_t i = 0; i < N; ++i) {
      const placement cur = start[i];
      const double ucur = utility_of(cs[i], cs[i].levels[cur.level], ts[cur.tier], alpha);
      for (std::size_t l = 0; l < L; ++l) {
        if (!allowed[l]) continue;
        for (std::size_t t = 0; t < T; ++t) {
          if (l == cur.level && t == cur.tier) continue;
          const double b = cs[i].levels[l].bytes;
          const double after = used[t] - (t == cur.tier ? cs[i].levels[cur.level].bytes : 0) + b;
          if (after > cap(t)) continue;
          const double gain = utility_of(cs[i], cs[i].levels[l], ts[t], alpha) - ucur;
          if (gain <= 1e-15) continue;
          // Bounded bytes added by the move (negative: frees capacity).
          double added = 0;
          if (t + 1 != T) added += b;
          if (cur.tier + 1 != T) added -= cs[i].levels[cur.level].bytes;
          const double key = added <= 0 ? std::numeric_limits<double>::infinity() : gain / added;
          if (bi == N || key > best_key || (key == best_key && gain > best_gain)) {
            best_key = key, best_gain = gain, bi = i, bp = {l, t};
          }
        }
      }
    }
    if (bi == N) break;
    used[start[bi].tier] -= cs[bi].levels[start[bi].level].bytes;
    used[bp.tier] += cs[bi].levels[bp.level].bytes;
    start[bi] = bp;
  }
  // Pair exchanges: change two contexts at once (one makes room for the other) while that gains.
  const auto u_of = [&](std::size_t i, placement p) { return utility_of(cs[i], cs[i].levels[p.level], ts[p.tier], alpha); };
  for (bool improved = true; improved;) {
    improved = false;
    for (std::size_t i = 0; i < N && !improved; ++i)
      for (std::size_t j = i + 1; j < N && !improved; ++j) {
        const placement ci = start[i], cj = start[j];
        const double base = u_of(i, ci) + u_of(j, cj);
        for (std::size_t li = 0; li < L && !improved; ++li)
          for (std::size_t ti = 0; ti < T && !improved; ++ti)
            for (std::size_t lj = 0; lj < L && !improved; ++lj)
              for (std::size_t tj = 0; tj < T && !improved; ++tj) {
                if (!allowed[li] || !allowed[lj]) continue;
                const placement ni{li, ti}, nj{lj, tj};
                if (u_of(i, ni) + u_of(j, nj) <= base + 1e-12) continue;
                std::vector<double> u2 = used;
                u2[ci.tier] -= cs[i].levels[ci.level].bytes;
                u2[cj.tier] -= cs[j].levels[cj.level].bytes;
                u2[ti] += cs[i].levels[li].bytes;
                u2[tj] += cs[j].levels[lj].bytes;
                bool fits = true;
                for (std::size_t t = 0; t + 1 < T; ++t) fits = fits && u2[t] <= cap(t) * (1 + 1e-12);
                if (!fits) continue;
                used = u2;
                start[i] = ni, start[j] = nj;
                improved = true;
              }
      }
  }
  plan_result r;
  r.choice = std::move(start);
  r.tier_bytes = used;
  for (std::size_t i = 0; i < N; ++i) r.utility += utility_of(cs[i], cs[i].levels[r.choice[i].level], ts[r.choice[i].tier], alpha);
  return r;
}

/// Every context at its best allowed level in the last tier.
inline std::vector<placement> last_tier_start(const std::vector<context_profile>& cs, const std::vector<tier_spec>& ts, double alpha,
                                             const std::vector<bool>& allowed) {
  std::vector<placement> s(cs.size());
  for (std::size_t i = 0; i < cs.size(); ++i) {
    double best = -std::numeric_limits<double>::infinity();
    for (std::size_t l = 0; l < cs[i].levels.size(); ++l)
      if (allowed[l]) {
        const double u = utility_of(cs[i], cs[i].levels[l], ts.back(), alpha);
        if (u > best) best = u, s[i] = {l, ts.size() - 1};
      }
  }
  return s;
}

/// Dynamic programme over the contexts with the bounded tiers' capacities cut into `grid` buckets (sizes
/// rounded up, so its plans always fit); up to two bounded tiers. Returns false when it does not apply.
inline bool dp_start(const std::vector<context_profile>& cs, const std::vector<tier_spec>& ts, double alpha, const std::vector<bool>& allowed,
                     std::vector<placement>& out) {
  const std::size_t N = cs.size(), L = cs[0].levels.size(), T = ts.size(), B = T - 1;
  if (B > 2) return false;
  const std::size_t G = N <= 64 ? 120 : N <= 512 ? 40 : 0;
  if (G == 0) return false;
  const std::size_t side = G + 1, states = B == 0 ? 1 : B == 1 ? side : side * side;
  // Buckets a context's bytes take in bounded tier t; G + 1 = does not fit at all.
  const auto buckets = [&](double bytes, std::size_t t) -> std::size_t {
    const double cap = ts[t].capacity_bytes;
    if (bytes <= 0) return 0;
    if (!(cap > 0)) return G + 1;
    const double b = std::ceil(bytes / (cap / static_cast<double>(G)) - 1e-9);
    return b > static_cast<double>(G) ? G + 1 : static_cast<std::size_t>(b);
  };
  const double ninf = -std::numeric_limits<double>::infinity();
  std::vector<double> best(states, ninf), next(states);
  best[0] = 0;
  std::vector<std::vector<std::uint16_t>> pick(N, std::vector<std::uint16_t>(states, 0));
  std::vector<std::vector<std::uint32_t>> from(N, std::vector<std::uint32_t>(states, 0));
  for (std::size_t i = 0; i < N; ++i) {
    std::fill(next.begin(), next.end(), ninf);
    for (std::size_t st = 0; st < states; ++st) {
      if (best[st] == ninf) continue;
      const std::size_t a = B >= 1 ? st % side : 0, b = B == 2 ? st / side : 0;
      for (std::size_t l = 0; l < L; ++l) {
        if (!allowed[l]) continue;
        for (std::size_t t = 0; t < T; ++t) {
          std::size_t na = a, nb = b;
          if (t + 1 < T) {
            const std::size_t k = buckets(cs[i].levels[l].bytes, t);
            if (k > G) continue;
            (t == 0 ? na : nb) += k;
            if (na > G || nb > G) continue;
          }
          const std::size_t ns = na + nb * side;
          const double v = best[st] + utility_of(cs[i], cs[i].levels[l], ts[t], alpha);
          if (v > next[ns]) {
            next[ns] = v;
            pick[i][ns] = static_cast<std::uint16_t>(l * T + t);
            from[i][ns] = static_cast<std::uint32_t>(st);
          }
        }
      }
    }
    best.swap(next);
  }
  std::size_t at = 0;
  for (std::size_t st = 0; st < states; ++st)
    if (best[st] > best[at]) at = st;
  if (best[at] == ninf) return false;
  out.assign(N, placement{});
  for (std::size_t i = N; i-- > 0;) {
    out[i] = {pick[i][at] / T, pick[i][at] % T};
    at = from[i][at];
  }
  return true;
}

/// The best of the DP plan (refined by greedy moves) and the greedy plan from the last tier.
inline plan_result solve(const std::vector<context_profile>& cs, const std::vector<tier_spec>& ts, double alpha, const std::vector<bool>& allowed) {
  plan_result r = greedy(cs, ts, alpha, allowed, last_tier_start(cs, ts, alpha, allowed));
  std::vector<placement> s;
  if (dp_start(cs, ts, alpha, allowed, s)) {
    plan_result d = greedy(cs, ts, alpha, allowed, std::move(s));
    if (d.utility > r.utility) r = std::move(d);
  }
  return r;
}

}  // namespace detail

/// The plan of the best utility found (see the file comment), with every fixed level's for comparison.
inline plan_result plan_placement(const std::vector<context_profile>& cs, const std::vector<tier_spec>& ts, double alpha) {
  detail::check_plan_input(cs, ts);
  const std::size_t L = cs[0].levels.size();
  std::vector<bool> all(L, true);
  plan_result best = detail::solve(cs, ts, alpha, all);
  best.source = "planner";
  std::vector<double> fixed(L);
  for (std::size_t l = 0; l < L; ++l) {
    std::vector<bool> only(L, false);
    only[l] = true;
    plan_result f = detail::solve(cs, ts, alpha, only);
    fixed[l] = f.utility;
    if (f.utility > best.utility + 1e-12) {
      best = std::move(f);
      best.source = "fixed level " + cs[0].levels[l].spec;
    }
  }
  best.fixed_utility = std::move(fixed);
  return best;
}

}  // namespace kvcodec::store
