// Tests of core/chunkkv.hpp, ChunkKV on the GPU path: the host emulation of each scorer's selection with
// drop_chunk_coder keeps the CPU's select_chunkkv tokens: over snapkv, h2o and tova (the window scorers:
// equal on these caches), lagkv, expected-attention, knorm and keydiff (equal bit for bit by construction); chunk sizes
// 1, 7 and 40, budgets that cut a chunk, a prefix.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/chunkkv.hpp"
#include "kvcodec/core/expected_attention.hpp"
#include "kvcodec/core/lagkv.hpp"
#include "kvcodec/core/window_attention.hpp"
#include "kvcodec/cpu/drop/chunkkv.hpp"
#include "../support/small_synth.hpp"
#include "../support/typed_layers.hpp"
#include "../support/window_cases.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_chunkkv {

using namespace kvcodec;

namespace {

std::vector<std::int32_t> cpu_kept(const kv_cache& kv, const drop::config& c, std::int64_t b) {
  std::vector<std::int32_t> out;
  for (const auto& layer : cpu::select_chunkkv(kv, c, 1))
    for (const auto& h : layer) out.insert(out.end(), h.begin(), h.begin() + b);
  return out;
}

/// Emulated chunkkv over `scorer` on kv (f32): the kept sets, flattened as the CPU's.
std::vector<std::int32_t> emulated(const kv_cache& kv, const drop::config& c, std::int64_t b, std::int64_t n) {
  const std::int64_t T = kv.shape.tokens;
  const int D = kv.shape.head_dim;
  const test::typed tk = test::as_dtype(kv.keys, 0), tv = test::as_dtype(kv.values, 0), tq = test::as_dtype(kv.queries, 0);
  const std::vector<std::int32_t> table;
  const drop_chunk_wrap wrap{c.chunk, n};
  if (c.scorer == drop::method::knorm) return drop_knorm_select_emulated(test::source_of(tk, T, D, 0, false, table), kv.shape.layers, kv.shape.kv_heads, n, b, wrap);
  if (c.scorer == drop::method::keydiff) return drop_keydiff_select_emulated(test::source_of(tk, T, D, 0, false, table), kv.shape.layers, kv.shape.kv_heads, n, b, wrap);
  if (c.scorer == drop::method::lagkv) {
    lagkv_args a;
    a.k = test::source_of(tk, T, D, 0, false, table), a.v = tv.ptr.data();
    a.layers = kv.shape.layers, a.heads = kv.shape.kv_heads, a.n = n, a.sink = c.sink, a.lag = c.lag;
    return drop_lagkv_select_emulated(a, b, wrap);
  }
  if (c.scorer == drop::method::expected_attention) {
    expected_args a;
    a.k = test::source_of(tk, T, D, 0, false, table), a.q = test::source_of(tq, T, D, 0, false, table), a.v = tv.ptr.data();
    a.layers = kv.shape.layers, a.heads = kv.shape.kv_heads, a.group = kv.shape.q_heads / kv.shape.kv_heads;
    a.n = n, a.window = c.window, a.sink = c.sink, a.cov = c.cov, a.vnorm = c.vnorm, a.rope = true;
    const expected_prep ep = expected_tables(static_cast<std::size_t>(D), n, c.window, c.future, true, 10000.0, kv.positions);
    return drop_expected_select_emulated(a, ep, b, nullptr, wrap);
  }
  drop_window_source src;
  src.k = test::source_of(tk, T, D, 0, false, table), src.q = test::source_of(tq, T, D, 0, false, table);
  src.layers = kv.shape.layers, src.heads = kv.shape.kv_heads, src.group = kv.shape.q_heads / kv.shape.kv_heads, src.n = n;
  const wattn_score kind = c.scorer == drop::method::h2o ? wattn_score::h2o : c.scorer == drop::method::tova ? wattn_score::tova : wattn_score::snapkv;
  drop::config wc = c;
  wc.tokens = b;
  return drop_window_select_emulated(test::window_plan(test::method_case{"chunkkv", wc, kind}, src), wrap);
}

}  // namespace

TEST_CASE("GPU chunkkv (host emulation) keeps the CPU's tokens - over snapkv h2o tova lagkv expected-attention knorm keydiff - chunk sizes") {
  const kv_cache kv = test::small_synth({.layers = 2, .kv_heads = 2, .q_heads = 4, .head_dim = 16, .tokens = 130, .seed = 31});
  for (const char* scorer : {"snapkv", "h2o", "tova", "lagkv", "expected-attention", "knorm", "keydiff"})
    for (std::int64_t chunk : {std::int64_t{1}, std::int64_t{7}, std::int64_t{40}})
      for (std::int64_t obs_end : {std::int64_t{-1}, std::int64_t{111}})
        for (std::int64_t b : {std::int64_t{9}, std::int64_t{50}}) {
          CAPTURE(scorer);
          CAPTURE(chunk);
          CAPTURE(obs_end);
          CAPTURE(b);
          drop::chunkkv d;
          d.scorer = scorer, d.chunk = chunk, d.tokens = b, d.obs_end = obs_end, d.window = 16, d.lag = 20;
          const drop::config c = d.cfg();
          CHECK(emulated(kv, c, b, obs_end < 0 ? 130 : obs_end) == cpu_kept(kv, c, b));
        }
}

TEST_CASE("chunk means read the CPU scorer's values - 0 in snapkv's window - protected tokens keep their priority") {
  std::vector<float> acc(20, 1.0f);
  drop_window_coder c;
  c.acc = acc.data(), c.n = 20, c.qb = 10, c.kernel = 5, c.protect_from = 10, c.kind = wattn_score::snapkv;
  CHECK(c.score(0, 0, 11) > 0.0);  // pooling reaches back into the scored prefix
  CHECK(c.raw(0, 0, 11) == 0.0);   // the CPU writes no score in the window
  CHECK(c.raw(0, 0, 9) == c.score(0, 0, 9));
  const drop_chunk_coder<drop_window_coder> k{c, 4, 20};
  CHECK(k(0, 0, 19) == drop_protected_code(0));
  CHECK(k(0, 0, 8) == drop_rank_code((c.raw(0, 0, 8) + c.raw(0, 0, 9) + 0.0 + 0.0) / 4.0));  // chunk [8, 12)
}

}  // namespace kvcodec_test_core_chunkkv
