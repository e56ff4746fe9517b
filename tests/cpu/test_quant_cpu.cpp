// Tests for the quantizer and transform stage implementations (include/kvcodec/cpu/{uniform,kivi,fp8,
// ggml,codebook,hadamard,derope,quant_common}.hpp), called directly on blocks.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/core/ggml_blocks.hpp"
#include "kvcodec/core/rope.hpp"
#include "kvcodec/cpu/quant_common.hpp"
#include "kvcodec/cpu/codebook.hpp"
#include "kvcodec/cpu/pack.hpp"
#include "kvcodec/kvcodec.hpp"
#include "../support/ggml_inputs.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_cpu_quant_cpu {

using namespace kvcodec;

namespace {

std::unique_ptr<stage> make_stage(const std::string& spec) {
  const auto specs = parse_spec(spec);
  return builtin_registry().find(specs[0].name)->make(specs[0]);
}

quant_stage& as_quant(std::unique_ptr<stage>& s) { return *static_cast<quant_stage*>(s.get()); }
transform_stage& as_transform(std::unique_ptr<stage>& s) { return *static_cast<transform_stage*>(s.get()); }

/// Dense block: heads x n tokens x D, data from f(h, t, c).
template <class F>
block dense_block(int heads, int n, int D, F f, bool key = true, int layer = 0, std::int64_t t0 = 0) {
  block b;
  b.layer = layer;
  b.key = key;
  b.heads = heads;
  b.head_dim = D;
  b.t0 = t0;
  b.t1 = t0 + n;
  b.count.assign(static_cast<std::size_t>(heads), static_cast<std::uint32_t>(n));
  for (int h = 0; h < heads; ++h)
    for (int t = 0; t < n; ++t) {
      b.pos.push_back(static_cast<std::int32_t>(t0 + t));
      for (int c = 0; c < D; ++c) b.data.push_back(f(h, t, c));
    }
  return b;
}

block random_block(int heads, int n, int D, unsigned seed, bool key = true) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  return dense_block(heads, n, D, [&](int, int, int) { return nd(rng); }, key);
}

block skeleton(const block& b) {
  block s = b;
  s.data.clear();
  return s;
}

cache_info info_for(const block& b, std::int64_t tokens = -1, dtype src = dtype::f32) {
  cache_info i;
  i.shape = kv_shape{1, b.heads, 0, b.head_dim, tokens < 0 ? b.t1 : tokens};
  i.source_dtype = src;
  return i;
}

/// Encodes b with `spec` (after fit on {b}) and decodes it back.
block round_trip(const std::string& spec, const block& b, const cache_info& info, symbols* sy_out = nullptr) {
  auto s = make_stage(spec);
  auto& q = as_quant(s);
  q.fit({b}, info);
  symbols sy;
  q.encode(b, info, sy);
  block out = skeleton(b);
  q.decode(sy, info, out);
  if (sy_out) *sy_out = sy;
  return out;
}

error_kind kind_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const error& e) {
    return e.kind();
  }
  return error_kind::io;  // "no error" marker for the tests below (no stage throws io)
}

using test::make_input;  // the inputs of tests/core/test_ggml_blocks.cpp

const char* ggml_names[] = {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"};

}  // namespace

TEST_CASE("ggml stages: side bytes are ggml's rows / decode is ggml's dequantization") {
  for (int ti = 0; ti < 6; ++ti) {
    const auto t = *ggml::parse_block_type(ggml_names[ti]);
    CAPTURE(ggml_names[ti]);
    // Two tokens of 2 heads x 32 channels: token 0 = input `which`, token 1 = input (which+1)%5.
    for (int which = 0; which < 5; ++which) {
      float x0[64], x1[64];
      make_input(which, x0);
      make_input((which + 1) % 5, x1);
      block b = dense_block(2, 2, 32, [&](int h, int tok, int c) { return (tok == 0 ? x0 : x1)[h * 32 + c]; });
      symbols sy;
      block back = round_trip(ggml_names[ti], b, info_for(b), &sy);
      CHECK(sy.planes.empty());
      const std::size_t rb = ggml::row_bytes(t, 64);
      REQUIRE(sy.side.size() == 2 * rb);
      std::vector<std::uint8_t> ref(2 * rb);
      ggml::quantize_row(t, x0, 64, ref.data());
      ggml::quantize_row(t, x1, 64, ref.data() + rb);
      CHECK(sy.side == ref);
      float y0[64], y1[64];
      ggml::dequantize_row(t, ref.data(), 64, y0);
      ggml::dequantize_row(t, ref.data() + rb, 64, y1);
      for (int h = 0; h < 2; ++h)
        for (int c = 0; c < 32; ++c) {
          CHECK(back.data[static_cast<std::size_t>((h * 2 + 0) * 32 + c)] == y0[h * 32 + c]);
          CHECK(back.data[static_cast<std::size_t>((h * 2 + 1) * 32 + c)] == y1[h * 32 + c]);
        }
    }
  }
}

