// Tests of quality targets (pipeline/target.hpp): `kvc:target=KL` picks the smallest kvc bins whose
// attention KL on the cache stays under the target, on the cache's queries or, without them, proxy queries shaped by its keys.
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "kvcodec/eval/evaluate.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/kvcodec.hpp"
#include "kvcodec/pipeline/target.hpp"
#include "../support/shared_data.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_pipeline_target {

using namespace kvcodec;

namespace {
kv_cache target_synth() {
  eval::synth_options o;
  o.layers = 2;
  o.kv_heads = 2;
  o.q_heads = 4;
  o.head_dim = 16;
  o.tokens = 192;
  return eval::synth_cache(o);
}
bool usage_error_with(const std::function<void()>& f, const std::string& text) {
  try {
    f();
  } catch (const error& e) {
    return e.kind() == error_kind::usage && std::string(e.what()).find(text) != std::string::npos;
  }
  return false;
}
}  // namespace

TEST_CASE("kvc target specs parse and bad ones are usage errors") {
  CHECK(!kvc_target_of("kvc:level=5"));
  CHECK(!kvc_target_of("zstd"));
  CHECK(!kvc_target_of("kvc"));
  REQUIRE(kvc_target_of("kvc:target=0.01"));
  CHECK(*kvc_target_of("kvc:target=0.01") == doctest::Approx(0.01));
  CHECK(usage_error_with([] { kvc_target_of("kvc:target=0"); }, "expected an attention KL > 0"));
  CHECK(usage_error_with([] { kvc_target_of("kvc:target=abc"); }, "found 'abc'"));
  CHECK(usage_error_with([] { kvc_target_of("kvc:target=0.01,level=3"); }, "not both"));
  // make_codec alone cannot see the cache: it says where the target is resolved
  CHECK(usage_error_with([] { make_codec("kvc:target=0.01"); }, "resolve_target"));
  // the levels are points of the bins axis
  CHECK(make_codec("kvc:level=5").spec() == make_codec(kvc_bins_spec(32, 32)).spec());
  CHECK(make_codec("kvc:level=5,values=channel").spec() == make_codec(kvc_bins_spec(32, 32, "channel")).spec());
  CHECK(make_codec("kvc:level=5,values=channel").spec().find("vaxis=channel") != std::string::npos);
  CHECK(usage_error_with([] { kvc_target_of("kvc:target=0.01,values=row"); }, "token or channel"));
  CHECK(usage_error_with([] { make_codec("kvc:values=row"); }, "values"));
}

TEST_CASE("kvc target picks the smallest bins under the target on the cache's queries") {
  const kv_cache kv = target_synth();
  const double k16 = kvc_bins_attention_kl(kv, 16), k32 = kvc_bins_attention_kl(kv, 32);
  REQUIRE(k32 < k16);
  const double target = std::sqrt(k16 * k32);  // between the two: the answer lies in 18..32
  const target_choice c = choose_kvc_target(kv, target);
  CHECK(!c.proxy);
  CHECK(c.met);
  CHECK(c.bins > 16);
  CHECK(c.bins <= 32);
  CHECK(c.kl <= target);
  CHECK(c.kl == doctest::Approx(kvc_bins_attention_kl(kv, c.bins)));
  CHECK(kvc_bins_attention_kl(kv, c.bins - 2) > target);  // the next smaller encoding is over the target
  CHECK(c.trials <= 9);
  CHECK(c.spec == kvc_bins_spec(c.bins, c.bins));
  // resolve_target leaves other specs alone and resolves the target the same way
  CHECK(resolve_target("zstd:level=3", kv) == "zstd:level=3");
  CHECK(resolve_target("kvc:target=" + std::to_string(target), kv) == c.spec);
  // values=channel: the same search on the axis with per-channel value scales
  const std::string ch = resolve_target("kvc:target=" + std::to_string(target) + ",values=channel", kv);
  CHECK(ch.find("vaxis=channel") != std::string::npos);
  // evaluate resolves it and reports how; the attention KL it measures is the one targeted
  const auto r = eval::evaluate("kvc:target=" + std::to_string(target), kv);
  REQUIRE(r.target);
  CHECK(r.target->bins == c.bins);
  REQUIRE(r.attention);
  CHECK(r.attention->kl <= target * 1.0001);
  CHECK(eval::to_json(r)["target"]["bins"] == c.bins);
}

TEST_CASE("kvc target without queries uses proxy queries and says so") {
  kv_cache kv = target_synth();
  kv.queries.clear();
  kv.shape.q_heads = 0;
  // the proxy's KL is its own scale (here ~15x the synthetic queries' at 256 bins): a looser target
  const target_choice c = choose_kvc_target(kv, 0.05);
  CHECK(c.proxy);
  CHECK(c.met);
  CHECK(c.kl <= 0.05);
  CHECK(c.kl >= 0.025);
  CHECK(c.bins >= 4);
  CHECK(c.bins < 256);
  // an unreachable target takes the finest encoding and reports it was not met
  const target_choice f = choose_kvc_target(kv, 1e-30);
  CHECK(!f.met);
  CHECK(f.bins == 4096);
  CHECK(f.trials == 1);
}

TEST_CASE("kvc target lands within 2x of the asked attention KL on the real dumps") {
  const kv_cache* kv = test::shared_dump("kvlab-d0.ctx256.safetensors");
  KVCODEC_REQUIRE_SHARED(kv);
  for (double t : {1e-3, 1e-2}) {
    const target_choice c = choose_kvc_target(*kv, t);
    INFO("target " << t << ": " << c.bins << " bins, KL " << c.kl);
    CHECK(c.met);
    CHECK(c.kl <= t);
    CHECK(c.kl >= t / 2);
  }
  // stories260K's attention is sharp: 256 bins stay at ~0.002, so a tighter target needs the finer end
  const kv_cache* st = test::shared_dump("stories260K-s0.safetensors");
  KVCODEC_REQUIRE_SHARED(st);
  const target_choice c = choose_kvc_target(*st, 3e-4);
  INFO(c.bins << " bins, KL " << c.kl);
  CHECK(c.met);
  CHECK(c.bins > 256);
  CHECK(c.kl <= 3e-4);
  CHECK(c.kl >= 1.5e-4);
  CHECK(c.spec.find("prob_bits=14") != std::string::npos);
}

}  // namespace kvcodec_test_pipeline_target
