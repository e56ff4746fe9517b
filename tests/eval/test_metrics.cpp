// Tests for kvcodec/eval/metrics.hpp: element-wise fidelity of K and V.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "kvcodec/eval/metrics.hpp"
#include "kvcodec/eval/synth.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_eval_metrics {

using namespace kvcodec;
using kvcodec::eval::compare_kv;

namespace {

kv_cache tiny(std::int32_t layers, std::int32_t heads, std::int64_t tokens, std::int32_t dim) {
  return kv_cache::zeros(kv_shape{layers, heads, 0, dim, tokens});
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace

TEST_CASE("compare_kv: identical caches are exact") {
  eval::synth_options o;
  o.layers = 2;
  o.kv_heads = 2;
  o.q_heads = 0;
  o.head_dim = 16;
  o.tokens = 33;
  const kv_cache a = eval::synth_cache(o);
  const auto m = compare_kv(a, a);
  for (const auto* t : {&m.key, &m.value}) {
    CHECK(t->rel_fro_error == 0.0);
    CHECK(t->max_abs_error == 0.0);
    CHECK(std::isinf(t->snr_db));
    CHECK(t->snr_db > 0);
    CHECK(t->cosine == 1.0);
    CHECK(t->nonfinite == 0);
  }
}

TEST_CASE("compare_kv: hand-computed 1x1x2x2 example") {
  kv_cache a = tiny(1, 1, 2, 2), b = tiny(1, 1, 2, 2);
  // K rows: (3,4),(0,0) vs (3,0),(0,0): err^2 16, ref^2 25, row cosines 9/15 and 1 (both zero).
  a.keys[0] = {3, 4, 0, 0};
  b.keys[0] = {3, 0, 0, 0};
  // V rows: (1,0),(0,2) vs (1,0),(0,-2): err^2 16, ref^2 5, row cosines 1 and -1.
  a.values[0] = {1, 0, 0, 2};
  b.values[0] = {1, 0, 0, -2};
  const auto m = compare_kv(a, b);
  CHECK(m.key.rel_fro_error == doctest::Approx(0.8));
  CHECK(m.key.max_abs_error == 4.0);
  CHECK(m.key.snr_db == doctest::Approx(10.0 * std::log10(25.0 / 16.0)));
  CHECK(m.key.cosine == doctest::Approx((0.6 + 1.0) / 2));
  CHECK(m.value.rel_fro_error == doctest::Approx(4.0 / std::sqrt(5.0)));
  CHECK(m.value.max_abs_error == 4.0);
  CHECK(m.value.snr_db == doctest::Approx(10.0 * std::log10(5.0 / 16.0)));
  CHECK(m.value.cosine == doctest::Approx(0.0));
}

TEST_CASE("compare_kv: dropped tokens read as zeros") {
  kv_cache a = tiny(1, 2, 3, 1), b;
  a.keys[0] = {1, 2, 3, 4, 5, 6};
  a.values[0] = {1, 1, 1, 1, 1, 1};
  b = a;  // buffers identical, but head 0 keeps only token 1 and head 1 keeps nothing
  b.kept = {{{1}, {}}};
  const auto m = compare_kv(a, b);
  // K: dropped elements 1,3 (head 0) and 4,5,6 (head 1): err^2 = 1+9+16+25+36 = 87, ref^2 = 91.
  CHECK(m.key.rel_fro_error == doctest::Approx(std::sqrt(87.0 / 91.0)));
  CHECK(m.key.max_abs_error == 6.0);
  // rows: one exact (cos 1), five zero in the reconstruction only (cos 0).
  CHECK(m.key.cosine == doctest::Approx(1.0 / 6.0));
  CHECK(m.value.rel_fro_error == doctest::Approx(std::sqrt(5.0 / 6.0)));
  CHECK(m.value.max_abs_error == 1.0);
}

TEST_CASE("compare_kv: zero original") {
  kv_cache a = tiny(1, 1, 1, 3), b = tiny(1, 1, 1, 3);
  auto m = compare_kv(a, b);
  CHECK(m.key.rel_fro_error == 0.0);
  CHECK(m.key.cosine == 1.0);
  CHECK(std::isinf(m.key.snr_db));
  b.values[0][1] = 0.5f;
  m = compare_kv(a, b);
  CHECK(std::isinf(m.value.rel_fro_error));
  CHECK(m.value.snr_db < 0);
  CHECK(std::isinf(m.value.snr_db));
  CHECK(m.value.max_abs_error == 0.5);
  CHECK(m.value.cosine == 0.0);
  CHECK(m.key.rel_fro_error == 0.0);
}

TEST_CASE("compare_kv: scale invariance") {
  eval::synth_options o;
  o.layers = 3;
  o.kv_heads = 1;
  o.q_heads = 0;
  o.head_dim = 8;
  o.tokens = 17;
  o.dtype = dtype::f32;
  const kv_cache a = eval::synth_cache(o);
  kv_cache b = a;
  for (auto& layer : b.keys)
    for (std::size_t i = 0; i < layer.size(); ++i) layer[i] += 0.01f * static_cast<float>(static_cast<int>(i % 7) - 3);
  for (auto& layer : b.values)
    for (std::size_t i = 0; i < layer.size(); ++i) layer[i] *= 1.0f + 0.02f * static_cast<float>(i % 5);
  const auto m1 = compare_kv(a, b);
  CHECK(m1.key.rel_fro_error > 0);
  CHECK(m1.value.rel_fro_error > 0);
  for (float s : {4.0f, 0.125f, 3.0f}) {
    kv_cache as = a, bs = b;
    for (auto* c : {&as, &bs}) {
      for (auto& layer : c->keys)
        for (auto& x : layer) x *= s;
      for (auto& layer : c->values)
        for (auto& x : layer) x *= s;
    }
    const auto m2 = compare_kv(as, bs);
    CHECK(m2.key.rel_fro_error == doctest::Approx(m1.key.rel_fro_error).epsilon(1e-5));
    CHECK(m2.key.snr_db == doctest::Approx(m1.key.snr_db).epsilon(1e-5));
    CHECK(m2.key.cosine == doctest::Approx(m1.key.cosine).epsilon(1e-6));
    CHECK(m2.key.max_abs_error == doctest::Approx(s * m1.key.max_abs_error).epsilon(1e-5));
    CHECK(m2.value.rel_fro_error == doctest::Approx(m1.value.rel_fro_error).epsilon(1e-5));
    CHECK(m2.value.cosine == doctest::Approx(m1.value.cosine).epsilon(1e-6));
  }
}

TEST_CASE("compare_kv: non-finite values") {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  kv_cache a = tiny(1, 1, 2, 2), b = tiny(1, 1, 2, 2);
  a.keys[0] = {nan, 2, inf, 1};
  b.keys[0] = {5, 2, 0, 2};
  const auto m = compare_kv(a, b);
  CHECK(m.key.nonfinite == 2);
  CHECK(m.key.rel_fro_error == doctest::Approx(std::sqrt(1.0 / 5.0)));
  CHECK(m.key.max_abs_error == 1.0);
  CHECK(m.key.cosine == doctest::Approx(1.0));
  CHECK(m.value.nonfinite == 0);
  // A non-finite reconstruction of a finite original is an infinite error.
  kv_cache c = tiny(1, 1, 2, 2), d = tiny(1, 1, 2, 2);
  c.values[0] = {1, 2, 3, 4};
  d.values[0] = {1, 2, nan, 4};
  const auto n = compare_kv(c, d);
  CHECK(std::isinf(n.value.rel_fro_error));
  CHECK(std::isinf(n.value.max_abs_error));
  CHECK(n.value.snr_db < 0);
  CHECK(n.value.cosine == doctest::Approx(0.5));
}

TEST_CASE("compare_kv: bad input") {
  kv_cache a = tiny(1, 2, 4, 8);
  CHECK_THROWS_AS(compare_kv(a, tiny(1, 2, 5, 8)), kvcodec::error);
  CHECK_THROWS_AS(compare_kv(a, tiny(2, 2, 4, 8)), kvcodec::error);
  CHECK_THROWS_AS(compare_kv(a, tiny(1, 1, 4, 8)), kvcodec::error);
  kv_cache bad = a;
  bad.values[0].pop_back();
  try {
    compare_kv(a, bad);
    FAIL("expected an error");
  } catch (const kvcodec::error& e) {
    CHECK(e.kind() == error_kind::bad_input);
    CHECK(std::string(e.what()).find("values[0]") != std::string::npos);
  }
  kv_cache kept = a;
  kept.kept = {{{3, 1}, {}}};
  CHECK_THROWS_AS(compare_kv(a, kept), kvcodec::error);
}

TEST_CASE("compare_kv: deterministic for any thread count") {
  eval::synth_options o;
  o.layers = 5;
  o.kv_heads = 4;
  o.q_heads = 0;
  o.head_dim = 64;
  o.tokens = 1100;  // > 2^18 elements per layer, so the threaded path runs
  const kv_cache a = eval::synth_cache(o);
  kv_cache b = a;
  for (auto& layer : b.keys)
    for (std::size_t i = 0; i < layer.size(); i += 3) layer[i] = round_to_dtype(layer[i] * 1.001f, dtype::f16);
  b.kept.assign(5, std::vector<std::vector<std::int32_t>>(4));
  for (auto& l : b.kept)
    for (std::size_t h = 0; h < l.size(); ++h)
      for (std::int32_t t = static_cast<std::int32_t>(h); t < 1100; t += 2) l[h].push_back(t);
  const auto m1 = compare_kv(a, b, 1), m3 = compare_kv(a, b, 3), m0 = compare_kv(a, b);
  for (const auto& m : {m3, m0}) {
    CHECK(same_bits(m.key.rel_fro_error, m1.key.rel_fro_error));
    CHECK(same_bits(m.key.cosine, m1.key.cosine));
    CHECK(same_bits(m.value.snr_db, m1.value.snr_db));
    CHECK(same_bits(m.value.max_abs_error, m1.value.max_abs_error));
  }
  CHECK(m1.key.rel_fro_error > 0.5);
  CHECK(m1.key.rel_fro_error < 1.0);
}

}  // namespace kvcodec_test_eval_metrics
