// Tests for kvcodec/core/rope.hpp: apply/undo identities, both styles, and the real stories260K dump
// (post-RoPE keys, interleaved pairs, theta 10000) read through tests/support/shared_data.hpp.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/core/rope.hpp"
#include "../support/shared_data.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_rope {

using namespace kvcodec;

namespace {

double dot(const float* a, const float* b, std::size_t n) {
  double s = 0;
  for (std::size_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

}  // namespace

TEST_CASE("rope: hand-computed rotation") {
  // head_dim 4, theta 100: pair 0 angle = pos, pair 1 angle = pos / 10
  float x[4] = {1.0f, 0.0f, 0.0f, 1.0f};
  rope_apply(x, 4, 1, 100.0, rope_style::interleaved_pairs);
  CHECK(x[0] == doctest::Approx(std::cos(1.0)));
  CHECK(x[1] == doctest::Approx(std::sin(1.0)));
  CHECK(x[2] == doctest::Approx(-std::sin(0.1)));
  CHECK(x[3] == doctest::Approx(std::cos(0.1)));
  float h[4] = {1.0f, 0.0f, 0.0f, 1.0f};  // rotate-half pairs (0,2), (1,3)
  rope_apply(h, 4, 1, 100.0, rope_style::rotate_half);
  CHECK(h[0] == doctest::Approx(std::cos(1.0)));
  CHECK(h[2] == doctest::Approx(std::sin(1.0)));
  CHECK(h[1] == doctest::Approx(-std::sin(0.1)));
  CHECK(h[3] == doctest::Approx(std::cos(0.1)));
  CHECK(rope_angle(3, 1, 4, 100.0) == doctest::Approx(0.3));
  float z[4] = {1, 2, 3, 4};
  rope_apply(z, 4, 0, 10000.0, rope_style::rotate_half);  // position 0 is the identity
  CHECK(z[0] == 1.0f);
  CHECK(z[3] == 4.0f);
}

TEST_CASE("rope: undo(apply(x)) == x / norms kept / relative positions compose") {
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (rope_style st : {rope_style::interleaved_pairs, rope_style::rotate_half}) {
    for (std::size_t d : {2u, 8u, 64u, 128u, 7u}) {
      CAPTURE(d);
      for (std::int64_t pos : {std::int64_t{0}, std::int64_t{1}, std::int64_t{511}, std::int64_t{100000}, std::int64_t{-37}}) {
        std::vector<float> x(d), y;
        for (auto& v : x) v = nd(rng);
        y = x;
        rope_apply(y.data(), d, pos, 10000.0, st);
        CHECK(dot(y.data(), y.data(), d) == doctest::Approx(dot(x.data(), x.data(), d)).epsilon(1e-6));
        rope_undo(y.data(), d, pos, 10000.0, st);
        for (std::size_t i = 0; i < d; ++i) CHECK(std::fabs(y[i] - x[i]) <= 1e-6f * (1.0f + std::fabs(x[i])));
        if (d % 2) {  // odd: last element untouched
          std::vector<float> w = x;
          rope_apply(w.data(), d, pos, 10000.0, st);
          CHECK(w[d - 1] == x[d - 1]);
        }
      }
      // apply(p) then apply(q) == apply(p + q)
      std::vector<float> a(d), b;
      for (auto& v : a) v = nd(rng);
      b = a;
      rope_apply(a.data(), d, 5, 500.0, st);
      rope_apply(a.data(), d, 7, 500.0, st);
      rope_apply(b.data(), d, 12, 500.0, st);
      for (std::size_t i = 0; i < d; ++i) CHECK(a[i] == doctest::Approx(b[i]).epsilon(1e-5));
    }
  }
  // rows helper
  std::vector<float> rows = {1, 2, 3, 4, 1, 2, 3, 4};
  const std::int64_t pos[2] = {3, 9};
  rope_rows(rows.data(), 2, 4, pos, 10000.0, rope_style::interleaved_pairs, true);
  std::vector<float> r1 = {1, 2, 3, 4};
  rope_apply(r1.data(), 4, 9, 10000.0, rope_style::interleaved_pairs);
  for (int i = 0; i < 4; ++i) CHECK(rows[4 + i] == r1[static_cast<std::size_t>(i)]);
  rope_rows(rows.data(), 2, 4, pos, 10000.0, rope_style::interleaved_pairs, false);
  for (int i = 0; i < 8; ++i) CHECK(rows[static_cast<std::size_t>(i)] == doctest::Approx(static_cast<float>(i % 4 + 1)));
}

TEST_CASE("rope: parameters") {
  CHECK_NOTHROW(check_rope(8, 10000.0));
  CHECK_THROWS_AS(check_rope(7, 10000.0), kvcodec::error);
  CHECK_THROWS_AS(check_rope(0, 10000.0), kvcodec::error);
  CHECK_THROWS_AS(check_rope(8, 0.5), kvcodec::error);
  CHECK_THROWS_AS(check_rope(8, std::nan("")), kvcodec::error);
  try {
    check_rope(9, 10000.0, "kvquant");
  } catch (const kvcodec::error& e) {
    CHECK(e.kind() == error_kind::usage);
    CHECK(std::string(e.what()).find("head_dim") != std::string::npos);
  }
  CHECK(parse_rope_style("interleaved-pairs") == rope_style::interleaved_pairs);
  CHECK(parse_rope_style("rotate-half") == rope_style::rotate_half);
  CHECK_FALSE(parse_rope_style("yarn").has_value());
  CHECK(parse_rope_style(rope_style_name(rope_style::rotate_half)) == rope_style::rotate_half);
}

TEST_CASE("rope: real stories260K dump — de-RoPE keys") {
  const kv_cache* dump = test::shared_dump("stories260K-s0.safetensors");
  KVCODEC_REQUIRE_SHARED(dump);
  REQUIRE(dump->source_dtype == dtype::f32);
  const std::size_t D = 8, T = 512, KVH = 4, QH = 8;
  const double theta = 10000.0;
  double var_post_total = 0, var_pre_total = 0, var_wrong_total = 0;
  double var_post_pair0 = 0, var_pre_pair0 = 0;
  REQUIRE(dump->shape == kv_shape{5, 4, 8, 8, 512});
  REQUIRE(dump->has_queries());
  for (std::size_t l = 0; l < 5; ++l) {
    const std::vector<float>& k = dump->keys[l];
    const std::vector<float>& q = dump->queries[l];
    for (std::size_t h = 0; h < KVH; ++h) {
      std::vector<float> pre(T * D), wrong(T * D);
      for (std::size_t t = 0; t < T; ++t) {
        const float* kr = k.data() + (h * T + t) * D;
        float* p = pre.data() + t * D;
        std::memcpy(p, kr, D * 4);
        rope_undo(p, D, static_cast<std::int64_t>(t), theta, rope_style::interleaved_pairs);
        std::memcpy(wrong.data() + t * D, kr, D * 4);
        rope_undo(wrong.data() + t * D, D, static_cast<std::int64_t>(t), theta, rope_style::rotate_half);
        // re-applying RoPE gives back the dumped key
        std::vector<float> back(p, p + D);
        rope_apply(back.data(), D, static_cast<std::int64_t>(t), theta, rope_style::interleaved_pairs);
        for (std::size_t i = 0; i < D; ++i) CHECK(std::fabs(back[i] - kr[i]) <= 1e-5f * (1.0f + std::fabs(kr[i])));
      }
      // per-channel variance across positions
      for (std::size_t c = 0; c < D; ++c) {
        auto var = [&](const float* base) {
          double s = 0, s2 = 0;
          for (std::size_t t = 0; t < T; ++t) {
            s += base[t * D + c];
            s2 += static_cast<double>(base[t * D + c]) * base[t * D + c];
          }
          return s2 / T - (s / T) * (s / T);
        };
        const double vpost = var(k.data() + h * T * D), vpre = var(pre.data()), vw = var(wrong.data());
        var_post_total += vpost;
        var_pre_total += vpre;
        var_wrong_total += vw;
        if (c < 2) {
          var_post_pair0 += vpost;
          var_pre_pair0 += vpre;
        }
      }
      // attention scores are unchanged: q_m·k_n == undo(q_m, m) · R(n - m) undo(k_n, n)
      const std::size_t qh = h * (QH / KVH);
      for (std::size_t m : {0u, 17u, 300u, 511u}) {
        for (std::size_t n : {0u, 5u, 299u, 511u}) {
          const float* qm = q.data() + (qh * T + m) * D;
          const float* kn = k.data() + (h * T + n) * D;
          std::vector<float> qpre(qm, qm + D);
          rope_undo(qpre.data(), D, static_cast<std::int64_t>(m), theta, rope_style::interleaved_pairs);
          std::vector<float> krel(pre.begin() + static_cast<std::ptrdiff_t>(n * D),
                                  pre.begin() + static_cast<std::ptrdiff_t>((n + 1) * D));
          rope_apply(krel.data(), D, static_cast<std::int64_t>(n) - static_cast<std::int64_t>(m), theta,
                     rope_style::interleaved_pairs);
          const double post = dot(qm, kn, D);
          CHECK(dot(qpre.data(), krel.data(), D) == doctest::Approx(post).epsilon(1e-5).scale(1.0));
        }
      }
    }
  }
  MESSAGE("sum of per-channel key variances across positions: post-RoPE " << var_post_total << ", de-RoPE "
          << var_pre_total << " (wrong style: " << var_wrong_total << "); fastest pair: post " << var_post_pair0
          << ", de-RoPE " << var_pre_pair0);
  CHECK(var_pre_total < 0.4 * var_post_total);
  CHECK(var_pre_pair0 < 0.5 * var_post_pair0);
  CHECK(var_pre_total < var_wrong_total);  // the dump really is interleaved-pairs
}

}  // namespace kvcodec_test_core_rope
