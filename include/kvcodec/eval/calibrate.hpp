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

#include "kvcodec/core/klt.hpp"
#include "kvcodec/core/weighted_quant.hpp"
#include "kvcodec/eval/model_eval.hpp"
#include "kvcodec/io/kv_profile.hpp"
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
/// With `klt_profile` (the hash of a loaded profile, io/kv_profile.hpp) the reference codec is `klt` with
/// that profile instead of kvw, and the spec returned is klt's.
inline calibration calibrate_layers(std::shared_ptr<const model::llama2c_model> m, const std::vector<const kv_cache*>& dumps, std::int64_t C,
                                    double kstep = 0.2, double vstep = 0.3, const std::string& klt_profile = {}) {
  if (!m) throw_usage("calibrate: null model");
  if (dumps.empty()) throw_usage("calibrate: no dumps");
  calibration r;
  r.kstep = kstep;
  r.vstep = vstep;
  const std::size_t L = static_cast<std::size_t>(m->config.n_layers);
  r.ksens.assign(L, 0.0);
  r.vsens.assign(L, 0.0);
  model::decoder dec(m);
  const std::string steps = "kstep=" + kvcodec::detail::to_text(kstep) + ",vstep=" + kvcodec::detail::to_text(vstep);
  const std::string ref = klt_profile.empty() ? "kvw:" + steps : "klt:profile=" + klt_profile + "," + steps;
  const std::string tail = klt_profile.empty() ? "" : "|rans:lanes=0,tables=shared,ctx=auto,model=auto,prob_bits=10";
  for (const kv_cache* d : dumps) {
    detail::check_dump_for_model(*d, m->config, C, "calibrate: dump");
    const kv_cache ctx = slice_tokens(*d, C);
    const kv_cache back = decode(encode(ref + tail, ctx).data);
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
  r.spec = ref + ",klayer=" + r.klayer + ",vlayer=" + r.vlayer + tail;
  return r;
}

/// The metric of a pre-RoPE key error for one kv head: with q~ the pre-RoPE queries of its query heads,
/// a logit is q~_m^T R(n - m) k~_n, so an error e on key n moves it by q~_m^T R(n - m) e and
/// E[(q~^T R e)^2] = e^T M e with M = sum over causal pairs (m >= n) of R(m - n) q~_m q~_m^T R(m - n)^T,
/// averaged. Grouped by lag: M = sum_lag R(lag) S_lag R(lag)^T, S_lag = sum_{m >= lag} q~_m q~_m^T
/// (a running suffix sum: O(D^2) memory whatever T). Low-frequency RoPE pairs barely turn over a context, so the queries'
/// covariance between them survives (the diagonal, pair-averaged weights of weighted-quant lose it).
/// `q` holds the pre-RoPE query rows of every query head of the group, position-major per head
/// ([g][T][D]); accumulates into M (D x D) and returns the number of pairs added.
inline double add_lag_metric(const std::vector<float>& q, std::size_t g, std::size_t T, std::size_t D, double theta, rope_pairs pairs,
                             std::vector<double>& M) {
  // lags from T - 1 down to 0: S (the suffix sum over m >= lag) grows by position lag's queries
  std::vector<double> S(D * D, 0.0);
  std::vector<float> c(D), s(D);
  std::vector<double> t1(D * D), col(D), rot(D);
  const auto rotate = [&](const double* x, double* y) {  // y = R(lag) x
    for (std::size_t d = 0; d < D; ++d) {
      const std::size_t p = static_cast<std::size_t>(rope_partner(static_cast<int>(d), static_cast<int>(D), pairs));
      y[d] = x[d] * static_cast<double>(c[d]) + x[p] * static_cast<double>(s[d]);
    }
  };
  for (std::size_t lag = T; lag-- > 0;) {
    for (std::size_t h = 0; h < g; ++h) {
      const float* x = q.data() + (h * T + lag) * D;
      for (std::size_t i = 0; i < D; ++i)
        for (std::size_t j = 0; j < D; ++j) S[i * D + j] += static_cast<double>(x[i]) * x[j];
    }
    rope_factors(static_cast<std::int64_t>(lag), D, theta, pairs, 1.0, c.data(), s.data());
    for (std::size_t j = 0; j < D; ++j) {  // t1 = R S (each column rotated)
      for (std::size_t i = 0; i < D; ++i) col[i] = S[i * D + j];
      rotate(col.data(), rot.data());
      for (std::size_t i = 0; i < D; ++i) t1[i * D + j] = rot[i];
    }
    for (std::size_t i = 0; i < D; ++i) {  // M += t1 R^T (each row rotated)
      rotate(t1.data() + i * D, rot.data());
      for (std::size_t j = 0; j < D; ++j) M[i * D + j] += rot[j];
    }
  }
  return static_cast<double>(g) * static_cast<double>(T) * static_cast<double>(T + 1) / 2.0;
}

/// Fits the KV profile of `klt` (io/kv_profile.hpp, core/klt.hpp) on `dumps` of model `m` (every
/// token of each; queries and RoPE metadata required): per layer and kv head, keys rotated back before
/// RoPE and weighted by the root of add_lag_metric's query metric (scaled to a geometric-mean diagonal
/// of 1, eigenvalues kept within 256x of their geometric mean: steps within 16x, as weighted-quant's),
/// values by the root of sum_j W_o,j^T W_o,j over the query heads j of the group (scaled to trace D);
/// the covariance of the weighted rows over every token gives the transform. `names` (e.g. the dump
/// files) is recorded as metadata.
inline io::kv_profile build_profile(const model::llama2c_model& m, const std::vector<const kv_cache*>& dumps, const std::string& names) {
  if (dumps.empty()) throw_usage("calibrate: no dumps");
  const auto& cfg = m.config;
  const std::size_t L = static_cast<std::size_t>(cfg.n_layers), H = static_cast<std::size_t>(cfg.n_kv_heads),
                    D = static_cast<std::size_t>(cfg.head_dim()), g = static_cast<std::size_t>(cfg.kv_group());
  io::kv_profile p;
  const auto meta = [&](const kv_cache& c, const char* k) {
    const auto it = c.metadata.find(k);
    return it == c.metadata.end() ? std::string() : it->second;
  };
  p.model = meta(*dumps.front(), "model");
  p.rope = meta(*dumps.front(), "rope");
  p.rope_theta = meta(*dumps.front(), "rope_theta");
  p.dumps = names;
  p.layers = cfg.n_layers;
  p.kv_heads = cfg.n_kv_heads;
  p.head_dim = cfg.head_dim();
  const rope_pairs pairs = rope_pairs_of(p.rope, static_cast<int>(D));
  double theta = 0;
  if (!kvcodec::detail::from_text(p.rope_theta, theta) || !(theta > 1) || pairs == rope_pairs::none)
    throw_bad_input("calibrate: dump", "metadata rope / rope_theta", "interleaved-pairs or rotate-half and a theta > 1",
                    "'" + p.rope + "' / '" + p.rope_theta + "'");
  const std::size_t M2 = D * D;
  std::vector<double> kmet(L * H * M2, 0.0), kcov(L * H * M2, 0.0), vcov(L * H * M2, 0.0);
  double pairs_added = 0;
  std::vector<float> c(D), s(D), row(D), qpre;
  for (const kv_cache* d : dumps) {
    const kv_shape& sh = d->shape;
    if (sh.layers != cfg.n_layers || sh.kv_heads != cfg.n_kv_heads || sh.head_dim != cfg.head_dim() || !d->has_queries() ||
        sh.q_heads != cfg.n_heads)
      throw_bad_input("calibrate: dump", "shape", "the model's layers, heads and head_dim, with queries", "another shape or no queries");
    if (meta(*d, "rope") != p.rope || meta(*d, "rope_theta") != p.rope_theta)
      throw_bad_input("calibrate: dump", "metadata rope", "the same RoPE in every dump", meta(*d, "rope"));
    const std::size_t T = static_cast<std::size_t>(sh.tokens);
    const auto pos_of = [&](std::size_t t) { return d->positions.empty() ? static_cast<std::int64_t>(t) : static_cast<std::int64_t>(d->positions[t]); };
    for (std::size_t t = 0; t < T; ++t) {
      rope_factors(pos_of(t), D, theta, pairs, -1.0, c.data(), s.data());
      for (std::size_t l = 0; l < L; ++l)
        for (std::size_t h = 0; h < H; ++h) {
          const float* k = d->keys[l].data() + (h * T + t) * D;
          for (std::size_t i = 0; i < D; ++i) row[i] = rope_rotated(k, static_cast<int>(i), static_cast<int>(D), pairs, c.data(), s.data());
          const float* v = d->values[l].data() + (h * T + t) * D;
          double* kc = kcov.data() + (l * H + h) * M2;
          double* vc = vcov.data() + (l * H + h) * M2;
          for (std::size_t i = 0; i < D; ++i)
            for (std::size_t j = 0; j < D; ++j) {
              kc[i * D + j] += static_cast<double>(row[i]) * row[j];
              vc[i * D + j] += static_cast<double>(v[i]) * v[j];
            }
        }
    }
    // pre-RoPE queries of each group, then the lag-averaged metric
    qpre.resize(g * T * D);
    for (std::size_t l = 0; l < L; ++l)
      for (std::size_t h = 0; h < H; ++h) {
        for (std::size_t j = 0; j < g; ++j)
          for (std::size_t t = 0; t < T; ++t) {
            rope_factors(pos_of(t), D, theta, pairs, -1.0, c.data(), s.data());
            const float* q = d->queries[l].data() + ((h * g + j) * T + t) * D;
            for (std::size_t i = 0; i < D; ++i) qpre[(j * T + t) * D + i] = rope_rotated(q, static_cast<int>(i), static_cast<int>(D), pairs, c.data(), s.data());
          }
        std::vector<double> Mk(M2, 0.0);
        const double n = add_lag_metric(qpre, g, T, D, theta, pairs, Mk);
        double* dst = kmet.data() + (l * H + h) * M2;
        for (std::size_t i = 0; i < M2; ++i) dst[i] += Mk[i];
        if (l == 0 && h == 0) pairs_added += n;
      }
  }
  p.key_forward.resize(L * H * M2);
  p.key_inverse.resize(L * H * M2);
  p.value_forward.resize(L * H * M2);
  p.value_inverse.resize(L * H * M2);
  std::vector<double> S(M2), Si(M2), C(M2);
  for (std::size_t l = 0; l < L; ++l) {
    const auto& wo = m.layers[l].wo;  // [dim, dim]: column block j*D.. is query head j's output
    for (std::size_t h = 0; h < H; ++h) {
      const std::size_t o = (l * H + h) * M2;
      // keys: the lag metric, scaled to a geometric-mean diagonal of 1, its spectrum clamped
      std::vector<double> Mk(kmet.begin() + static_cast<std::ptrdiff_t>(o), kmet.begin() + static_cast<std::ptrdiff_t>(o + M2));
      double lg = 0;
      for (std::size_t i = 0; i < D; ++i) lg += std::log(std::max(Mk[i * D + i], 1e-300));
      const double gm = std::exp(lg / static_cast<double>(D));
      if (!(gm > 0) || !std::isfinite(gm) || pairs_added <= 0)
        throw_bad_input("calibrate: dump", "queries", "finite, nonzero queries", "zero or non-finite (layer " + std::to_string(l) + ")");
      for (auto& x : Mk) x /= gm;
      klt_sqrtm(Mk, D, S, Si, 1.0 / 256, 256.0);
      std::copy_n(kcov.data() + o, M2, C.begin());
      klt_from_covariance(C, S, Si, D, p.key_forward.data() + o, p.key_inverse.data() + o);
      std::vector<double> W(M2, 0.0);
      for (std::size_t j = h * g; j < (h + 1) * g; ++j)
        for (Eigen::Index r = 0; r < wo.rows(); ++r)
          for (std::size_t a = 0; a < D; ++a) {
            const double x = wo(r, static_cast<Eigen::Index>(j * D + a));
            for (std::size_t b = 0; b < D; ++b) W[a * D + b] += x * wo(r, static_cast<Eigen::Index>(j * D + b));
          }
      double tr = 0;
      for (std::size_t i = 0; i < D; ++i) tr += W[i * D + i];
      if (!(tr > 0) || !std::isfinite(tr)) throw_bad_input("calibrate: model", "wo", "finite, nonzero output projections", "zero or non-finite");
      for (auto& x : W) x *= static_cast<double>(D) / tr;
      klt_sqrtm(W, D, S, Si);
      std::copy_n(vcov.data() + o, M2, C.begin());
      klt_from_covariance(C, S, Si, D, p.value_forward.data() + o, p.value_inverse.data() + o);
    }
  }
  p.hash = p.compute_hash();
  return p;
}

}  // namespace kvcodec::eval