TEST_CASE("ggml stages: literal ggml golden bytes through the stage") {
  // From tests/core/test_ggml_blocks.cpp (ggml's quantize_row_*_ref on make_input(0) and (4)).
  const std::vector<std::uint8_t> q4_0_in0 = {0xc0,0x37,0x80,0x91,0x91,0xa2,0xa2,0xb3,0xb3,0xc4,0xc4,0xd5,0xd5,0xe6,0xe6,0xf7,0xf7,0xf8,0xc0,0x37,0x80,0x91,0x91,0xa2,0xa2,0xb3,0xb3,0xc4,0xc4,0xd5,0xd5,0xe6,0xe6,0xf7,0xf7,0xf8};
  const std::vector<std::uint8_t> iq4_nl_in4 = {0xa7,0xa7,0x04,0xa7,0xc2,0xd2,0x72,0x34,0x2d,0xb0,0xa7,0x15,0xec,0xfb,0x15,0x1a,0xd1,0xdf,0xd5,0x27,0xf2,0xd9,0xed,0x58,0xe8,0xf9,0x8f,0xd8,0xf3,0x0f,0x1e,0xa8,0xe6,0x44,0x46,0xc1};
  for (auto [name, which, golden] : {std::tuple{"q4_0", 0, q4_0_in0}, std::tuple{"iq4_nl", 4, iq4_nl_in4}}) {
    float x[64];
    make_input(which, x);
    block b = dense_block(4, 1, 16, [&](int h, int, int c) { return x[h * 16 + c]; });
    symbols sy;
    round_trip(name, b, info_for(b), &sy);
    CHECK(sy.side == golden);
  }
}

TEST_CASE("ggml stages: width errors / ragged blocks padded per head row / corrupt sizes") {
  block narrow = random_block(1, 3, 8, 1);
  for (const std::string n : ggml_names) {
    CAPTURE(n);
    auto s = make_stage(n);
    CHECK(kind_of([&] { as_quant(s).fit({narrow}, info_for(narrow)); }) == error_kind::usage);
    symbols sy;
    CHECK(kind_of([&] { as_quant(s).encode(narrow, info_for(narrow), sy); }) == error_kind::usage);
    // ragged: head 0 keeps 2 rows, head 1 keeps 1 -> per-row padding to 32
    block rag = random_block(2, 3, 8, 2);
    rag.count = {2, 1};
    rag.pos = {0, 2, 1};
    rag.data.resize(3 * 8);
    as_quant(s).encode(rag, info_for(rag), sy);
    CHECK(sy.side.size() == 3 * ggml::block_bytes(*ggml::parse_block_type(n)));
    block back = skeleton(rag);
    as_quant(s).decode(sy, info_for(rag), back);
    for (std::size_t r = 0; r < 3; ++r) {
      float pad[32] = {};
      std::copy_n(rag.data.data() + r * 8, 8, pad);
      std::uint8_t blk[34];
      float y[32];
      ggml::quantize_row(*ggml::parse_block_type(n), pad, 32, blk);
      ggml::dequantize_row(*ggml::parse_block_type(n), blk, 32, y);
      for (int c = 0; c < 8; ++c) CHECK(back.data[r * 8 + static_cast<std::size_t>(c)] == y[c]);
    }
    symbols bad = sy;
    bad.side.pop_back();
    CHECK(kind_of([&] { as_quant(s).decode(bad, info_for(rag), back); }) == error_kind::corrupt);
    bad = sy;
    bad.planes.push_back(symbol_plane{2, 1, 1, {0}});
    CHECK(kind_of([&] { as_quant(s).decode(bad, info_for(rag), back); }) == error_kind::corrupt);
  }
}

