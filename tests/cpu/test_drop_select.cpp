// Tests of cpu/drop_select.hpp and cpu/drop/ (one file per method): budgets, protected tokens, each scorer's defining behaviour, the
// compressed prefix (obs_end), determinism, bad input, and the bars on the real stories260K dumps.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kvcodec/cpu/drop_select.hpp"
#include "kvcodec/eval/evaluate.hpp"
#include "kvcodec/stage/drop_attention.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/io/kv_dump.hpp"
#include "kvcodec/registry/builtin.hpp"
#include "../support/shared_data.hpp"
#include "../support/small_synth.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_cpu_drop_select {

using namespace kvcodec;

namespace {

kv_cache small_cache(std::int64_t tokens = 37, std::uint64_t seed = 1) {
  return test::small_synth({.layers = 3, .tokens = tokens, .seed = seed, .outliers = 2});
}

kept_sets select(const std::string& spec, const kv_cache& kv) { return make_codec(spec).drop->select(kv); }

std::int64_t total(const kept_sets& k, int l) {
  std::int64_t s = 0;
  for (const auto& h : k[static_cast<std::size_t>(l)]) s += static_cast<std::int64_t>(h.size());
  return s;
}

const std::vector<std::string> uniform_methods = {"random", "streamingllm", "knorm", "keydiff", "h2o", "snapkv:window=8",
                                                  "tova", "expected-attention:window=8", "lagkv:sink=2,lag=4",
                                                  "chunkkv:window=8,chunk=4"};

std::string with(const std::string& spec, const std::string& extra) {
  return spec + (spec.find(':') == std::string::npos ? ":" : ",") + extra;
}

kv_cache dense_copy_without_queries(kv_cache kv) {
  kv.queries.clear();
  kv.shape.q_heads = 0;
  return kv;
}

}  // namespace

TEST_CASE("every uniform method keeps exactly round(keep x n) per layer and head - sorted and distinct") {
  const kv_cache kv = small_cache(37);
  for (const auto& m : uniform_methods)
    for (double keep : {0.05, 0.1, 0.33, 0.5, 0.9, 1.0}) {
      CAPTURE(m);
      CAPTURE(keep);
      const auto k = select(with(m, "keep=" + std::to_string(keep)), kv);
      const std::int64_t want = std::clamp<std::int64_t>(std::llround(keep * 37), 1, 37);
      REQUIRE(k.size() == 3);
      for (const auto& layer : k)
        for (const auto& h : layer) {
          CHECK(static_cast<std::int64_t>(h.size()) == want);
          CHECK(std::is_sorted(h.begin(), h.end()));
          CHECK(std::set<std::int32_t>(h.begin(), h.end()).size() == h.size());
        }
    }
}

TEST_CASE("tokens= budget overrides keep - tokens=1 and tokens=n") {
  const kv_cache kv = small_cache(37);
  for (const auto& m : uniform_methods)
    for (std::int64_t t : {1, 8, 37}) {
      CAPTURE(m);
      if (t < 8 && m.find("window=8") != std::string::npos) continue;  // budget below the window: tested separately
      const auto k = select(with(m, "keep=0.5,tokens=" + std::to_string(t)), kv);
      for (const auto& layer : k)
        for (const auto& h : layer) CHECK(static_cast<std::int64_t>(h.size()) == t);
    }
}

TEST_CASE("a budget smaller than the protected window keeps the most recent protected tokens") {
  const kv_cache kv = small_cache(37);
  const auto k = select("snapkv:tokens=3,window=8", kv);
  for (const auto& layer : k)
    for (const auto& h : layer) CHECK(h == std::vector<std::int32_t>{34, 35, 36});
}

TEST_CASE("streamingllm keeps the sinks and the most recent tokens") {
  const kv_cache kv = small_cache(37);
  const auto k = select("streamingllm:tokens=10,sink=4", kv);
  const std::vector<std::int32_t> want = {0, 1, 2, 3, 31, 32, 33, 34, 35, 36};
  for (const auto& layer : k)
    for (const auto& h : layer) CHECK(h == want);
  const auto k0 = select("streamingllm:tokens=5,sink=0", kv);
  CHECK(k0[0][0] == std::vector<std::int32_t>{32, 33, 34, 35, 36});
  const auto k2 = select("streamingllm:tokens=2,sink=4", kv);
  CHECK(k2[1][1] == std::vector<std::int32_t>{0, 1});
}

