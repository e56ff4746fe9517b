// Tests of the presses that wrap a scorer or another drop stage: cpu/drop/criticalkv.hpp (criticalkv,
// criticaladakv), cpu/drop/block.hpp (block), cpu/drop/gather.hpp, and several drop stages in one spec
// (pipeline/codec.hpp's drop_chain): each one's defining behaviour, the identities that pin it to the
// stage it wraps, bad input, containers that record a chain, and the bar on the real stories260K dumps.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kvcodec/cpu/drop_select.hpp"
#include "kvcodec/eval/evaluate.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/pipeline/decode.hpp"
#include "kvcodec/pipeline/encode.hpp"
#include "kvcodec/registry/builtin.hpp"
#include "../support/shared_data.hpp"
#include "../support/small_synth.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_cpu_drop_presses {

using namespace kvcodec;

namespace {

kv_cache small_cache(std::int64_t tokens = 37, std::uint64_t seed = 1) {
  return test::small_synth({.layers = 3, .tokens = tokens, .seed = seed, .outliers = 2});
}

kept_sets select(const std::string& spec, const kv_cache& kv) { return make_codec(spec).drop->select(kv); }

std::size_t head_count(const kept_sets& k, std::size_t l) {
  std::size_t s = 0;
  for (const auto& h : k[l]) s += h.size();
  return s;
}

float* row(std::vector<float>& layer, const kv_cache& kv, int g, std::int64_t t) {
  return layer.data() + (static_cast<std::size_t>(g) * static_cast<std::size_t>(kv.shape.tokens) + static_cast<std::size_t>(t)) *
                            static_cast<std::size_t>(kv.shape.head_dim);
}

}  // namespace

TEST_CASE("criticalkv: first=1 is its scorer - criticaladakv: first=1 is adakv") {
  const kv_cache kv = small_cache(41);
  for (const std::string s : {"snapkv", "knorm", "h2o", "lagkv"}) {
    CAPTURE(s);
    const std::string p = "window=8,sink=2,lag=8,keep=0.3";
    const std::string plain = s == "snapkv" ? "snapkv:window=8,keep=0.3" : s == "h2o" ? "h2o:window=8,keep=0.3" : s == "lagkv" ? "lagkv:sink=2,lag=8,keep=0.3" : "knorm:keep=0.3";
    CHECK(select("criticalkv:first=1,scorer=" + s + "," + p, kv) == select(plain, kv));
    CHECK(select("criticaladakv:first=1,scorer=" + s + "," + p, kv) == select("adakv:scorer=" + s + "," + p, kv));
  }
}

TEST_CASE("criticalkv: first=0 ranks equal scores by value L1 norm - the first share is the scorer's best") {
  kv_cache kv = small_cache(30);
  // Every key has the same norm (knorm scores tie), values of increasing L1 norm with the token index
  // in head 0 and decreasing in head 1.
  for (int l = 0; l < kv.shape.layers; ++l)
    for (int g = 0; g < kv.shape.kv_heads; ++g)
      for (std::int64_t t = 0; t < kv.shape.tokens; ++t) {
        float* k = row(kv.keys[static_cast<std::size_t>(l)], kv, g, t);
        float* v = row(kv.values[static_cast<std::size_t>(l)], kv, g, t);
        for (int d = 0; d < kv.shape.head_dim; ++d) k[d] = d == t % kv.shape.head_dim ? 1.0f : 0.0f;
        const float m = static_cast<float>(g == 0 ? t + 1 : kv.shape.tokens - t);
        for (int d = 0; d < kv.shape.head_dim; ++d) v[d] = (d % 2 ? -m : m);
      }
  const auto k = select("criticalkv:scorer=knorm,first=0,tokens=6", kv);
  for (const auto& layer : k) {
    CHECK(layer[0] == std::vector<std::int32_t>{24, 25, 26, 27, 28, 29});
    CHECK(layer[1] == std::vector<std::int32_t>{0, 1, 2, 3, 4, 5});
  }
  // first=0.5: half the budget by knorm alone (all tied: the lowest indices), the rest by value norm.
  const auto h = select("criticalkv:scorer=knorm,first=0.5,tokens=6", kv);
  for (const auto& layer : h) {
    CHECK(layer[0] == std::vector<std::int32_t>{0, 1, 2, 27, 28, 29});
    CHECK(layer[1] == std::vector<std::int32_t>{0, 1, 2, 3, 4, 5});
  }
}