TEST_CASE("quantizers: corrupt symbols and side bytes are corrupt errors / never crashes") {
  const std::string specs[] = {"uniform:bits=3", "uniform:bits=4,kaxis=channel,group=4,outliers=2", "uniform:bits=5,mode=sym,scale=f32",
                         "kivi:bits=2,group=4,residual=3", "kivi:bits=4,outliers=1,residual=2", "fp8:scale=tensor",
                         "fp8:format=e5m2,scale=head", "fp8:scale=token", "nf4", "nf4:group=4,scale=f32", "kmeans:bits=3"};
  for (const std::string& spec : specs)
    for (bool key : {true, false}) {
      CAPTURE(spec);
      CAPTURE(key);
      block b = random_block(2, 9, 8, 7, key);
      const cache_info info = info_for(b);
      auto s = make_stage(spec);
      auto& q = as_quant(s);
      q.fit({b}, info);
      symbols sy;
      q.encode(b, info, sy);
      REQUIRE(sy.planes.size() == 1);
      CHECK(sy.planes[0].cols == 8);
      block back = skeleton(b);
      CHECK_NOTHROW(q.decode(sy, info, back));
      auto expect_corrupt = [&](symbols bad) {
        block o = skeleton(b);
        CHECK(kind_of([&] { q.decode(bad, info, o); }) == error_kind::corrupt);
      };
      symbols bad = sy;
      bad.side.push_back(0);
      expect_corrupt(bad);
      if (!sy.side.empty()) {
        bad = sy;
        bad.side.pop_back();
        expect_corrupt(bad);
        bad = sy;
        bad.side.resize(sy.side.size() / 2);
        expect_corrupt(bad);
      }
      bad = sy;
      bad.planes[0].alphabet *= 2;
      expect_corrupt(bad);
      bad = sy;
      bad.planes[0].rows += 1;
      expect_corrupt(bad);
      bad = sy;
      bad.planes.clear();
      expect_corrupt(bad);
      bad = sy;
      if (sy.planes[0].alphabet < 65536) {
        bad.planes[0].sym[0] = static_cast<std::uint16_t>(sy.planes[0].alphabet);
        expect_corrupt(bad);
      }
    }
}

TEST_CASE("uniform: error within half a step per group / constant groups exact / bits 1..8") {
  for (int bits = 1; bits <= 8; ++bits)
    for (const char* axis : {"token", "channel"})
      for (int group : {0, 4}) {
        CAPTURE(bits);
        CAPTURE(axis);
        CAPTURE(group);
        block b = random_block(3, 11, 8, static_cast<unsigned>(bits));
        const std::string spec = "uniform:bits=" + std::to_string(bits) + ",kaxis=" + axis + ",group=" + std::to_string(group) + ",scale=f32";
        symbols sy;
        block back = round_trip(spec, b, info_for(b), &sy);
        CHECK(sy.planes[0].alphabet == (1u << bits));
        // the largest step of any group bounds the error: range <= 2*max|x|
        float amax = 0;
        for (float v : b.data) amax = std::max(amax, std::fabs(v));
        const float step = 2 * amax / static_cast<float>((1 << bits) - 1);
        for (std::size_t i = 0; i < b.data.size(); ++i) CHECK(std::fabs(back.data[i] - b.data[i]) <= 0.5f * step * 1.0001f + 1e-6f);
      }
  block c = dense_block(2, 5, 8, [](int h, int, int) { return h == 0 ? 0.3f : -2.5f; });
  for (const std::string spec : {"uniform:bits=2", "uniform:bits=2,kaxis=channel", "uniform:bits=4,mode=sym", "kivi:bits=2,residual=0", "nf4"}) {
    CAPTURE(spec);
    block back = round_trip(spec, c, info_for(c));
    const float tol = std::string(spec).find("sym") != std::string::npos || std::string(spec) == "nf4" ? 0.0f : 1e-3f;
    for (std::size_t i = 0; i < c.data.size(); ++i) CHECK(std::fabs(back.data[i] - c.data[i]) <= tol + 2e-3f * std::fabs(c.data[i]));
  }
}

