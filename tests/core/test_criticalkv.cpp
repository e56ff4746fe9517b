// Tests of core/criticalkv.hpp, CriticalKV's steps on the GPU path: the host emulation keeps the CPU's
// select_criticalkv tokens over the window scorers (snapkv, h2o, tova), for stage-1 shares 0, part and
// all of the budget, budgets below and above the protected window, f32 and f16/bf16 (the tensor-core
// path), a shorter prefix; criticaladakv's emulation against select_criticaladakv; and the budget
// arithmetic.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/criticalkv.hpp"
#include "kvcodec/cpu/drop/criticalkv.hpp"
#include "../support/small_synth.hpp"
#include "../support/scorer_coders.hpp"
#include "../support/window_cases.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_criticalkv {

using namespace kvcodec;

namespace {

/// Emulated criticalkv over `scorer` against the CPU's select_criticalkv; returns the tokens only one
/// side keeps.
std::size_t run_case(const kv_cache& kv, std::uint32_t code, const std::string& scorer, std::int64_t b, double first, std::int64_t obs_end, std::int64_t window) {
  drop::criticalkv d;
  d.tokens = b, d.first = first, d.scorer = scorer, d.obs_end = obs_end, d.window = window;
  const drop::config c = d.cfg();
  const std::int64_t T = kv.shape.tokens, n = obs_end < 0 ? T : obs_end;
  const test::typed tk = test::as_dtype(kv.keys, code), tq = test::as_dtype(kv.queries, code), tv = test::as_dtype(kv.values, code);
  const std::vector<std::int32_t> table;
  drop_window_source src;
  src.k = test::source_of(tk, T, kv.shape.head_dim, code, false, table);
  src.q = test::source_of(tq, T, kv.shape.head_dim, code, false, table);
  src.layers = kv.shape.layers, src.heads = kv.shape.kv_heads, src.group = kv.shape.q_heads / kv.shape.kv_heads, src.n = n;
  const drop_source v = test::source_of(tv, T, kv.shape.head_dim, code, false, table);
  test::method_case m{scorer, c, scorer == "h2o" ? wattn_score::h2o : scorer == "tova" ? wattn_score::tova : wattn_score::snapkv};
  const drop_window_plan plan = test::window_plan(m, src);
  const std::vector<std::int32_t> got = drop_criticalkv_select_emulated(plan, first, c.epsilon, v);
  REQUIRE(got.size() == static_cast<std::size_t>(kv.shape.layers * kv.shape.kv_heads * b));
  const kept_sets want = cpu::select_criticalkv(kv, c, 1);
  std::size_t diff = 0, at = 0;
  for (const auto& layer : want)
    for (const auto& h : layer) {
      const std::vector<std::int32_t> w(h.begin(), h.begin() + b), g(got.begin() + static_cast<std::ptrdiff_t>(at), got.begin() + static_cast<std::ptrdiff_t>(at + static_cast<std::size_t>(b)));
      std::vector<std::int32_t> x;
      std::set_symmetric_difference(w.begin(), w.end(), g.begin(), g.end(), std::back_inserter(x));
      diff += x.size();
      at += static_cast<std::size_t>(b);
    }
  return diff;
}

}  // namespace

TEST_CASE("GPU criticalkv (host emulation) keeps the CPU's tokens - snapkv h2o tova - stage-1 shares 0 to 1") {
  const kv_cache kv = test::small_synth({.layers = 2, .kv_heads = 3, .q_heads = 6, .head_dim = 24, .tokens = 140, .seed = 23});
  for (const char* scorer : {"snapkv", "h2o", "tova"})
    for (double first : {0.0, 0.5, 1.0})
      for (std::int64_t b : {std::int64_t{5}, std::int64_t{40}, std::int64_t{139}}) {
        CAPTURE(scorer);
        CAPTURE(first);
        CAPTURE(b);
        CHECK(run_case(kv, 0, scorer, b, first, -1, 20) == 0);
      }
}

TEST_CASE("GPU criticalkv (host emulation) - f16 and bf16 on the tensor-core path - a shorter prefix") {
  const kv_cache kv = test::small_synth({.layers = 1, .kv_heads = 2, .q_heads = 4, .head_dim = 40, .tokens = 200, .seed = 9});
  for (std::uint32_t code : {1u, 2u}) {
    CAPTURE(code);
    kv_cache r = test::rounded(kv, code);
    for (auto& layer : r.values)
      for (auto& x : layer) x = test::round_to(x, code);
    CHECK(run_case(r, code, "snapkv", 60, 0.5, 170, 64) <= 2);  // near-ties aside
    CHECK(run_case(r, code, "h2o", 30, 0.3, -1, 32) <= 2);
  }
}