TEST_CASE("knorm keeps the lowest-norm keys / keydiff the most dissimilar key") {
  kv_cache kv = small_cache(20);
  const std::size_t D = 8, T = 20;
  for (std::size_t t = 0; t < T; ++t)
    for (std::size_t c = 0; c < D; ++c) kv.keys[0][t * D + c] = (c == 0 ? 1.0f : 0.01f) * static_cast<float>(20 - t);  // head 0 of layer 0
  const auto k = select("knorm:tokens=5", kv);
  CHECK(k[0][0] == std::vector<std::int32_t>{15, 16, 17, 18, 19});
  for (std::size_t c = 0; c < D; ++c) kv.keys[0][7 * D + c] = c == 3 ? 5.0f : 0.0f;  // one key off the common direction
  const auto kd = select("keydiff:tokens=1", kv);
  CHECK(kd[0][0] == std::vector<std::int32_t>{7});
}

TEST_CASE("attention scorers keep the key the observed queries attend to") {
  kv_cache kv = small_cache(40);
  const std::size_t D = 8, T = 40;
  const int HQ = 4;
  // Layer 0: every query along e0, key 9 of kv head 1 strongly along e0, every other key orthogonal.
  for (int h = 0; h < HQ; ++h)
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t c = 0; c < D; ++c) kv.queries[0][(static_cast<std::size_t>(h) * T + t) * D + c] = c == 0 ? 3.0f : 0.0f;
  for (std::size_t t = 0; t < T; ++t)
    for (std::size_t c = 0; c < D; ++c) kv.keys[0][(T + t) * D + c] = t == 9 ? (c == 0 ? 4.0f : 0.0f) : (c == 1 ? 0.5f : 0.0f);
  kv.metadata.erase("rope");  // plain dot products: the construction is not RoPE-rotated
  for (const std::string m : {"snapkv:tokens=9,window=8,kernel=1", "snapkv:tokens=13,window=8", "h2o:tokens=2,recent=0.5", "h2o:tokens=1,recent=0", "tova:tokens=2",
                              "expected-attention:tokens=5,sink=4,window=8", "adakv:scorer=snapkv,tokens=13,window=8"}) {
    CAPTURE(m);
    const auto k = select(m, kv);
    const auto& h1 = k[0][1];
    CHECK(std::find(h1.begin(), h1.end(), 9) != h1.end());
  }
}

TEST_CASE("protected tokens: snapkv window / tova last token / expected-attention sinks / h2o recent share") {
  const kv_cache kv = small_cache(37);
  const auto snap = select("snapkv:tokens=12,window=8", kv);
  for (const auto& h : snap[2])
    for (std::int32_t t = 29; t < 37; ++t) CHECK(std::find(h.begin(), h.end(), t) != h.end());
  const auto tova = select("tova:tokens=3", kv);
  for (const auto& h : tova[1]) CHECK(h.back() == 36);
  const auto ea = select("expected-attention:tokens=6,sink=4,window=8", kv);
  for (const auto& h : ea[0]) CHECK(std::vector<std::int32_t>(h.begin(), h.begin() + 4) == std::vector<std::int32_t>{0, 1, 2, 3});
  const auto hh = select("h2o:tokens=10,recent=0.5", kv);
  for (const auto& h : hh[0]) CHECK(std::vector<std::int32_t>(h.end() - 5, h.end()) == std::vector<std::int32_t>{32, 33, 34, 35, 36});
}

TEST_CASE("obs_end: tokens after the prefix are kept / the budget is of the prefix / later queries are not read") {
  kv_cache kv = small_cache(48);
  for (const auto& m : {std::string("snapkv:window=8"), std::string("h2o"), std::string("tova"), std::string("expected-attention:window=8"),
                        std::string("adakv:scorer=h2o,window=8"), std::string("pyramidkv:window=8"), std::string("random"),
                        std::string("keydiff")}) {
    CAPTURE(m);
    const auto a = select(with(m, "keep=0.25,obs_end=32"), kv);
    kv_cache changed = kv;
    for (auto& q : changed.queries)
      for (std::size_t i = 0; i < q.size(); ++i)
        if ((i / 8) % 48 >= 32) q[i] = -q[i] * 3.0f + 1.0f;  // perturb queries at positions >= 32
    CHECK(select(with(m, "keep=0.25,obs_end=32"), changed) == a);
    std::int64_t prefix_total = 0;
    for (const auto& layer : a)
      for (const auto& h : layer) {
        for (std::int32_t t = 32; t < 48; ++t) CHECK(std::find(h.begin(), h.end(), t) != h.end());
        prefix_total += std::count_if(h.begin(), h.end(), [](std::int32_t t) { return t < 32; });
      }
    CHECK(prefix_total == 3 * 2 * 8);  // round(0.25 * 32) = 8 per head on average
  }
}

