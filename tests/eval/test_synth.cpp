// Tests for kvcodec/eval/synth.hpp: shape, determinism, representability and statistics.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "kvcodec/eval/attention.hpp"
#include "kvcodec/eval/synth.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_eval_synth {

using namespace kvcodec;
using kvcodec::eval::synth_cache;
using kvcodec::eval::synth_options;

namespace {

synth_options small_options() {
  synth_options o;
  o.layers = 2;
  o.kv_heads = 4;
  o.q_heads = 8;
  o.head_dim = 64;
  o.tokens = 512;
  o.seed = 42;
  return o;
}

bool same_floats(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].size() != b[i].size() || std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)) != 0) return false;
  return true;
}

/// Series of channel c of head h over tokens.
std::vector<double> channel(strided_view3<const float> v, std::int64_t h, std::int64_t c) {
  std::vector<double> x(static_cast<std::size_t>(v.n1));
  for (std::int64_t t = 0; t < v.n1; ++t) x[static_cast<std::size_t>(t)] = v(h, t, c);
  return x;
}

double lag1_corr(const std::vector<double>& x, std::size_t from = 0) {
  double m = 0;
  for (std::size_t i = from; i < x.size(); ++i) m += x[i];
  m /= static_cast<double>(x.size() - from);
  double num = 0, den = 0;
  for (std::size_t i = from; i < x.size(); ++i) {
    den += (x[i] - m) * (x[i] - m);
    if (i + 1 < x.size()) num += (x[i] - m) * (x[i + 1] - m);
  }
  return num / den;
}

double excess_kurtosis(const std::vector<double>& x, std::size_t from = 0) {
  double m = 0;
  for (std::size_t i = from; i < x.size(); ++i) m += x[i];
  m /= static_cast<double>(x.size() - from);
  double m2 = 0, m4 = 0;
  for (std::size_t i = from; i < x.size(); ++i) {
    const double d = (x[i] - m) * (x[i] - m);
    m2 += d;
    m4 += d * d;
  }
  const double n = static_cast<double>(x.size() - from);
  m2 /= n;
  m4 /= n;
  return m4 / (m2 * m2) - 3.0;
}

}  // namespace

TEST_CASE("synth: shape and metadata") {
  const auto o = small_options();
  const kv_cache c = synth_cache(o);
  CHECK_NOTHROW(c.validate("synth"));
  CHECK(c.shape == kv_shape{2, 4, 8, 64, 512});
  CHECK(c.source_dtype == dtype::f16);
  CHECK(c.has_queries());
  CHECK(c.is_dense());
  REQUIRE(c.tokens.size() == 512);
  REQUIRE(c.positions.size() == 512);
  for (std::size_t t = 0; t < 512; ++t) {
    CHECK(c.positions[t] == static_cast<std::int32_t>(t));
    CHECK(c.tokens[t] >= 0);
    CHECK(c.tokens[t] < 32000);
  }
  CHECK(c.metadata.at("model") == "synth");
  CHECK(c.metadata.at("synthetic") == "true");
  CHECK(c.metadata.at("rope") == "interleaved-pairs");
  CHECK(c.metadata.at("rope_theta") == "10000");
  CHECK(c.metadata.at("post_rope") == "true");
  CHECK(c.metadata.at("tokens") == "512");
  CHECK(c.metadata.at("positions") == "0..511");

  synth_options nq = o;
  nq.q_heads = 0;
  const kv_cache d = synth_cache(nq);
  CHECK_FALSE(d.has_queries());
  CHECK(d.shape.q_heads == 0);
  CHECK_NOTHROW(d.validate());
  CHECK(same_floats(c.keys, d.keys));  // queries come from their own streams

  synth_options tiny;
  tiny.layers = 1;
  tiny.kv_heads = 1;
  tiny.q_heads = 3;
  tiny.head_dim = 2;
  tiny.tokens = 1;
  tiny.outliers = 2;
  const kv_cache t = synth_cache(tiny);
  CHECK_NOTHROW(t.validate());
  CHECK(t.keys[0].size() == 2);
  CHECK(t.queries[0].size() == 6);
  CHECK(std::abs(t.keys[0][0]) + std::abs(t.keys[0][1]) > 5.0f);  // the only pair is an outlier
  tiny.outliers = 0;
  tiny.sinks = 0;
  tiny.tokens = 7;
  CHECK_NOTHROW(synth_cache(tiny).validate());
}

