// Tests for kvcodec/core/codebook.hpp: NF4 and the Lloyd–Max codebook fitter.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/core/codebook.hpp"
#include "../support/shared_data.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_codebook {

using namespace kvcodec;
using namespace kvcodec::codebook;

namespace {

// MSE of the uniform (min..max, evenly spaced) codebook with the same number of levels.
double uniform_mse(const std::vector<float>& x, int levels) {
  const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
  std::vector<float> cb(static_cast<std::size_t>(levels));
  for (int j = 0; j < levels; ++j)
    cb[static_cast<std::size_t>(j)] = *lo + (*hi - *lo) * static_cast<float>(j) / static_cast<float>(levels - 1);
  return codebook_mse(cb, x.data(), x.size());
}

int brute_nearest(const std::vector<float>& cb, float v) {
  int best = 0;
  for (int j = 1; j < static_cast<int>(cb.size()); ++j)
    if (std::fabs(cb[static_cast<std::size_t>(j)] - v) < std::fabs(cb[static_cast<std::size_t>(best)] - v)) best = j;
  return best;
}

}  // namespace

TEST_CASE("nf4: levels / encode and decode") {
  CHECK(nf4_value(0) == -1.0f);
  CHECK(nf4_value(7) == 0.0f);
  CHECK(nf4_value(15) == 1.0f);
  for (int i = 0; i < 15; ++i) CHECK(nf4_value(i) < nf4_value(i + 1));
  CHECK(nf4_value(8) == doctest::Approx(0.07958029955625534));
  CHECK(nf4_encode(0.0f, 1.0f) == 7);
  CHECK(nf4_encode(1.0f, 1.0f) == 15);
  CHECK(nf4_encode(-1.0f, 1.0f) == 0);
  CHECK(nf4_encode(0.05f, 1.0f) == 8);   // nearer 0.0796 than 0
  CHECK(nf4_encode(0.03f, 1.0f) == 7);
  CHECK(nf4_encode(-2.0f, 0.0f) == 7);   // absmax 0
  CHECK(nf4_encode(std::numeric_limits<float>::quiet_NaN(), 1.0f) == 7);
  CHECK(nf4_encode(std::numeric_limits<float>::infinity(), 1.0f) == 15);
  CHECK(nf4_encode(-std::numeric_limits<float>::infinity(), 1.0f) == 0);

  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(64);
  for (auto& v : x) v = nd(rng);
  x[5] = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::uint8_t> c(64);
  const float a = nf4_quantize_block(x.data(), x.size(), 1, c.data());
  float ref_a = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (i != 5) ref_a = std::max(ref_a, std::fabs(x[i]));
  CHECK(a == ref_a);
  CHECK(c[5] == 7);
  std::vector<float> y(64);
  nf4_dequantize_block(c.data(), c.size(), a, y.data());
  std::vector<float> levels(16);
  for (int i = 0; i < 16; ++i) levels[static_cast<std::size_t>(i)] = nf4_value(i) * a;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (i == 5) continue;
    CHECK(c[i] == brute_nearest(levels, x[i]));
    CHECK(y[i] == nf4_value(c[i]) * a);
  }
  // the block maximum is exact
  const auto it = std::max_element(c.begin(), c.end());
  CHECK((*it == 15 || *std::min_element(c.begin(), c.end()) == 0));
  // strided block
  std::vector<std::uint8_t> c2(32);
  const float a2 = nf4_quantize_block(x.data(), 32, 2, c2.data());
  for (std::size_t i = 0; i < 32; ++i) CHECK(c2[i] == nf4_encode(x[2 * i], a2));
}

TEST_CASE("codebook: nearest_code by midpoints equals brute force") {
  const std::vector<float> cb = {-3.0f, -1.0f, -0.5f, 0.0f, 0.25f, 2.0f, 7.0f};
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> ud(-10.0f, 10.0f);
  for (int i = 0; i < 5000; ++i) {
    const float v = ud(rng);
    CHECK(nearest_code(cb.data(), 7, v) == brute_nearest(cb, v));
  }
  CHECK(nearest_code(cb.data(), 7, -2.0f) == 1);  // exact midpoint goes up
  CHECK(nearest_code(cb.data(), 1, 123.0f) == 0);
  std::vector<std::uint16_t> codes(3);
  const float x[3] = {-100.0f, 0.1f, 100.0f};
  encode(cb.data(), 7, x, 3, codes.data());
  CHECK(codes[0] == 0);
  CHECK(codes[1] == 3);
  CHECK(codes[2] == 6);
  float y[3];
  decode(cb.data(), codes.data(), 3, y);
  CHECK(y[1] == 0.0f);
}

