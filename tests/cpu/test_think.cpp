// Tests of cpu/think.hpp (the `think` transform, ThinK key-channel pruning): the channels it keeps are
// the best by query energy x key energy, keys are stored narrower and come back with zeros in the
// pruned channels, prune=0 is lossless, bad state and missing queries are refused, and on the real
// stories260K dumps it beats pruning random channels on a later, disjoint query window.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/eval/attention.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/format/container.hpp"
#include "kvcodec/kvcodec.hpp"
#include "../support/shared_data.hpp"
#include "../support/small_synth.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_cpu_think {

using namespace kvcodec;

namespace {

kv_cache small_cache(std::int64_t tokens = 48) { return test::small_synth({.head_dim = 16, .tokens = tokens}); }

const float* key_row(const kv_cache& c, int l, int h, std::int64_t t) {
  return c.keys[static_cast<std::size_t>(l)].data() +
         (static_cast<std::size_t>(h) * static_cast<std::size_t>(c.shape.tokens) + static_cast<std::size_t>(t)) * static_cast<std::size_t>(c.shape.head_dim);
}

/// The channels ThinK keeps for (l, h), computed here from the definition.
std::vector<int> expected_kept(const kv_cache& c, int l, int h, int W) {
  const int D = c.shape.head_dim, group = c.shape.q_heads / c.shape.kv_heads;
  std::vector<double> score(static_cast<std::size_t>(D));
  for (int d = 0; d < D; ++d) {
    double q2 = 0, k2 = 0;
    for (int g = 0; g < group; ++g)
      for (std::int64_t t = 0; t < c.shape.tokens; ++t) {
        const float q = c.queries[static_cast<std::size_t>(l)][((static_cast<std::size_t>(h * group + g)) * static_cast<std::size_t>(c.shape.tokens) + static_cast<std::size_t>(t)) * static_cast<std::size_t>(D) + static_cast<std::size_t>(d)];
        q2 += static_cast<double>(q) * q;
      }
    for (std::int64_t t = 0; t < c.shape.tokens; ++t) k2 += static_cast<double>(key_row(c, l, h, t)[d]) * key_row(c, l, h, t)[d];
    score[static_cast<std::size_t>(d)] = q2 * k2;
  }
  std::vector<int> order(static_cast<std::size_t>(D));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[static_cast<std::size_t>(a)] > score[static_cast<std::size_t>(b)]; });
  order.resize(static_cast<std::size_t>(W));
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace

TEST_CASE("think keeps each head's best channels by query x key energy - keys narrower - pruned channels decode as zeros") {
  const kv_cache kv = small_cache();
  const encoded e = encode("think:prune=0.25|raw:dtype=f32", kv);
  const encoded plain = encode("raw:dtype=f32", kv);
  // keys 12 of 16 channels, values whole: 7/8 of the f32 payload
  CHECK(e.report.codec_bytes < plain.report.codec_bytes);
  CHECK(static_cast<double>(e.report.codec_bytes) < 0.9 * static_cast<double>(plain.report.codec_bytes));
  const kv_cache back = decode(e.data);
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 2; ++h) {
      const auto want = expected_kept(kv, l, h, 12);
      for (std::int64_t t = 0; t < kv.shape.tokens; ++t)
        for (int d = 0; d < 16; ++d) {
          const bool kept = std::binary_search(want.begin(), want.end(), d);
          const float x = key_row(back, l, h, t)[d];
          if (kept) CHECK(x == key_row(kv, l, h, t)[d]);
          else CHECK(x == 0.0f);
        }
    }
  CHECK(back.values == kv.values);
  // prune=0 keeps everything: the round trip is exact
  CHECK(decode(encode("think:prune=0|raw:dtype=f32", kv).data).keys == kv.keys);
  CHECK(make_codec("think:prune=0").lossless());
  CHECK_FALSE(make_codec("think").lossless());
}

TEST_CASE("think composes with quantizers and entropy coders - and with another transform after it") {
  const kv_cache kv = small_cache();
  for (const std::string q : {"kivi:bits=4|rans", "fp8|rans", "cachegen-quant|rans", "think:prune=0.5|hadamard|uniform:bits=8", "nf4"}) {
    CAPTURE(q);
    const std::string spec = q.rfind("think", 0) == 0 ? q : "think:prune=0.5|" + q;
    const encoded e = encode(spec, kv);
    const kv_cache back = decode(e.data);
    CHECK(e.report.bits_per_element < encode(spec.substr(spec.find('|') + 1), kv).report.bits_per_element);
    // pruned channels are exact zeros whatever the quantizer
    std::int64_t zero_cols = 0;
    for (int d = 0; d < 16; ++d) {
      bool all_zero = true;
      for (std::int64_t t = 0; t < kv.shape.tokens; ++t) all_zero = all_zero && key_row(back, 0, 0, t)[d] == 0.0f;
      zero_cols += all_zero ? 1 : 0;
    }
    CHECK(zero_cols >= 8);
  }
}

