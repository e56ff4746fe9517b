// Tests of core/adakv.hpp, Ada-KV's steps on the GPU path: the host emulation keeps the CPU's
// select_adakv tokens over the window scorers (snapkv, h2o, tova), for safeguards of 0, part and all of
// the budget, budgets below and above the protected window, f32 and f16, several tiles; the budget
// arithmetic; and a case where the pool ties across heads (tova: every head has the same scores, so the
// lower head wins as on the CPU).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/adakv.hpp"
#include "kvcodec/cpu/drop/adakv.hpp"
#include "../support/small_synth.hpp"
#include "../support/scorer_coders.hpp"
#include "../support/window_cases.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_adakv {

using namespace kvcodec;

namespace {

/// Tokens kept by one side only, CPU kept sets against a mask [l][h][t < n].
std::size_t differing(const kept_sets& want, const std::vector<std::uint8_t>& mask, std::int64_t n) {
  std::size_t diff = 0, seg = 0;
  for (const auto& layer : want)
    for (const auto& h : layer) {
      std::vector<std::uint8_t> w(static_cast<std::size_t>(n), 0);
      for (auto t : h)
        if (t < n) w[static_cast<std::size_t>(t)] = 1;
      for (std::int64_t t = 0; t < n; ++t) diff += w[static_cast<std::size_t>(t)] != mask[seg * static_cast<std::size_t>(n) + static_cast<std::size_t>(t)] ? 1 : 0;
      ++seg;
    }
  return diff;
}

/// Emulated adakv over `scorer` against the CPU's select_adakv; returns the tokens that differ.
std::size_t run_case(const kv_cache& kv, std::uint32_t code, const std::string& scorer, std::int64_t b, double alpha, std::int64_t obs_end, std::int64_t window) {
  drop::adakv d;
  d.tokens = b, d.alpha = alpha, d.scorer = scorer, d.obs_end = obs_end, d.window = window;
  const drop::config c = d.cfg();
  const std::int64_t T = kv.shape.tokens, n = obs_end < 0 ? T : obs_end;
  const test::typed tk = test::as_dtype(kv.keys, code), tq = test::as_dtype(kv.queries, code);
  const std::vector<std::int32_t> table;
  drop_window_source src;
  src.k = test::source_of(tk, T, kv.shape.head_dim, code, false, table);
  src.q = test::source_of(tq, T, kv.shape.head_dim, code, false, table);
  src.layers = kv.shape.layers, src.heads = kv.shape.kv_heads, src.group = kv.shape.q_heads / kv.shape.kv_heads, src.n = n;
  test::method_case m{scorer, c, scorer == "h2o" ? wattn_score::h2o : scorer == "tova" ? wattn_score::tova : wattn_score::snapkv};
  const drop_window_plan plan = test::window_plan(m, src);
  const std::vector<std::uint8_t> mask = drop_adakv_select_emulated(plan, alpha);
  REQUIRE(mask.size() == static_cast<std::size_t>(kv.shape.layers * kv.shape.kv_heads * n));
  // every head keeps b tokens of the prefix at least up to the protected share, and the layer keeps heads x b
  std::size_t kept = 0;
  for (auto x : mask) kept += x;
  CHECK(kept == static_cast<std::size_t>(kv.shape.layers * kv.shape.kv_heads * b));
  return differing(cpu::select_adakv(kv, c, 1), mask, n);
}

}  // namespace

TEST_CASE("GPU adakv (host emulation) keeps the CPU's tokens - snapkv h2o tova - safeguards 0 to 1") {
  const kv_cache kv = test::small_synth({.layers = 2, .kv_heads = 3, .q_heads = 6, .head_dim = 24, .tokens = 140, .seed = 21});
  for (const char* scorer : {"snapkv", "h2o", "tova"})
    for (double alpha : {0.0, 0.2, 1.0})
      for (std::int64_t b : {std::int64_t{5}, std::int64_t{40}, std::int64_t{139}}) {
        CAPTURE(scorer);
        CAPTURE(alpha);
        CAPTURE(b);
        CHECK(run_case(kv, 0, scorer, b, alpha, -1, 20) == 0);
      }
}