TEST_CASE("criticaladakv: the layer keeps heads x budget - each head at least its safeguard - protected tokens kept") {
  const kv_cache kv = small_cache(64);
  const auto k = select("criticaladakv:scorer=snapkv,window=8,keep=0.25,alpha=0.2", kv);
  const std::size_t b = 16, safe = static_cast<std::size_t>(std::floor(0.2 * (16 - 8)));
  for (std::size_t l = 0; l < k.size(); ++l) {
    CHECK(head_count(k, l) == 2 * b);
    for (const auto& h : k[l]) {
      CHECK(h.size() >= 8 + safe);
      CHECK(std::is_sorted(h.begin(), h.end()));
      for (std::int32_t t = 56; t < 64; ++t) CHECK(std::binary_search(h.begin(), h.end(), t));
    }
  }
  CHECK_THROWS_AS(make_codec("criticalkv:first=1.5"), error);
  CHECK_THROWS_AS(make_codec("criticalkv:epsilon=0"), error);
  CHECK_THROWS_AS(make_codec("criticaladakv:scorer=random"), error);
}

TEST_CASE("block: a per-token scorer (knorm) keeps what it keeps on the whole prefix - whatever the block size") {
  const kv_cache kv = small_cache(53);
  for (std::int64_t blk : {1, 4, 7, 16, 100}) {
    CAPTURE(blk);
    CHECK(select("block:scorer=knorm,keep=0.3,block=" + std::to_string(blk), kv) == select("knorm:keep=0.3", kv));
    CHECK(select("block:scorer=knorm,keep=0.3,obs_end=40,block=" + std::to_string(blk), kv) == select("knorm:keep=0.3,obs_end=40", kv));
  }
}

TEST_CASE("block: one block spanning the prefix is its scorer - smaller blocks see less and choose otherwise") {
  const kv_cache kv = small_cache(53);
  for (const std::string s : {"keydiff", "snapkv", "expected-attention"}) {
    CAPTURE(s);
    const std::string p = s == "keydiff" ? "keydiff:keep=0.3" : s + ":window=8,keep=0.3" + (s == "snapkv" ? "" : ",sink=4");
    CHECK(select("block:window=8,sink=4,keep=0.3,block=1000,scorer=" + s, kv) == select(p, kv));
    const auto k = select("block:window=8,keep=0.3,block=4,scorer=" + s, kv);
    for (const auto& layer : k)
      for (const auto& h : layer) {
        CHECK(h.size() == 16);
        CHECK(std::is_sorted(h.begin(), h.end()));
      }
  }
  // The window is clipped to the tokens of a step (16 kept + 4 new), not refused.
  CHECK_NOTHROW(select("block:scorer=snapkv,window=64,keep=0.3,block=4", kv));
  CHECK_THROWS_AS(make_codec("block:block=0"), error);
  CHECK_THROWS_AS(make_codec("block:scorer=block"), error);
}

TEST_CASE("gather_tokens: per-head rows - queries follow their kv head - positions of head 0") {
  const kv_cache kv = small_cache(20);
  kept_sets idx(3, std::vector<std::vector<std::int32_t>>{{1, 5, 7}, {0, 2, 19}});
  const kv_cache sub = cpu::drop_detail::gather_tokens(kv, idx, "test");
  REQUIRE(sub.shape.tokens == 3);
  sub.validate("sub");
  const std::size_t D = 8;
  for (std::size_t l = 0; l < 3; ++l)
    for (std::size_t h = 0; h < 2; ++h)
      for (std::size_t i = 0; i < 3; ++i) {
        const std::size_t t = static_cast<std::size_t>(idx[l][h][i]);
        CHECK(std::equal(sub.keys[l].begin() + static_cast<std::ptrdiff_t>((h * 3 + i) * D), sub.keys[l].begin() + static_cast<std::ptrdiff_t>((h * 3 + i + 1) * D),
                         kv.keys[l].begin() + static_cast<std::ptrdiff_t>((h * 20 + t) * D)));
        for (std::size_t q = 2 * h; q < 2 * h + 2; ++q)
          CHECK(std::equal(sub.queries[l].begin() + static_cast<std::ptrdiff_t>((q * 3 + i) * D),
                           sub.queries[l].begin() + static_cast<std::ptrdiff_t>((q * 3 + i + 1) * D), kv.queries[l].begin() + static_cast<std::ptrdiff_t>((q * 20 + t) * D)));
      }
  CHECK(sub.positions == std::vector<std::int32_t>{1, 5, 7});
  idx[1][1].pop_back();
  CHECK_THROWS_AS(cpu::drop_detail::gather_tokens(kv, idx, "test"), error);
}