TEST_CASE("adakv: ragged per-head counts / exact layer total / safeguard minimum per head") {
  kv_cache kv = small_cache(64, 3);
  // Head 0 of every layer: flat attention (uniform keys); head 1: peaked (synthetic outliers).
  for (auto& k : kv.keys)
    for (std::size_t t = 0; t < 64; ++t)
      for (std::size_t c = 0; c < 8; ++c) k[t * 8 + c] = 0.01f;
  const auto k = select("adakv:scorer=snapkv,keep=0.25,window=8,alpha=0.2", kv);
  bool ragged = false;
  for (int l = 0; l < 3; ++l) {
    CHECK(total(k, l) == 2 * 16);
    for (const auto& h : k[static_cast<std::size_t>(l)]) {
      CHECK(static_cast<std::int64_t>(h.size()) >= 8 + 1);  // window 8 + floor(0.2 * 8)
      CHECK(std::is_sorted(h.begin(), h.end()));
    }
    ragged = ragged || k[static_cast<std::size_t>(l)][0].size() != k[static_cast<std::size_t>(l)][1].size();
  }
  CHECK(ragged);
  const auto full = select("adakv:scorer=knorm,keep=0.25,alpha=1", kv);  // alpha 1 = uniform
  for (const auto& layer : full)
    for (const auto& h : layer) CHECK(h.size() == 16);
  for (const std::string s : {"h2o", "tova", "expected-attention", "keydiff"}) {
    CAPTURE(s);
    const auto a = select("adakv:keep=0.3,window=8,scorer=" + s, kv);
    for (int l = 0; l < 3; ++l) CHECK(total(a, l) == 2 * std::llround(0.3 * 64));
  }
}

TEST_CASE("pyramidkv: budgets decrease with depth and sum to layers x budget") {
  using cpu::drop_detail::pyramid_budgets;
  const auto b = pyramid_budgets(100, 400, 5, 20.0);
  CHECK(std::is_sorted(b.rbegin(), b.rend()));
  CHECK(std::accumulate(b.begin(), b.end(), std::int64_t{0}) == 500);
  CHECK(b.front() > b.back());
  CHECK(b.back() >= 4);
  CHECK(b.back() <= 5);
  const auto clipped = pyramid_budgets(300, 400, 5, 20.0);  // 2b - b/beta > n: top clipped at n
  CHECK(clipped.front() == 400);
  CHECK(std::accumulate(clipped.begin(), clipped.end(), std::int64_t{0}) == 1500);
  CHECK(pyramid_budgets(7, 10, 1, 20.0) == std::vector<std::int64_t>{7});
  const auto small = pyramid_budgets(1, 3, 4, 20.0);
  CHECK(std::accumulate(small.begin(), small.end(), std::int64_t{0}) == 4);
  for (auto x : small) CHECK(x >= 1);
  const kv_cache kv = small_cache(40);
  const auto k = select("pyramidkv:keep=0.3,window=4", kv);
  std::int64_t all = 0;
  for (int l = 0; l < 3; ++l) all += total(k, l);
  CHECK(all == 3 * 2 * 12);
  CHECK(k[0][0].size() > k[2][0].size());
}

TEST_CASE("random: deterministic per seed / different across seeds and heads - results independent of threads") {
  const kv_cache kv = small_cache(37);
  CHECK(select("random:keep=0.5,seed=4", kv) == select("random:keep=0.5,seed=4", kv));
  const auto a = select("random:keep=0.5,seed=4", kv), b = select("random:keep=0.5,seed=5", kv);
  CHECK(a != b);
  CHECK(a[0][0] != a[0][1]);
  for (const auto& m : uniform_methods) {
    const auto c = make_codec(with(m, "keep=0.4")).drop->spec();
    (void)c;
    drop::config cfg = parse_params<drop::snapkv>(stage_spec{"snapkv", {{"keep", "0.4"}, {"window", "8"}}}).cfg();
    CHECK(cpu::drop_select(kv, cfg, 1) == cpu::drop_select(kv, cfg, 3));
  }
}

