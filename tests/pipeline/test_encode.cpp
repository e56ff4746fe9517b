#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "kvcodec/kvcodec.hpp"
#include "../support/random_cache.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_pipeline_encode {

using namespace kvcodec;
using kvcodec::test::random_cache;


TEST_CASE("raw and zstd round-trip exactly over shapes and chunk sizes") {
  for (dtype src : {dtype::f32, dtype::f16, dtype::bf16})
    for (int T : {1, 2, 255, 256, 257, 600})
      for (std::int64_t chunk : {1, 64, 256, 1000}) {
        if (T > 300 && chunk == 1) continue;
        kv_cache kv = random_cache(2, 3, T, 8, src);
        for (const char* spec : {"raw", "zstd:level=1", "raw:dtype=f32|zstd"}) {
          CAPTURE(spec);
          CAPTURE(T);
          CAPTURE(chunk);
          codec c = make_codec(spec);
          encoded e = encode(cpu::seq, c, kv, {.chunk_tokens = chunk});
          kv_cache back = decode(cpu::par(3), e.data);
          REQUIRE(back.shape.tokens == T);
          CHECK(back.keys == kv.keys);
          CHECK(back.values == kv.values);
          CHECK(back.tokens == kv.tokens);
          CHECK(back.metadata == kv.metadata);
          CHECK(back.source_dtype == src);
          CHECK(e.report.kv_elements == kv.shape.kv_elements());
        }
      }
}

TEST_CASE("raw records the resolved dtype and counts bits exactly") {
  kv_cache kv = random_cache(1, 2, 100, 16, dtype::f16);
  codec c = make_codec("raw");
  encoded e = encode(c, kv);
  CHECK(e.report.spec == "raw:dtype=f16|pack");
  // 16 bits per element of payload + a few bytes of per-stream framing
  CHECK(e.report.bits_per_element >= 16.0);
  CHECK(e.report.bits_per_element < 16.1);
  CHECK(make_codec(e.report.spec).lossless() == false);  // f16 before binding to a cache
}

TEST_CASE("raw:dtype=f16 on an f32 cache rounds to nearest even") {
  kv_cache kv = random_cache(1, 1, 10, 4);
  encoded e = encode("raw:dtype=f16", kv);
  kv_cache back = decode(e.data);
  for (std::size_t i = 0; i < kv.keys[0].size(); ++i) CHECK(back.keys[0][i] == round_to_dtype(kv.keys[0][i], dtype::f16));
}

TEST_CASE("decode of a token range gives exactly that slice") {
  kv_cache kv = random_cache(2, 2, 300, 4);
  encoded e = encode("zstd", kv, {.chunk_tokens = 64});
  kv_cache part = decode(cpu::seq, e.data, {.token_begin = 70, .token_end = 200});
  REQUIRE(part.shape.tokens == 130);
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 2; ++h)
      for (int t = 0; t < 130; ++t)
        for (int d = 0; d < 4; ++d) CHECK(part.key(l)(h, t, d) == kv.key(l)(h, t + 70, d));
  CHECK(part.tokens == std::vector<std::int32_t>(kv.tokens.begin() + 70, kv.tokens.begin() + 200));
  CHECK_THROWS_AS(decode(cpu::seq, e.data, {.token_begin = 200, .token_end = 100}), error);
}

TEST_CASE("sparse caches keep their kept sets through the container") {
  kv_cache kv = random_cache(2, 3, 50, 4);
  kv.kept.assign(2, std::vector<std::vector<std::int32_t>>(3));
  kv.kept[0][0] = {0, 1, 49};
  kv.kept[0][1] = {};
  kv.kept[0][2] = {5, 6, 7, 8, 30};
  kv.kept[1][0] = {10};
  kv.kept[1][1] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18};
  kv.kept[1][2] = {20, 21};
  encoded e = encode("raw", kv, {.chunk_tokens = 16});
  kv_cache back = decode(e.data);
  CHECK(back.kept == kv.kept);
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 3; ++h)
      for (int t = 0; t < 50; ++t) {
        const auto& ks = kv.kept[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)];
        const bool kept = std::find(ks.begin(), ks.end(), t) != ks.end();
        for (int d = 0; d < 4; ++d) CHECK(back.key(l)(h, t, d) == (kept ? kv.key(l)(h, t, d) : 0.0f));
      }
  // fewer bytes than the dense cache
  encoded dense = encode("raw", random_cache(2, 3, 50, 4));
  CHECK(e.report.codec_bytes < dense.report.codec_bytes / 3);
  // per (layer, head): chunks of 16,16,16,2 tokens -> 2+2+2+1 mask bytes
  CHECK(e.report.mask_bytes == 7u * 2u * 3u);
}

