// Tests for kvcodec/eval/attention.hpp: attention fidelity against a naive reference and real dumps.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <random>
#include <string>

#include "kvcodec/eval/attention.hpp"
#include "kvcodec/eval/metrics.hpp"
#include "../support/shared_data.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_eval_attention {

using namespace kvcodec;
using kvcodec::eval::attention_metrics;
using kvcodec::eval::attention_options;
using kvcodec::eval::compare_attention;

namespace {

/// Straightforward reference: full probability vectors per row, no log-sum-exp tricks beyond max-shift.
/// `map` gives the kv head of query head h.
template <class Map>
attention_metrics naive_attention(const kv_cache& a, const kv_cache& b, std::int64_t begin, std::int64_t end, Map map) {
  const auto& s = a.shape;
  const std::int64_t T = s.tokens, D = s.head_dim;
  double out_sq = 0, err_sq = 0, kl = 0, dropped = 0;
  std::int64_t rows = 0, empty = 0;
  for (int l = 0; l < s.layers; ++l)
    for (int h = 0; h < s.q_heads; ++h) {
      const int g = map(h);
      std::vector<bool> keep(static_cast<std::size_t>(T), b.kept.empty());
      if (!b.kept.empty())
        for (auto t : b.kept[static_cast<std::size_t>(l)][static_cast<std::size_t>(g)]) keep[static_cast<std::size_t>(t)] = true;
      for (std::int64_t i = begin; i < end; ++i) {
        std::vector<double> sc(static_cast<std::size_t>(i + 1)), scr(sc.size());
        for (std::int64_t j = 0; j <= i; ++j) {
          double x = 0, y = 0;
          for (std::int64_t c = 0; c < D; ++c) {
            const double q = a.query(l)(h, i, c);
            x += q * a.key(l)(g, j, c);
            y += q * b.key(l)(g, j, c);
          }
          sc[static_cast<std::size_t>(j)] = x / std::sqrt(static_cast<double>(D));
          scr[static_cast<std::size_t>(j)] = y / std::sqrt(static_cast<double>(D));
        }
        double mx = -1e300, mxr = -1e300;
        for (std::int64_t j = 0; j <= i; ++j) {
          mx = std::max(mx, sc[static_cast<std::size_t>(j)]);
          if (keep[static_cast<std::size_t>(j)]) mxr = std::max(mxr, scr[static_cast<std::size_t>(j)]);
        }
        double z = 0, zk = 0, zr = 0;
        for (std::int64_t j = 0; j <= i; ++j) {
          z += std::exp(sc[static_cast<std::size_t>(j)] - mx);
          if (keep[static_cast<std::size_t>(j)]) {
            zk += std::exp(sc[static_cast<std::size_t>(j)] - mx);
            zr += std::exp(scr[static_cast<std::size_t>(j)] - mxr);
          }
        }
        std::vector<double> o(static_cast<std::size_t>(D), 0.0), orc(static_cast<std::size_t>(D), 0.0);
        double row_kl = 0, row_drop = 0;
        for (std::int64_t j = 0; j <= i; ++j) {
          const double p = std::exp(sc[static_cast<std::size_t>(j)] - mx) / z;
          for (std::int64_t c = 0; c < D; ++c) o[static_cast<std::size_t>(c)] += p * a.value(l)(g, j, c);
          if (!keep[static_cast<std::size_t>(j)]) {
            row_drop += p;
            continue;
          }
          const double pt = std::exp(sc[static_cast<std::size_t>(j)] - mx) / zk;
          const double pr = std::exp(scr[static_cast<std::size_t>(j)] - mxr) / zr;
          for (std::int64_t c = 0; c < D; ++c) orc[static_cast<std::size_t>(c)] += pr * b.value(l)(g, j, c);
          if (pt > 0) row_kl += pt * std::log(pt / pr);
        }
        for (std::int64_t c = 0; c < D; ++c) {
          out_sq += o[static_cast<std::size_t>(c)] * o[static_cast<std::size_t>(c)];
          const double e = o[static_cast<std::size_t>(c)] - orc[static_cast<std::size_t>(c)];
          err_sq += e * e;
        }
        if (zk == 0) ++empty;
        else kl += std::max(0.0, row_kl);
        dropped += row_drop;
        ++rows;
      }
    }
  attention_metrics m;
  m.rows = rows;
  m.empty_rows = empty;
  m.rel_error = err_sq == 0 ? 0 : std::sqrt(err_sq / out_sq);
  m.kl = rows > empty ? kl / static_cast<double>(rows - empty) : 0;
  m.dropped_mass = dropped / static_cast<double>(rows);
  return m;
}

kv_cache random_cache(kv_shape s, std::uint32_t seed, float scale = 1.0f) {
  kv_cache c = kv_cache::zeros(s);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, scale);
  for (auto* t : {&c.keys, &c.values, &c.queries})
    for (auto& layer : *t)
      for (auto& x : layer) x = n(rng);
  return c;
}