TEST_CASE("uniform: per-layer bit schedules pick the layer's width") {
  auto s = make_stage("uniform:kbits=8/6/3,vbits=2");
  for (int layer = 0; layer < 5; ++layer) {
    block k = random_block(1, 4, 8, 3, true);
    k.layer = layer;
    block v = k;
    v.key = false;
    symbols sk, sv;
    as_quant(s).encode(k, info_for(k), sk);
    as_quant(s).encode(v, info_for(v), sv);
    CHECK(sk.planes[0].alphabet == (1u << (layer == 0 ? 8 : layer == 1 ? 6 : 3)));
    CHECK(sv.planes[0].alphabet == 4u);
  }
}

TEST_CASE("uniform: group must divide head_dim along channels") {
  block b = random_block(1, 4, 8, 3);
  for (const std::string spec : {"uniform:group=3", "uniform:group=16", "nf4:group=3", "kivi:group=3"}) {
    CAPTURE(spec);
    auto s = make_stage(spec);
    block v = b;
    v.key = false;
    CHECK(kind_of([&] { as_quant(s).fit({v}, info_for(v)); }) == error_kind::usage);
  }
  // per-channel (token) groups need not divide the chunk: the last group is shorter
  block back = round_trip("uniform:bits=8,kaxis=channel,vaxis=channel,group=3", b, info_for(b));
  for (std::size_t i = 0; i < b.data.size(); ++i) CHECK(back.data[i] == doctest::Approx(b.data[i]).epsilon(0.02).scale(1));
}

TEST_CASE("non-finite inputs: excluded from scales - exact with outliers - fp8 keeps NaN") {
  block b = random_block(1, 4, 8, 5);
  b.data[3] = std::numeric_limits<float>::quiet_NaN();
  b.data[9] = std::numeric_limits<float>::infinity();
  b.data[17] = -std::numeric_limits<float>::infinity();
  SUBCASE("uniform without outliers: NaN -> near 0 code / +-Inf -> group max/min / others unaffected") {
    block back = round_trip("uniform:bits=8", b, info_for(b));
    for (float v : back.data) CHECK(std::isfinite(v));
    float mx = -1e30f;
    for (int c = 0; c < 8; ++c)
      if (c != 1) mx = std::max(mx, b.data[8 + static_cast<std::size_t>(c)]);
    CHECK(back.data[9] == doctest::Approx(mx).epsilon(0.01));
    CHECK(std::fabs(back.data[0] - b.data[0]) < 0.05f);
  }
  SUBCASE("outliers keep non-finite values exactly") {
    block back = round_trip("uniform:bits=4,outliers=0.5", b, info_for(b));
    CHECK(std::isnan(back.data[3]));
    CHECK(back.data[9] == std::numeric_limits<float>::infinity());
    CHECK(back.data[17] == -std::numeric_limits<float>::infinity());
  }
  SUBCASE("fp8") {
    block back = round_trip("fp8:scale=token", b, info_for(b));
    CHECK(std::isnan(back.data[3]));
    CHECK(std::isfinite(back.data[9]));
    CHECK(back.data[9] > 0);
    CHECK(back.data[17] < 0);
  }
  SUBCASE("ggml reads them as 0") {
    block w = random_block(4, 2, 8, 6);
    w.data[5] = std::numeric_limits<float>::quiet_NaN();
    block back = round_trip("q8_0", w, info_for(w));
    CHECK(back.data[5] == 0.0f);
  }
}

TEST_CASE("outliers: the top p percent magnitudes are exact and cost their bytes") {
  block b = random_block(2, 50, 8, 9);
  b.data[77] = 40.0f;
  b.data[300] = -55.0f;
  symbols s0, s1;
  round_trip("uniform:bits=3", b, info_for(b), &s0);
  block back = round_trip("uniform:bits=3,outliers=1", b, info_for(b), &s1);
  CHECK(back.data[77] == 40.0f);
  CHECK(back.data[300] == -55.0f);
  std::vector<float> mags;
  for (float v : b.data) mags.push_back(std::fabs(v));
  std::sort(mags.rbegin(), mags.rend());
  std::size_t exact = 0;
  for (std::size_t i = 0; i < b.data.size(); ++i)
    if (std::fabs(b.data[i]) >= mags[7]) exact += back.data[i] == b.data[i];
  CHECK(exact == 8);  // floor(800 * 1%) = 8
  CHECK(s1.side.size() > s0.side.size() + 8 * 4);
  CHECK(s1.side.size() < s0.side.size() + 8 * 4 + 8 * 3 + 4);
}