TEST_CASE("spec errors are usage errors that name the problem") {
  auto msg = [](const char* spec) {
    try {
      make_codec(spec);
    } catch (const error& e) {
      CHECK(e.kind() == error_kind::usage);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(msg("nosuch").find("unknown stage 'nosuch'") != std::string::npos);
  CHECK(msg("zstd:level=99").find("parameter 'level'") != std::string::npos);
  CHECK(msg("zstd:lvl=3").find("unknown parameter 'lvl'") != std::string::npos);
  CHECK(msg("zstd:level=abc").find("expected an integer") != std::string::npos);
  CHECK(msg("zstd|raw").find("cannot follow") != std::string::npos);
  CHECK(msg("raw|raw").find("cannot follow") != std::string::npos);
  CHECK(msg("").find("empty") != std::string::npos);
  CHECK(msg("raw||zstd").find("empty stage") != std::string::npos);
  CHECK(msg("raw:dtype").find("key=value") != std::string::npos);
}

TEST_CASE("typed pipelines build the same codec as the spec string") {
  auto p = quant::raw{.dtype = "bf16"} | entropy::zstd{.level = 7};
  CHECK(p.spec() == "raw:dtype=bf16|zstd:level=7");
  codec c = p.make();
  CHECK(c.spec() == "raw:dtype=bf16|zstd:level=7");
  static_assert(composable<quant::raw, entropy::zstd>);
  static_assert(!composable<entropy::zstd, quant::raw>);
  static_assert(!composable<entropy::pack, entropy::zstd>);
}

TEST_CASE("encode rejects invalid caches") {
  kv_cache kv = random_cache(1, 2, 10, 4);
  kv.values[0].pop_back();
  CHECK_THROWS_AS(encode("raw", kv), error);
  kv_cache empty;
  CHECK_THROWS_AS(encode("raw", empty), error);
}

TEST_CASE("encode: per-thread scratch blocks and symbols - the same bytes for any thread count - dense or token-dropped - symbols kept or not") {
  // The workers reuse one block and one symbols object each, segment after segment: segments of
  // different sizes (token dropping keeps a different number of rows per chunk, the last chunk is
  // short) must not see a previous segment's rows.
  const kv_cache kv = random_cache(3, 2, 333, 16, dtype::f16, 7);
  for (const std::string spec : {"kvc:level=5", "knorm:keep=0.5|kvc:level=5", "kivi:bits=2|rans", "knorm:keep=0.25|uniform:bits=4|rans"}) {
    CAPTURE(spec);
    for (const std::size_t budget : {std::size_t{64} << 20, std::size_t{0}}) {  // symbols kept / fitted block by block
      CAPTURE(budget);
      encode_options o;
      o.chunk_tokens = 64;
      o.symbol_budget = budget;
      codec c1 = make_codec(spec), c3 = make_codec(spec), c2 = make_codec(spec);
      const encoded one = encode(cpu::seq, c1, kv, o);
      const encoded three = encode(cpu::par(3), c3, kv, o);
      CHECK(one.data == three.data);
      // and the same container as the other fitting path
      encode_options other = o;
      other.symbol_budget = budget == 0 ? std::size_t{64} << 20 : 0;
      CHECK(encode(cpu::par(2), c2, kv, other).data == one.data);
    }
  }
}

}  // namespace kvcodec_test_pipeline_encode
