// Tests of CacheGen's quantizer (cpu/cachegen.hpp), the presets cachegen / cachegen-paper / kvc,
// chunked decoding with shared tables, the bandwidth planner (pipeline/plan.hpp), and the real-data
// bar: some kvc level is at most 0.6x the size of cachegen at no worse attention KL.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <filesystem>
#include <string>

#include "kvcodec/eval/evaluate.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/io/kv_dump.hpp"
#include "kvcodec/cpu/cachegen.hpp"
#include "kvcodec/kvcodec.hpp"
#include "kvcodec/pipeline/plan.hpp"
#include "../support/shared_data.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_pipeline_cachegen_kvc {

using namespace kvcodec;

namespace {
kv_cache small_synth(std::int64_t tokens = 300) {
  eval::synth_options o;
  o.layers = 3;
  o.kv_heads = 2;
  o.q_heads = 4;
  o.head_dim = 16;
  o.tokens = tokens;
  return eval::synth_cache(o);
}
}  // namespace

TEST_CASE("cachegen-quant: LMCache's symbol formula and layer tiers") {
  quant::cachegen d;
  d.klayers = "1";
  d.kbins = "32/16";
  d.validate();
  CHECK(d.bins_for(0, true) == 32);
  CHECK(d.bins_for(1, true) == 16);
  CHECK(d.bins_for(0, false) == 32);
  CHECK(d.bins_for(2, false) == 16);
  cpu::cachegen_quant q(d);
  block b;
  b.layer = 0;
  b.key = true;
  b.heads = 1;
  b.head_dim = 4;
  b.t0 = 0;
  b.t1 = 2;
  b.count = {2};
  b.pos = {0, 1};
  b.data = {1.0f, -0.5f, 0.25f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  symbols s;
  q.encode(b, cache_info{}, s);
  REQUIRE(s.planes.size() == 1);
  CHECK(s.planes[0].alphabet == 32);
  // MAX = 15: round(x * 15 / 1) + 15; an all-zero token maps to MAX
  CHECK(s.planes[0].sym == std::vector<std::uint16_t>{30, 7, 19, 15, 15, 15, 15, 15});  // -7.5 -> -8 (half to even), 3.75 -> 4
  CHECK(s.side.size() == 4);
  block o = b;
  o.data.clear();
  q.decode(s, cache_info{}, o);
  CHECK(o.data[0] == 1.0f);
  CHECK(o.data[1] == doctest::Approx(-8.0 / 15));
  symbols bad = s;
  bad.side.pop_back();
  CHECK_THROWS_AS(q.decode(bad, cache_info{}, o), error);
  bad = s;
  bad.planes[0].sym[0] = 31;  // above 2*MAX
  CHECK_THROWS_AS(q.decode(bad, cache_info{}, o), error);
  // A bound that does not exclude 31 (the alphabet's 32) still leaves the scan on.
  bad.planes[0].sym_bound = 32;
  CHECK_THROWS_AS(q.decode(bad, cache_info{}, o), error);
  // A bound at 2*MAX + 1 is the entropy stage's promise: the plane decodes without the scan.
  symbols vouched = s;
  vouched.planes[0].sym_bound = 31;
  block o2 = b;
  o2.data.clear();
  q.decode(vouched, cache_info{}, o2);
  o.data.clear();
  q.decode(s, cache_info{}, o);
  CHECK(o2.data == o.data);
  CHECK_THROWS_AS(make_codec("cachegen-quant:kbins=32/16,klayers=-"), error);
  CHECK_THROWS_AS(make_codec("cachegen-quant:kbins=33"), error);
  CHECK_THROWS_AS(make_codec("cachegen-quant:scale=f32"), error);
}

TEST_CASE("cachegen-quant refuses a NaN or an infinity anywhere in a block - the vector part and the tail") {
  const codec c = make_codec("cachegen-quant:kbins=32,klayers=-,vbins=32,vlayers=-,kaxis=channel,vaxis=token|rans");
  kv_shape s;
  s.layers = 1;
  s.kv_heads = 3;
  s.head_dim = 20;
  s.tokens = 7;  // 420 values: 52 vectors of 8 and a tail of 4
  const cache_info info{s, dtype::f32, {}};
  for (const bool key : {true, false}) {
    block clean = detail::block_skeleton(s, 0, key, 0, 7, nullptr);
    clean.data.assign(clean.rows() * 20, 0.5f);
    clean.data[3] = 3.4028235e38f;  // the largest finite float is accepted
    symbols sy;
    CHECK_NOTHROW(c.quant->encode(clean, info, sy));
    for (const std::size_t at : {std::size_t{0}, std::size_t{5}, std::size_t{200}, std::size_t{415}, std::size_t{416}, std::size_t{419}})
      for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()}) {
        CAPTURE(at);
        CAPTURE(bad);
        block b = clean;
        b.data[at] = bad;
        try {
          c.quant->encode(b, info, sy);
          FAIL("accepted a non-finite value");
        } catch (const error& e) {
          CHECK(e.kind() == error_kind::bad_input);
        }
      }
  }
}