TEST_CASE("synth: deterministic per seed / independent of threads") {
  auto o = small_options();
  o.layers = 5;
  o.threads = 1;
  const kv_cache a = synth_cache(o);
  o.threads = 3;
  const kv_cache b = synth_cache(o);
  o.threads = 0;
  const kv_cache c = synth_cache(o);
  for (const kv_cache* x : {&b, &c}) {
    CHECK(same_floats(a.keys, x->keys));
    CHECK(same_floats(a.values, x->values));
    CHECK(same_floats(a.queries, x->queries));
    CHECK(a.tokens == x->tokens);
  }
  o.seed = 43;
  const kv_cache d = synth_cache(o);
  CHECK_FALSE(same_floats(a.keys, d.keys));
  CHECK_FALSE(same_floats(a.values, d.values));
  CHECK_FALSE(same_floats(a.queries, d.queries));
  CHECK(a.tokens != d.tokens);
  CHECK_FALSE(std::equal(a.keys[0].begin(), a.keys[0].end(), a.keys[1].begin()));
}

TEST_CASE("synth: values are exactly representable in the chosen dtype") {
  for (dtype t : {dtype::f16, dtype::bf16, dtype::f32}) {
    auto o = small_options();
    o.dtype = t;
    const kv_cache c = synth_cache(o);
    CHECK(c.source_dtype == t);
    std::size_t not_f16 = 0, bad = 0;
    for (const auto* tensor : {&c.keys, &c.values, &c.queries})
      for (const auto& layer : *tensor)
        for (float x : layer) {
          if (!std::isfinite(x) || round_to_dtype(x, t) != x) ++bad;
          if (round_to_dtype(x, dtype::f16) != x) ++not_f16;
        }
    CHECK(bad == 0);
    if (t == dtype::f16) CHECK(not_f16 == 0);
    else CHECK(not_f16 > 0);
  }
}

TEST_CASE("round_to_dtype_fast matches round_to_dtype") {
  std::uint64_t st = 12345;
  std::vector<float> xs = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 6.1035156e-05f, 6.1e-05f, 1e-8f,
                           1.0f + 0x1p-11f, 1.0f + 0x1p-11f + 0x1p-23f, 1.0f + 3 * 0x1p-11f, 2047.5f, 2048.5f};
  for (int i = 0; i < 200000; ++i) {
    const std::uint32_t bits = static_cast<std::uint32_t>(kvcodec::splitmix64_next(st));
    const float x = bit_cast_hd<float>(bits);
    if (std::isfinite(x)) xs.push_back(x);
    xs.push_back(bit_cast_hd<float>((bits & 0x8fffffffu) | 0x38000000u));  // mostly in f16 range
  }
  for (dtype t : {dtype::f16, dtype::bf16, dtype::f32}) {
    std::size_t mismatches = 0;
    for (float x : xs) {
      const float a = eval::round_to_dtype_fast(x, t), b = round_to_dtype(x, t);
      if (std::memcmp(&a, &b, sizeof a) != 0) ++mismatches;
    }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("synth: statistics of real caches") {
  const auto o = small_options();
  const kv_cache c = synth_cache(o);
  const std::size_t skip = static_cast<std::size_t>(o.sinks);
  double key_corr = 0, key_kurt = 0, val_kurt = 0, val_corr = 0;
  int n = 0;
  for (int l = 0; l < o.layers; ++l)
    for (int h = 0; h < o.kv_heads; ++h) {
      std::vector<double> mean_abs;
      for (int ch = 0; ch < o.head_dim; ++ch) {
        const auto k = channel(c.key(l), h, ch), v = channel(c.value(l), h, ch);
        double m = 0;
        for (std::size_t t = skip; t < k.size(); ++t) m += std::abs(k[t]);
        mean_abs.push_back(m / static_cast<double>(k.size() - skip));
        key_corr += lag1_corr(k, skip);
        val_corr += lag1_corr(v);
        key_kurt += excess_kurtosis(k, skip);
        val_kurt += excess_kurtosis(v);
        ++n;
      }
      std::vector<double> sorted = mean_abs;
      std::sort(sorted.begin(), sorted.end());
      const double median = sorted[sorted.size() / 2];
      const auto big = std::count_if(mean_abs.begin(), mean_abs.end(), [&](double m) { return m > 5 * median; });
      CHECK(big == o.outliers);
      CHECK(sorted.back() > 10 * median);
      // outlier channels come in whole RoPE pairs
      for (std::size_t ch = 0; ch < mean_abs.size(); ch += 2)
        CHECK((mean_abs[ch] > 5 * median) == (mean_abs[ch + 1] > 5 * median));
    }
  key_corr /= n;
  val_corr /= n;
  key_kurt /= n;
  val_kurt /= n;
  MESSAGE("mean lag-1 correlation: keys " << key_corr << ", values " << val_corr << "; excess kurtosis: keys "
                                          << key_kurt << ", values " << val_kurt);
  CHECK(key_corr > 0.5);
  CHECK(val_corr < key_corr);
  CHECK(val_kurt > key_kurt + 1.0);

  // RoPE on interleaved pairs, theta 10000: undoing it on the fastest pair (1 rad per token) restores
  // the AR(1) correlation that the rotation hides.
  std::vector<double> raw, derot;
  double raw_c = 0, derot_c = 0;
  for (int h = 0; h < o.kv_heads; ++h) {
    const auto x = channel(c.key(0), h, 0), y = channel(c.key(0), h, 1);
    raw = x;
    derot.assign(x.size(), 0.0);
    for (std::size_t t = 0; t < x.size(); ++t)
      derot[t] = x[t] * std::cos(static_cast<double>(t)) + y[t] * std::sin(static_cast<double>(t));
    raw_c += lag1_corr(raw, skip) / o.kv_heads;
    derot_c += lag1_corr(derot, skip) / o.kv_heads;
  }
  MESSAGE("pair 0 lag-1 correlation: post-RoPE " << raw_c << ", de-rotated " << derot_c);
  CHECK(derot_c > 0.8);
  CHECK(raw_c < 0.65);
}

TEST_CASE("synth: attention is peaked on sink tokens") {
  const auto o = small_options();
  const kv_cache c = synth_cache(o);
  const auto drop_tokens = [&](std::vector<std::int32_t> gone) {
    kv_cache b = c;
    b.kept.assign(static_cast<std::size_t>(o.layers), std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(o.kv_heads)));
    for (auto& l : b.kept)
      for (auto& h : l)
        for (std::int32_t t = 0; t < o.tokens; ++t)
          if (std::find(gone.begin(), gone.end(), t) == gone.end()) h.push_back(t);
    return b;
  };
  eval::attention_options opt;
  opt.query_begin = 64;
  const auto sinks = eval::compare_attention(c, drop_tokens({0, 1}), opt);
  const auto others = eval::compare_attention(c, drop_tokens({30, 31}), opt);
  MESSAGE("attention mass on tokens {0,1}: " << sinks.dropped_mass << ", on {30,31}: " << others.dropped_mass);
  CHECK(sinks.dropped_mass > 0.2);
  CHECK(sinks.dropped_mass > 10 * others.dropped_mass);
}