TEST_CASE("composed drop stages: the later stage keeps its share of the survivors - chosen by its own scores") {
  const kv_cache kv = small_cache(40);
  const auto first = select("streamingllm:keep=0.5", kv);
  const auto both = select("streamingllm:keep=0.5|knorm:keep=0.5", kv);
  for (std::size_t l = 0; l < both.size(); ++l)
    for (std::size_t h = 0; h < both[l].size(); ++h) {
      const auto& f = first[l][h];
      const auto& b = both[l][h];
      CHECK(b.size() == 10);
      CHECK(std::includes(f.begin(), f.end(), b.begin(), b.end()));
      // knorm's choice among the survivors: no dropped survivor has a lower key norm than a kept one
      const auto norm = [&](std::int32_t t) {
        const float* k = kv.keys[l].data() + (h * 40 + static_cast<std::size_t>(t)) * 8;
        double s = 0;
        for (int d = 0; d < 8; ++d) s += static_cast<double>(k[d]) * k[d];
        return s;
      };
      double worst_kept = 0, best_dropped = HUGE_VAL;
      for (auto t : f) (std::binary_search(b.begin(), b.end(), t) ? worst_kept = std::max(worst_kept, norm(t)) : best_dropped = std::min(best_dropped, norm(t)));
      CHECK(worst_kept <= best_dropped);
    }
  // obs_end of the first stage: later tokens stay; the later stage's budget is of the prefix survivors
  const auto pre = select("streamingllm:keep=0.5,obs_end=20|snapkv:keep=0.5,window=4", kv);
  for (const auto& layer : pre)
    for (const auto& h : layer) {
      CHECK(h.size() == 5 + 20);
      CHECK(std::all_of(h.begin(), h.begin() + 5, [](std::int32_t t) { return t < 20; }));
    }
  const codec c = make_codec("streamingllm:keep=0.5|knorm:keep=0.5|kivi:bits=4");
  CHECK(c.drops().size() == 2);
  CHECK(c.spec().find("streamingllm:") == 0);
  CHECK(c.spec().find("|knorm:") != std::string::npos);
  CHECK(make_codec(c.spec()).spec() == c.spec());
  CHECK_THROWS_AS(make_codec("streamingllm|knorm:obs_end=10"), error);
  CHECK_THROWS_AS(select("pyramidkv:window=4|knorm", kv), error);  // per-layer budgets: put it last
  CHECK_NOTHROW(select("knorm|pyramidkv:window=4", kv));
  CHECK_THROWS_AS(make_codec("kivi:bits=4|knorm"), error);
}

TEST_CASE("a container of composed drop stages and a fitted quantizer decodes - the kept tokens are the chain's") {
  const kv_cache kv = small_cache(64);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"streamingllm:keep=0.5|knorm:keep=0.5", "kivi:bits=4|rans"},
      {"knorm:keep=0.8|criticalkv:scorer=snapkv,window=8,keep=0.5", "kmeans:bits=3|rans"},
      {"block:scorer=keydiff,keep=0.4,block=8", "fp8"}};
  for (const auto& dr : cases) {
    const std::string& drops = dr.first;  // plain names: clang 14 cannot capture structured bindings (CAPTURE is a lambda)
    const std::string& rest = dr.second;
    CAPTURE(drops);
    const encoded e = encode(drops + "|" + rest, kv);
    const kv_cache back = decode(e.data);
    const auto want = select(drops, kv);
    CHECK(back.kept == want);
  }
}

TEST_CASE("real dumps: criticalkv - criticaladakv - block - composed stages beat random under the disjoint-window protocol") {
  KVCODEC_REQUIRE_SHARED(test::shared_dump("stories260K-s0.safetensors"));
  for (int s = 0; s < 3; ++s) {
    const kv_cache* dump = test::shared_dump("stories260K-s" + std::to_string(s) + ".safetensors");
    REQUIRE(dump);
    eval::eval_options opt;
    opt.repeats = 1;
    opt.attn.query_begin = 384;
    const auto rel = [&](const std::string& m) { return eval::evaluate(m + ",keep=0.3,obs_end=384|raw:dtype=f32", *dump, opt).attention->rel_error; };
    CAPTURE(s);
    const double rnd = rel("random:seed=0");
    CHECK(rel("criticalkv:scorer=snapkv") < rnd);
    CHECK(rel("criticaladakv:scorer=snapkv") < rnd);
    CHECK(rel("block:scorer=snapkv,block=64") < rnd);
    CHECK(eval::evaluate("streamingllm:keep=0.6,obs_end=384|snapkv:keep=0.5|raw:dtype=f32", *dump, opt).attention->rel_error < rnd);
  }
}

}  // namespace kvcodec_test_cpu_drop_presses