TEST_CASE("GPU adakv (host emulation) - f16 and bf16 on the tensor-core path - a shorter prefix") {
  const kv_cache kv = test::small_synth({.layers = 1, .kv_heads = 2, .q_heads = 4, .head_dim = 40, .tokens = 200, .seed = 8});
  for (std::uint32_t code : {1u, 2u}) {
    CAPTURE(code);
    const kv_cache r = test::rounded(kv, code);
    CHECK(run_case(r, code, "snapkv", 60, 0.2, 170, 64) <= 2);  // near-ties aside
    CHECK(run_case(r, code, "h2o", 30, 0.5, -1, 32) <= 2);
  }
}

TEST_CASE("GPU adakv (host emulation) - two identical heads tie in the pool - the lower head wins as on the CPU") {
  kv_cache kv = test::small_synth({.layers = 1, .kv_heads = 3, .q_heads = 3, .head_dim = 16, .tokens = 120, .seed = 30});
  const std::size_t per = 120 * 16;
  std::copy_n(kv.keys[0].begin(), per, kv.keys[0].begin() + per);  // head 1 = head 0
  std::copy_n(kv.queries[0].begin(), per, kv.queries[0].begin() + per);
  for (std::int64_t b : {std::int64_t{17}, std::int64_t{23}, std::int64_t{50}, std::int64_t{71}}) {
    CAPTURE(b);
    CHECK(run_case(kv, 0, "snapkv", b, 0.0, -1, 16) == 0);
  }
}

TEST_CASE("adakv budgets - protected share - safeguard floor - pool") {
  drop_window_coder c;
  c.heads = 4, c.n = 100, c.protect_from = 90;  // 10 protected tokens
  const adakv_budget a = adakv_budget_of(c, 31, 0.2);
  CHECK(a.protected_kept == 10);
  CHECK(a.safe == 4);                // floor(0.2 x 21)
  CHECK(a.pool == 4 * (21 - 4));
  const adakv_budget small = adakv_budget_of(c, 6, 0.5);  // budget inside the window: no candidates kept
  CHECK(small.protected_kept == 6);
  CHECK(small.safe == 0);
  CHECK(small.pool == 0);
  CHECK(adakv_protected_mark(c, a, 95) == 1);
  CHECK(adakv_protected_mark(c, a, 100 + 89) == 0);
}

TEST_CASE("GPU adakv (host emulation) over knorm keydiff lagkv expected-attention keeps the CPU's tokens - sinks and newest protected - safeguards") {
  const kv_cache kv = test::small_synth({.layers = 2, .kv_heads = 3, .q_heads = 6, .head_dim = 16, .tokens = 130, .seed = 41});
  for (const char* scorer : {"knorm", "keydiff", "lagkv", "expected-attention"})
    for (double alpha : {0.0, 0.3, 1.0})
      for (const auto& bo : {std::pair<std::int64_t, std::int64_t>{3, -1}, {20, -1}, {70, -1}, {40, 111}}) {
        const std::int64_t b = bo.first, obs_end = bo.second;  // (clang 14 captures no structured binding)
        CAPTURE(scorer);
        CAPTURE(alpha);
        CAPTURE(b);
        CAPTURE(obs_end);
        drop::adakv d;
        d.tokens = b, d.alpha = alpha, d.scorer = scorer, d.obs_end = obs_end, d.window = 16, d.lag = 20, d.sink = 4;
        const drop::config c = d.cfg();
        const std::int64_t n = obs_end < 0 ? 130 : obs_end;
        const auto mask = test::with_scorer_coder(kv, c, n, [&](const auto& sc) { return drop_adakv_mask_emulated(sc, 2, b, alpha); });
        CHECK(differing(cpu::select_adakv(kv, c, 1), mask, n) == 0);
        std::size_t kept = 0;
        for (auto x : mask) kept += x;
        CHECK(kept == static_cast<std::size_t>(2 * 3 * b));
      }
}

}  // namespace kvcodec_test_core_adakv
