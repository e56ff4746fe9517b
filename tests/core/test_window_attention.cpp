// Tests of core/window_attention.hpp, the GPU window-attention scorers' shared logic: through the host
// emulation of the kernels' tiles, snapkv, pyramidkv, h2o and tova score every token as the CPU
// scorers do (within float rounding: the two sum in other orders) and keep the CPU's tokens, except
// where two tokens' CPU scores are equal within that rounding. Caches that span several 64-row and
// 64-key tiles and a partial channel chunk, f32 (the fma path), f16 and bf16 (the tensor-core path in its
// host form), strided and paged, a prefix shorter than the
// cache, GQA groups of 1 to 3, and a NaN query row (adds nothing on both sides).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kvcodec/core/half.hpp"
#include "kvcodec/core/window_attention.hpp"
#include "../support/small_synth.hpp"
#include "../support/window_cases.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_window_attention {

using namespace kvcodec;

namespace {

struct outcome {
  std::size_t tokens_differing = 0;
  double worst_score_error = 0.0;
};

/// Runs method m on kv (keys and queries in dtype `code`, already rounded to it) through the emulation
/// and checks it against the CPU: every unprotected score within a relative 1e-4, and every token that
/// only one side keeps scored within that tolerance of the CPU's weakest kept score.
outcome check_method(const test::method_case& m, const kv_cache& kv, std::uint32_t code, bool paged) {
  const int L = kv.shape.layers, H = kv.shape.kv_heads, D = kv.shape.head_dim;
  const std::int64_t T = kv.shape.tokens, n = m.cfg.obs_end < 0 ? T : m.cfg.obs_end;
  const test::typed tk = test::as_dtype(kv.keys, code), tq = test::as_dtype(kv.queries, code);
  std::vector<std::int32_t> table;
  for (std::int32_t i = 0; i * 16 < T; ++i) table.push_back(i);
  drop_window_source src;
  src.k = test::source_of(tk, T, D, code, paged, table);
  src.q = test::source_of(tq, T, D, code, paged, table);
  src.layers = L, src.heads = H, src.group = kv.shape.q_heads / H, src.n = n;
  const drop_window_plan plan = test::window_plan(m, src);

  // the emulated column sums, for the score comparison
  const std::size_t segs = static_cast<std::size_t>(L * H);
  std::vector<float> mm(segs * static_cast<std::size_t>(wattn_rows(plan.a))), zz(mm.size()), acc(segs * static_cast<std::size_t>(n));
  wattn_args e = plan.a;
  e.m = mm.data(), e.z = zz.data(), e.acc = acc.data();
  window_attention_emulated(e);
  drop_window_coder sc = plan.coder;
  sc.acc = acc.data();
  outcome o;
  for (int l = 0; l < L; ++l) {
    const std::vector<double> s = test::scores_of(m, kv, n, l, plan.budgets[static_cast<std::size_t>(l)]);
    for (int h = 0; h < H; ++h)
      for (std::int64_t t = 0; t < sc.protect_from; ++t) {
        const double x = sc.score(l, h, t), y = s[static_cast<std::size_t>(h) * static_cast<std::size_t>(n) + static_cast<std::size_t>(t)];
        const double err = std::abs(x - y) / std::max(1e-30, std::abs(y));
        o.worst_score_error = std::max(o.worst_score_error, err);
        if (!(err < 1e-4)) {
          CAPTURE(l);
          CAPTURE(h);
          CAPTURE(t);
          CHECK(x == doctest::Approx(y).epsilon(1e-4));
        }
      }
  }
  const std::vector<std::int32_t> got = drop_window_select_emulated(plan);
  const test::kept_diff d = test::window_kept_diff(m, kv, plan, got);
  CHECK_MESSAGE(d.bad.empty(), d.bad);
  o.tokens_differing = d.tokens;
  return o;
}

}  // namespace

TEST_CASE("GPU window scorers (host emulation) - one tile - every method keeps the CPU's tokens") {
  const kv_cache kv = test::small_synth({.layers = 2, .kv_heads = 2, .q_heads = 4, .head_dim = 8, .tokens = 40, .seed = 11});
  for (const auto& m : test::methods(12, -1, 8)) {
    CAPTURE(m.name);
    const outcome o = check_method(m, kv, 0, false);
    CHECK(o.worst_score_error < 1e-4);
    MESSAGE(m.name << ": " << o.tokens_differing << " tokens differ (near-ties), worst relative score error " << o.worst_score_error);
  }
}

TEST_CASE("GPU window scorers (host emulation) - several tiles - f32 f16 bf16 - strided and paged - a shorter prefix") {
  const kv_cache kv = test::small_synth({.layers = 2, .kv_heads = 2, .q_heads = 6, .head_dim = 40, .tokens = 150, .seed = 4});
  for (std::uint32_t code : {0u, 1u, 2u})
    for (bool paged : {false, true})
      for (std::int64_t obs_end : {std::int64_t{-1}, std::int64_t{131}}) {
        const kv_cache r = test::rounded(kv, code);
        for (const auto& m : test::methods(37, obs_end, 30)) {
          CAPTURE(m.name);
          CAPTURE(code);
          CAPTURE(paged);
          CAPTURE(obs_end);
          const outcome o = check_method(m, r, code, paged);
          CHECK(o.worst_score_error < 1e-4);
          CHECK(o.tokens_differing <= 2);
        }
      }
}

