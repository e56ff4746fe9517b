// Tests of kvcodec/core/think.hpp: ThinK's channel choice as the GPU runs it (think_fit_emulated, the
// steps of cuda::think_fit in order, over f32/f16/bf16 sources in HF and paged layouts) keeps the CPU
// stage's channels bit for bit: every token or a drop stage's kept rows, equal scores (ties to the lower
// channel), non-finite queries, a head of zeros; and the rank rule is a stable descending sort.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "kvcodec/core/think.hpp"
#include "kvcodec/cpu/think.hpp"
#include "kvcodec/kvcodec.hpp"
#include "../support/small_synth.hpp"
#include "../support/window_cases.hpp"

namespace kvcodec_test_core_think {

using namespace kvcodec;

namespace {

/// The CPU stage's masks after encoding `kv` with `spec` (its first transform is think).
std::vector<std::uint8_t> cpu_masks(const std::string& spec, const kv_cache& kv, kept_sets* kept = nullptr) {
  codec c = make_codec(spec);
  const encoded e = encode(cpu::par, c, view_of(kv), {}, extras_of(kv));
  if (kept) *kept = decode(cpu::par, e.data).kept;
  for (const auto& t : c.transforms)
    if (const auto* th = dynamic_cast<const cpu::think_transform*>(t.get())) return th->masks();
  return {};
}

}  // namespace

TEST_CASE("think_keeps is a stable descending sort's first W") {
  const std::vector<double> s = {0.5, 2.0, 0.5, -1.0, 2.0, 0.0, 0.5};
  std::vector<int> order(s.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return s[static_cast<std::size_t>(a)] > s[static_cast<std::size_t>(b)]; });
  for (std::int64_t W = 0; W <= 7; ++W)
    for (std::int64_t c = 0; c < 7; ++c) {
      const bool want = std::find(order.begin(), order.begin() + W, static_cast<int>(c)) != order.begin() + W;
      CHECK(think_keeps(s.data(), 7, W, c) == want);
    }
  CHECK(think_score({std::numeric_limits<double>::quiet_NaN(), 3}, 1.0f) == -1.0);
  CHECK(think_score({6.0, 0}, 2.0f) == 0.0);
  CHECK(think_score({6.0, 3}, 2.0f) == 4.0);
}

TEST_CASE("think on the GPU's steps (emulated) keeps the CPU stage's channels: f32 f16 bf16 - HF and paged - ties - NaN queries - a head of zeros - drop stages") {
  kv_cache base = test::small_synth({.layers = 2, .kv_heads = 2, .q_heads = 6, .head_dim = 24, .tokens = 64, .seed = 11});
  const std::size_t T = 64, D = 24;
  // channel 7 of (layer 0, head 1) a copy of channel 3 in keys and queries (equal scores: the lower
  // channel first); a NaN query; layer 1 head 0's keys all zero (every score 0)
  for (std::size_t t = 0; t < T; ++t) {
    base.keys[0][(T + t) * D + 7] = base.keys[0][(T + t) * D + 3];
    for (std::size_t qh = 3; qh < 6; ++qh) base.queries[0][(qh * T + t) * D + 7] = base.queries[0][(qh * T + t) * D + 3];
    for (std::size_t c = 0; c < D; ++c) base.keys[1][t * D + c] = 0.0f;
  }
  base.queries[1][5 * D + 2] = std::numeric_limits<float>::quiet_NaN();
  for (std::uint32_t code : {0u, 1u, 2u})
    for (bool paged : {false, true})
      for (const std::string spec : {"think:prune=0.5|raw:dtype=f32", "think:prune=0.3|kivi:bits=4", "think:prune=0.9|raw", "knorm:keep=0.5|think:prune=0.25|raw",
                                     "streamingllm:keep=0.3,sink=2|think:prune=0.5|raw"}) {
        INFO(spec << " dtype code " << code << (paged ? " paged" : " hf"));
        const kv_cache kv = test::rounded(base, code);
        kept_sets kept;
        const std::vector<std::uint8_t> want = cpu_masks(spec, kv, &kept);
        const test::typed ks = test::as_dtype(kv.keys, code), qs = test::as_dtype(kv.queries, code);
        std::vector<std::int32_t> table(T / 16);
        std::iota(table.begin(), table.end(), 0);
        think_source s{test::source_of(ks, 64, 24, code, paged, table), test::source_of(qs, 64, 24, code, paged, table), 2, 3, 24, 64};
        s.queries.layout.s_head = static_cast<std::int64_t>(T * D);
        const think_rows rows = think_rows_of(kept);
        if (!kept.empty()) {
          s.kept_first = rows.first.data();
          s.kept_tokens = rows.tokens.data();
        }
        const auto prune = std::stod(spec.substr(spec.find("prune=") + 6));
        const auto W = static_cast<std::int64_t>(D - static_cast<std::size_t>(prune * static_cast<double>(D)));
        const std::vector<std::uint8_t> got = think_fit_emulated(s, 2, W);
        CHECK(got == want);
        CHECK(cpu::think_transform::state_of(got, D, static_cast<std::size_t>(W)).size() == 2 + 4 * 3);
        // the tie: channel 3 ranks before its copy 7
        const auto at = [&](int l, int h, int c) { return got[(static_cast<std::size_t>(l) * 2 + static_cast<std::size_t>(h)) * D + static_cast<std::size_t>(c)]; };
        CHECK(at(0, 1, 3) >= at(0, 1, 7));
        // the head of zeros keeps its lowest channels
        for (std::int64_t c = 0; c < 24; ++c) CHECK(at(1, 0, static_cast<int>(c)) == (c < W ? 1 : 0));
      }
}

}  // namespace kvcodec_test_core_think
