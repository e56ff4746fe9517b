// kvcodec/pipeline/target.hpp — quality targets instead of levels: `kvc:target=KL`.
//
// `kvc:level=L` fixes the bins; `kvc:target=X` asks for the smallest kvc encoding whose attention KL
// (eval/attention.hpp: mean over query rows of KL(p || p^), nats) stays at or under X on the cache being
// encoded. The rate axis is kvc's own, made fine-grained: key bins = value bins = B for every even B
// in 4..256 (the nine levels are B = 256, 128, 64, 48, 32, 24, 16, 12, 8 on it; per-channel key scales,
// per-token value scales, or per-channel with `values=channel`; rANS), continued in steps of 2^(1/8) up
// to 4096 bins for caches whose attention is so sharp that 256 bins stay above the target (stories260K:
// attention KL 0.002 at 256 bins). The attention KL falls as B grows, so the smallest B under the target
// is found by bisection: 9 trial reconstructions (quantize + dequantize, no entropy coding, which
// is lossless and does not change the KL), each scored on the cache's own queries.
//
// Queries: the cache's (a dump with `queries.{l}`); without them, a documented proxy: Gaussian queries,
// one per kv head and token, with the per-channel RMS of that head's keys (a fixed seed). The proxy ranks
// encodings the same way but its KL is not the model's attention KL; `target_choice::proxy` says so.
// Cost: the trials hold one reconstruction of the cache (f32) beside it; large caches score a sample of
// query rows (`target_options::max_rows`).
//
// The container stores the resolved spec (cachegen-quant:kbins=B,...|rans:...), so decoders need
// nothing new. make_codec("kvc:target=...") alone cannot resolve it and says so; the kvcodec command
// (encode, eval; `encode --max-kl X`), the Python module and resolve_target() do.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/eval/attention.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/pipeline/decode.hpp"
#include "kvcodec/pipeline/encode.hpp"
#include "kvcodec/registry/presets.hpp"