TEST_CASE("presets expand to full specs and round trip on a synthetic cache") {
  CHECK(make_codec("cachegen").spec().find("cachegen-quant:kbins=32/16,klayers=10,vbins=32/16,vlayers=2,scale=f16") == 0);
  CHECK(make_codec("cachegen").spec().find("|ac:ctx=channel,streams=row") != std::string::npos);
  CHECK(make_codec("cachegen-paper:level=2").spec().find("pred=anchor,group=10") != std::string::npos);
  CHECK_THROWS_AS(make_codec("kvc:level=10"), error);
  CHECK_THROWS_AS(make_codec("cachegen-paper:level=0"), error);
  const kv_cache kv = small_synth();
  for (const std::string spec : {"cachegen", "cachegen-paper:level=3", "kvc:level=1", "kvc:level=5", "kvc:level=9",
                                 "delta:mode=anchor|cachegen-quant|rans", "cachegen-quant:kaxis=channel,vaxis=channel,scale=bf16|rans:pred=prev,tables=shared"}) {
    INFO(spec);
    const encoded e = encode(spec, kv, encode_options{.chunk_tokens = 128});
    const kv_cache d = decode(e.data);
    double err = 0, ref = 0;
    for (int l = 0; l < kv.shape.layers; ++l)
      for (std::size_t i = 0; i < kv.keys[static_cast<std::size_t>(l)].size(); ++i) {
        const double a = kv.keys[static_cast<std::size_t>(l)][i], b = d.keys[static_cast<std::size_t>(l)][i];
        err += (a - b) * (a - b);
        ref += a * a;
      }
    CHECK(std::sqrt(err / ref) < 0.35);
    // token-range decode equals the same rows of the full decode (chunks independent, shared state read first)
    const kv_cache part = decode(e.data, decode_options{.token_begin = 130, .token_end = 260});
    for (int l = 0; l < kv.shape.layers; ++l)
      for (int h = 0; h < kv.shape.kv_heads; ++h)
        for (int t = 0; t < 130; ++t)
          for (int c = 0; c < kv.shape.head_dim; ++c) {
            const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim);
            const std::size_t fi = (static_cast<std::size_t>(h) * static_cast<std::size_t>(kv.shape.tokens) + 130 + static_cast<std::size_t>(t)) * D + static_cast<std::size_t>(c);
            const std::size_t pi = (static_cast<std::size_t>(h) * 130 + static_cast<std::size_t>(t)) * D + static_cast<std::size_t>(c);
            REQUIRE(part.values[static_cast<std::size_t>(l)][pi] == d.values[static_cast<std::size_t>(l)][fi]);
          }
    // a corrupted container never decodes silently
    bytes bad = e.data;
    bad[bad.size() - 10] ^= 0xff;
    CHECK_THROWS_AS(decode(bad), error);
  }
}

