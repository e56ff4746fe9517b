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

}  // namespace kvcodec_test_core_weighted_quant