TEST_CASE("bad input: missing queries / budgets / windows and prefixes beyond the cache / dropped caches") {
  const kv_cache kv = small_cache(20);
  const kv_cache noq = dense_copy_without_queries(kv);
  for (const std::string m : {"h2o", "snapkv:window=4", "tova", "expected-attention:window=4", "pyramidkv:window=4", "adakv:scorer=tova"}) {
    CAPTURE(m);
    try {
      select(m, noq);
      FAIL("expected an error");
    } catch (const error& e) {
      CHECK(e.kind() == error_kind::bad_input);
      const std::string w = e.what();
      CHECK(w.find("queries") != std::string::npos);
      CHECK(w.find("random, streamingllm, knorm, keydiff") != std::string::npos);
    }
  }
  for (const std::string m : {"random", "streamingllm", "knorm", "keydiff", "adakv:scorer=knorm"}) CHECK_NOTHROW(select(m, noq));
  const auto bad = [&](const std::string& spec, const kv_cache& c, const char* field) {
    CAPTURE(spec);
    try {
      select(spec, c);
      FAIL("expected an error");
    } catch (const error& e) {
      CHECK(e.kind() == error_kind::bad_input);
      CHECK(std::string(e.what()).find(field) != std::string::npos);
    }
  };
  bad("snapkv:tokens=21", kv, "tokens");
  bad("random:tokens=11,obs_end=10", kv, "tokens");
  bad("snapkv", kv, "window");  // default window 64 > 20 tokens
  bad("expected-attention:window=21", kv, "window");
  bad("h2o:window=30", kv, "window");
  bad("knorm:obs_end=21", kv, "obs_end");
  kv_cache dropped = kv;
  dropped.kept = select("random:keep=0.5", kv);
  bad("knorm", dropped, "kept");
  kv_cache badrope = kv;
  badrope.metadata["rope"] = "spiral";
  bad("expected-attention:window=4", badrope, "rope");
  kv_cache one = small_cache(1);
  CHECK(select("random", one)[0][0] == std::vector<std::int32_t>{0});
  CHECK(select("tova", one)[0][0] == std::vector<std::int32_t>{0});
  CHECK(select("snapkv:window=1", one)[0][0] == std::vector<std::int32_t>{0});
}

TEST_CASE("lagkv keeps the sinks and the last partition - then the tokens that vary most against the next partition") {
  kv_cache kv = small_cache(34, 3);  // sink 2, lag 8: partitions [2,10) [10,18) [18,26) scored, [26,34) protected
  const std::size_t D = 8, T = 34;
  for (int l = 0; l < 3; ++l)
    for (int g = 0; g < 2; ++g)
      for (auto* side : {&kv.keys, &kv.values}) {
        float* base = (*side)[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(g) * T * D;
        for (std::size_t d = 0; d < D; ++d) {
          base[12 * D + d] = (d % 2 ? 40.0f : -40.0f);  // token 12 swings far outside its reference's range
          base[13 * D + d] = base[13 * D];               // token 13: every channel equal, little spread
        }
      }
  const auto k = select("lagkv:sink=2,lag=8,tokens=14", kv);
  for (const auto& layer : k)
    for (const auto& h : layer) {
      REQUIRE(h.size() == 14u);
      const std::set<std::int32_t> kept(h.begin(), h.end());
      for (std::int32_t t : {0, 1, 26, 27, 28, 29, 30, 31, 32, 33}) CHECK(kept.count(t) == 1);
      CHECK(kept.count(12) == 1);
    }
  CHECK_THROWS_AS(make_codec("lagkv:lag=1"), error);
  CHECK_THROWS_AS(make_codec("lagkv:sink=-1"), error);
}

TEST_CASE("chunkkv keeps whole chunks by the scorer's mean - at most one chunk cut per head - the scorer's window stays") {
  const kv_cache kv = small_cache(64, 5);
  for (const std::string scorer : {"snapkv", "knorm", "lagkv"}) {
    CAPTURE(scorer);
    const auto k = select("chunkkv:scorer=" + scorer + ",chunk=5,window=8,sink=2,lag=8,tokens=26", kv);
    for (std::size_t l = 0; l < k.size(); ++l)
      for (const auto& h : k[l]) {
        REQUIRE(h.size() == 26u);
        std::set<std::int32_t> kept(h.begin(), h.end());
        if (scorer == "snapkv")
          for (std::int32_t t = 56; t < 64; ++t) CHECK(kept.count(t) == 1);  // the observation window is protected
        // chunks are whole, except those holding protected tokens and at most one cut by the budget
        int partial = 0;
        for (std::int32_t c0 = 0; c0 < 64; c0 += 5) {
          int in = 0, n = 0;
          for (std::int32_t t = c0; t < std::min(64, c0 + 5); ++t, ++n) in += static_cast<int>(kept.count(t));
          const bool has_protected = scorer == "snapkv" ? c0 + 5 > 56 : scorer == "lagkv" ? (c0 < 2 || c0 + 5 > 50) : false;
          if (in != 0 && in != n && !has_protected) ++partial;
        }
        CHECK(partial <= 1);
      }
  }
  CHECK_THROWS_AS(make_codec("chunkkv:scorer=adakv"), error);
  CHECK_THROWS_AS(make_codec("chunkkv:chunk=0"), error);
  const kv_cache noq = dense_copy_without_queries(small_cache());
  CHECK_THROWS_AS(select("chunkkv:scorer=snapkv,window=8", noq), error);
  CHECK_NOTHROW(select("chunkkv:scorer=knorm", noq));
}

TEST_CASE("real dumps: lagkv and chunkkv beat random under the disjoint-window protocol") {
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
    CHECK(rel("lagkv:lag=32") < rnd);
    CHECK(rel("chunkkv:scorer=snapkv") < rnd);
  }
}

