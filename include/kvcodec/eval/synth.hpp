// kvcodec/eval/synth.hpp — synthetic KV caches with the statistics of real post-RoPE Llama caches.
//
// Per (layer, kv head): pre-RoPE keys k_t[c] = mu[c] + sigma[c] z_t[c] with z an AR(1) process across
// tokens (rho in [0.85, 0.95], approximately Gaussian innovations) and a few outlier channels (whole
// RoPE pairs taken from the low-frequency end, |mu| 10-20x the others; cf. KIVI / KVQuant's per-channel
// key outliers); the first `sinks` tokens get a large extra component along the mean query direction
// (attention sinks, StreamingLLM). Values are AR(1) with weak correlation (rho 0.3) and Laplace
// innovations (heavier-tailed than keys). Queries of the heads of a GQA group share a mean aligned with
// the keys' outlier channels, so attention is peaked. Keys and queries are then rotated with RoPE on
// interleaved pairs (2p, 2p+1), theta_p = 10000^(-2p/head_dim), angle = position * theta_p.
// Invariants: every element is exactly representable in `dtype` (rounded RNE); the result depends only
// on the options minus `threads` (one counter-seeded splitmix64 stream per (layer, head, tensor), each
// layer generated entirely by one thread).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/random.hpp"
#include "kvcodec/eval/metrics.hpp"
#include "kvcodec/tensor/dtype.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::eval {

struct synth_options {
  std::int32_t layers = 32;
  std::int32_t kv_heads = 8;
  std::int32_t q_heads = 32;  ///< 0 = no queries
  std::int32_t head_dim = 128;
  std::int64_t tokens = 1024;
  kvcodec::dtype dtype = kvcodec::dtype::f16;  ///< f32, f16 or bf16: every value is rounded to it
  std::uint64_t seed = 0;
  std::int32_t outliers = 4;  ///< outlier key channels per head (even: whole RoPE pairs)
  std::int32_t sinks = 2;     ///< leading tokens with sink keys
  unsigned threads = 0;       ///< 0 = hardware concurrency; does not change the output
};

/// Seed of an independent stream for (seed, a, b, c).
KVCODEC_HD inline std::uint64_t stream_seed(std::uint64_t seed, std::uint64_t a, std::uint64_t b, std::uint64_t c) noexcept {
  std::uint64_t s = seed ^ 0x5851F42D4C957F2Dull;
  s = splitmix64_next(s) ^ a;
  s = splitmix64_next(s) ^ (b << 20) ^ c;
  return splitmix64_next(s);
}

/// Uniform in (0, 1) from the top 53 bits.
KVCODEC_HD inline double uniform01(std::uint64_t& state) noexcept {
  return (static_cast<double>(splitmix64_next(state) >> 11) + 0.5) * 0x1.0p-53;
}