TEST_CASE("codebook: Lloyd–Max beats uniform on Gaussian and Laplace samples") {
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::exponential_distribution<float> ed(1.0f);
  std::vector<float> gauss(20000), laplace(20000);
  for (auto& v : gauss) v = nd(rng);
  for (auto& v : laplace) v = (rng() & 1 ? 1.0f : -1.0f) * ed(rng);
  for (const auto* sample : {&gauss, &laplace}) {
    for (int levels : {2, 4, 8, 16}) {
      CAPTURE(levels);
      const auto cb = fit_codebook(sample->data(), sample->size(), levels, 50);
      REQUIRE(cb.size() == static_cast<std::size_t>(levels));
      CHECK(std::is_sorted(cb.begin(), cb.end()));
      const double km = codebook_mse(cb, sample->data(), sample->size());
      const double un = uniform_mse(*sample, levels);
      MESSAGE(std::string(sample == &gauss ? "gauss" : "laplace") << " levels " << levels << " kmeans MSE " << km
                                                         << " uniform MSE " << un);
      CHECK(km <= un);
      if (levels >= 4) CHECK(km < 0.8 * un);
      // deterministic
      CHECK(fit_codebook(sample->data(), sample->size(), levels, 50) == cb);
      // more iterations never hurt (Lloyd steps are monotone)
      CHECK(codebook_mse(fit_codebook(sample->data(), sample->size(), levels, 5), sample->data(), sample->size()) >=
            km - 1e-9);
    }
  }
  // Gaussian 4-level Lloyd–Max optimum is about ±0.4528, ±1.510 (MSE 0.1175)
  const auto cb4 = fit_codebook(gauss.data(), gauss.size(), 4, 200);
  CHECK(cb4[3] == doctest::Approx(1.510).epsilon(0.03));
  CHECK(cb4[2] == doctest::Approx(0.4528).epsilon(0.05));
  CHECK(codebook_mse(cb4, gauss.data(), gauss.size()) == doctest::Approx(0.1175).epsilon(0.05));
}

TEST_CASE("codebook: degenerate samples") {
  SUBCASE("all equal") {
    const std::vector<float> x(100, 3.25f);
    const auto cb = fit_codebook(x.data(), x.size(), 8, 10);
    REQUIRE(cb.size() == 8);
    for (float c : cb) CHECK(c == 3.25f);
    CHECK(codebook_mse(cb, x.data(), x.size()) == 0.0);
  }
  SUBCASE("n < levels: every sample is a codeword") {
    const std::vector<float> x = {5.0f, -1.0f, 2.5f};
    const auto cb = fit_codebook(x.data(), x.size(), 16, 10);
    REQUIRE(cb.size() == 16);
    CHECK(std::is_sorted(cb.begin(), cb.end()));
    CHECK(codebook_mse(cb, x.data(), x.size()) == 0.0);
    CHECK(cb.front() == -1.0f);
    CHECK(cb.back() == 5.0f);
  }
  SUBCASE("fewer distinct values than levels") {
    std::vector<float> x;
    for (int i = 0; i < 50; ++i) x.push_back(static_cast<float>(i % 3));
    const auto cb = fit_codebook(x.data(), x.size(), 5, 10);
    CHECK(std::is_sorted(cb.begin(), cb.end()));
    CHECK(codebook_mse(cb, x.data(), x.size()) == 0.0);
  }
  SUBCASE("empty and non-finite samples") {
    const auto cb = fit_codebook(nullptr, 0, 4, 10);
    CHECK(cb == std::vector<float>(4, 0.0f));
    const float bad[3] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), 2.0f};
    const auto cb2 = fit_codebook(bad, 3, 2, 10);
    CHECK(cb2 == std::vector<float>(2, 2.0f));
    CHECK(codebook_mse(cb2, bad, 3) == 0.0);
  }
  SUBCASE("one level is the mean") {
    const std::vector<float> x = {1.0f, 2.0f, 6.0f};
    CHECK(fit_codebook(x.data(), x.size(), 1, 3)[0] == 3.0f);
  }
  SUBCASE("bad parameters") {
    const float x[2] = {1, 2};
    CHECK_THROWS_AS(fit_codebook(x, 2, 0, 5), kvcodec::error);
    CHECK_THROWS_AS(fit_codebook(x, 2, 70000, 5), kvcodec::error);
    CHECK_THROWS_AS(fit_codebook(x, 2, 4, -1), kvcodec::error);
    CHECK_THROWS_AS(fit_codebook(nullptr, 2, 4, 1), kvcodec::error);
    CHECK_THROWS_AS(codebook_mse({}, x, 2), kvcodec::error);
  }
}

TEST_CASE("codebook: Lloyd–Max on real stories260K keys") {
  const kv_cache* dump = test::shared_dump("stories260K-s0.safetensors");
  KVCODEC_REQUIRE_SHARED(dump);
  REQUIRE(dump->keys.size() > 2);
  const auto& k = dump->keys[2];
  REQUIRE(k.size() == 4u * 512u * 8u);
  for (int levels : {4, 16}) {
    const auto cb = fit_codebook(k.data(), k.size(), levels, 30);
    CHECK(std::is_sorted(cb.begin(), cb.end()));
    const double km = codebook_mse(cb, k.data(), k.size()), un = uniform_mse(k, levels);
    MESSAGE("real keys, " << levels << " levels: k-means MSE " << km << ", uniform MSE " << un);
    CHECK(km < un);
  }
}

}  // namespace kvcodec_test_core_codebook