TEST_CASE("real dumps: query-aware methods beat random clearly under the disjoint-window protocol") {
  KVCODEC_REQUIRE_SHARED(test::shared_dump("stories260K-s0.safetensors"));
  for (int s = 0; s < 3; ++s) {
    const kv_cache* dump = test::shared_dump("stories260K-s" + std::to_string(s) + ".safetensors");
    REQUIRE(dump);
    const kv_cache& kv = *dump;
    REQUIRE(kv.has_queries());
    eval::eval_options opt;
    opt.repeats = 1;
    opt.attn.query_begin = 384;
    const auto rel = [&](const std::string& m) {
      return eval::evaluate(m + ":keep=0.3,obs_end=384|raw:dtype=f32", kv, opt).attention->rel_error;
    };
    const double rnd = rel("random");
    CAPTURE(s);
    CAPTURE(rnd);
    for (const std::string m : {"snapkv", "h2o", "tova", "expected-attention", "adakv"}) {
      CAPTURE(m);
      CHECK(rel(m) < 0.6 * rnd);
    }
    // keep fraction per head on real data, prefix of 384 tokens
    const auto k = select("snapkv:keep=0.3,obs_end=384", kv);
    for (const auto& layer : k)
      for (const auto& h : layer) CHECK(static_cast<std::int64_t>(h.size()) == std::llround(0.3 * 384) + 128);
  }
}

namespace {

#if KVCODEC_X86_DISPATCH
/// The CPU can run the AVX2 kernels (the features simd.hpp asks for), whatever KVCODEC_NO_SIMD says.
bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && simd::cpu_has_f16c() &&
         __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
}
#endif

template <class F>
bool same_bits(const std::vector<F>& a, const std::vector<F>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(F)) == 0;
}

/// Rows of random floats with edge values mixed in: NaN, +-Inf, subnormals, zeros, huge, ties.
std::vector<float> edge_rows(std::size_t rows, std::size_t D, std::uint32_t seed, bool specials) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> x(rows * D);
  for (auto& v : x) v = nd(rng);
  if (specials && rows >= 8) {
    for (std::size_t c = 0; c < D; ++c) {
      x[0 * D + c] = 0.0f;
      x[1 * D + c] = std::numeric_limits<float>::denorm_min() * static_cast<float>(c + 1);
      x[2 * D + c] = x[3 * D + c] = 1.5f;  // tie
      x[4 * D + c] = 3e38f;
    }
    x[5 * D] = std::numeric_limits<float>::quiet_NaN();
    x[6 * D + D / 2] = std::numeric_limits<float>::infinity();
    x[7 * D + D - 1] = -std::numeric_limits<float>::infinity();
  }
  return x;
}

}  // namespace

