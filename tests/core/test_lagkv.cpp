// Tests of core/lagkv.hpp, LagKV's steps on the GPU path: the host emulation keeps exactly the CPU's
// select_lagkv tokens (the steps repeat the CPU's arithmetic in its order): sinks and partition lengths
// around the prefix, budgets below and above the protected tokens, f32/f16/bf16 and paged caches, a flat
// channel (range 0) and a NaN value.
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "kvcodec/core/lagkv.hpp"
#include "kvcodec/cpu/drop/lagkv.hpp"
#include "kvcodec/stage/drop_structural.hpp"
#include "../support/small_synth.hpp"
#include "../support/typed_layers.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_lagkv {

using namespace kvcodec;

namespace {

std::vector<std::int32_t> cpu_kept(const kv_cache& kv, std::int64_t sink, std::int64_t lag, std::int64_t n, std::int64_t b) {
  drop::lagkv d;
  d.sink = sink, d.lag = lag, d.tokens = b, d.obs_end = n == kv.shape.tokens ? -1 : n;
  std::vector<std::int32_t> out;
  for (const auto& layer : cpu::select_lagkv(kv, d.cfg(), 1))
    for (const auto& h : layer) out.insert(out.end(), h.begin(), h.begin() + b);
  return out;
}

kv_cache rounded(kv_cache kv, std::uint32_t code) {
  for (auto* t : {&kv.keys, &kv.values})
    for (auto& layer : *t)
      for (auto& x : layer) x = test::round_to(x, code);
  return kv;
}

}  // namespace

TEST_CASE("GPU lagkv selection (host emulation) keeps exactly the CPU's tokens - sinks - lags - dtypes - paged") {
  kv_cache kv = test::small_synth({.layers = 2, .kv_heads = 2, .q_heads = 2, .head_dim = 12, .tokens = 120, .seed = 17});
  const std::size_t T = 120, D = 12;
  for (auto& layer : kv.keys)
    for (std::size_t t = 0; t < T; ++t) layer[(1 * T + t) * D + 4] = 0.5f;  // head 1: a flat key channel
  kv.values[1][(0 * T + 70) * D + 2] = std::numeric_limits<float>::quiet_NaN();
  for (std::uint32_t code : {0u, 1u, 2u})
    for (bool paged : {false, true})
      for (std::int64_t sink : {std::int64_t{0}, std::int64_t{4}})
        for (std::int64_t lag : {std::int64_t{2}, std::int64_t{16}, std::int64_t{50}})
          for (std::int64_t n : {std::int64_t{120}, std::int64_t{97}})
            for (std::int64_t b : {std::int64_t{3}, std::int64_t{30}, n}) {
              CAPTURE(code);
              CAPTURE(paged);
              CAPTURE(sink);
              CAPTURE(lag);
              CAPTURE(n);
              CAPTURE(b);
              const kv_cache r = rounded(kv, code);
              const test::typed tk = test::as_dtype(r.keys, code), tv = test::as_dtype(r.values, code);
              std::vector<std::int32_t> table;
              for (std::int32_t i = 0; i < 15; ++i) table.push_back(i);
              lagkv_args a;
              a.k.k = tk.ptr.data();
              a.v = tv.ptr.data();
              a.k.head_dim = 12, a.k.dtype_code = code;
              a.k.layout.s_head = static_cast<std::int64_t>(T * D), a.k.layout.s_token = static_cast<std::int64_t>(D);
              if (paged) a.k.layout.block_size = 8, a.k.layout.s_block = static_cast<std::int64_t>(8 * D), a.k.layout.block_table = table.data();
              a.layers = 2, a.heads = 2, a.n = n, a.sink = sink, a.lag = lag;
              CHECK(drop_lagkv_select_emulated(a, b) == cpu_kept(r, sink, lag, n, b));
            }
}

TEST_CASE("lagkv partitions - scored - tail - sinks past the prefix") {
  lagkv_args a;
  a.n = 100, a.sink = 4, a.lag = 16;  // 6 whole partitions after the sinks, 5 scored
  CHECK(lagkv_parts(a) == 6);
  CHECK(lagkv_scored(a) == 5);
  CHECK(lagkv_tail(a) == 4 + 5 * 16);
  a.sink = 200;  // every token a sink
  CHECK(lagkv_sinks(a) == 100);
  CHECK(lagkv_scored(a) == 0);
  CHECK(lagkv_tail(a) == 100);
}

}  // namespace kvcodec_test_core_lagkv