TEST_CASE("think: bad input - no queries / corrupt masks / quantizers that read per-channel statistics") {
  kv_cache noq = small_cache();
  noq.queries.clear();
  noq.shape.q_heads = 0;
  try {
    encode("think|raw", noq);
    FAIL("expected an error");
  } catch (const error& x) {
    CHECK(x.kind() == error_kind::bad_input);
    CHECK(std::string(x.what()).find("queries") != std::string::npos);
  }
  CHECK_THROWS_AS(make_codec("think:prune=1"), error);
  CHECK_THROWS_AS(make_codec("think|weighted-quant:kweight=query"), error);
  CHECK_THROWS_AS(make_codec("think|klt"), error);
  // a mask with the wrong number of channels set: the container is refused as corrupt
  const kv_cache kv = small_cache();
  encoded e = encode("think:prune=0.5|raw:dtype=f32", kv);
  const kvc_view v = parse_kvc(e.data, "t");
  REQUIRE(v.header.states.size() == 1);
  const auto st = v.state_bytes(0);
  const std::size_t at = static_cast<std::size_t>(st.data() - e.data.data()) + st.size() - 1;  // the last mask byte
  e.data[at] = static_cast<std::uint8_t>(e.data[at] ^ 0x01);
  bool corrupt = false;
  try {
    decode(e.data);
  } catch (const error& x) {
    corrupt = x.kind() == error_kind::corrupt;
  }
  CHECK(corrupt);
}

TEST_CASE("real dumps: think beats pruning random key channels on a later disjoint query window") {
  KVCODEC_REQUIRE_SHARED(test::shared_dump("stories260K-s0.safetensors"));
  for (int s = 0; s < 6; ++s) {
    // stories260K (head_dim 8) and kvlab (head_dim 64): three dumps each
    const std::string name = s < 3 ? "stories260K-s" + std::to_string(s) : "kvlab-d" + std::to_string(s - 3);
    const kv_cache* dump = test::shared_dump(name + ".safetensors");
    REQUIRE(dump);
    CAPTURE(name);
    const std::int64_t obs = 384;
    // think sees only the queries before obs: later ones are zeroed in the copy it encodes
    kv_cache seen = *dump;
    const std::size_t D = static_cast<std::size_t>(seen.shape.head_dim), T = static_cast<std::size_t>(seen.shape.tokens);
    for (auto& layer : seen.queries)
      for (std::size_t qh = 0; qh < static_cast<std::size_t>(seen.shape.q_heads); ++qh)
        std::fill(layer.begin() + static_cast<std::ptrdiff_t>((qh * T + static_cast<std::size_t>(obs)) * D), layer.begin() + static_cast<std::ptrdiff_t>((qh + 1) * T * D), 0.0f);
    eval::attention_options ao;
    ao.query_begin = obs;
    const kv_cache thin = decode(encode("think:prune=0.5|raw:dtype=f32", seen).data);
    const double e_think = eval::compare_attention(*dump, thin, ao).rel_error;
    double e_random = 0;
    std::mt19937 rng(static_cast<unsigned>(s));
    for (int trial = 0; trial < 4; ++trial) {
      kv_cache rnd = *dump;
      for (std::size_t l = 0; l < rnd.keys.size(); ++l)
        for (std::size_t h = 0; h < static_cast<std::size_t>(rnd.shape.kv_heads); ++h) {
          std::vector<std::size_t> ch(D);
          std::iota(ch.begin(), ch.end(), std::size_t{0});
          std::shuffle(ch.begin(), ch.end(), rng);
          for (std::size_t i = 0; i < D / 2; ++i)
            for (std::size_t t = 0; t < T; ++t) rnd.keys[l][(h * T + t) * D + ch[i]] = 0.0f;
        }
      e_random += eval::compare_attention(*dump, rnd, ao).rel_error / 4;
    }
    CAPTURE(e_think);
    CAPTURE(e_random);
    MESSAGE(name << ": think " << e_think << ", random channels " << e_random);
    CHECK(e_think < 0.8 * e_random);
  }
}

}  // namespace kvcodec_test_cpu_think
