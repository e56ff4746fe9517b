// kvcodec/verify/horizon.hpp — how many tokens to draft before each verification.
//
// Cost model of one round with horizon K (VeriCache's iteration time: drafting is bound by HBM
// bandwidth, the full-cache swap by the link, and the two overlap):
//   round(K) = max(K * draft_step, fetch) + verify_base + (K + 1) * verify_per_token   (overlap)
//   round(K) = K * draft_step + fetch + verify_base + (K + 1) * verify_per_token      (no overlap)
// A round yields accepted + 1 tokens (the correction or bonus token). With a_i the probability that
// draft i is accepted given drafts 0..i-1 were, the survival S(i) = a_0 ... a_{i-1} and the expected
// tokens per round E(K) = 1 + S(1) + ... + S(K).
// best_horizon is the steady-state optimum: the K maximising E(K) / round(K).
// plan_horizon accounts for the end of the run: with V(r) the least expected cost of the last r
// tokens, V(0) = 0 and V(r) = min_K round(K) + sum_n P(n accepted | K) V(r - n - 1) over
// K <= min(k_max, r - 1) (Bellman recursion on tokens left; a round never overshoots). V is solved
// exactly for r <= 4 (k_max + 1) and extended linearly beyond with the steady-state cost per token,
// so a long run drafts at the steady-state optimum and the last rounds are sized to fit what is left.
// fixed_horizon always drafts K. adaptive_horizon estimates a_i online from per-position counts with
// a Beta prior centred on the pooled acceptance rate (positions never reached borrow the pooled
// rate) and picks plan_horizon's K for limit + 1 tokens left (the session passes limit = tokens
// still to generate - 1, since a round emits K + 1); it can also learn the cost model from measured
// times (exponential moving averages).
// Invariant: choose(limit) returns a value in [0, min(limit, k_max)].
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"

namespace kvcodec::verify {

struct cost_model {
  double draft_step_s = 1.0;        ///< one drafter decode step
  double verify_base_s = 1.0;       ///< one verification pass, independent of K
  double verify_per_token_s = 0.0;  ///< extra verification time per scored token
  double fetch_s = 0.0;             ///< one full-cache fetch (swap-in)
  bool overlap = true;              ///< fetch runs while drafting

  void validate() const {
    const auto bad = [](double v) { return !(v >= 0) || !std::isfinite(v); };
    if (bad(draft_step_s) || bad(verify_base_s) || bad(verify_per_token_s) || bad(fetch_s))
      throw_usage("cost_model: every time must be a finite number >= 0");
  }
  double round_s(int k) const noexcept {
    const double d = static_cast<double>(k) * draft_step_s;
    const double wait = overlap ? std::max(d, fetch_s) : d + fetch_s;
    return wait + verify_base_s + static_cast<double>(k + 1) * verify_per_token_s;
  }
};

/// Expected tokens per round, 1 + sum_{i=1..K} S(i), from conditional acceptance rates a[0..K).
inline double expected_tokens(const std::vector<double>& a, int k) {
  double e = 1, s = 1;
  for (int i = 0; i < k && i < static_cast<int>(a.size()); ++i) {
    s *= a[static_cast<std::size_t>(i)];
    e += s;
  }
  return e;
}

/// The K in [0, k_max] maximising expected_tokens / round_s (the larger K on exact ties).
inline int best_horizon(const std::vector<double>& a, const cost_model& c, int k_max, double* rate = nullptr) {
  int best = 0;
  double best_rate = -1;
  for (int k = 0; k <= k_max; ++k) {
    const double r = expected_tokens(a, k) / std::max(c.round_s(k), 1e-300);
    if (r >= best_rate) {
      best_rate = r;
      best = k;
    }
  }
  if (rate) *rate = best_rate;
  return best;
}

/// The first round's K in [0, min(k_max, remaining - 1)] minimising the expected cost of emitting
/// `remaining` tokens (see the recursion above); draft i is accepted with a[i] (0 past a's end). On
/// ties (within rounding: 64 ulp of the cost) the larger K wins. `cost` receives the minimal expected cost.
inline int plan_horizon(const std::vector<double>& a, const cost_model& c, int k_max, std::int64_t remaining,
                        double* cost = nullptr) {
  if (cost) *cost = 0;
  if (remaining <= 0) return 0;
  k_max = std::max(0, k_max);
  const auto acc = [&](int i) { return i < static_cast<int>(a.size()) ? a[static_cast<std::size_t>(i)] : 0.0; };
  double rate = 0;
  best_horizon(a, c, k_max, &rate);
  const double per_token = 1.0 / std::max(rate, 1e-300);
  const std::int64_t window = std::min<std::int64_t>(remaining - 1, 4 * (static_cast<std::int64_t>(k_max) + 1));
  std::vector<double> v(static_cast<std::size_t>(window) + 1, 0.0);
  const auto V = [&](std::int64_t r) {
    return r <= window ? v[static_cast<std::size_t>(r)] : v[static_cast<std::size_t>(window)] + static_cast<double>(r - window) * per_token;
  };
  const auto solve = [&](std::int64_t r, double& best) {
    const int kk = static_cast<int>(std::min<std::int64_t>(k_max, r - 1));
    double before = 0, s = 1;
    int arg = 0;
    best = 0;
    for (int k = 0; k <= kk; ++k) {
      if (k > 0) {
        before += s * (1 - acc(k - 1)) * V(r - k);
        s *= acc(k - 1);
      }
      const double x = c.round_s(k) + before + s * V(r - k - 1);
      if (k == 0 || x <= best + 64 * std::numeric_limits<double>::epsilon() * std::abs(best)) arg = k;
      if (k == 0 || x < best) best = x;
    }
    return arg;
  };
  double x = 0;
  for (std::int64_t r = 1; r <= window; ++r) {
    solve(r, x);
    v[static_cast<std::size_t>(r)] = x;
  }
  const int k = solve(remaining, x);
  if (cost) *cost = x;
  return k;
}

class horizon_policy {
 public:
  virtual ~horizon_policy() = default;
  virtual std::string name() const = 0;
  /// Horizon for the next round, at most `limit` (the session passes tokens still to generate - 1).
  virtual int choose(int limit) = 0;
  /// Outcome of a round: `drafted` drafts, the first `accepted` of them kept.
  virtual void observe(int drafted, int accepted) = 0;
  /// Measured times of a round (for policies that learn the cost model).
  virtual void observe_times(int /*drafted*/, double /*draft_s*/, double /*verify_s*/, double /*fetch_s*/) {}
};

class fixed_horizon final : public horizon_policy {
 public:
  explicit fixed_horizon(int k) : k_(k) {
    if (k < 0) throw_usage("fixed_horizon: horizon must be >= 0, got " + std::to_string(k));
  }
  std::string name() const override { return "fixed:" + std::to_string(k_); }
  int choose(int limit) override { return std::max(0, std::min(k_, limit)); }
  void observe(int, int) override {}