/// Approximately standard normal (Irwin-Hall sum of four 16-bit uniforms, unit variance, |x| < 3.47).
KVCODEC_HD inline float fast_normal(std::uint64_t& state) noexcept {
  const std::uint64_t r = splitmix64_next(state);
  const float sum = static_cast<float>((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48)) + 2.0f;
  return (sum * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

/// Unit-variance Laplace variate.
KVCODEC_HD inline float fast_laplace(std::uint64_t& state) noexcept {
  const std::uint64_t r = splitmix64_next(state);
  const float u = (static_cast<float>(r >> 40) + 0.5f) * (1.0f / 16777216.0f);
  const float m = -std::log(u) * 0.70710678f;
  return (r & 1u) ? -m : m;
}

/// Rotates interleaved pairs (2p, 2p+1) of a row by the angles whose cos/sin are given per pair.
KVCODEC_HD inline void rope_rotate_pairs(float* row, const float* cs, const float* sn, std::int64_t pairs) noexcept {
  for (std::int64_t p = 0; p < pairs; ++p) {
    const float x = row[2 * p], y = row[2 * p + 1];
    row[2 * p] = x * cs[p] - y * sn[p];
    row[2 * p + 1] = x * sn[p] + y * cs[p];
  }
}

/// Same result as round_to_dtype(x, t), branch-free for f16 normal values (the common case here):
/// adding 0xfff plus the kept LSB then truncating 13 mantissa bits is round-to-nearest-even.
KVCODEC_HD inline float round_to_dtype_fast(float x, dtype t) noexcept {
  if (t == dtype::f16) {
    const std::uint32_t u = bit_cast_hd<std::uint32_t>(x), a = u & 0x7fffffffu;
    if (a >= 0x38800000u && a < 0x477fe000u)  // [2^-14, 65504): normal f16 range, no overflow
      return bit_cast_hd<float>((u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu);
  }
  return round_to_dtype(x, t);
}

namespace detail {

enum : std::uint64_t { synth_keys = 1, synth_values = 2, synth_queries = 3, synth_params = 4, synth_tokens = 5 };

/// Generates one layer of `c` (keys, values and queries already sized).
inline void synth_layer(kv_cache& c, const synth_options& o, int l, const std::vector<float>& cosv,
                        const std::vector<float>& sinv) {
  const std::int64_t T = o.tokens, D = o.head_dim, P = D / 2;
  const int group = o.q_heads > 0 ? o.q_heads / o.kv_heads : 0;
  const auto ls = static_cast<std::size_t>(l);
  const auto Ds = static_cast<std::size_t>(D);
  std::vector<float> mu(Ds), sigma(Ds), rho(Ds), innov(Ds), z(Ds), qmu(Ds), vmu(Ds), vs(Ds), row(Ds), sink(Ds);
  for (int g = 0; g < o.kv_heads; ++g) {
    std::uint64_t ps = stream_seed(o.seed, static_cast<std::uint64_t>(l), static_cast<std::uint64_t>(g), synth_params);
    for (std::size_t ch = 0; ch < Ds; ++ch) {
      mu[ch] = 0.5f * fast_normal(ps);
      sigma[ch] = static_cast<float>(0.6 + 0.8 * uniform01(ps));
      rho[ch] = static_cast<float>(0.85 + 0.10 * uniform01(ps));
      innov[ch] = std::sqrt(1.0f - rho[ch] * rho[ch]);
      qmu[ch] = 0.3f * fast_normal(ps);
    }
    // Outlier pairs: distinct pairs drawn from the lowest-frequency quarter (or as many as needed).
    const std::int64_t npairs = std::min<std::int64_t>(o.outliers / 2, P);
    const std::int64_t lo = std::max<std::int64_t>(0, std::min(P - P / 4, P - npairs));
    std::vector<std::uint8_t> used(static_cast<std::size_t>(P), 0);
    for (std::int64_t k = 0; k < npairs; ++k) {
      std::int64_t p = lo + static_cast<std::int64_t>(splitmix64_next(ps) % static_cast<std::uint64_t>(P - lo));
      while (used[static_cast<std::size_t>(p)]) p = p + 1 < P ? p + 1 : lo;
      used[static_cast<std::size_t>(p)] = 1;
      for (std::int64_t ch = 2 * p; ch < 2 * p + 2; ++ch) {
        const float mag = static_cast<float>(10.0 + 10.0 * uniform01(ps));
        const float sgn = (splitmix64_next(ps) & 1u) ? -1.0f : 1.0f;
        mu[static_cast<std::size_t>(ch)] = sgn * mag;
        sigma[static_cast<std::size_t>(ch)] = 0.15f * mag;
        qmu[static_cast<std::size_t>(ch)] = sgn * static_cast<float>(2.0 + 2.0 * uniform01(ps));
      }
    }
    double qn = 0.0;
    for (std::size_t ch = 0; ch < Ds; ++ch) qn += static_cast<double>(qmu[ch]) * qmu[ch];
    const double beta = qn > 0 ? 8.0 * std::sqrt(static_cast<double>(D)) / std::sqrt(qn) : 0.0;
    for (std::size_t ch = 0; ch < Ds; ++ch) sink[ch] = static_cast<float>(beta * qmu[ch] / std::sqrt(qn > 0 ? qn : 1.0));
    const float head_scale = static_cast<float>(0.5 + uniform01(ps));
    for (std::size_t ch = 0; ch < Ds; ++ch) {
      vmu[ch] = 0.1f * fast_normal(ps);
      vs[ch] = head_scale * static_cast<float>(0.5 + uniform01(ps));
    }

    const std::size_t base = static_cast<std::size_t>(g) * static_cast<std::size_t>(T) * Ds;
    float* K = c.keys[ls].data() + base;
    float* V = c.values[ls].data() + base;
    std::uint64_t ks = stream_seed(o.seed, static_cast<std::uint64_t>(l), static_cast<std::uint64_t>(g), synth_keys);
    for (std::size_t ch = 0; ch < Ds; ++ch) z[ch] = fast_normal(ks);
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::size_t ch = 0; ch < Ds; ++ch) {
        z[ch] = rho[ch] * z[ch] + innov[ch] * fast_normal(ks);
        row[ch] = mu[ch] + sigma[ch] * z[ch] + (t < o.sinks ? sink[ch] : 0.0f);
      }
      rope_rotate_pairs(row.data(), cosv.data() + t * P, sinv.data() + t * P, P);
      float* out = K + t * D;
      for (std::size_t ch = 0; ch < Ds; ++ch) out[ch] = round_to_dtype_fast(row[ch], o.dtype);
    }
    std::uint64_t vsd = stream_seed(o.seed, static_cast<std::uint64_t>(l), static_cast<std::uint64_t>(g), synth_values);
    const float vr = 0.3f, vi = std::sqrt(1.0f - vr * vr);
    for (std::size_t ch = 0; ch < Ds; ++ch) z[ch] = fast_laplace(vsd);
    for (std::int64_t t = 0; t < T; ++t) {
      float* out = V + t * D;
      for (std::size_t ch = 0; ch < Ds; ++ch) {
        z[ch] = vr * z[ch] + vi * fast_laplace(vsd);
        out[ch] = round_to_dtype_fast(vmu[ch] + vs[ch] * z[ch], o.dtype);
      }
    }
    for (int hq = g * group; hq < (g + 1) * group; ++hq) {
      std::uint64_t qs = stream_seed(o.seed, static_cast<std::uint64_t>(l), static_cast<std::uint64_t>(hq), synth_queries);
      const float qscale = static_cast<float>(0.8 + 0.4 * uniform01(qs));
      float* Q = c.queries[ls].data() + static_cast<std::size_t>(hq) * static_cast<std::size_t>(T) * Ds;
      for (std::size_t ch = 0; ch < Ds; ++ch) z[ch] = fast_normal(qs);
      for (std::int64_t t = 0; t < T; ++t) {
        for (std::size_t ch = 0; ch < Ds; ++ch) {
          z[ch] = 0.7f * z[ch] + 0.71414284f * fast_normal(qs);
          row[ch] = qscale * qmu[ch] + z[ch];
        }
        rope_rotate_pairs(row.data(), cosv.data() + t * P, sinv.data() + t * P, P);
        float* out = Q + t * D;
        for (std::size_t ch = 0; ch < Ds; ++ch) out[ch] = round_to_dtype_fast(row[ch], o.dtype);
      }
    }
  }
}

}  // namespace detail

/// Builds a synthetic cache (see the header comment). Throws usage for invalid options.
inline kv_cache synth_cache(const synth_options& o) {
  const auto bad = [](const std::string& field, const std::string& expected, long long found) {
    throw_usage("synth_cache: option '" + field + "': expected " + expected + ", found " + std::to_string(found));
  };
  if (o.layers <= 0) bad("layers", "> 0", o.layers);
  if (o.kv_heads <= 0) bad("kv_heads", "> 0", o.kv_heads);
  if (o.head_dim <= 0 || o.head_dim % 2 != 0) bad("head_dim", "an even number > 0 (RoPE pairs)", o.head_dim);
  if (o.tokens <= 0 || o.tokens > 0x7fffffff) bad("tokens", "in [1, 2^31)", o.tokens);
  if (o.q_heads < 0 || o.q_heads % o.kv_heads != 0) bad("q_heads", "0 or a multiple of kv_heads", o.q_heads);
  if (o.outliers < 0 || o.outliers % 2 != 0 || o.outliers > o.head_dim)
    bad("outliers", "an even number in [0, head_dim]", o.outliers);
  if (o.sinks < 0) bad("sinks", ">= 0", o.sinks);
  if (o.dtype != dtype::f32 && o.dtype != dtype::f16 && o.dtype != dtype::bf16)
    throw_usage("synth_cache: option 'dtype': expected f32, f16 or bf16, found " + std::string(dtype_name(o.dtype)));

  kv_cache c;
  c.shape = kv_shape{o.layers, o.kv_heads, o.q_heads, o.head_dim, o.tokens};
  c.source_dtype = o.dtype;
  const std::int64_t T = o.tokens, P = o.head_dim / 2;
  const auto L = static_cast<std::size_t>(o.layers);
  c.keys.resize(L);
  c.values.resize(L);
  if (o.q_heads > 0) c.queries.resize(L);

  std::vector<float> cosv(static_cast<std::size_t>(T * P)), sinv(cosv.size());
  for (std::int64_t p = 0; p < P; ++p) {
    const double theta = std::pow(10000.0, -2.0 * static_cast<double>(p) / static_cast<double>(o.head_dim));
    for (std::int64_t t = 0; t < T; ++t) {
      const double ang = static_cast<double>(t) * theta;
      cosv[static_cast<std::size_t>(t * P + p)] = static_cast<float>(std::cos(ang));
      sinv[static_cast<std::size_t>(t * P + p)] = static_cast<float>(std::sin(ang));
    }
  }

  detail::run_tasks(o.layers, o.threads, [&](std::int64_t l) {
    const auto ls = static_cast<std::size_t>(l);
    c.keys[ls].resize(c.shape.layer_elements());
    c.values[ls].resize(c.shape.layer_elements());
    if (o.q_heads > 0)
      c.queries[ls].resize(static_cast<std::size_t>(o.q_heads) * static_cast<std::size_t>(T) * static_cast<std::size_t>(o.head_dim));
    detail::synth_layer(c, o, static_cast<int>(l), cosv, sinv);
  });

  c.tokens.resize(static_cast<std::size_t>(T));
  c.positions.resize(static_cast<std::size_t>(T));
  std::uint64_t ts = stream_seed(o.seed, 0, 0, detail::synth_tokens);
  for (std::int64_t t = 0; t < T; ++t) {
    c.tokens[static_cast<std::size_t>(t)] = t == 0 ? 1 : static_cast<std::int32_t>(splitmix64_next(ts) % 32000u);
    c.positions[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(t);
  }
  c.metadata = {{"model", "synth"},
                {"synthetic", "true"},
                {"layers", std::to_string(o.layers)},
                {"q_heads", std::to_string(o.q_heads)},
                {"kv_heads", std::to_string(o.kv_heads)},
                {"head_dim", std::to_string(o.head_dim)},
                {"tokens", std::to_string(o.tokens)},
                {"rope", "interleaved-pairs"},
                {"rope_theta", "10000"},
                {"post_rope", "true"},
                {"positions", "0.." + std::to_string(o.tokens - 1)},
                {"seed", std::to_string(o.seed)},
                {"dtype", std::string(dtype_name(o.dtype))}};
  return c;
}

}  // namespace kvcodec::eval
