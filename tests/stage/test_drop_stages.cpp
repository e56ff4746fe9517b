// Tests of the registered drop stages (stage/drop_*.hpp, registry/drop_stages.hpp): names, canonical
// specs, parameter errors, composition with a quantizer and entropy coder through encode/decode,
// adakv's bytes vs a uniform budget, and key re-rotation (cpu/drop/rerotate.hpp, pipeline/decode_dropped.hpp).
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kvcodec/cpu/drop/rerotate.hpp"
#include "kvcodec/cpu/drop_select.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/io/kv_dump.hpp"
#include "kvcodec/pipeline/decode_dropped.hpp"
#include "kvcodec/pipeline/encode.hpp"
#include "kvcodec/registry/builtin.hpp"
#include "../support/shared_data.hpp"
#include "../support/small_synth.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_stage_drop_stages {

using namespace kvcodec;

namespace {

kv_cache small_cache(std::int64_t tokens = 40) { return test::small_synth({.tokens = tokens}); }

}  // namespace

TEST_CASE("every drop stage is registered as kind drop with its parameters") {
  const registry& r = builtin_registry();
  for (const char* n : {"random", "streamingllm", "knorm", "keydiff", "h2o", "snapkv", "tova", "expected-attention", "pyramidkv", "adakv"}) {
    CAPTURE(n);
    const auto* e = r.find(n);
    REQUIRE(e != nullptr);
    CHECK(e->kind == stage_kind::drop);
    bool has_keep = false, has_obs = false;
    for (const auto& p : e->params) {
      has_keep = has_keep || p.key == "keep";
      has_obs = has_obs || p.key == "obs_end";
    }
    CHECK(has_keep);
    CHECK(has_obs);
  }
  CHECK(make_codec("snapkv").spec() == "snapkv:keep=0.5,tokens=0,window=64,kernel=5,obs_end=-1|raw:dtype=auto|pack");
  CHECK(make_codec("adakv:scorer=expected-attention,keep=0.25").drop->spec().params[0].second == "expected-attention");
  const codec c = make_codec("expected-attention:keep=0.3,cov=true");
  CHECK(make_codec(c.spec()).spec() == c.spec());  // canonical spec round-trips
  CHECK_FALSE(c.lossless());
}

TEST_CASE("parameter errors are usage errors naming the stage and parameter") {
  const auto usage = [](const std::string& spec, const std::string& word) {
    CAPTURE(spec);
    try {
      make_codec(spec);
      FAIL("expected an error");
    } catch (const error& e) {
      CHECK(e.kind() == error_kind::usage);
      CHECK(std::string(e.what()).find(word) != std::string::npos);
    }
  };
  usage("snapkv:keep=0", "keep");
  usage("snapkv:keep=1.5", "keep");
  usage("random:keep=-0.1", "keep");
  usage("h2o:tokens=-3", "tokens");
  usage("snapkv:kernel=4", "kernel");
  usage("snapkv:window=0", "window");
  usage("adakv:scorer=streamingllm", "scorer");
  usage("adakv:alpha=2", "alpha");
  usage("pyramidkv:beta=0.5", "beta");
  usage("tova:obs_end=0", "obs_end");
  usage("knorm:window=3", "unknown parameter");
  usage("kivi:bits=4|tova", "cannot follow");
  usage("snapkv|tova:obs_end=5", "obs_end must be -1");
  CHECK_NOTHROW(make_codec("snapkv|tova"));  // composed drop stages (tests/cpu/test_drop_presses.cpp)
  CHECK_NOTHROW(make_codec("random:keep=1"));
}

TEST_CASE("composition: snapkv:keep=0.5|raw:dtype=f16|zstd encodes and decodes the kept tokens") {
  const kv_cache kv = small_cache(40);
  const std::string spec = "snapkv:keep=0.5,window=8|raw:dtype=f16|zstd";
  const encoded e = encode(spec, kv);
  const kv_cache d = decode(e.data);
  const kept_sets want = make_codec(spec).drop->select(kv);
  REQUIRE(d.kept == want);
  const std::size_t T = 40, D = 8;
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 2; ++h) {
      std::vector<bool> kept(T, false);
      for (auto t : want[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)]) kept[static_cast<std::size_t>(t)] = true;
      for (std::size_t t = 0; t < T; ++t)
        for (std::size_t c = 0; c < D; ++c) {
          const std::size_t i = (static_cast<std::size_t>(h) * T + t) * D + c;
          const float k = kv.keys[static_cast<std::size_t>(l)][i], v = kv.values[static_cast<std::size_t>(l)][i];
          CHECK(d.keys[static_cast<std::size_t>(l)][i] == (kept[t] ? round_to_dtype(k, dtype::f16) : 0.0f));
          CHECK(d.values[static_cast<std::size_t>(l)][i] == (kept[t] ? round_to_dtype(v, dtype::f16) : 0.0f));
        }
    }
  CHECK(e.report.mask_bytes > 0);
  const encoded full = encode("raw:dtype=f16|zstd", kv);
  CHECK(e.report.codec_bytes < full.report.codec_bytes);
  CHECK(e.report.spec.rfind("snapkv:keep=0.5,tokens=0,window=8,kernel=5,obs_end=-1|raw:dtype=f16|zstd", 0) == 0);
}