TEST_CASE("AVX2 row kernels give the bits of their scalar references (sumsq / dot / norm+anchor / exp)") {
  using namespace cpu::drop_detail;
#if KVCODEC_X86_DISPATCH
  // The kernels are called directly, so they are compared whenever the CPU has AVX2, KVCODEC_NO_SIMD
  // (which only steers the dispatch) included.
  if (!cpu_has_avx2()) {
    MESSAGE("the CPU has no AVX2: nothing to compare");
    CHECK_FALSE(simd::avx2());  // and the dispatch must never pick the AVX2 paths
    return;
  }
  for (std::size_t D : {1, 2, 6, 8, 13, 16, 24, 40, 64, 128, 130}) {
    for (bool specials : {false, true}) {
      CAPTURE(D);
      CAPTURE(specials);
      const std::size_t rows = 23;
      const auto X = edge_rows(rows, D, static_cast<std::uint32_t>(D * 7 + specials), specials);
      std::vector<double> ref(rows), got(rows);
      for (std::size_t r = 0; r < rows; ++r) ref[r] = drop_sumsq16(X.data() + r * D, D);
      sumsq_rows_avx2(X.data(), rows, D, got.data());
      CHECK(same_bits(ref, got));
      for (int m : {1, 3, 4, 5, 9}) {
        CAPTURE(m);
        const auto Y = edge_rows(static_cast<std::size_t>(m), D, static_cast<std::uint32_t>(D + 100 * m), false);
        std::vector<double> dref(static_cast<std::size_t>(m) * rows), dgot(dref.size());
        for (int q = 0; q < m; ++q)
          for (std::size_t r = 0; r < rows; ++r)
            dref[static_cast<std::size_t>(q) * rows + r] = drop_dot16(X.data() + r * D, Y.data() + static_cast<std::size_t>(q) * D, D);
        dot_rows_avx2(X.data(), rows, D, Y.data(), m, dgot.data(), rows);
        CHECK(same_bits(dref, dgot));
      }
      std::vector<float> aref(D, 0.25f), agot(D, 0.25f);
      std::vector<double> nref(rows), ngot(rows);
      for (std::size_t r0 = 0; r0 < rows; r0 += 8) {
        const std::size_t nb = std::min<std::size_t>(8, rows - r0);
        float inv[8];
        for (std::size_t r = 0; r < nb; ++r) {
          nref[r0 + r] = drop_sumsq16(X.data() + (r0 + r) * D, D);
          inv[r] = drop_inv_norm(nref[r0 + r]);
        }
        drop_anchor_block(aref.data(), X.data() + r0 * D, nb, D, inv);
      }
      norm_anchor_rows(X.data(), rows, D, ngot.data(), agot.data());
      CHECK(same_bits(nref, ngot));
      CHECK(same_bits(aref, agot));
    }
  }
  std::vector<double> e;
  for (int i = -80000; i <= 80000; i += 3) e.push_back(i * 0.0091 + 1e-7 * i);
  for (double v : {0.0, -0.0, -708.0, -708.0000001, 709.0, 709.0000001, -HUGE_VAL, HUGE_VAL, std::nan(""), 1e-300, -1e-300,
                   std::numeric_limits<double>::denorm_min(), -0.5 * 0.6931471805599453, 0.5 * 0.6931471805599453})
    e.push_back(v);
  std::vector<double> eref(e), egot(e);
  for (auto& v : eref) v = drop_exp(v);
  exp_avx2(egot.data(), egot.size());
  CHECK(same_bits(eref, egot));
  for (std::size_t n : {0, 1, 3, 4, 5, 11, 64, 1001}) {  // softmax pieces: max/NaN scan and shifted exp with lane sum
    CAPTURE(n);
    std::vector<double> x(n);
    std::mt19937 rng(static_cast<std::uint32_t>(n));
    std::normal_distribution<double> nd(0.0, 30.0);
    for (auto& v : x) v = nd(rng);
    if (n > 4) x[n / 2] = x[n / 3];  // tie
    for (int variant = 0; variant < 4; ++variant) {
      std::vector<double> y = x;
      if (variant == 1 && n > 0) y[n - 1] = std::nan("");
      if (variant == 2 && n > 0) y[0] = -HUGE_VAL;
      if (variant == 3 && n > 1) y[1] = -0.0, y[0] = 0.0;
      bool nr = false, ng = false;
      const double mr = max_nan_ref(y.data(), n, nr), mg = max_nan_avx2(y.data(), n, ng);
      CHECK(nr == ng);
      CHECK((mr == mg || (std::isnan(mr) && std::isnan(mg))));
      if (nr || !std::isfinite(mr)) continue;
      std::vector<double> a = y, b = y;
      const double zr = exp_shift_sum_ref(a.data(), n, mr), zg = exp_shift_sum_avx2(b.data(), n, mg);
      CHECK(std::memcmp(&zr, &zg, sizeof zr) == 0);
      CHECK(same_bits(a, b));
    }
  }
#else
  MESSAGE("not an x86 build: scalar kernels only");
  CHECK_FALSE(simd::avx2());
#endif
}

