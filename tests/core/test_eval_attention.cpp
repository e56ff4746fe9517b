// Tests of core/eval_attention.hpp, the GPU form of eval::compare_attention: through the host emulation
// of the kernels' tile phases (compare_attention_emulated), the metrics equal the CPU's within double
// rounding: a lossy dense reconstruction, a token-dropped one (kept sets), an exact one (error and KL
// exactly 0), query windows, max_rows sampling, GQA and MHA, head widths across the 32-channel chunks,
// and caches spanning several 64-row and 64-key tiles.
#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

#include "kvcodec/core/eval_attention.hpp"
#include "kvcodec/eval/attention.hpp"
#include "kvcodec/tensor/kv_cache.hpp"
#include "../support/small_synth.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_eval_attention {

using namespace kvcodec;

namespace {

/// The cache with every K/V value perturbed by a deterministic relative noise of about `eps`.
kv_cache perturbed(kv_cache kv, double eps) {
  std::uint64_t st = 99;
  for (auto* t : {&kv.keys, &kv.values})
    for (auto& layer : *t)
      for (auto& x : layer) x = static_cast<float>(x * (1.0 + eps * (static_cast<double>(splitmix64_next(st) >> 11) * 0x1.0p-53 - 0.5)));
  return kv;
}

void check_same(const eval::attention_metrics& got, const eval::attention_metrics& want) {
  CHECK(got.rows == want.rows);
  CHECK(got.empty_rows == want.empty_rows);
  CHECK(got.rel_error == doctest::Approx(want.rel_error).epsilon(1e-9));
  CHECK(got.kl == doctest::Approx(want.kl).epsilon(1e-7));
  CHECK(got.dropped_mass == doctest::Approx(want.dropped_mass).epsilon(1e-9));
}

}  // namespace

TEST_CASE("GPU attention metrics (host emulation) equal the CPU's - lossy - several tiles - windows and sampling") {
  const kv_cache kv = test::small_synth({.layers = 2, .kv_heads = 2, .q_heads = 4, .head_dim = 40, .tokens = 150, .seed = 6});
  const kv_cache rec = perturbed(kv, 0.05);
  for (std::int64_t qb : {std::int64_t{0}, std::int64_t{100}})
    for (std::int64_t max_rows : {std::int64_t{0}, std::int64_t{37}}) {
      CAPTURE(qb);
      CAPTURE(max_rows);
      eval::attention_options o;
      o.query_begin = qb, o.max_rows = max_rows, o.threads = 1;
      const auto want = eval::compare_attention(kv, rec, o);
      CHECK(want.rel_error > 1e-4);  // a real error to compare
      check_same(eval::compare_attention_emulated(kv, rec, o), want);
    }
}

TEST_CASE("GPU attention metrics (host emulation) - token-dropped reconstruction - dropped mass and empty rows") {
  const kv_cache kv = test::small_synth({.layers = 1, .kv_heads = 2, .q_heads = 2, .head_dim = 16, .tokens = 90, .seed = 12});
  kv_cache rec = perturbed(kv, 0.02);
  rec.kept.assign(1, std::vector<std::vector<std::int32_t>>(2));
  for (std::int32_t t = 0; t < 90; ++t) {
    if (t % 3 != 0) rec.kept[0][0].push_back(t);  // head 0 keeps two tokens of three
    if (t >= 5) rec.kept[0][1].push_back(t);      // head 1 drops the first five: rows 0..4 have no kept key
  }
  eval::attention_options o;
  o.threads = 1;
  const auto want = eval::compare_attention(kv, rec, o);
  CHECK(want.dropped_mass > 0.0);
  CHECK(want.empty_rows == 6);  // head 1 rows 0..4, and head 0 row 0 (token 0 dropped)
  check_same(eval::compare_attention_emulated(kv, rec, o), want);
}

TEST_CASE("GPU attention metrics (host emulation) - an exact reconstruction has error and KL 0") {
  const kv_cache kv = test::small_synth({.layers = 1, .kv_heads = 1, .q_heads = 3, .head_dim = 8, .tokens = 70, .seed = 1});
  const auto m = eval::compare_attention_emulated(kv, kv);
  CHECK(m.rel_error == 0.0);
  CHECK(m.kl == 0.0);
  CHECK(m.dropped_mass == 0.0);
  CHECK(m.rows == 3 * 70);
}

TEST_CASE("attention_row_pos samples the window as the CPU did - strided with a per-task phase") {
  // every position when per >= nq; else per increasing positions inside the window
  CHECK(attention_row_pos(5, 3, 10, 20, 20) == 13);
  std::int64_t prev = -1;
  for (std::int64_t k = 0; k < 7; ++k) {
    const std::int64_t i = attention_row_pos(3, k, 10, 20, 7);
    CHECK(i > prev);
    CHECK(i >= 10);
    CHECK(i < 30);
    prev = i;
  }
  CHECK(attention_row_pos(0, 0, 10, 20, 7) == 10);  // task 0: phase 0
}

}  // namespace kvcodec_test_core_eval_attention
