// Tests of weighted-quant's step math (core/weighted_quant.hpp): RoPE pairs, relative key steps from
// query energies, their normalisation and clamps.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "kvcodec/core/weighted_quant.hpp"

namespace kvcodec_test_core_weighted_quant {

using namespace kvcodec;

TEST_CASE("weighted-quant: RoPE pairs by style") {
  CHECK(rope_pairs_of("interleaved-pairs", 8) == rope_pairs::interleaved);
  CHECK(rope_pairs_of("rotate-half", 8) == rope_pairs::half);
  CHECK(rope_pairs_of("", 8) == rope_pairs::none);
  CHECK(rope_pairs_of("interleaved-pairs", 7) == rope_pairs::none);  // odd head_dim: no pairs
  CHECK(rope_partner(0, 8, rope_pairs::interleaved) == 1);
  CHECK(rope_partner(5, 8, rope_pairs::interleaved) == 4);
  CHECK(rope_partner(1, 8, rope_pairs::half) == 5);
  CHECK(rope_partner(6, 8, rope_pairs::half) == 2);
  CHECK(rope_partner(3, 8, rope_pairs::none) == 3);
}

TEST_CASE("weighted-quant: key steps shrink as the square root of the query energy") {
  // one head, four channels, no pairs: w = 1, 4, 16, 64 -> geometric mean 8
  const std::vector<float> w = {1, 4, 16, 64};
  std::vector<float> rel(4);
  weighted_key_rel(w.data(), 1, 4, rope_pairs::none, rel.data());
  CHECK(rel[0] == doctest::Approx(std::sqrt(8.0)));
  CHECK(rel[1] == doctest::Approx(std::sqrt(2.0)));
  CHECK(rel[2] == doctest::Approx(std::sqrt(0.5)));
  CHECK(rel[3] == doctest::Approx(std::sqrt(0.125)));
  // step x sqrt(w) is the same for every channel: each adds the same logit error
  for (int d = 1; d < 4; ++d) CHECK(rel[d] * std::sqrt(w[d]) == doctest::Approx(rel[0] * std::sqrt(w[0])));
  // the product of the relative steps is 1 (kstep keeps its meaning)
  CHECK(rel[0] * rel[1] * rel[2] * rel[3] == doctest::Approx(1.0));
}

TEST_CASE("weighted-quant: a RoPE pair shares one step") {
  const std::vector<float> w = {1, 9, 4, 4, 100, 0, 3, 5};  // two heads of four channels
  std::vector<float> rel(8);
  weighted_key_rel(w.data(), 2, 4, rope_pairs::interleaved, rel.data());
  for (int i = 0; i < 8; i += 2) CHECK(rel[i] == rel[i + 1]);
  CHECK(rel[0] < rel[2]);  // pair (1, 9) averages 5 > pair (4, 4): more energy, a finer step
  weighted_key_rel(w.data(), 2, 4, rope_pairs::half, rel.data());
  CHECK(rel[0] == rel[2]);
  CHECK(rel[1] == rel[3]);
  CHECK(rel[4] == rel[6]);
}

TEST_CASE("weighted-quant: clamps - unread channels - no usable energy") {
  const std::vector<float> w = {1e-12f, 1e12f, 0.0f, 1.0f};
  std::vector<float> rel(4);
  weighted_key_rel(w.data(), 1, 4, rope_pairs::none, rel.data());
  CHECK(rel[0] == doctest::Approx(16.0));       // clamped from above
  CHECK(rel[1] == doctest::Approx(1.0 / 16));   // clamped from below
  CHECK(rel[2] == doctest::Approx(16.0));       // no query reads it
  const std::vector<float> none = {0.0f, NAN, -1.0f, 0.0f};
  weighted_key_rel(none.data(), 1, 4, rope_pairs::none, rel.data());
  for (float r : rel) CHECK(r == 1.0f);
}

TEST_CASE("weighted-quant: RoPE factors of a run of positions agree with those of each position") {
  for (const rope_pairs pr : {rope_pairs::interleaved, rope_pairs::half}) {
    for (const double dir : {1.0, -1.0}) {
      const std::size_t D = 16;
      const std::int64_t p0 = 5000, n = 300;
      std::vector<float> c(static_cast<std::size_t>(n) * D), s(c.size()), c1(D), s1(D);
      rope_factors_run(p0, n, D, 10000.0, pr, dir, c.data(), s.data());
      for (std::int64_t q = 0; q < n; ++q) {
        rope_factors(p0 + q, D, 10000.0, pr, dir, c1.data(), s1.data());
        for (std::size_t d = 0; d < D; ++d) {
          CHECK(std::fabs(c[static_cast<std::size_t>(q) * D + d] - c1[d]) <= 1.2e-7f);
          CHECK(std::fabs(s[static_cast<std::size_t>(q) * D + d] - s1[d]) <= 1.2e-7f);
        }
      }
      // a rotation: c^2 + s^2 = 1 on every channel, and each pair's second channel has the opposite sine
      for (std::size_t d = 0; d < D; ++d) CHECK(c[d] * c[d] + s[d] * s[d] == doctest::Approx(1.0).epsilon(1e-6));
      CHECK(s[static_cast<std::size_t>(rope_partner(0, static_cast<int>(D), pr))] == -s[0]);
    }
  }
}

}  // namespace kvcodec_test_core_weighted_quant
