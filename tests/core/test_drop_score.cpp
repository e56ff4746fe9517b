// Tests of core/drop_score.hpp: online softmax, norms, cosine, expected logit, pooling, block rotation.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kvcodec/core/drop_score.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_drop_score {

using namespace kvcodec;

TEST_CASE("drop_softmax: online log-sum-exp equals the two-pass value") {
  const std::vector<double> s = {0.5, -3.0, 7.25, 7.0, -100.0, 2.0, 7.25};
  drop_softmax_state st;
  CHECK(drop_softmax_lse(st) == -HUGE_VAL);
  for (double x : s) drop_softmax_push(st, x);
  double m = -HUGE_VAL, z = 0;
  for (double x : s) m = std::max(m, x);
  for (double x : s) z += std::exp(x - m);
  CHECK(drop_softmax_lse(st) == doctest::Approx(m + std::log(z)).epsilon(1e-14));
  drop_softmax_state one;
  drop_softmax_push(one, 3.5);
  CHECK(drop_softmax_lse(one) == 3.5);
  drop_softmax_state big;  // no overflow for large scores
  drop_softmax_push(big, 1000.0);
  drop_softmax_push(big, 1000.0);
  CHECK(drop_softmax_lse(big) == doctest::Approx(1000.0 + std::log(2.0)));
}

TEST_CASE("drop_l2_norm and drop_cosine") {
  const float x[3] = {3.0f, 4.0f, 0.0f};
  CHECK(drop_l2_norm(x, 3) == 5.0);
  CHECK(drop_l2_norm(x, 0) == 0.0);
  const double a[3] = {6.0, 8.0, 0.0}, o[3] = {0.0, 0.0, 2.0}, z[3] = {0, 0, 0};
  CHECK(drop_cosine(x, a, 3) == doctest::Approx(1.0));
  CHECK(drop_cosine(x, o, 3) == 0.0);
  CHECK(drop_cosine(x, z, 3) == 0.0);
}

TEST_CASE("drop_expected_logit: mean term and covariance term") {
  const float k[2] = {1.0f, 2.0f};
  const double mu[2] = {0.5, -1.0};
  const double cov[4] = {2.0, 0.5, 0.5, 1.0};
  const double lin = (0.5 * 1 - 1.0 * 2) / std::sqrt(2.0);
  const double quad = (1 * (2 * 1 + 0.5 * 2) + 2 * (0.5 * 1 + 1 * 2)) / 4.0;
  CHECK(drop_expected_logit(k, mu, nullptr, 2) == doctest::Approx(lin));
  CHECK(drop_expected_logit(k, mu, cov, 2) == doctest::Approx(lin + quad));
}

TEST_CASE("drop_avg_pool: zero-padded mean over an odd kernel / edges / kernel 1 / n < kernel") {
  const std::vector<double> in = {1, 2, 3, 4, 5, 6, 7};
  for (std::int64_t kernel : {1, 3, 5, 9}) {
    for (std::int64_t n : {1, 2, 7}) {
      std::vector<double> out(static_cast<std::size_t>(n));
      drop_avg_pool(in.data(), out.data(), n, kernel);
      for (std::int64_t j = 0; j < n; ++j) {
        double ref = 0;
        for (std::int64_t t = j - kernel / 2; t <= j + kernel / 2; ++t)
          if (t >= 0 && t < n) ref += in[static_cast<std::size_t>(t)];
        CHECK(out[static_cast<std::size_t>(j)] == doctest::Approx(ref / static_cast<double>(kernel)));
      }
    }
  }
  drop_avg_pool(in.data(), nullptr, 0, 5);  // n = 0 touches nothing
}