TEST_CASE("kivi: residual rows exact / key groups along tokens / value group clamps to head_dim") {
  block k = random_block(2, 10, 8, 11, true);
  k.t0 = 20;
  k.t1 = 30;
  for (auto& p : k.pos) p += 20;
  const cache_info info = info_for(k, 34);  // residual 6 -> positions >= 28 exact
  symbols sy;
  block back = round_trip("kivi:bits=2,group=4,residual=6", k, info, &sy);
  CHECK(sy.planes[0].rows == 16);  // 8 quantized rows per head
  for (int h = 0; h < 2; ++h)
    for (int t = 0; t < 10; ++t)
      for (int c = 0; c < 8; ++c) {
        const std::size_t i = static_cast<std::size_t>((h * 10 + t) * 8 + c);
        if (t >= 8)
          CHECK(back.data[i] == k.data[i]);
        else
          CHECK(back.data[i] != doctest::Approx(1e9));
      }
  // key scales: 2 heads x ceil(8/4) groups x 8 channels x (scale, min) f16 = 128 bytes + residual 1 + 2*2*8*4
  CHECK(sy.side.size() == 128 + 1 + 2 * 2 * 8 * 4);
  block v = k;
  v.key = false;
  round_trip("kivi:bits=2,group=32,residual=6", v, info, &sy);
  CHECK(sy.side.size() == 16 * 4 + 1 + 2 * 2 * 8 * 4);  // one value group per row (group clamps to 8)
  // whole block residual: no plane rows
  block all = round_trip("kivi:bits=2,residual=1000", k, info, &sy);
  CHECK(sy.planes[0].rows == 0);
  CHECK(all.data == k.data);
}

TEST_CASE("fp8: saturating / scales per tensor/head/token / state checked") {
  block b = random_block(2, 6, 8, 13);
  for (const std::string spec : {"fp8:scale=tensor", "fp8:scale=head", "fp8:scale=token", "fp8:format=e5m2,scale=tensor"}) {
    CAPTURE(spec);
    block back = round_trip(spec, b, info_for(b));
    const float tol = std::string(spec).find("e5m2") != std::string::npos ? 0.126f : 0.0626f;
    for (std::size_t i = 0; i < b.data.size(); ++i) CHECK(std::fabs(back.data[i] - b.data[i]) <= tol * std::fabs(b.data[i]) + 1e-3f);
  }
  auto s = make_stage("fp8:scale=tensor");
  cache_info info = info_for(b);
  symbols sy;
  CHECK(kind_of([&] { as_quant(s).encode(b, info, sy); }) == error_kind::usage);  // no fit
  CHECK(kind_of([&] { as_quant(s).load_state({}, info); }) == error_kind::corrupt);
  const std::uint8_t neg[8] = {0, 0, 0x80, 0xbf, 0, 0, 0x80, 0x3f};  // -1.0, 1.0
  CHECK(kind_of([&] { as_quant(s).load_state(neg, info); }) == error_kind::corrupt);
}

TEST_CASE("kmeans: fitted codebooks per layer and K/V / state round trip / corrupt state") {
  block k = random_block(2, 40, 8, 17, true), v = random_block(2, 40, 8, 18, false);
  for (auto& x : v.data) x = x * 10.0f + 3.0f;
  cache_info info = info_for(k);
  auto s = make_stage("kmeans:bits=3");
  const bytes st = as_quant(s).fit({k, v}, info);
  CHECK(st.size() == 2 * 8 * 4);
  symbols sk, sv;
  as_quant(s).encode(k, info, sk);
  as_quant(s).encode(v, info, sv);
  auto d = make_stage("kmeans:bits=3");
  as_quant(d).load_state(st, info);
  block bk = skeleton(k), bv = skeleton(v);
  as_quant(d).decode(sk, info, bk);
  as_quant(d).decode(sv, info, bv);
  double ek = 0, ev = 0, nk = 0, nv = 0;
  for (std::size_t i = 0; i < k.data.size(); ++i) {
    ek += std::pow(bk.data[i] - k.data[i], 2), nk += k.data[i] * k.data[i];
    ev += std::pow(bv.data[i] - v.data[i] - 0.0f, 2), nv += std::pow(v.data[i] - 3.0f, 2);
  }
  CHECK(std::sqrt(ek / nk) < 0.2);  // Lloyd-Max 3-bit on a Gaussian: ~0.18 rel
  CHECK(std::sqrt(ev / nv) < 0.2);  // V codebook fitted to V's own distribution
  bytes bad = st;
  bad.pop_back();
  CHECK(kind_of([&] { as_quant(d).load_state(bad, info); }) == error_kind::corrupt);
  bad = st;
  std::swap_ranges(bad.begin(), bad.begin() + 4, bad.begin() + 28);  // codeword 0 <-> 7: not sorted
  CHECK(kind_of([&] { as_quant(d).load_state(bad, info); }) == error_kind::corrupt);
}