TEST_CASE("GPU window scorers (host emulation) - a NaN query row adds nothing as on the CPU - MHA") {
  kv_cache kv = test::small_synth({.layers = 1, .kv_heads = 3, .q_heads = 3, .head_dim = 16, .tokens = 90, .seed = 9});
  kv.queries[0][(1 * 90 + 85) * 16 + 2] = std::numeric_limits<float>::quiet_NaN();  // head 1, row 85 (in the window)
  for (const auto& m : test::methods(20, -1, 10)) {
    CAPTURE(m.name);
    const outcome o = check_method(m, kv, 0, false);
    CHECK(o.worst_score_error < 1e-4);
    CHECK(o.tokens_differing <= 2);
  }
}

TEST_CASE("window attention stats - a row's maximum and sum match a double reference across key tiles") {
  const kv_cache kv = test::small_synth({.layers = 1, .kv_heads = 1, .q_heads = 2, .head_dim = 8, .tokens = 140, .seed = 2});
  const test::typed tk = test::as_dtype(kv.keys, 0), tq = test::as_dtype(kv.queries, 0);
  const std::vector<std::int32_t> table;
  wattn_args a;
  a.k = test::source_of(tk, 140, 8, 0, false, table);
  a.q = test::source_of(tq, 140, 8, 0, false, table);
  a.layers = 1, a.heads = 1, a.group = 2, a.n = 140, a.qb = 70;
  a.scale = static_cast<float>(1.0 / std::sqrt(8.0));
  std::vector<float> m(140), z(140), acc(140);
  a.m = m.data(), a.z = z.data(), a.acc = acc.data();
  window_attention_emulated(a);
  double total = 0.0;
  for (std::int64_t r = 0; r < 140; ++r) {
    const std::int64_t h = r / 70, i = 70 + r % 70;
    std::vector<double> s(static_cast<std::size_t>(i + 1));
    for (std::int64_t j = 0; j <= i; ++j) {
      double d = 0.0;
      for (int c = 0; c < 8; ++c) d += static_cast<double>(kv.queries[0][static_cast<std::size_t>((h * 140 + i) * 8 + c)]) * kv.keys[0][static_cast<std::size_t>(j * 8 + c)];
      s[static_cast<std::size_t>(j)] = d;
    }
    const double mx = *std::max_element(s.begin(), s.end());
    double zs = 0.0;
    for (double x : s) zs += std::exp((x - mx) * a.scale);
    CHECK(m[static_cast<std::size_t>(r)] == doctest::Approx(mx).epsilon(1e-5));
    CHECK(z[static_cast<std::size_t>(r)] == doctest::Approx(zs).epsilon(1e-5));
  }
  for (float x : acc) total += x;
  CHECK(total == doctest::Approx(140.0).epsilon(1e-5));  // every row's probabilities sum to 1
}

TEST_CASE("GPU window scorers take the tensor-core path for f16 or bf16 keys and queries alike") {
  wattn_args a;
  a.k.dtype_code = 1, a.q.dtype_code = 1;
  CHECK(wattn_tensor(a));
  a.q.dtype_code = 2;
  CHECK_FALSE(wattn_tensor(a));  // mixed: the fma path on widened values
  a.k.dtype_code = 2;
  CHECK(wattn_tensor(a));
  a.k.dtype_code = 0, a.q.dtype_code = 0;
  CHECK_FALSE(wattn_tensor(a));
}

TEST_CASE("GPU window scorers refuse a window - kernel or budget the CPU stage refuses") {
  const void* ptr[1] = {nullptr};
  drop_window_source s;
  s.k.k = ptr, s.q.k = ptr, s.k.head_dim = 8, s.q.head_dim = 8;
  s.layers = 1, s.heads = 1, s.group = 1, s.n = 50;
  drop_window_params p;
  p.b = 10, p.window = 51;
  CHECK_THROWS_WITH_AS(plan_drop_window(s, p), doctest::Contains("window 51 outside 1..50"), kvcodec::error);
  p.window = 10, p.kernel = 4;
  CHECK_THROWS_WITH_AS(plan_drop_window(s, p), doctest::Contains("kernel must be odd"), kvcodec::error);
  p.kernel = 5, p.b = 51;
  CHECK_THROWS_WITH_AS(plan_drop_window(s, p), doctest::Contains("budget 51"), kvcodec::error);
  p.b = 10, p.kind = wattn_score::h2o, p.window = 0;
  const drop_window_plan h = plan_drop_window(s, p);
  CHECK(h.a.qb == 0);                  // window 0: every query
  CHECK(h.coder.protect_from == 45);   // round(0.5 x 10) newest tokens protected
  p.kind = wattn_score::tova;
  CHECK(plan_drop_window(s, p).a.qb == 49);
  s.q.head_dim = 16;
  CHECK_THROWS_AS(plan_drop_window(s, p), kvcodec::error);
}

}  // namespace kvcodec_test_core_window_attention