TEST_CASE("kvc levels are ordered: higher level / smaller size and larger error") {
  const kv_cache kv = small_synth(512);
  double last_bits = 1e9;
  for (int l = 1; l <= 9; l += 2) {
    const encoded e = encode("kvc:level=" + std::to_string(l), kv);
    CHECK(e.report.bits_per_element < last_bits);
    last_bits = e.report.bits_per_element;
  }
}

TEST_CASE("plan: meets the deadline at the best fidelity or reports the miss") {
  plan::plan_input in;
  in.bandwidth = 1000;  // bytes/s
  in.level_loss = {0.0, 1.0, 3.0};
  for (int i = 0; i < 4; ++i) in.chunks.push_back({{1000, 500, 100}, 10.0});
  in.deadline_s = 4.0;  // everything at level 0 fits exactly
  auto r = plan::plan(in);
  CHECK(r.feasible);
  CHECK(r.total_loss == 0);
  CHECK(r.delay_s == doctest::Approx(4.0));
  in.deadline_s = 3.0;  // two chunks go to level 1
  r = plan::plan(in);
  CHECK(r.feasible);
  CHECK(r.total_loss == doctest::Approx(2.0));
  CHECK(r.delay_s <= 3.0);
  in.deadline_s = 0.5;  // below the 0.4 s minimum transfer? 4 x 0.1 = 0.4: feasible at level 2 only
  r = plan::plan(in);
  CHECK(r.feasible);
  CHECK(r.choice == std::vector<int>{2, 2, 2, 2});
  in.deadline_s = 0.1;
  in.allow_recompute = false;
  r = plan::plan(in);
  CHECK_FALSE(r.feasible);
  CHECK(r.delay_s == doctest::Approx(0.4));
  in.allow_recompute = true;
  in.deadline_s = 20.0;
  in.chunks[0].recompute_s = 0.01;  // recomputation is exact and cheap: chosen when it saves time
  in.deadline_s = 3.0;
  r = plan::plan(in);
  CHECK(r.feasible);
  CHECK(r.choice[0] == -1);
  CHECK(r.total_loss <= 1.0);
  plan::plan_input bad = in;
  bad.chunks[1].bytes.pop_back();
  CHECK_THROWS_AS(plan::plan(bad), error);
  bad = in;
  bad.bandwidth = 0;
  CHECK_THROWS_AS(plan::plan(bad), error);
  in.chunks.clear();
  CHECK(plan::plan(in).feasible);
}

TEST_CASE("real dumps: a kvc level is <= 0.6x cachegen's size at no worse attention KL") {
  int dumps = 0;
  for (int s = 0; s < 3; ++s) {
    const auto file = test::shared_file("kv/stories260K-s" + std::to_string(s) + ".safetensors");
    if (!file) continue;
    ++dumps;
    const std::string path = file->string();
    const auto d = io::read_kv_dump(path);
    eval::eval_options eo;
    eo.repeats = 1;
    const auto cg = eval::evaluate("cachegen", d.cache, eo);
    REQUIRE(cg.attention);
    bool found = false;
    for (int l = 1; l <= 9 && !found; ++l) {
      const auto k = eval::evaluate("kvc:level=" + std::to_string(l), d.cache, eo);
      found = k.bits_per_element <= 0.6 * cg.bits_per_element && k.attention->kl <= cg.attention->kl;
    }
    INFO(path << " cachegen bits/element " << cg.bits_per_element << " KL " << cg.attention->kl);
    CHECK(found);
  }
  if (dumps == 0) {
    MESSAGE("skipping: shared/kv/stories260K-s{0,1,2}.safetensors not found (set KVCODEC_SHARED)");
    test::mark_skipped();
  }
}

}  // namespace kvcodec_test_pipeline_cachegen_kvc
