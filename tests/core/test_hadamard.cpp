// Tests for kvcodec/core/hadamard.hpp: orthogonality, exact inverse, block decomposition, signs.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kvcodec/core/hadamard.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_hadamard {

using namespace kvcodec;

namespace {

double norm(const std::vector<float>& v) {
  double s = 0;
  for (float a : v) s += static_cast<double>(a) * a;
  return std::sqrt(s);
}

}  // namespace

TEST_CASE("splitmix64 reference outputs and signs") {
  // splitmix64 seeded with 0: first outputs are e220a8397b1dcdaf, 6e789e6aa1b965f4 (Vigna's reference)
  CHECK(splitmix64_at(0, 0) == 0xe220a8397b1dcdafull);
  CHECK(splitmix64_at(0, 1) == 0x6e789e6aa1b965f4ull);
  int neg = 0;
  for (std::size_t i = 0; i < 10000; ++i) neg += hadamard_sign(123, i) < 0;
  CHECK(neg > 4800);
  CHECK(neg < 5200);
  int diff = 0;
  for (std::size_t i = 0; i < 64; ++i) diff += hadamard_sign(1, i) != hadamard_sign(2, i);
  CHECK(diff > 16);
}

TEST_CASE("fwht matches the Sylvester Hadamard matrix") {
  for (std::size_t n : {1u, 2u, 4u, 8u, 16u}) {
    for (std::size_t k = 0; k < n; ++k) {
      std::vector<float> e(n, 0.0f);
      e[k] = 1.0f;
      fwht(e.data(), n);
      for (std::size_t r = 0; r < n; ++r) {
        const int parity = __builtin_popcountll(r & k) & 1;
        CHECK(e[r] == (parity ? -1.0f : 1.0f));
      }
    }
  }
}

TEST_CASE("hadamard rotation: orthogonal and exactly invertible") {
  std::mt19937 rng(8);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (std::size_t n : {1u, 2u, 3u, 5u, 6u, 7u, 8u, 64u, 96u, 100u, 128u, 255u}) {
    CAPTURE(n);
    for (std::uint64_t seed : {0ull, 1ull, 0xdeadbeefull}) {
      std::vector<float> x(n), y;
      for (auto& v : x) v = nd(rng);
      y = x;
      hadamard_forward(y.data(), n, seed);
      CHECK(std::fabs(norm(y) - norm(x)) <= 1e-6 * std::max(1.0, norm(x)));
      std::vector<float> z = y;
      hadamard_inverse(z.data(), n, seed);
      for (std::size_t i = 0; i < n; ++i) CHECK(std::fabs(z[i] - x[i]) <= 1e-6);
      if (n >= 8) {
        bool changed = false;
        for (std::size_t i = 0; i < n; ++i) changed |= y[i] != x[i];
        CHECK(changed);
      }
    }
  }
}

TEST_CASE("hadamard rotation: block-diagonal decomposition and the matrix is orthogonal") {
  // n = 6 = 4 + 2: a unit vector in the first 4 entries stays in the first 4
  std::vector<float> e(6, 0.0f);
  e[1] = 1.0f;
  hadamard_forward(e.data(), 6, 5);
  for (std::size_t i = 0; i < 4; ++i) CHECK(std::fabs(e[i]) == doctest::Approx(0.5f));
  CHECK(e[4] == 0.0f);
  CHECK(e[5] == 0.0f);
  // n = 1: a sign flip
  float one = 2.5f;
  hadamard_forward(&one, 1, 7);
  CHECK(one == 2.5f * hadamard_sign(7, 0));
  // columns of the n = 96 matrix are orthonormal
  const std::size_t n = 96;
  std::vector<std::vector<float>> cols(n, std::vector<float>(n, 0.0f));
  for (std::size_t k = 0; k < n; ++k) {
    cols[k][k] = 1.0f;
    hadamard_forward(cols[k].data(), n, 99);
  }
  double worst = 0.0;
  for (std::size_t a = 0; a < n; ++a)
    for (std::size_t b = a; b < n; ++b) {
      double d = 0;
      for (std::size_t i = 0; i < n; ++i) d += static_cast<double>(cols[a][i]) * cols[b][i];
      worst = std::max(worst, std::fabs(d - (a == b ? 1.0 : 0.0)));
    }
  CHECK(worst < 1e-6);
}

TEST_CASE("hadamard rotation spreads an outlier (the reason to rotate before quantizing)") {
  std::vector<float> x(128, 0.01f);
  x[17] = 50.0f;
  hadamard_forward(x.data(), 128, 3);
  float amax = 0.0f;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  CHECK(amax < 50.0f / std::sqrt(128.0f) + 0.2f);
}

TEST_CASE("hadamard rows use the same signs for every row") {
  std::vector<float> rows(3 * 12);
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<float>(i % 12) - 5.5f;
  hadamard_forward_rows(rows.data(), 3, 12, 77);
  for (std::size_t i = 0; i < 12; ++i) {
    CHECK(rows[i] == rows[12 + i]);
    CHECK(rows[i] == rows[24 + i]);
  }
  hadamard_inverse_rows(rows.data(), 3, 12, 77);
  for (std::size_t i = 0; i < rows.size(); ++i) CHECK(rows[i] == doctest::Approx(static_cast<float>(i % 12) - 5.5f).epsilon(1e-6));
  hadamard_forward(nullptr, 0, 1);  // n = 0 is a no-op
}

}  // namespace kvcodec_test_core_hadamard