 private:
  int k_;
};

struct adaptive_options {
  int k_max = 64;
  double prior_accept = 0.9;  ///< acceptance rate assumed before any observation
  double prior_weight = 2.0;  ///< pseudo-observations behind the prior
  bool learn_costs = false;   ///< replace the cost model by measured times as rounds complete
  double cost_ema = 0.2;      ///< weight of the newest measurement
};

class adaptive_horizon final : public horizon_policy {
 public:
  adaptive_horizon(cost_model c, adaptive_options o = {}) : cost_(c), opt_(o) {
    cost_.validate();
    if (o.k_max < 0 || o.k_max > 4096) throw_usage("adaptive_horizon: k_max must be in 0..4096, got " + std::to_string(o.k_max));
    if (!(o.prior_accept > 0 && o.prior_accept < 1)) throw_usage("adaptive_horizon: prior_accept must be in (0, 1)");
    if (!(o.prior_weight > 0)) throw_usage("adaptive_horizon: prior_weight must be > 0");
    if (!(o.cost_ema > 0 && o.cost_ema <= 1)) throw_usage("adaptive_horizon: cost_ema must be in (0, 1]");
    reached_.assign(static_cast<std::size_t>(o.k_max), 0);
    accepted_.assign(static_cast<std::size_t>(o.k_max), 0);
  }
  std::string name() const override { return "adaptive"; }

  /// Conditional acceptance estimates a_i for i in [0, k_max).
  std::vector<double> acceptance() const {
    double tr = 0, ta = 0;
    for (std::size_t i = 0; i < reached_.size(); ++i) {
      tr += static_cast<double>(reached_[i]);
      ta += static_cast<double>(accepted_[i]);
    }
    const double w = opt_.prior_weight;
    const double pooled = (ta + w * opt_.prior_accept) / (tr + w);
    std::vector<double> a(reached_.size());
    for (std::size_t i = 0; i < a.size(); ++i)
      a[i] = (static_cast<double>(accepted_[i]) + w * pooled) / (static_cast<double>(reached_[i]) + w);
    return a;
  }
  const cost_model& costs() const noexcept { return cost_; }

  int choose(int limit) override {
    if (limit <= 0) return 0;
    return plan_horizon(acceptance(), cost_, opt_.k_max, static_cast<std::int64_t>(limit) + 1);
  }
  void observe(int drafted, int accepted) override {
    for (int i = 0; i < drafted && i < opt_.k_max; ++i) {
      ++reached_[static_cast<std::size_t>(i)];
      if (i < accepted) ++accepted_[static_cast<std::size_t>(i)];
      else break;
    }
  }
  void observe_times(int drafted, double draft_s, double verify_s, double fetch_s) override {
    if (!opt_.learn_costs) return;
    const double a = opt_.cost_ema;
    const auto ema = [&](double& x, double v) { x = seen_ ? (1 - a) * x + a * v : v; };
    if (drafted > 0) ema(cost_.draft_step_s, draft_s / drafted);
    ema(cost_.verify_base_s, verify_s);
    cost_.verify_per_token_s = 0;
    ema(cost_.fetch_s, fetch_s);
    seen_ = true;
  }

 private:
  cost_model cost_;
  adaptive_options opt_;
  std::vector<std::int64_t> reached_, accepted_;
  bool seen_ = false;
};

}  // namespace kvcodec::verify