kv_cache perturb(const kv_cache& a, std::uint32_t seed, float eps) {
  kv_cache b = a;
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, eps);
  for (auto* t : {&b.keys, &b.values})
    for (auto& layer : *t)
      for (auto& x : layer) x += n(rng);
  b.queries.clear();
  b.shape.q_heads = 0;
  return b;
}

void check_close(const attention_metrics& got, const attention_metrics& want) {
  CHECK(got.rows == want.rows);
  CHECK(got.empty_rows == want.empty_rows);
  CHECK(got.rel_error == doctest::Approx(want.rel_error).epsilon(1e-9));
  CHECK(got.kl == doctest::Approx(want.kl).epsilon(1e-7));
  CHECK(got.dropped_mass == doctest::Approx(want.dropped_mass).epsilon(1e-9));
}

/// The 1-layer, 1-head, 3-token, head_dim-1 example: q = 1, keys (0, ln 2, ln 3), values (1, 2, 3), so
/// the attention rows are (1), (1/3, 2/3), (1/6, 2/6, 3/6).
kv_cache three_tokens() {
  kv_cache c = kv_cache::zeros(kv_shape{1, 1, 1, 1, 3});
  c.queries[0] = {1, 1, 1};
  c.keys[0] = {0.0f, static_cast<float>(std::log(2.0)), static_cast<float>(std::log(3.0))};
  c.values[0] = {1, 2, 3};
  return c;
}

}  // namespace

TEST_CASE("compare_attention: identical caches") {
  const kv_cache a = random_cache(kv_shape{2, 2, 4, 8, 9}, 1);
  const auto m = compare_attention(a, a);
  CHECK(m.rel_error == 0.0);
  CHECK(m.kl == 0.0);
  CHECK(m.dropped_mass == 0.0);
  CHECK(m.rows == 2 * 4 * 9);
  CHECK(m.empty_rows == 0);
}

TEST_CASE("compare_attention: hand-computed 3-token example") {
  const kv_cache a = three_tokens();
  SUBCASE("value error only") {
    kv_cache b = a;
    b.values[0][2] = 0;  // row 2 output drops from 14/6 to 5/6
    const auto m = compare_attention(a, b);
    CHECK(m.rows == 3);
    CHECK(m.rel_error == doctest::Approx(4.5 / std::sqrt(83.0)));
    CHECK(m.kl == doctest::Approx(0.0));
    CHECK(m.dropped_mass == 0.0);
  }
  SUBCASE("key error changes the distribution") {
    kv_cache b = a;
    b.keys[0][1] = 0;  // rows become (1), (1/2, 1/2), (1/5, 1/5, 3/5)
    const double kl1 = (1.0 / 3) * std::log((1.0 / 3) / 0.5) + (2.0 / 3) * std::log((2.0 / 3) / 0.5);
    const double kl2 = (1.0 / 6) * std::log((1.0 / 6) / 0.2) + (1.0 / 3) * std::log((1.0 / 3) / 0.2) +
                       0.5 * std::log(0.5 / 0.6);
    const auto m = compare_attention(a, b);
    CHECK(m.kl == doctest::Approx((kl1 + kl2) / 3).epsilon(1e-6));
    // outputs: o = (1, 5/3, 7/3), o^ = (1, 3/2, 1/5 + 2/5 + 9/5)
    const double e = std::pow(5.0 / 3 - 1.5, 2) + std::pow(7.0 / 3 - 2.4, 2);
    CHECK(m.rel_error == doctest::Approx(std::sqrt(e / (83.0 / 9))).epsilon(1e-6));
  }
  SUBCASE("dropped middle token") {
    kv_cache b = a;
    b.keys[0][1] = 100;  // dropped: its content must not matter
    b.values[0][1] = -100;
    b.kept = {{{0, 2}}};
    const auto m = compare_attention(a, b);
    CHECK(m.kl == doctest::Approx(0.0));
    CHECK(m.dropped_mass == doctest::Approx((0.0 + 2.0 / 3 + 1.0 / 3) / 3));
    CHECK(m.empty_rows == 0);
    // o^ = (1, 1, (1*1 + 3*3)/4)
    const double e = std::pow(5.0 / 3 - 1, 2) + std::pow(7.0 / 3 - 2.5, 2);
    CHECK(m.rel_error == doctest::Approx(std::sqrt(e / (83.0 / 9))).epsilon(1e-6));
  }
  SUBCASE("rows with nothing kept") {
    kv_cache b = a;
    b.kept = {{{2}}};
    const auto m = compare_attention(a, b);
    CHECK(m.empty_rows == 2);
    CHECK(m.kl == doctest::Approx(0.0));
    CHECK(m.dropped_mass == doctest::Approx((1.0 + 1.0 + 0.5) / 3));
    const double e = 1.0 + 25.0 / 9 + std::pow(7.0 / 3 - 3, 2);
    CHECK(m.rel_error == doctest::Approx(std::sqrt(e / (83.0 / 9))).epsilon(1e-6));
    b.kept = {{{}}};
    const auto all = compare_attention(a, b);
    CHECK(all.empty_rows == 3);
    CHECK(all.rel_error == doctest::Approx(1.0));
    CHECK(all.dropped_mass == doctest::Approx(1.0));
    CHECK(all.kl == 0.0);
  }
}