namespace kvcodec {

struct target_options {
  /// Query rows scored per trial: 0 = all rows up to 262144 rows, then a deterministic sample of that many.
  std::int64_t max_rows = 0;
  int threads = 0;  ///< 0 = all cores
};

struct target_choice {
  std::string spec;      ///< the resolved spec (what the container stores)
  int bins = 0;          ///< key = value bins
  double target = 0;     ///< the asked attention KL
  double kl = 0;         ///< attention KL of the chosen encoding, as measured
  bool proxy = false;    ///< true: the cache had no queries: proxy queries shaped by its keys were used
  bool met = true;       ///< false when even 4096 bins stay above the target (the finest is chosen)
  int trials = 0;
};

/// The target of a `kvc:target=X` spec; nullopt for any other spec. Bad values are usage errors.
/// `values` (if given) receives the spec's value-scale axis (kvc's `values` parameter).
inline std::optional<double> kvc_target_of(std::string_view spec, std::string* values = nullptr) {
  const auto st = parse_spec(spec);
  if (st.size() != 1 || st[0].name != "kvc") return std::nullopt;
  std::optional<double> t;
  bool level = false;
  std::string vals = "token";
  for (const auto& [k, v] : st[0].params) {
    if (k == "level") level = true;
    if (k == "values") {
      if (v != "token" && v != "channel") throw_usage("codec spec '" + std::string(spec) + "': kvc values: expected token or channel, found '" + v + "'");
      vals = v;
    }
    if (k != "target") continue;
    double x = 0;
    if (!detail::from_text(v, x) || !(x > 0) || !std::isfinite(x))
      throw_usage("codec spec '" + std::string(spec) + "': kvc target: expected an attention KL > 0 (e.g. target=0.01), found '" + v + "'");
    t = x;
  }
  if (t && level) throw_usage("codec spec '" + std::string(spec) + "': kvc takes level=L or target=KL, not both");
  if (values) *values = vals;
  return t;
}

namespace detail {
/// The cache to score attention with: kv itself when it has queries, else a copy with proxy queries: one
/// per kv head and token, Gaussian with the per-channel RMS of that head's keys (fixed seed). Keys used
/// as their own queries were tried first: each row then attends mostly to itself, and its KL at 256 bins
/// was still 0.007 on a synthetic cache whose real queries give 1e-5.
inline const kv_cache& scoring_cache(const kv_cache& kv, std::optional<kv_cache>& proxy) {
  if (kv.has_queries()) return kv;
  proxy.emplace(kv);
  const kv_shape& s = kv.shape;
  proxy->shape.q_heads = s.kv_heads;
  const std::size_t G = static_cast<std::size_t>(s.kv_heads), T = static_cast<std::size_t>(s.tokens), D = static_cast<std::size_t>(s.head_dim);
  proxy->queries.assign(static_cast<std::size_t>(s.layers), std::vector<float>(G * T * D));
  for (std::size_t l = 0; l < static_cast<std::size_t>(s.layers); ++l)
    for (std::size_t g = 0; g < G; ++g) {
      std::vector<double> ms(D, 0.0);
      const float* k = kv.keys[l].data() + g * T * D;
      for (std::size_t t = 0; t < T; ++t)
        for (std::size_t d = 0; d < D; ++d) ms[d] += static_cast<double>(k[t * D + d]) * k[t * D + d];
      std::uint64_t state = 0x6b7663746172ull + l * 1000003u + g;  // "kvctar"
      float* q = proxy->queries[l].data() + g * T * D;
      for (std::size_t t = 0; t < T; ++t)
        for (std::size_t d = 0; d < D; ++d)
          q[t * D + d] = static_cast<float>(std::sqrt(ms[d] / static_cast<double>(std::max<std::size_t>(T, 1)))) * eval::fast_normal(state);
    }
  return *proxy;
}
}  // namespace detail

/// Attention KL of kvc's quantizer at `bins` on kv, scored on `ref`'s queries (ref = kv with queries).
inline double kvc_bins_attention_kl(const kv_cache& ref, int bins, const target_options& opt = {}, const std::string& values = "token") {
  codec c = make_codec(kvc_quant_spec(bins, bins, values));
  const auto pol = cpu::par(opt.threads);
  const encoded e = encode(pol, c, ref);
  const kv_cache back = decode(pol, e.data, decode_options{.name = "kvc:target trial"});
  eval::attention_options ao;
  const std::int64_t rows = static_cast<std::int64_t>(ref.shape.layers) * ref.shape.q_heads * ref.shape.tokens;
  ao.max_rows = opt.max_rows > 0 ? opt.max_rows : (rows > 262144 ? 262144 : 0);
  ao.threads = static_cast<unsigned>(opt.threads > 0 ? opt.threads : 0);
  return eval::compare_attention(ref, back, ao).kl;
}

/// The smallest kvc encoding (even bins 4..256, keys = values) whose attention KL on kv is <= target.
inline target_choice choose_kvc_target(const kv_cache& kv, double target, const target_options& opt = {}, const std::string& values = "token") {
  if (!(target > 0) || !std::isfinite(target)) throw_usage("kvc target: expected an attention KL > 0, found " + std::to_string(target));
  if (!kv.kept.empty()) throw_usage("kvc:target: the cache is token-dropped; targets apply to dense caches");
  std::optional<kv_cache> proxy;
  const kv_cache& ref = detail::scoring_cache(kv, proxy);
  target_choice r;
  r.target = target;
  r.proxy = !kv.has_queries();
  // Candidates: every even B in 4..256 (the levels' range), then 256 * 2^(k/8) rounded to even up to 4096
  // (for caches whose attention is so sharp that 256 bins stay above the target). lo: known above the
  // target; hi: known at or under it.
  std::vector<int> cand;
  for (int b = 4; b <= 256; b += 2) cand.push_back(b);
  for (int k = 1; k <= 32; ++k) cand.push_back(2 * static_cast<int>(std::lround(128.0 * std::exp2(k / 8.0))));
  const int n = static_cast<int>(cand.size());
  auto bins_of = [&](int i) { return cand[static_cast<std::size_t>(i)]; };
  int lo = -1, hi = n - 1;
  double kl_hi = kvc_bins_attention_kl(ref, bins_of(hi), opt, values);
  ++r.trials;
  if (!(kl_hi <= target)) {
    r.met = false;
  } else {
    while (hi - lo > 1) {
      const int mid = lo + (hi - lo) / 2;
      const double k = kvc_bins_attention_kl(ref, bins_of(mid), opt, values);
      ++r.trials;
      if (k <= target) {
        hi = mid;
        kl_hi = k;
      } else {
        lo = mid;
      }
    }
  }
  r.bins = bins_of(hi);
  r.kl = kl_hi;
  r.spec = kvc_bins_spec(r.bins, r.bins, values);
  return r;
}

/// `spec` itself, unless it is `kvc:target=X`: then the resolved spec chosen on kv (choice, if given, says how).
inline std::string resolve_target(std::string_view spec, const kv_cache& kv, target_choice* choice = nullptr, const target_options& opt = {}) {
  std::string values;
  const auto t = kvc_target_of(spec, &values);
  if (!t) return std::string(spec);
  target_choice c = choose_kvc_target(kv, *t, opt, values);
  if (choice) *choice = c;
  return c.spec;
}

}  // namespace kvcodec
