// Tests of core/drop_topk.hpp, the GPU token-dropping path's shared logic: its host emulation keeps
// exactly the CPU knorm selector's tokens, on f32, f16 and bf16 sources, strided and paged layouts,
// with tied and NaN rows; the random selection too; drop_rank_code orders as the CPU selector does.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kvcodec/core/drop_topk.hpp"
#include "kvcodec/core/half.hpp"
#include "kvcodec/cpu/drop/keydiff.hpp"
#include "kvcodec/cpu/drop/knorm.hpp"
#include "kvcodec/cpu/drop/random.hpp"
#include "kvcodec/cpu/drop/streamingllm.hpp"
#include "kvcodec/stage/drop_structural.hpp"
#include "../support/small_synth.hpp"
#include "../support/typed_layers.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_drop_topk {

using namespace kvcodec;

namespace {

/// The CPU's kept sets of `kv` for knorm with b tokens over the prefix n, flattened as the GPU's.
std::vector<std::int32_t> cpu_kept(const kv_cache& kv, std::int64_t n, std::int64_t b) {
  drop::knorm d;
  d.tokens = b;
  d.obs_end = n == kv.shape.tokens ? -1 : n;
  const kept_sets k = cpu::select_knorm(kv, d.cfg(), 1);
  std::vector<std::int32_t> out;
  for (const auto& layer : k)
    for (const auto& h : layer)
      for (std::int64_t i = 0; i < b; ++i) out.push_back(h[static_cast<std::size_t>(i)]);
  return out;
}

/// The cache with its keys rounded to dtype `code` (what the CPU scores when the engine holds f16/bf16).
kv_cache rounded(kv_cache kv, std::uint32_t code) {
  for (auto& layer : kv.keys)
    for (auto& x : layer) x = code == 0 ? x : code == 2 ? bf16_bits_to_f32(f32_to_bf16_bits(x)) : f16_bits_to_f32(f32_to_f16_bits(x));
  return kv;
}

}  // namespace

TEST_CASE("drop_rank_code orders scores as the CPU selector - NaN last - signed zeros equal") {
  const double v[] = {-HUGE_VAL, -3.5, -1e-300, -0.0, 0.0, 1e-300, 2.0, HUGE_VAL};
  for (std::size_t i = 0; i + 1 < std::size(v); ++i) CHECK(drop_rank_code(v[i]) <= drop_rank_code(v[i + 1]));
  CHECK(drop_rank_code(-0.0) == drop_rank_code(0.0));
  CHECK(drop_rank_code(std::numeric_limits<double>::quiet_NaN()) == drop_rank_code(-HUGE_VAL));
  CHECK(drop_rank_code(-1.0) < drop_rank_code(1.0));
}

TEST_CASE("GPU knorm selection (host emulation) keeps the CPU's tokens - f32 f16 bf16 - strided and paged - ties and NaN") {
  kv_cache kv = test::small_synth({.layers = 3, .head_dim = 16, .tokens = 70, .seed = 3});
  // ties: rows 10..13 of every head equal row 9; a NaN row and an all-zero row
  const std::size_t D = 16, T = 70;
  for (auto& layer : kv.keys)
    for (std::size_t h = 0; h < 2; ++h) {
      for (std::size_t t = 10; t < 14; ++t)
        for (std::size_t c = 0; c < D; ++c) layer[(h * T + t) * D + c] = layer[(h * T + 9) * D + c];
      layer[(h * T + 20) * D + 3] = std::numeric_limits<float>::quiet_NaN();
      for (std::size_t c = 0; c < D; ++c) layer[(h * T + 21) * D + c] = 0.0f;
    }
  for (std::uint32_t code : {0u, 1u, 2u})
    for (bool paged : {false, true})
      for (std::int64_t n : {std::int64_t{70}, std::int64_t{50}})
        for (std::int64_t b : {std::int64_t{1}, std::int64_t{12}, n}) {
          CAPTURE(code);
          CAPTURE(paged);
          CAPTURE(n);
          CAPTURE(b);
          const kv_cache r = rounded(kv, code);
          const test::typed tk = test::as_dtype(r.keys, code);
          drop_source s;
          s.head_dim = 16;
          s.dtype_code = code;
          s.layout.s_head = static_cast<std::int64_t>(T * D);
          s.layout.s_token = static_cast<std::int64_t>(D);
          std::vector<std::int32_t> table;
          if (paged) {
            // blocks of 8 tokens, one table per layer shared by the heads: block i of the sequence is
            // physical block i itself, so the cache's [head][token] buffer reads as paged with s_block = 8 D
            s.layout.block_size = 8;
            s.layout.s_block = static_cast<std::int64_t>(8 * D);
            for (std::int32_t i = 0; i < 9; ++i) table.push_back(i);
            s.layout.block_table = table.data();
          }
          s.k = tk.ptr.data();
          CHECK(drop_knorm_select_emulated(s, 3, 2, n, b) == cpu_kept(r, n, b));
        }
}