TEST_CASE("compare_attention: GQA grouping / masking and window against a naive reference") {
  const kv_shape s{2, 2, 4, 5, 11};  // q_heads = 2 x kv_heads, odd head_dim and tokens
  const kv_cache a = random_cache(s, 7, 1.5f);
  kv_cache b = perturb(a, 8, 0.3f);
  const auto group_map = [](int h) { return h / 2; };
  const auto modulo_map = [](int h) { return h % 2; };

  const auto dense = compare_attention(a, b);
  check_close(dense, naive_attention(a, b, 0, 11, group_map));
  CHECK(dense.rel_error > 0.01);
  CHECK(dense.kl > 1e-4);
  const auto wrong = naive_attention(a, b, 0, 11, modulo_map);
  CHECK(std::abs(wrong.rel_error - dense.rel_error) > 1e-6 * dense.rel_error);

  b.kept.assign(2, std::vector<std::vector<std::int32_t>>(2));
  b.kept[0][0] = {0, 3, 4, 10};
  b.kept[0][1] = {1, 2, 5, 6, 7, 8, 9};
  b.kept[1][0] = {5};
  b.kept[1][1] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  const auto masked = compare_attention(a, b);
  const auto ref = naive_attention(a, b, 0, 11, group_map);
  check_close(masked, ref);
  CHECK(masked.empty_rows == 2 * 1 + 2 * 5);  // kv head 1 of layer 0 misses row 0, kv head 0 of layer 1 rows 0..4
  CHECK(masked.dropped_mass > 0.1);

  attention_options w;
  w.query_begin = 4;
  w.query_end = 9;
  const auto win = compare_attention(a, b, w);
  check_close(win, naive_attention(a, b, 4, 9, group_map));
  CHECK(win.rows == 2 * 4 * 5);

  w.threads = 1;
  const auto w1 = compare_attention(a, b, w);
  w.threads = 3;
  const auto w3 = compare_attention(a, b, w);
  CHECK(std::memcmp(&w1.rel_error, &w3.rel_error, sizeof(double)) == 0);
  CHECK(std::memcmp(&w1.kl, &w3.kl, sizeof(double)) == 0);
  CHECK(std::memcmp(&w1.dropped_mass, &w3.dropped_mass, sizeof(double)) == 0);
}

TEST_CASE("compare_attention: max_rows sampling") {
  const kv_cache a = random_cache(kv_shape{3, 2, 4, 8, 40}, 3);
  const kv_cache b = perturb(a, 4, 0.2f);
  attention_options o;
  o.max_rows = 3 * 4 * 40;  // not fewer than all rows: identical to the full evaluation
  const auto full = compare_attention(a, b);
  const auto same = compare_attention(a, b, o);
  CHECK(same.rows == full.rows);
  CHECK(same.rel_error == full.rel_error);
  o.max_rows = 30;  // 12 (layer, head) tasks -> 3 positions each
  o.threads = 1;
  const auto s1 = compare_attention(a, b, o);
  o.threads = 2;
  const auto s2 = compare_attention(a, b, o);
  CHECK(s1.rows == 36);
  CHECK(s1.rel_error == s2.rel_error);
  CHECK(s1.kl == s2.kl);
  CHECK(s1.rel_error > 0);
  CHECK(s1.rel_error == doctest::Approx(full.rel_error).epsilon(0.5));
  o.max_rows = 1;  // at least one row per (layer, head)
  CHECK(compare_attention(a, b, o).rows == 12);
  o.query_begin = 38;
  o.max_rows = 1000;  // capped by the window
  CHECK(compare_attention(a, b, o).rows == 12 * 2);
}