TEST_CASE("GPU criticaladakv (host emulation) keeps the CPU's tokens - snapkv h2o tova - safeguards and stage-1 shares") {
  const kv_cache kv = test::small_synth({.layers = 2, .kv_heads = 3, .q_heads = 6, .head_dim = 24, .tokens = 140, .seed = 29});
  const std::int64_t T = 140;
  const test::typed tk = test::as_dtype(kv.keys, 0), tq = test::as_dtype(kv.queries, 0), tv = test::as_dtype(kv.values, 0);
  const std::vector<std::int32_t> table;
  drop_window_source src;
  src.k = test::source_of(tk, T, 24, 0, false, table);
  src.q = test::source_of(tq, T, 24, 0, false, table);
  src.layers = 2, src.heads = 3, src.group = 2, src.n = T;
  const drop_source v = test::source_of(tv, T, 24, 0, false, table);
  for (const char* scorer : {"snapkv", "h2o", "tova"})
    for (double alpha : {0.0, 0.3})
      for (double first : {0.2, 0.7})
        for (std::int64_t b : {std::int64_t{10}, std::int64_t{60}}) {
          CAPTURE(scorer);
          CAPTURE(alpha);
          CAPTURE(first);
          CAPTURE(b);
          drop::criticaladakv d;
          d.tokens = b, d.alpha = alpha, d.first = first, d.scorer = scorer, d.window = 20;
          const drop::config c = d.cfg();
          const test::method_case m{scorer, c, std::string(scorer) == "h2o" ? wattn_score::h2o : std::string(scorer) == "tova" ? wattn_score::tova : wattn_score::snapkv};
          const std::vector<std::uint8_t> got = drop_criticaladakv_select_emulated(test::window_plan(m, src), alpha, first, c.epsilon, v);
          std::vector<std::uint8_t> want(got.size(), 0);
          std::size_t seg = 0;
          for (const auto& layer : cpu::select_criticaladakv(kv, c, 1))
            for (const auto& h : layer) {
              for (auto t : h) want[seg * static_cast<std::size_t>(T) + static_cast<std::size_t>(t)] = 1;
              ++seg;
            }
          CHECK(got == want);
          std::size_t kept = 0;
          for (auto x : got) kept += x;
          CHECK(kept == static_cast<std::size_t>(2 * 3 * b));  // every layer keeps heads x b
        }
}

TEST_CASE("criticalkv budgets - protected share - stage 1 within the candidates") {
  drop_window_coder c;
  c.heads = 4, c.n = 100, c.protect_from = 90;  // 10 protected tokens
  const critical_budget a = critical_budget_of(c, 31, 0.5);
  CHECK(a.taken == 10);
  CHECK(a.k1 == 5);  // floor(0.5 x 31) - 10
  CHECK(critical_budget_of(c, 31, 0.2).k1 == 0);  // floor(6.2) - 10 < 0
  CHECK(critical_budget_of(c, 6, 1.0).taken == 6);
  CHECK(critical_budget_of(c, 6, 1.0).k1 == 0);
  c.protect_from = 3;
  CHECK(critical_budget_of(c, 100, 1.0).k1 == 3);  // at most the candidates
}

TEST_CASE("GPU criticalkv and criticaladakv (host emulation) over knorm keydiff lagkv expected-attention keep the CPU's tokens") {
  const kv_cache kv = test::small_synth({.layers = 2, .kv_heads = 3, .q_heads = 6, .head_dim = 16, .tokens = 130, .seed = 43});
  const test::typed tv = test::as_dtype(kv.values, 0);
  const std::vector<std::int32_t> table;
  const drop_source v = test::source_of(tv, 130, 16, 0, false, table);
  for (const char* scorer : {"knorm", "keydiff", "lagkv", "expected-attention"})
    for (double first : {0.2, 0.7})
      for (const auto& bo : {std::pair<std::int64_t, std::int64_t>{10, -1}, {60, -1}, {40, 111}}) {
        const std::int64_t b = bo.first, obs_end = bo.second;  // (clang 14 captures no structured binding)
        CAPTURE(scorer);
        CAPTURE(first);
        CAPTURE(b);
        CAPTURE(obs_end);
        const std::int64_t n = obs_end < 0 ? 130 : obs_end;
        drop::criticalkv d;
        d.tokens = b, d.first = first, d.scorer = scorer, d.obs_end = obs_end, d.window = 16, d.lag = 20, d.sink = 4;
        const drop::config c = d.cfg();
        const auto got = test::with_scorer_coder(kv, c, n, [&](const auto& sc) { return drop_criticalkv_emulated(sc, 2, b, first, c.epsilon, v); });
        std::vector<std::int32_t> want;
        for (const auto& layer : cpu::select_criticalkv(kv, c, 1))
          for (const auto& h : layer) want.insert(want.end(), h.begin(), h.begin() + b);
        CHECK(got == want);
        drop::criticaladakv a;
        a.tokens = b, a.alpha = 0.3, a.first = first, a.scorer = scorer, a.obs_end = obs_end, a.window = 16, a.lag = 20, a.sink = 4;
        const drop::config ca = a.cfg();
        const auto mask = test::with_scorer_coder(kv, ca, n, [&](const auto& sc) { return drop_criticaladakv_emulated(sc, 2, b, 0.3, first, ca.epsilon, v); });
        std::vector<std::uint8_t> wm(mask.size(), 0);
        std::size_t seg = 0;
        for (const auto& layer : cpu::select_criticaladakv(kv, ca, 1))
          for (const auto& h : layer) {
            for (auto t : h)
              if (t < n) wm[seg * static_cast<std::size_t>(n) + static_cast<std::size_t>(t)] = 1;
            ++seg;
          }
        CHECK(mask == wm);
      }
}

}  // namespace kvcodec_test_core_criticalkv