TEST_CASE("nf4: levels times stored absmax") {
  block b = random_block(1, 3, 8, 19);
  symbols sy;
  block back = round_trip("nf4:scale=f32", b, info_for(b), &sy);
  CHECK(sy.planes[0].alphabet == 16);
  CHECK(sy.side.size() == 3 * 4);
  for (std::size_t r = 0; r < 3; ++r) {
    float a = 0;
    for (int c = 0; c < 8; ++c) a = std::max(a, std::fabs(b.data[r * 8 + static_cast<std::size_t>(c)]));
    for (int c = 0; c < 8; ++c) {
      const std::size_t i = r * 8 + static_cast<std::size_t>(c);
      CHECK(back.data[i] == codebook::nf4_decode(codebook::nf4_encode(b.data[i], a), a));
    }
  }
}

TEST_CASE("transforms: hadamard and derope invert - derope recovers pre-RoPE keys") {
  block b = random_block(2, 7, 8, 21);
  cache_info info = info_for(b);
  info.metadata = {{"rope", "interleaved-pairs"}, {"rope_theta", "10000"}, {"post_rope", "true"}};
  for (const std::string spec : {"hadamard:seed=5", "hadamard:seed=5,target=v", "derope", "derope:style=rotate-half,theta=500000"}) {
    CAPTURE(spec);
    auto s = make_stage(spec);
    block x = b;
    as_transform(s).forward(x, info);
    const bool touched = std::string(spec).find("target=v") == std::string::npos;
    CHECK((x.data != b.data) == touched);
    as_transform(s).inverse(x, info);
    for (std::size_t i = 0; i < b.data.size(); ++i) CHECK(x.data[i] == doctest::Approx(b.data[i]).epsilon(1e-5).scale(1));
  }
  // derope undoes what RoPE did at each row's position
  block post = b;
  for (std::size_t r = 0; r < post.rows(); ++r) rope_apply(post.data.data() + r * 8, 8, post.pos[r], 10000.0, rope_style::interleaved_pairs);
  auto s = make_stage("derope");
  as_transform(s).forward(post, info);
  for (std::size_t i = 0; i < b.data.size(); ++i) CHECK(post.data[i] == doctest::Approx(b.data[i]).epsilon(1e-5).scale(1));
  // values pass through
  block v = b;
  v.key = false;
  as_transform(s).forward(v, info);
  CHECK(v.data == b.data);
  // missing or contradicting metadata
  cache_info none = info_for(b);
  CHECK(kind_of([&] { as_transform(s).fit({b}, none); }) == error_kind::usage);
  none.metadata = {{"rope", "interleaved-pairs"}, {"rope_theta", "10000"}, {"post_rope", "false"}};
  CHECK(kind_of([&] { as_transform(s).fit({b}, none); }) == error_kind::usage);
  block odd = random_block(1, 2, 7, 1);
  CHECK(kind_of([&] { as_transform(s).forward(odd, info); }) == error_kind::usage);
}