TEST_CASE("compare_attention: bad input") {
  const kv_cache a = random_cache(kv_shape{1, 2, 2, 4, 6}, 5);
  kv_cache noq = a;
  noq.queries.clear();
  noq.shape.q_heads = 0;
  try {
    compare_attention(noq, a);
    FAIL("expected an error");
  } catch (const kvcodec::error& e) {
    CHECK(e.kind() == error_kind::bad_input);
    CHECK(std::string(e.what()).find("queries") != std::string::npos);
  }
  CHECK_NOTHROW(compare_attention(a, noq));  // the reconstruction needs no queries
  kv_cache other = random_cache(kv_shape{1, 2, 2, 4, 7}, 5);
  CHECK_THROWS_AS(compare_attention(a, other), kvcodec::error);
  kv_cache dropped = a;
  dropped.kept = {{{0, 1}, {2}}};
  CHECK_THROWS_AS(compare_attention(dropped, a), kvcodec::error);
  kv_cache nan = a;
  nan.queries[0][3] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(compare_attention(nan, a), kvcodec::error);
  for (auto [b, e] : {std::pair<std::int64_t, std::int64_t>{3, 3}, {-1, 4}, {0, 7}, {5, 2}}) {
    attention_options o;
    o.query_begin = b;
    o.query_end = e;
    try {
      compare_attention(a, a, o);
      FAIL("expected a usage error");
    } catch (const kvcodec::error& err) {
      CHECK(err.kind() == error_kind::usage);
    }
  }
  attention_options neg;
  neg.max_rows = -1;
  CHECK_THROWS_AS(compare_attention(a, a, neg), kvcodec::error);
  // one token, one position
  const kv_cache one = random_cache(kv_shape{1, 1, 1, 3, 1}, 9);
  const auto m = compare_attention(one, perturb(one, 2, 0.5f));
  CHECK(m.rows == 1);
  CHECK(m.kl == 0.0);  // a single key always gets probability 1
  CHECK(m.rel_error > 0);
}

TEST_CASE("real data: stories260K dump") {
  const kv_cache* dump = test::shared_dump("stories260K-s0.safetensors");
  KVCODEC_REQUIRE_SHARED(dump);
  const kv_cache& a = *dump;
  REQUIRE(a.shape.layers == 5);
  REQUIRE(a.shape.q_heads == 8);
  REQUIRE(a.shape.kv_heads == 4);
  const auto t0 = std::chrono::steady_clock::now();
  const auto self = compare_attention(a, a);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("compare_attention on stories260K-s0 (5 layers x 8 q heads x 512 tokens, all rows): " << ms << " ms");
  CHECK(self.rel_error == 0.0);
  CHECK(self.kl == 0.0);
  CHECK(self.rows == 5 * 8 * 512);
  const auto kv = eval::compare_kv(a, a);
  CHECK(kv.key.rel_fro_error == 0.0);

  const kv_cache b = perturb(a, 11, 0.05f);
  const auto pm = compare_attention(a, b);
  CHECK(pm.rel_error > 0.0);
  CHECK(pm.kl > 0.0);
  MESSAGE("perturbed (sigma 0.05): rel_error " << pm.rel_error << ", kl " << pm.kl);

  if (const kv_cache* bf = test::shared_dump("stories260K-s0.bf16.safetensors")) {
    const kv_cache& c = *bf;
    REQUIRE(c.source_dtype == dtype::bf16);
    kv_cache rounded = a;
    for (auto* t : {&rounded.keys, &rounded.values})
      for (auto& layer : *t)
        for (auto& x : layer) x = round_to_dtype(x, dtype::bf16);
    const auto m = eval::compare_kv(a, c);
    const auto r = eval::compare_kv(rounded, c);
    CHECK(r.key.rel_fro_error == 0.0);  // the bf16 dump is the RNE rounding of the f32 dump
    CHECK(r.value.rel_fro_error == 0.0);
    CHECK(m.key.rel_fro_error > 0.0);
    CHECK(m.key.rel_fro_error < 0.004);  // bf16 relative rounding error <= 2^-9
    CHECK(m.value.cosine > 0.9999);
    const auto am = compare_attention(a, c);
    CHECK(am.rel_error > 0.0);
    CHECK(am.rel_error < 0.02);
    MESSAGE("bf16 dump vs f32: K rel " << m.key.rel_fro_error << ", V rel " << m.value.rel_fro_error
                                       << ", attention rel " << am.rel_error << ", kl " << am.kl);
  }
}

}  // namespace kvcodec_test_eval_attention