TEST_CASE("adakv stores about what a uniform budget stores") {
  kv_cache kv;
  if (const kv_cache* dump = test::shared_dump("stories260K-s1.safetensors")) {
    kv = *dump;
  } else {
    MESSAGE("real dump not found: using a synthetic cache");
    kv = small_cache(200);
  }
  for (const std::string keep : {"0.2", "0.5"}) {
    const double uni = static_cast<double>(encode("snapkv:window=16,keep=" + keep + "|raw:dtype=f16", kv).report.codec_bytes);
    const double ada = static_cast<double>(encode("adakv:window=16,keep=" + keep + "|raw:dtype=f16", kv).report.codec_bytes);
    CAPTURE(keep);
    CHECK(std::abs(ada - uni) / uni < 0.01);
  }
}

TEST_CASE("rerotate_kept_keys: contiguous positions / exact pre-RoPE content / dense identity / errors") {
  kv_cache kv = small_cache(30);
  const kv_cache orig = kv;
  cpu::rerotate_kept_keys(kv);  // dense, positions 0..T-1: nothing moves
  CHECK(kv.keys == orig.keys);
  CHECK(kv.metadata.at("key_positions") == "kept-rank+0");

  kv_cache sparse = orig;
  sparse.kept = make_codec("random:keep=0.4,seed=3").drop->select(orig);
  kv_cache moved = sparse;
  cpu::rerotate_kept_keys(moved, {.base = 5});
  const std::size_t T = 30, D = 8;
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 2; ++h) {
      const auto& ks = sparse.kept[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)];
      for (std::size_t r = 0; r < ks.size(); ++r) {
        const std::size_t off = (static_cast<std::size_t>(h) * T + static_cast<std::size_t>(ks[r])) * D;
        std::vector<float> a(orig.keys[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(off),
                             orig.keys[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(off + D));
        std::vector<float> b(moved.keys[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(off),
                             moved.keys[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(off + D));
        rope_undo(a.data(), D, ks[r], 10000.0, rope_style::interleaved_pairs);
        rope_undo(b.data(), D, static_cast<std::int64_t>(5 + r), 10000.0, rope_style::interleaved_pairs);
        for (std::size_t c = 0; c < D; ++c) CHECK(b[c] == doctest::Approx(a[c]).epsilon(1e-5).scale(1.0));
      }
    }
  CHECK(moved.values == sparse.values);
  CHECK(moved.queries == sparse.queries);

  kv_cache norope = sparse;
  norope.metadata.erase("rope");
  CHECK_THROWS_AS(cpu::rerotate_kept_keys(norope), error);
  CHECK_NOTHROW(cpu::rerotate_kept_keys(norope, {.rope = "rotate-half", .theta = 500000.0}));
  kv_cache pre = sparse;
  pre.metadata["post_rope"] = "false";
  try {
    cpu::rerotate_kept_keys(pre);
    FAIL("expected an error");
  } catch (const error& e) {
    CHECK(e.kind() == error_kind::bad_input);
    CHECK(std::string(e.what()).find("post_rope") != std::string::npos);
  }
  CHECK_THROWS_AS(cpu::rerotate_kept_keys(kv, {.rope = "spiral"}), error);
}

TEST_CASE("decode_dropped re-rotates the kept keys of a decoded container") {
  const kv_cache kv = small_cache(24);
  const encoded e = encode("h2o:keep=0.5|raw:dtype=f32", kv);
  const kv_cache plain = decode(e.data);
  const kv_cache rot = cpu::decode_dropped(e.data, {}, {.rerotate_keys = true});
  CHECK(rot.kept == plain.kept);
  kv_cache manual = plain;
  cpu::rerotate_kept_keys(manual);
  CHECK(rot.keys == manual.keys);
  CHECK(rot.keys != plain.keys);
  CHECK(cpu::decode_dropped(e.data).keys == plain.keys);
}

}  // namespace kvcodec_test_stage_drop_stages