TEST_CASE("derope: the per-chunk cos and sin table gives rope_undo and rope_apply bit for bit") {
  // dense positions 100.., shared by every head (the table path), then scattered ones (per row)
  for (const bool scattered : {false, true}) {
    for (const char* style : {"interleaved-pairs", "rotate-half"}) {
      CAPTURE(scattered);
      CAPTURE(style);
      block b = random_block(3, 40, 16, 33);
      for (std::size_t r = 0; r < b.rows(); ++r) b.pos[r] = scattered ? static_cast<std::int32_t>(r * 977 % 5000) : static_cast<std::int32_t>(100 + r % 40);
      cache_info info = info_for(b);
      info.metadata = {{"rope", style}, {"rope_theta", "10000"}};
      const rope_style st = *parse_rope_style(style);
      auto s = make_stage("derope");
      block x = b, ref = b;
      as_transform(s).forward(x, info);
      for (std::size_t r = 0; r < ref.rows(); ++r) rope_undo(ref.data.data() + r * 16, 16, ref.pos[r], 10000.0, st);
      CHECK(x.data == ref.data);
      as_transform(s).inverse(x, info);
      for (std::size_t r = 0; r < ref.rows(); ++r) rope_apply(ref.data.data() + r * 16, 16, ref.pos[r], 10000.0, st);
      CHECK(x.data == ref.data);
      // a later block of other positions refills the table
      block y = b;
      for (auto& p : y.pos) p += 40;
      block yref = y;
      as_transform(s).forward(y, info);
      for (std::size_t r = 0; r < yref.rows(); ++r) rope_undo(yref.data.data() + r * 16, 16, yref.pos[r], 10000.0, st);
      CHECK(y.data == yref.data);
    }
  }
}

TEST_CASE("quantizers reject inconsistent blocks") {
  block b = random_block(2, 3, 8, 1);
  b.data.pop_back();
  for (const std::string spec : {"uniform", "kivi", "fp8:scale=head", "q8_0", "nf4"}) {
    CAPTURE(spec);
    auto s = make_stage(spec);
    symbols sy;
    CHECK(kind_of([&] { as_quant(s).encode(b, info_for(b), sy); }) == error_kind::usage);
  }
}

TEST_CASE("quant_common: affine_encode / affine_decode equal the per-value scalar coding (bulk kernels)") {
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  const int heads = 3, D = 40;  // 40 channels: five groups of 8 and no tail; 40/8 groups along channels
  const std::uint32_t count[3] = {37, 0, 70};
  const std::size_t rows = 107;
  std::vector<float> x(rows * D);
  for (auto& v : x) {
    const auto r = rng() % 40;
    v = r == 0 ? std::numeric_limits<float>::quiet_NaN() : (r == 1 ? -std::numeric_limits<float>::infinity() : (r == 2 ? -0.0f : nd(rng)));
  }
  for (bool per_channel : {true, false})
    for (int group : {0, 8, 20, 40})
      for (auto m : {affine::mode::asymmetric, affine::mode::symmetric})
        for (int bits : {2, 4, 8}) {
          if (!per_channel && group == 0) continue;
          cpu::qc::affine_cfg c;
          c.bits = bits;
          c.mode = m;
          c.pd = group == 8 ? affine::param_dtype::f32 : affine::param_dtype::f16;
          c.per_channel = per_channel;
          c.group = group;
          const std::size_t sb = cpu::qc::affine_side_bytes(c, count, heads, D);
          std::vector<std::uint16_t> sym(rows * D), rsym(rows * D);
          std::vector<std::uint8_t> side(sb), rside(sb);
          cpu::qc::affine_encode(c, x.data(), count, heads, D, sym.data(), side.data());
          // scalar reference: the per-value functions in the documented group order
          std::uint8_t* sp = rside.data();
          const std::size_t Dz = D;
          if (per_channel) {
            std::size_t r0 = 0;
            for (int h = 0; h < heads; ++h) {
              const std::size_t n = count[h], G = group > 0 ? static_cast<std::size_t>(group) : std::max<std::size_t>(n, 1);
              for (std::size_t t = 0; t < n; t += G)
                for (std::size_t ch = 0; ch < Dz; ++ch) {
                  const std::size_t mm = std::min(G, n - t);
                  const float* g = x.data() + (r0 + t) * Dz + ch;
                  const affine::params p = affine::compute_params(g, mm, Dz, bits, m, c.pd);
                  sp += affine::store_params(p, m, c.pd, sp);
                  for (std::size_t i = 0; i < mm; ++i) rsym[(r0 + t + i) * Dz + ch] = static_cast<std::uint16_t>(affine::quantize_value(g[i * Dz], p, bits, m));
                }
              r0 += n;
            }
          } else {
            for (std::size_t e = 0; e < rows * Dz; e += static_cast<std::size_t>(group)) {
              const affine::params p = affine::compute_params(x.data() + e, group, 1, bits, m, c.pd);
              sp += affine::store_params(p, m, c.pd, sp);
              for (int i = 0; i < group; ++i) rsym[e + i] = static_cast<std::uint16_t>(affine::quantize_value(x[e + i], p, bits, m));
            }
          }
          CHECK(sym == rsym);
          CHECK(side == rside);
          std::vector<float> y(rows * D), ry(rows * D);
          cpu::qc::affine_decode(c, sym.data(), side.data(), count, heads, D, y.data());
          sp = rside.data();
          if (per_channel) {
            std::size_t r0 = 0;
            for (int h = 0; h < heads; ++h) {
              const std::size_t n = count[h], G = group > 0 ? static_cast<std::size_t>(group) : std::max<std::size_t>(n, 1);
              for (std::size_t t = 0; t < n; t += G)
                for (std::size_t ch = 0; ch < Dz; ++ch) {
                  const affine::params p = affine::load_params(sp, m, c.pd);
                  sp += affine::param_bytes(m, c.pd);
                  for (std::size_t i = 0; i < std::min(G, n - t); ++i)
                    ry[(r0 + t + i) * Dz + ch] = affine::dequantize_value(rsym[(r0 + t + i) * Dz + ch], p, bits, m);
                }
              r0 += n;
            }
          } else {
            for (std::size_t e = 0; e < rows * Dz; e += static_cast<std::size_t>(group)) {
              const affine::params p = affine::load_params(sp, m, c.pd);
              sp += affine::param_bytes(m, c.pd);
              for (int i = 0; i < group; ++i) ry[e + i] = affine::dequantize_value(rsym[e + i], p, bits, m);
            }
          }
          CHECK(std::memcmp(y.data(), ry.data(), 4 * y.size()) == 0);
        }
}

