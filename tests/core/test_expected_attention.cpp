// Tests of core/expected_attention.hpp, expected-attention's steps on the GPU path: the host emulation
// scores every token as the CPU scorer does, bit for bit, and keeps exactly select_expected_attention's tokens (the steps repeat the CPU scorer's arithmetic
// in its order): without RoPE, with interleaved-pairs and rotate-half RoPE (and explicit positions), with
// and without the covariance term and the value norm, sinks 0 and 4, GQA, f32 and f16, a prefix.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/expected_attention.hpp"
#include "kvcodec/cpu/drop/expected_attention.hpp"
#include "kvcodec/stage/drop_attention.hpp"
#include "../support/small_synth.hpp"
#include "../support/typed_layers.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_expected_attention {

using namespace kvcodec;

namespace {

struct params {
  std::string rope;  ///< "" (none), "interleaved-pairs" or "rotate-half"
  bool cov = false, vnorm = true, positions = false;
  std::int64_t sink = 4, window = 16, n = -1;
  std::uint32_t code = 0;
};

/// Emulated and CPU kept sets of expected-attention on kv under p, budget b.
void check_case(kv_cache kv, const params& p, std::int64_t b) {
  const std::int64_t T = kv.shape.tokens, n = p.n < 0 ? T : p.n;
  const int D = kv.shape.head_dim;
  kv.metadata.erase("rope");
  if (!p.rope.empty()) kv.metadata["rope"] = p.rope, kv.metadata["rope_theta"] = "500000";
  if (p.positions) {
    kv.positions.assign(static_cast<std::size_t>(T), 0);
    for (std::int64_t t = 0; t < T; ++t) kv.positions[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(3 * t + 7);
  }
  for (auto* t : {&kv.keys, &kv.values, &kv.queries})
    for (auto& layer : *t)
      for (auto& x : layer) x = test::round_to(x, p.code);
  drop::expected_attention d;
  d.tokens = b, d.sink = p.sink, d.window = p.window, d.cov = p.cov, d.vnorm = p.vnorm, d.future = 32, d.obs_end = p.n;
  const drop::config cfg = d.cfg();  // a scorer keeps a reference to its configuration
  std::vector<std::int32_t> want;
  for (const auto& layer : cpu::select_expected_attention(kv, cfg, 1))
    for (const auto& h : layer) want.insert(want.end(), h.begin(), h.begin() + b);
  const test::typed tk = test::as_dtype(kv.keys, p.code), tv = test::as_dtype(kv.values, p.code), tq = test::as_dtype(kv.queries, p.code);
  expected_args a;
  a.k.k = tk.ptr.data(), a.v = tv.ptr.data(), a.q.k = tq.ptr.data();
  for (drop_source* s : {&a.k, &a.q}) s->head_dim = D, s->dtype_code = p.code, s->layout.s_head = T * D, s->layout.s_token = D;
  a.layers = kv.shape.layers, a.heads = kv.shape.kv_heads, a.group = kv.shape.q_heads / kv.shape.kv_heads;
  a.n = n, a.window = p.window, a.sink = p.sink, a.cov = p.cov, a.vnorm = p.vnorm, a.rope = !p.rope.empty();
  a.style = p.rope == "rotate-half" ? rope_style::rotate_half : rope_style::interleaved_pairs;
  const expected_prep ep = expected_tables(static_cast<std::size_t>(D), n, p.window, 32, a.rope, 500000.0, kv.positions);
  std::vector<double> scores;
  CHECK(drop_expected_select_emulated(a, ep, b, &scores) == want);
  // and the scores themselves, bit for bit, against the CPU scorer's
  const cpu::drop_detail::expected_attention_scorer sc(kv, cfg, n);
  const std::int64_t s0 = std::min(p.sink, n);
  std::size_t differ = 0;
  for (int l = 0; l < kv.shape.layers; ++l) {
    cpu::drop_detail::layer_scores ls;
    ls.s.assign(static_cast<std::size_t>(kv.shape.kv_heads) * static_cast<std::size_t>(n), 0.0);
    sc(l, b, ls);
    for (int g = 0; g < kv.shape.kv_heads; ++g)
      for (std::int64_t t = s0; t < n; ++t)
        differ += ls.s[static_cast<std::size_t>(g) * static_cast<std::size_t>(n) + static_cast<std::size_t>(t)] !=
                  scores[(static_cast<std::size_t>(l) * static_cast<std::size_t>(kv.shape.kv_heads) + static_cast<std::size_t>(g)) * static_cast<std::size_t>(n) +
                         static_cast<std::size_t>(t)];
  }
  CHECK(differ == 0);
}

}  // namespace

TEST_CASE("GPU expected-attention selection (host emulation) keeps exactly the CPU's tokens - RoPE styles - cov - vnorm - sinks") {
  const kv_cache kv = test::small_synth({.layers = 2, .kv_heads = 2, .q_heads = 4, .head_dim = 16, .tokens = 90, .seed = 23});
  for (const char* rope : {"", "interleaved-pairs", "rotate-half"})
    for (bool cov : {false, true})
      for (bool vnorm : {false, true})
        for (std::int64_t sink : {std::int64_t{0}, std::int64_t{4}})
          for (std::int64_t b : {std::int64_t{2}, std::int64_t{30}}) {
            params p;
            p.rope = rope, p.cov = cov, p.vnorm = vnorm, p.sink = sink;
            CAPTURE(rope);
            CAPTURE(cov);
            CAPTURE(vnorm);
            CAPTURE(sink);
            CAPTURE(b);
            check_case(kv, p, b);
          }
}

TEST_CASE("GPU expected-attention selection (host emulation) - f16 - positions - a prefix - MHA") {
  const kv_cache kv = test::small_synth({.layers = 1, .kv_heads = 3, .q_heads = 3, .head_dim = 24, .tokens = 120, .seed = 2});
  params p;
  p.rope = "interleaved-pairs", p.positions = true, p.code = 1, p.n = 100, p.window = 40;
  check_case(kv, p, 25);
  p.cov = true;
  check_case(kv, p, 60);
}

}  // namespace kvcodec_test_core_expected_attention
