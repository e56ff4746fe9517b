// kvcodec/eval/evaluate.hpp — one codec on one cache: size, speed and fidelity, as `kvcodec eval`
// reports them (definitions in README "Metrics").
//
// bits_per_element = codec bytes (segments + stage state) x 8 / K+V elements of the original cache;
// ratio_vs_fp16 = 16 / bits_per_element; encode_mb_s / decode_mb_s = fp16-equivalent megabytes
// (K+V elements x 2 / 1e6) per second of wall time, best of `repeats` runs.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "kvcodec/eval/attention.hpp"
#include "kvcodec/eval/metrics.hpp"
#include "kvcodec/pipeline/encode.hpp"
#include "kvcodec/pipeline/target.hpp"

namespace kvcodec::eval {

/// Computes the attention metrics (compare_attention's arguments and result): cuda::compare_attention
/// on a GPU, for instance (the kvcodec command's --attention-device).
using attention_backend = std::function<attention_metrics(const kv_cache&, const kv_cache&, const attention_options&)>;

struct eval_options {
  encode_options encode;
  int threads = 0;            ///< 0 = all hardware threads
  int repeats = 0;            ///< 0 = repeat until ~0.3 s or 5 runs, keep the best time
  bool attention = true;      ///< attention fidelity when the cache has queries
  attention_options attn;
  attention_backend attention_on;          ///< empty: compare_attention on the CPU
  std::string attention_device = "cpu";    ///< what attention_on runs on, reported with the metrics
  registry const* reg = nullptr;
};

struct eval_result {
  std::string codec;  ///< canonical spec
  std::string requested;
  double bits_per_element = 0, ratio_vs_fp16 = 0;
  double encode_mb_s = 0, decode_mb_s = 0;
  std::size_t codec_bytes = 0, container_bytes = 0, kv_elements = 0;
  coder_stats stats;
  bool lossless = false;
  std::optional<target_choice> target;  ///< how a `kvc:target=KL` spec was resolved on this cache
  kv_metrics metrics;
  std::optional<attention_metrics> attention;
  std::string attention_device;  ///< "cpu", or the backend's device ("cuda: NVIDIA H100 ...")
  kv_cache decoded;  ///< the reconstruction (kept for callers that evaluate further)
};

inline eval_result evaluate(const std::string& spec, const kv_cache& kv, const eval_options& opt = {}) {
  using clock = std::chrono::steady_clock;
  const registry& reg = opt.reg ? *opt.reg : builtin_registry();
  const cpu::par_t pol = cpu::par(opt.threads);
  eval_result r;
  r.requested = spec;
  std::string actual = spec;
  if (kvc_target_of(spec)) {
    target_choice tc;
    actual = resolve_target(spec, kv, &tc, target_options{.threads = opt.threads});
    r.target = tc;
  }
  double best_enc = std::numeric_limits<double>::infinity(), best_dec = best_enc;
  encoded enc;
  double spent = 0;
  const int max_runs = opt.repeats > 0 ? opt.repeats : 5;
  for (int run = 0; run < max_runs; ++run) {
    codec c = make_codec(actual, reg);
    const auto t0 = clock::now();
    enc = encode(pol, c, kv, opt.encode);
    const auto t1 = clock::now();
    r.lossless = c.lossless();
    r.decoded = decode(pol, enc.data, decode_options{.name = "encoded " + spec}, reg);
    const auto t2 = clock::now();
    best_enc = std::min(best_enc, std::chrono::duration<double>(t1 - t0).count());
    best_dec = std::min(best_dec, std::chrono::duration<double>(t2 - t1).count());
    spent += std::chrono::duration<double>(t2 - t0).count();
    if (opt.repeats == 0 && spent > 0.3) break;
  }
  r.codec = enc.report.spec;
  r.codec_bytes = enc.report.codec_bytes;
  r.container_bytes = enc.report.container_bytes;
  r.kv_elements = enc.report.kv_elements;
  r.bits_per_element = enc.report.bits_per_element;
  r.ratio_vs_fp16 = r.bits_per_element > 0 ? 16.0 / r.bits_per_element : 0.0;
  r.stats = enc.report.stats;
  const double mb = static_cast<double>(r.kv_elements) * 2.0 / 1e6;
  r.encode_mb_s = mb / std::max(best_enc, 1e-9);
  r.decode_mb_s = mb / std::max(best_dec, 1e-9);
  r.metrics = compare_kv(kv, r.decoded, static_cast<unsigned>(std::max(opt.threads, 0)));
  if (opt.attention && kv.has_queries()) {
    r.attention = opt.attention_on ? opt.attention_on(kv, r.decoded, opt.attn) : compare_attention(kv, r.decoded, opt.attn);
    r.attention_device = opt.attention_on ? opt.attention_device : "cpu";
  }
  return r;
}

namespace detail {
inline nlohmann::json num(double v) {
  if (!std::isfinite(v)) return nullptr;  // e.g. snr_db of an exact reconstruction
  return v;
}
inline nlohmann::json tensor_json(const tensor_metrics& m) {
  return {{"rel_fro_error", num(m.rel_fro_error)}, {"max_abs_error", num(m.max_abs_error)}, {"snr_db", num(m.snr_db)},
          {"cosine", num(m.cosine)}, {"nonfinite", m.nonfinite}};
}
}  // namespace detail

/// The JSON object `kvcodec eval --json` prints for one codec.
inline nlohmann::json to_json(const eval_result& r) {
  nlohmann::json j;
  j["codec"] = r.codec;
  j["requested"] = r.requested;
  j["bits_per_element"] = r.bits_per_element;
  j["ratio_vs_fp16"] = r.ratio_vs_fp16;
  j["encode_mb_s"] = r.encode_mb_s;
  j["decode_mb_s"] = r.decode_mb_s;
  j["codec_bytes"] = r.codec_bytes;
  j["container_bytes"] = r.container_bytes;
  j["kv_elements"] = r.kv_elements;
  j["lossless"] = r.lossless;
  j["payload_bits"] = r.stats.payload_bits;
  j["side_info_bits"] = r.stats.side_info_bits;
  j["quant_side_bits"] = r.stats.quant_side_bits;
  j["entropy_bound_bits"] = r.stats.entropy_bound_bits;
  j["key"] = detail::tensor_json(r.metrics.key);
  j["value"] = detail::tensor_json(r.metrics.value);
  if (r.target) {
    const auto& t = *r.target;
    j["target"] = {{"asked_kl", t.target}, {"bins", t.bins}, {"kl", detail::num(t.kl)}, {"proxy", t.proxy}, {"met", t.met}, {"trials", t.trials}};
  }
  if (r.attention) {
    const auto& a = *r.attention;
    j["attention"] = {{"rel_error", detail::num(a.rel_error)}, {"kl", detail::num(a.kl)}, {"dropped_mass", detail::num(a.dropped_mass)},
                      {"rows", a.rows}, {"empty_rows", a.empty_rows}, {"device", r.attention_device}};
  } else {
    j["attention"] = nullptr;
  }
  return j;
}

}  // namespace kvcodec::eval