TEST_CASE("window attention (Eigen blocks) equals a double-precision row-by-row softmax") {
  using namespace cpu::drop_detail;
  kv_cache kv = small_cache(300, 5);  // > one block of 256 / group rows per head
  const std::int64_t T = 300, D = 8;
  const int group = 2;
  for (std::int64_t qb : {0, 250, 299}) {
    CAPTURE(qb);
    for (int g = 0; g < 2; ++g) {
      std::vector<double> got(static_cast<std::size_t>(T), 0.0), ref(static_cast<std::size_t>(T), 0.0);
      attn_scratch sc;
      attention_colsum(kv, 1, g, qb, T, got.data(), sc);
      const float* K = kv.keys[1].data() + static_cast<std::size_t>(g * T * D);
      for (int h = 0; h < group; ++h) {
        const float* Q = kv.queries[1].data() + static_cast<std::size_t>((g * group + h) * T * D);
        for (std::int64_t i = qb; i < T; ++i) {
          std::vector<double> s(static_cast<std::size_t>(i + 1));
          double m = -HUGE_VAL, z = 0;
          for (std::int64_t j = 0; j <= i; ++j) {
            double d = 0;
            for (std::int64_t a = 0; a < D; ++a) d += static_cast<double>(Q[i * D + a]) * K[j * D + a];
            s[static_cast<std::size_t>(j)] = d / std::sqrt(static_cast<double>(D));
            m = std::max(m, s[static_cast<std::size_t>(j)]);
          }
          for (double v : s) z += std::exp(v - m);
          for (std::int64_t j = 0; j <= i; ++j) ref[static_cast<std::size_t>(j)] += std::exp(s[static_cast<std::size_t>(j)] - m) / z;
        }
      }
      for (std::int64_t j = 0; j < T; ++j) CHECK(got[static_cast<std::size_t>(j)] == doctest::Approx(ref[static_cast<std::size_t>(j)]).epsilon(1e-5));
    }
  }
  kv_cache bad = small_cache(20, 2);
  bad.queries[0][3] = std::numeric_limits<float>::quiet_NaN();  // row 0 of q head 0: skipped, others count
  std::vector<double> acc(20, 0.0);
  attn_scratch sc;
  attention_colsum(bad, 0, 0, 0, 20, acc.data(), sc);
  for (double v : acc) CHECK(std::isfinite(v));
  CHECK(std::accumulate(acc.begin(), acc.end(), 0.0) == doctest::Approx(39.0).epsilon(1e-5));  // 2 heads x 20 rows, one skipped
}

TEST_CASE("window attention at larger head_dim (AVX2 register tile or Eigen) equals a double softmax to 1e-5") {
  using namespace cpu::drop_detail;
  for (std::int64_t D : {14, 40, 128}) {
    for (std::int64_t T : {5, 77, 300}) {
      CAPTURE(D);
      CAPTURE(T);
      eval::synth_options o;
      o.layers = 1, o.kv_heads = 2, o.q_heads = 8, o.head_dim = D, o.tokens = T, o.dtype = dtype::f32, o.seed = 9, o.threads = 1;
      const kv_cache kv = eval::synth_cache(o);
      const int group = 4;
      for (std::int64_t qb : {std::int64_t{0}, T - 3}) {
        const int g = 1;
        std::vector<double> got(static_cast<std::size_t>(T), 0.0), ref(static_cast<std::size_t>(T), 0.0);
        attn_scratch sc;
        attention_colsum(kv, 0, g, qb, T, got.data(), sc);
        const float* K = kv.keys[0].data() + static_cast<std::size_t>(g * T * D);
        for (int h = 0; h < group; ++h) {
          const float* Q = kv.queries[0].data() + static_cast<std::size_t>((g * group + h) * T * D);
          for (std::int64_t i = qb; i < T; ++i) {
            std::vector<double> s(static_cast<std::size_t>(i + 1));
            double m = -HUGE_VAL, z = 0;
            for (std::int64_t j = 0; j <= i; ++j) {
              double d = 0;
              for (std::int64_t a = 0; a < D; ++a) d += static_cast<double>(Q[i * D + a]) * K[j * D + a];
              s[static_cast<std::size_t>(j)] = d / std::sqrt(static_cast<double>(D));
              m = std::max(m, s[static_cast<std::size_t>(j)]);
            }
            for (double v : s) z += std::exp(v - m);
            for (std::int64_t j = 0; j <= i; ++j) ref[static_cast<std::size_t>(j)] += std::exp(s[static_cast<std::size_t>(j)] - m) / z;
          }
        }
        for (std::int64_t j = 0; j < T; ++j)
          CHECK(got[static_cast<std::size_t>(j)] == doctest::Approx(ref[static_cast<std::size_t>(j)]).epsilon(1e-5));
      }
    }
  }
}