TEST_CASE("synth: bad options") {
  const auto expect_usage = [](synth_options o) {
    try {
      synth_cache(o);
      FAIL("expected a usage error");
    } catch (const kvcodec::error& e) {
      CHECK(e.kind() == error_kind::usage);
    }
  };
  auto o = small_options();
  o.head_dim = 63;
  expect_usage(o);
  o = small_options();
  o.q_heads = 6;
  expect_usage(o);
  o = small_options();
  o.tokens = 0;
  expect_usage(o);
  o = small_options();
  o.layers = 0;
  expect_usage(o);
  o = small_options();
  o.kv_heads = -1;
  expect_usage(o);
  o = small_options();
  o.outliers = 3;
  expect_usage(o);
  o = small_options();
  o.dtype = dtype::i32;
  expect_usage(o);
}

TEST_CASE("synth: speed") {
  synth_options o;
  o.layers = 8;
  o.tokens = 1024;
  o.q_heads = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const kv_cache c = synth_cache(o);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double mb = static_cast<double>(c.shape.kv_elements()) * 2 / 1e6;
  MESSAGE("synth 8x8x1024x128 K+V (" << mb << " MB as f16): " << s << " s, " << mb / s << " MB/s");
  CHECK(c.keys.size() == 8);
}

TEST_CASE("synth: full-size benchmark" * doctest::skip(true)) {
  for (std::int32_t q : {0, 32}) {
    synth_options o;
    o.tokens = 2048;
    o.q_heads = q;
    const auto t0 = std::chrono::steady_clock::now();
    const kv_cache c = synth_cache(o);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE("synth 32x8x2048x128, q_heads " << q << " (K+V " << static_cast<double>(c.shape.kv_elements()) * 2 / 1e6
                                            << " MB as f16): " << s << " s");
    CHECK(c.keys.size() == 32);
    if (q > 0) {
      eval::attention_options opt;
      opt.max_rows = 4096;
      const auto t1 = std::chrono::steady_clock::now();
      const auto m = eval::compare_attention(c, c, opt);
      MESSAGE("compare_attention, " << m.rows << " sampled rows: "
                                    << std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count() << " s");
      CHECK(m.rows > 0);
    }
  }
}

}  // namespace kvcodec_test_eval_synth
