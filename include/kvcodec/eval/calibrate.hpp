// kvcodec/eval/calibrate.hpp — per-layer bit allocation for `kvw` / weighted-quant, measured with the
// model in the loop (issue 13: spend bits where the model needs them, per layer and K vs V).
//
// For each calibration dump: the first C tokens are encoded and decoded with kvw at the reference
// steps; then, for every layer l and for K and V apart, the model runs the continuation [C, T) with the
// exact context except layer l's K (or V), which comes from the lossy decode. The mean KL(full || that)
// over the dumps is the sensitivity s of (l, K/V) at the reference step. At a given rate the model KL
// is least when each part's KL per bit is the same; with KL ∝ step² that is step ∝ 1/sqrt(s), so
// the multiplier of (l, K/V) is sqrt(G / s), G the geometric mean of the 2L sensitivities, clamped to
// [1/8, 8] (a part whose KL is 0 gets 8). The multipliers go into the spec as klayer / vlayer; kstep and
// vstep stay the rate knob. Calibrate on dumps other than those you measure on (the rd-curve script
// calibrates each dump of a model on the next one).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "kvcodec/eval/model_eval.hpp"
#include "kvcodec/registry/presets.hpp"

namespace kvcodec::eval {

struct calibration {
  double kstep = 0, vstep = 0;           ///< the reference steps the sensitivities were measured at
  std::vector<double> ksens, vsens;      ///< per layer: mean model KL with only that layer's K (V) lossy
  std::vector<double> kmul, vmul;        ///< per layer step multipliers
  std::string klayer, vlayer;            ///< the multipliers as spec text (a/b/c)
  std::string spec;                      ///< kvw:kstep=..,vstep=..,klayer=..,vlayer=..
};

/// Multipliers sqrt(G / s) clamped to [1/8, 8] from the sensitivities of every part (K and V of
/// every layer; G = geometric mean of the positive ones; s = 0 gets 8).
inline std::vector<double> calibration_multipliers(const std::vector<double>& s) {
  double lg = 0;
  int n = 0;
  for (double x : s)
    if (x > 0 && std::isfinite(x)) lg += std::log(x), ++n;
  std::vector<double> m(s.size(), 1.0);
  if (n == 0) return m;
  const double g = lg / n;
  for (std::size_t i = 0; i < s.size(); ++i)
    m[i] = s[i] > 0 && std::isfinite(s[i]) ? std::clamp(std::exp(0.5 * (g - std::log(s[i]))), 0.125, 8.0) : 8.0;
  return m;
}

inline std::string multipliers_text(const std::vector<double>& m) {
  std::string t;
  for (std::size_t i = 0; i < m.size(); ++i) {
    char b[32];
    std::snprintf(b, sizeof b, "%.3g", m[i]);
    t += (i ? "/" : "") + std::string(b);
  }
  return t;
}

/// Measures the per-layer sensitivities on `dumps` (each with at least C + 1 tokens, token ids and
/// RoPE metadata) and returns the multipliers and the calibrated kvw spec.
inline calibration calibrate_layers(std::shared_ptr<const model::llama2c_model> m, const std::vector<const kv_cache*>& dumps, std::int64_t C,
                                    double kstep = 0.2, double vstep = 0.3) {
  if (!m) throw_usage("calibrate: null model");
  if (dumps.empty()) throw_usage("calibrate: no dumps");
  calibration r;
  r.kstep = kstep;
  r.vstep = vstep;
  const std::size_t L = static_cast<std::size_t>(m->config.n_layers);
  r.ksens.assign(L, 0.0);
  r.vsens.assign(L, 0.0);
  model::decoder dec(m);
  const std::string ref = "kvw:kstep=" + kvcodec::detail::to_text(kstep) + ",vstep=" + kvcodec::detail::to_text(vstep);
  for (const kv_cache* d : dumps) {
    detail::check_dump_for_model(*d, m->config, C, "calibrate: dump");
    const kv_cache ctx = slice_tokens(*d, C);
    const kv_cache back = decode(encode(ref, ctx).data);
    const model_eval_options o{.context_tokens = C, .generate_steps = 0};
    for (std::size_t l = 0; l < L; ++l)
      for (const bool key : {true, false}) {
        kv_cache one = ctx;
        (key ? one.keys : one.values)[l] = (key ? back.keys : back.values)[l];
        (key ? r.ksens : r.vsens)[l] += evaluate_context(dec, *d, one, o).kl / static_cast<double>(dumps.size());
      }
  }
  std::vector<double> all(r.ksens);
  all.insert(all.end(), r.vsens.begin(), r.vsens.end());
  const std::vector<double> mul = calibration_multipliers(all);
  r.kmul.assign(mul.begin(), mul.begin() + static_cast<std::ptrdiff_t>(L));
  r.vmul.assign(mul.begin() + static_cast<std::ptrdiff_t>(L), mul.end());
  r.klayer = multipliers_text(r.kmul);
  r.vlayer = multipliers_text(r.vmul);
  r.spec = ref + ",klayer=" + r.klayer + ",vlayer=" + r.vlayer;
  return r;
}

}  // namespace kvcodec::eval