TEST_CASE("pick_head (radix select on key codes) equals ordering by key desc then index asc - with ties / +-0 / NaN / inf") {
  using namespace cpu::drop_detail;
  std::mt19937 rng(11);
  pick_scratch ps;
  for (int trial = 0; trial < 300; ++trial) {
    const std::int64_t n = 1 + static_cast<std::int64_t>(rng() % 700);
    const int kinds = 1 + static_cast<int>(rng() % 6);
    std::vector<double> s(static_cast<std::size_t>(n));
    for (auto& v : s) {
      const int k = static_cast<int>(rng() % 10);
      if (kinds < 3 && k < 6) v = static_cast<double>(rng() % 3) - 1.0;  // heavy ties
      else if (k == 0) v = std::nan("");
      else if (k == 1) v = (rng() & 1) ? HUGE_VAL : -HUGE_VAL;
      else if (k == 2) v = (rng() & 1) ? 0.0 : -0.0;
      else v = std::ldexp(static_cast<double>(static_cast<std::int32_t>(rng())), -static_cast<int>(rng() % 60));
    }
    std::vector<std::int32_t> prot;
    for (int i = static_cast<int>(rng() % 4); i > 0; --i) prot.push_back(static_cast<std::int32_t>(rng() % static_cast<std::uint32_t>(n)));
    const std::int64_t b = 1 + static_cast<std::int64_t>(rng() % static_cast<std::uint32_t>(n));
    CAPTURE(trial);
    std::vector<std::int32_t> got;
    pick_head(s.data(), n, prot, b, got, ps);
    std::vector<std::uint8_t> mark(static_cast<std::size_t>(n), 0);
    const std::int64_t rest = b - mark_protected(prot, b, mark);
    std::vector<std::int32_t> order;
    for (std::int64_t j = 0; j < n; ++j)
      if (!mark[static_cast<std::size_t>(j)]) order.push_back(static_cast<std::int32_t>(j));
    std::sort(order.begin(), order.end(), rank_less{s.data()});
    for (std::int64_t i = 0; i < std::min<std::int64_t>(rest, static_cast<std::int64_t>(order.size())); ++i) mark[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] = 1;
    std::vector<std::int32_t> ref;
    for (std::int64_t j = 0; j < n; ++j)
      if (mark[static_cast<std::size_t>(j)] == 1) ref.push_back(static_cast<std::int32_t>(j));
    CHECK(got == ref);
  }
}

TEST_CASE("knorm and keydiff score finishing: AVX2 gives the scalar bits") {
  using namespace cpu::drop_detail;
#if KVCODEC_X86_DISPATCH
  if (!cpu_has_avx2()) {  // direct calls: compared under KVCODEC_NO_SIMD too
    CHECK_FALSE(simd::avx2());
    return;
  }
  std::vector<double> ss = {4.0, 0.0, -0.0, 1e-310, HUGE_VAL, std::nan(""), 2.5, 1e300, 7.0, 0.5, 3.0};
  std::vector<double> xy = {1.0, 2.0, -1.0, 1e-200, 3.0, 1.0, -HUGE_VAL, 1e10, std::nan(""), -0.25, 0.0};
  for (double yy : {1.0, 1e-300, 3.7}) {
    std::vector<double> a = ss, b = ss;
    for (std::size_t j = 0; j < a.size(); ++j) a[j] = a[j] > 0.0 ? -(xy[j] / std::sqrt(a[j] * yy)) : -0.0;
    cosine_scores_avx2(b.data(), xy.data(), yy, b.size());
    CHECK(same_bits(a, b));
  }
  std::vector<double> a = ss, b = ss;
  for (auto& v : a) v = -std::sqrt(v);
  neg_sqrt_avx2(b.data(), b.size());
  CHECK(same_bits(a, b));
#else
  CHECK_FALSE(simd::avx2());
#endif
}

}  // namespace kvcodec_test_cpu_drop_select