namespace {
// The bit-at-a-time packer cpu/pack.hpp used before widths <= 8 went through core/affine.hpp.
std::vector<std::uint8_t> pack_reference(const std::vector<std::uint16_t>& s, unsigned w) {
  std::vector<std::uint8_t> out((s.size() * w + 7) / 8, 0);
  std::uint64_t acc = 0;
  unsigned fill = 0;
  std::size_t o = 0;
  for (auto v : s) {
    acc |= static_cast<std::uint64_t>(v) << fill;
    fill += w;
    while (fill >= 8) {
      out[o++] = static_cast<std::uint8_t>(acc);
      acc >>= 8;
      fill -= 8;
    }
  }
  if (fill) out[o] = static_cast<std::uint8_t>(acc);
  return out;
}
}  // namespace

TEST_CASE("pack stage: symbol packing equals the bit-at-a-time reference for every width and length") {
  std::mt19937 rng(5);
  for (unsigned w = 1; w <= 16; ++w)
    for (std::size_t n : {1u, 7u, 8u, 31u, 32u, 63u, 64u, 100u, 4095u, 4096u, 4097u, 9000u}) {
      std::vector<std::uint16_t> s(n);
      for (auto& v : s) v = static_cast<std::uint16_t>(rng() & ((1u << w) - 1u));
      const auto ref = pack_reference(s, w);
      kvcodec::bytes out = {0xab};
      kvcodec::cpu::pack_bits(s.data(), n, w, out);
      REQUIRE(out.size() == ref.size() + 1);
      CHECK(std::equal(ref.begin(), ref.end(), out.begin() + 1));
      std::vector<std::uint16_t> back(n);
      kvcodec::cpu::unpack_bits(ref.data(), n, w, back.data());
      CHECK(back == s);
      // arbitrary bytes: unused high bits of the last byte are ignored
      std::vector<std::uint8_t> junk(ref.size());
      for (auto& c : junk) c = static_cast<std::uint8_t>(rng());
      kvcodec::cpu::unpack_bits(junk.data(), n, w, back.data());
      std::vector<std::uint16_t> rt(n);
      const auto again = pack_reference(back, w);
      kvcodec::cpu::unpack_bits(again.data(), n, w, rt.data());
      CHECK(rt == back);
      bool lsb = true;
      for (std::size_t i = 0; i < n; ++i) {
        std::uint32_t v = 0;
        for (unsigned k = 0; k < w; ++k) v |= static_cast<std::uint32_t>((junk[(i * w + k) / 8] >> ((i * w + k) % 8)) & 1u) << k;
        lsb = lsb && back[i] == v;
      }
      CHECK(lsb);
    }
}

}  // namespace kvcodec_test_cpu_quant_cpu
