// kvcodec/verify/planner.hpp — deployment planner for draft-and-verify (VeriCache's iteration model).
//
// Per round, for a batch of B sequences of context C (model weights W bytes, full KV b bytes/token,
// a codec at bpe bits/element, so compressed KV = b * bpe / 16 bytes/token):
//   draft step   t_d = (W + B*C*b*bpe/16) / HBM_bw          (memory-bound decoding, compressed cache)
//   verify pass  t_v = (W + B*C*b) / HBM_bw                 (one batched pass over the full cache)
//   fetch        t_f = latency + B*C*b / link_bw            (full cache swapped in over PCIe/network)
//   round(K)     = max(K*t_d, t_f) + t_v                    (swap overlaps drafting)
//   tokens/s     = B * E(K) / round(K),  E(K) = 1 + sum_{i=1..K} S(i)  (measured survival curve)
// Baseline, full-cache decoding: resident when W + B*C*b fits in HBM (t = (W + B*C*b) / HBM_bw per
// step), otherwise offloaded (every step streams the full cache: t = t_f + t_v).
// These are projections from a bandwidth model, not measurements.
// Invariant: every row's tokens_per_s is B * expected_tokens / round_s of that row.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcodec/core/error.hpp"
#include "kvcodec/verify/horizon.hpp"

namespace kvcodec::verify {

struct hardware_desc {
  std::string name = "H100-SXM + PCIe5";
  double hbm_bw = 3.35e12;        ///< bytes/s
  double hbm_capacity = 80e9;     ///< bytes available for weights + KV
  double link_bw = 55e9;          ///< bytes/s of the link carrying the full cache
  double link_latency_s = 20e-6;
};

struct model_desc {
  std::string name = "llama-3-8b";
  double weight_bytes = 16.06e9;
  double kv_bytes_per_token = 131072;  ///< full-precision (fp16/bf16) K+V of one token, all layers
  double context_tokens = 32768;
  int batch = 8;
};

/// A codec's measured acceptance: conditional acceptance a_i of draft i given its predecessors.
struct acceptance_curve {
  std::string codec;
  double bits_per_element = 16;
  std::vector<double> conditional;
};

struct plan_row {
  std::string codec;
  int horizon = 0;
  double bits_per_element = 0;
  double expected_tokens = 0;  ///< per sequence per round
  double draft_step_s = 0, verify_s = 0, fetch_s = 0, round_s = 0;
  double tokens_per_s = 0, speedup = 0;
};

struct plan_result {
  double full_tokens_per_s = 0;
  std::string full_mode;  ///< "resident" or "offloaded"
  double full_step_s = 0;
  std::vector<plan_row> rows;  ///< every (codec, horizon)
  std::vector<plan_row> best_per_codec;
  plan_row best;
};

inline void validate(const hardware_desc& h, const model_desc& m) {
  const auto pos = [](double v) { return v > 0 && std::isfinite(v); };
  if (!pos(h.hbm_bw) || !pos(h.link_bw) || !pos(h.hbm_capacity) || !(h.link_latency_s >= 0))
    throw_usage("plan-verify: hardware bandwidths and capacity must be > 0 and latency >= 0");
  if (!pos(m.weight_bytes) || !pos(m.kv_bytes_per_token) || !pos(m.context_tokens) || m.batch < 1)
    throw_usage("plan-verify: weight bytes, KV bytes per token and context must be > 0 and batch >= 1");
}

/// Costs of one round as a cost_model (seconds) for a codec at `bpe` bits/element.
inline cost_model round_costs(const hardware_desc& h, const model_desc& m, double bpe) {
  const double kv_full = static_cast<double>(m.batch) * m.context_tokens * m.kv_bytes_per_token;
  cost_model c;
  c.draft_step_s = (m.weight_bytes + kv_full * bpe / 16.0) / h.hbm_bw;
  c.verify_base_s = (m.weight_bytes + kv_full) / h.hbm_bw;
  c.verify_per_token_s = 0;
  c.fetch_s = h.link_latency_s + kv_full / h.link_bw;
  c.overlap = true;
  return c;
}

inline plan_result make_plan(const hardware_desc& h, const model_desc& m, const std::vector<acceptance_curve>& curves, int k_max) {
  validate(h, m);
  if (k_max < 0 || k_max > 4096) throw_usage("plan-verify: k_max must be in 0..4096, got " + std::to_string(k_max));
  plan_result p;
  const double kv_full = static_cast<double>(m.batch) * m.context_tokens * m.kv_bytes_per_token;
  const double fetch = h.link_latency_s + kv_full / h.link_bw;
  const double pass = (m.weight_bytes + kv_full) / h.hbm_bw;
  if (m.weight_bytes + kv_full <= h.hbm_capacity) {
    p.full_mode = "resident";
    p.full_step_s = pass;
  } else {
    p.full_mode = "offloaded";
    p.full_step_s = pass + fetch;
  }
  p.full_tokens_per_s = static_cast<double>(m.batch) / p.full_step_s;
  for (const auto& cv : curves) {
    if (!(cv.bits_per_element > 0)) throw_usage("plan-verify: codec " + cv.codec + " needs bits_per_element > 0");
    for (double a : cv.conditional)
      if (!(a >= 0 && a <= 1)) throw_usage("plan-verify: codec " + cv.codec + " has an acceptance rate outside [0, 1]");
    const cost_model c = round_costs(h, m, cv.bits_per_element);
    std::vector<double> a = cv.conditional;
    const double tail = a.empty() ? 0.0 : a.back();
    a.resize(static_cast<std::size_t>(k_max), tail);  // beyond the measured horizon: the last measured rate
    plan_row best_c;
    for (int k = 0; k <= k_max; ++k) {
      plan_row r;
      r.codec = cv.codec;
      r.horizon = k;
      r.bits_per_element = cv.bits_per_element;
      r.expected_tokens = expected_tokens(a, k);
      r.draft_step_s = c.draft_step_s;
      r.verify_s = c.verify_base_s;
      r.fetch_s = c.fetch_s;
      r.round_s = c.round_s(k);
      r.tokens_per_s = static_cast<double>(m.batch) * r.expected_tokens / r.round_s;
      r.speedup = r.tokens_per_s / p.full_tokens_per_s;
      if (r.tokens_per_s > best_c.tokens_per_s) best_c = r;
      if (r.tokens_per_s > p.best.tokens_per_s) p.best = r;
      p.rows.push_back(r);
    }
    p.best_per_codec.push_back(best_c);
  }
  return p;
}

inline nlohmann::json to_json(const plan_row& r) {
  return {{"codec", r.codec},         {"horizon", r.horizon},           {"bits_per_element", r.bits_per_element},
          {"expected_tokens", r.expected_tokens}, {"draft_step_s", r.draft_step_s}, {"verify_s", r.verify_s},
          {"fetch_s", r.fetch_s},     {"round_s", r.round_s},           {"tokens_per_s", r.tokens_per_s},
          {"speedup", r.speedup}};
}

inline nlohmann::json to_json(const plan_result& p) {
  nlohmann::json j;
  j["projection"] = true;
  j["full"] = {{"mode", p.full_mode}, {"step_s", p.full_step_s}, {"tokens_per_s", p.full_tokens_per_s}};
  j["best"] = to_json(p.best);
  j["best_per_codec"] = nlohmann::json::array();
  for (const auto& r : p.best_per_codec) j["best_per_codec"].push_back(to_json(r));
  return j;
}

}  // namespace kvcodec::verify