TEST_CASE("drop_block_rotate with cos/sin of one position equals rope_apply / both styles") {
  for (auto style : {rope_style::interleaved_pairs, rope_style::rotate_half}) {
    const std::size_t D = 8;
    float x[D] = {0.3f, -1.2f, 2.0f, 0.7f, -0.4f, 1.5f, 0.9f, -2.2f};
    double xd[D];
    for (std::size_t i = 0; i < D; ++i) xd[i] = x[i];
    double c[D / 2], s[D / 2];
    for (std::size_t i = 0; i < D / 2; ++i) {
      c[i] = std::cos(rope_angle(37, i, D, 10000.0));
      s[i] = std::sin(rope_angle(37, i, D, 10000.0));
    }
    rope_apply(x, D, 37, 10000.0, style);
    drop_block_rotate(xd, D, 1, c, s, style);
    for (std::size_t i = 0; i < D; ++i) CHECK(xd[i] == doctest::Approx(x[i]).epsilon(1e-6));
    double col[2 * D] = {};  // strided: every other element
    for (std::size_t i = 0; i < D; ++i) col[2 * i] = xd[i];
    drop_block_rotate(col, D, 2, c, s, style);
    drop_block_rotate(xd, D, 1, c, s, style);
    for (std::size_t i = 0; i < D; ++i) CHECK(col[2 * i] == doctest::Approx(xd[i]));
    for (std::size_t i = 0; i < D; ++i) CHECK(col[2 * i + 1] == 0.0);
  }
}

TEST_CASE("lane kernels: drop_sumsq16 / drop_dot16 / drop_anchor_block equal plain sums up to float rounding - lane order") {
  std::vector<float> x(37), y(37);
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = static_cast<float>(std::sin(0.7 * static_cast<double>(i)) * 3.0);
    y[i] = static_cast<float>(std::cos(1.3 * static_cast<double>(i)));
  }
  for (std::size_t n : {0, 1, 7, 8, 9, 16, 17, 37}) {
    double ss = 0, dd = 0, sa = 0;
    for (std::size_t i = 0; i < n; ++i) {
      ss += static_cast<double>(x[i]) * x[i];
      dd += static_cast<double>(x[i]) * y[i];
      sa += std::abs(static_cast<double>(x[i]) * y[i]);
    }
    CHECK(drop_sumsq16(x.data(), n) == doctest::Approx(ss).epsilon(1e-6));
    CHECK(std::abs(drop_dot16(x.data(), y.data(), n) - dd) <= 1e-6 * sa);
  }
  float L[16] = {1e8f, 1, -1e8f, 1, 3, 4, 5, 6, 0.5f, 0, 0, 0, 0, 0, 0, 0};
  const float t0 = 1e8f + 0.5f;
  CHECK(drop_lane_sum16(L) == ((t0 + 3.0f) + (-1e8f + 5.0f)) + ((1.0f + 4.0f) + (1.0f + 6.0f)));
  std::vector<float> acc(5, 1.0f);
  const float inv[3] = {0.5f, 0.0f, 2.0f};  // row 1 skipped
  const float X[15] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  drop_anchor_block(acc.data(), X, 3, 5, inv);
  for (std::size_t i = 0; i < 5; ++i) CHECK(acc[i] == 1.0f + (0.5f * X[i] + 2.0f * X[10 + i]));
  CHECK(drop_inv_norm(4.0) == 0.5f);
  CHECK(drop_inv_norm(0.0) == 0.0f);
  CHECK(drop_inv_norm(std::nan("")) == 0.0f);
}

TEST_CASE("drop_exp: within a few ulp of std::exp / limits / NaN") {
  double worst = 0;
  for (int i = -70800; i <= 70900; i += 7) {
    const double x = i * 0.01 + 1e-3;
    const double e = std::exp(x), a = drop_exp(x);
    worst = std::max(worst, std::abs(a - e) / e);
  }
  CHECK(worst < 1e-15);
  CHECK(drop_exp(0.0) == 1.0);
  CHECK(drop_exp(-HUGE_VAL) == 0.0);
  CHECK(drop_exp(-1000.0) == 0.0);
  CHECK(drop_exp(800.0) == HUGE_VAL);
  CHECK(drop_exp(HUGE_VAL) == HUGE_VAL);
  CHECK(std::isnan(drop_exp(std::nan(""))));
  CHECK(drop_exp(-707.9) > 0.0);
}

}  // namespace kvcodec_test_core_drop_score