TEST_CASE("GPU keydiff selection (host emulation) keeps the CPU's tokens - f32 f16 - zero rows - prefixes") {
  kv_cache kv = test::small_synth({.layers = 2, .head_dim = 24, .tokens = 77, .seed = 5});
  for (auto& layer : kv.keys)
    for (std::size_t c = 0; c < 24; ++c) layer[(0 * 77 + 30) * 24 + c] = 0.0f;  // a zero row in head 0
  for (std::uint32_t code : {0u, 1u})
    for (std::int64_t n : {std::int64_t{77}, std::int64_t{45}, std::int64_t{8}})
      for (std::int64_t b : {std::int64_t{1}, std::int64_t{5}, n}) {
        CAPTURE(code);
        CAPTURE(n);
        CAPTURE(b);
        const kv_cache r = rounded(kv, code);
        const test::typed tk = test::as_dtype(r.keys, code);
        drop_source s;
        s.head_dim = 24;
        s.dtype_code = code;
        s.layout.s_head = 77 * 24;
        s.layout.s_token = 24;
        s.k = tk.ptr.data();
        drop::keydiff d;
        d.tokens = b;
        d.obs_end = n == 77 ? -1 : n;
        std::vector<std::int32_t> want;
        for (const auto& layer : cpu::select_keydiff(r, d.cfg(), 1))
          for (const auto& h : layer) want.insert(want.end(), h.begin(), h.begin() + b);
        CHECK(drop_keydiff_select_emulated(s, 2, 2, n, b) == want);
      }
}

TEST_CASE("GPU random selection (host emulation) keeps the CPU's tokens for every seed") {
  const kv_cache kv = test::small_synth({.layers = 3, .tokens = 90});
  for (std::int64_t seed : {0, 1, 77})
    for (std::int64_t n : {std::int64_t{90}, std::int64_t{41}})
      for (std::int64_t b : {std::int64_t{1}, std::int64_t{30}, n}) {
        CAPTURE(seed);
        CAPTURE(n);
        CAPTURE(b);
        drop::random d;
        d.seed = seed;
        d.tokens = b;
        d.obs_end = n == 90 ? -1 : n;
        std::vector<std::int32_t> want;
        for (const auto& layer : cpu::select_random(kv, d.cfg(), 1))
          for (const auto& h : layer) want.insert(want.end(), h.begin(), h.begin() + b);
        CHECK(drop_select_emulated(drop_random_coder{static_cast<std::uint64_t>(seed)}, 3, 2, n, b) == want);
      }
}

TEST_CASE("GPU streamingllm selection (host emulation) keeps the CPU's tokens - budgets below and above the sinks") {
  const kv_cache kv = test::small_synth({.layers = 2, .tokens = 50});
  for (std::int64_t sink : {0, 4, 60})
    for (std::int64_t b : {std::int64_t{1}, std::int64_t{3}, std::int64_t{20}, std::int64_t{50}}) {
      CAPTURE(sink);
      CAPTURE(b);
      drop::streamingllm d;
      d.sink = sink;
      d.tokens = b;
      std::vector<std::int32_t> want;
      for (const auto& layer : cpu::select_streamingllm(kv, d.cfg(), 1))
        for (const auto& h : layer) want.insert(want.end(), h.begin(), h.begin() + b);
      CHECK(drop_select_emulated(drop_streamingllm_coder{sink, 50}, 2, 2, 50, b) == want);
    }
  CHECK(drop_protected_code(0) > drop_rank_code(HUGE_VAL));
}

}  // namespace kvcodec_test_core_drop_topk
