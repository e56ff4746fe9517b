// Tests of stage `weighted-quant` (cpu/weighted_quant.hpp): steps from query energies and RMS, no
// clamping, cachegen-quant's stored format and decoders, errors that name the stage.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kvcodec/core/half.hpp"
#include "kvcodec/core/rope.hpp"
#include "kvcodec/cpu/weighted_quant.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/kvcodec.hpp"

namespace kvcodec_test_cpu_weighted_quant {

using namespace kvcodec;

namespace {
block dense_block(int layer, bool key, int H, int D, int T, std::uint32_t seed) {
  block b;
  b.layer = layer;
  b.key = key;
  b.heads = H;
  b.head_dim = D;
  b.t0 = 0;
  b.t1 = T;
  b.count.assign(static_cast<std::size_t>(H), static_cast<std::uint32_t>(T));
  for (int h = 0; h < H; ++h)
    for (int t = 0; t < T; ++t) b.pos.push_back(t);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  b.data.resize(static_cast<std::size_t>(H) * T * D);
  for (float& x : b.data) x = n(rng);
  return b;
}
cache_info info_for(int L, int H, int D, std::vector<float> qe = {}) {
  cache_info i;
  i.shape.layers = L;
  i.shape.kv_heads = H;
  i.shape.q_heads = H;
  i.shape.head_dim = D;
  i.shape.tokens = 64;
  i.query_energy = std::move(qe);
  return i;
}
cpu::weighted_quant stage(double kstep, double vstep, const std::string& kweight = "query", int bins = 1024) {
  quant::weighted p;
  p.kstep = kstep;
  p.vstep = vstep;
  p.kweight = kweight;
  p.bins = bins;
  return cpu::weighted_quant(p);
}
double rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s / static_cast<double>(v.size()));
}
}  // namespace

TEST_CASE("weighted-quant: query energy sets the key steps and RMS the rest") {
  const int H = 2, D = 4, T = 64;
  // layer 1's energies: head 0 channels 1, 4, 16, 64; head 1 all 8 (geometric mean of the layer: 8)
  std::vector<float> qe(2 * H * D, 1.0f);
  const float l1[8] = {1, 4, 16, 64, 8, 8, 8, 8};
  std::copy(l1, l1 + 8, qe.begin() + H * D);
  const cache_info info = info_for(2, H, D, qe);
  const auto s = stage(0.25, 0.5);
  CHECK(s.wants_query_energy());
  const block k = dense_block(1, true, H, D, T, 1);
  const std::vector<float> m = s.scales(k, info);
  const double MAX = 511, base = 0.25 * rms(k.data);
  CHECK(m[0] / MAX == doctest::Approx(base * std::sqrt(8.0)).epsilon(1e-5));
  CHECK(m[3] / MAX == doctest::Approx(base * std::sqrt(0.125)).epsilon(1e-5));
  for (int d = 4; d < 8; ++d) CHECK(m[d] / MAX == doctest::Approx(base).epsilon(1e-5));
  // values: the same step for every channel
  const block v = dense_block(1, false, H, D, T, 2);
  const std::vector<float> mv = s.scales(v, info);
  for (float x : mv) CHECK(x / MAX == doctest::Approx(0.5 * rms(v.data)).epsilon(1e-5));
  // no queries, or kweight=none: every key channel of the layer gets the same step
  for (const auto& [st, inf] : {std::pair{stage(0.25, 0.5), info_for(2, H, D)}, std::pair{stage(0.25, 0.5, "none"), info}}) {
    const std::vector<float> mk = st.scales(k, inf);
    for (float x : mk) CHECK(x / MAX == doctest::Approx(base).epsilon(1e-5));
  }
  CHECK(!stage(0.25, 0.5, "none").wants_query_energy());
}

TEST_CASE("weighted-quant: round trip within half a step with steps raised instead of clamping") {
  const int H = 2, D = 8, T = 40;
  const cache_info info = info_for(1, H, D);
  for (int bins : {16, 1024}) {
    const auto s = stage(0.1, 0.1, "query", bins);
    block b = dense_block(0, true, H, D, T, 3);
    b.data[5] = 500.0f;  // an outlier: with 16 bins its channel's step must grow to hold it
    symbols sy;
    s.encode(b, info, sy);
    REQUIRE(sy.planes.size() == 1);
    CHECK(sy.planes[0].alphabet == (bins <= 32 ? 32u : static_cast<std::uint32_t>(bins - 1)));
    block out = b;
    out.data.clear();
    s.decode(sy, info, out);
    REQUIRE(out.data.size() == b.data.size());
    const std::vector<float> m = s.scales(b, info);
    const int MAX = bins / 2 - 1;
    for (std::size_t i = 0; i < b.data.size(); ++i) {
      const std::size_t col = (i / (static_cast<std::size_t>(T) * D)) * D + i % D;
      const float step = f16_bits_to_f32(f32_to_f16_bits(m[col])) / static_cast<float>(MAX);
      CHECK(std::fabs(out.data[i] - b.data[i]) <= 0.5f * step * 1.001f + 1e-6f);
    }
    // the same bytes as cachegen-quant with those scales: its decoder reads them
    quant::cachegen cp;
    cp.kbins = cp.vbins = std::to_string(bins);
    cp.klayers = cp.vlayers = "-";
    cp.kaxis = cp.vaxis = "channel";
    const cpu::cachegen_quant cg(cp);
    block out2 = b;
    out2.data.clear();
    cg.decode(sy, info, out2);
    CHECK(out2.data == out.data);
  }
}

TEST_CASE("weighted-quant: f16 rows equal decode then conversion and ragged blocks round trip") {
  const int H = 2, D = 12, T = 33;
  const cache_info info = info_for(1, H, D);
  const auto s = stage(0.2, 0.3);
  const block b = dense_block(0, false, H, D, T, 4);
  symbols sy;
  s.encode(b, info, sy);
  block ref = b;
  s.decode(sy, info, ref);
  std::vector<std::uint16_t> f16(b.data.size());
  std::vector<std::byte*> rows(static_cast<std::size_t>(H) * T);
  for (std::size_t r = 0; r < rows.size(); ++r) rows[r] = reinterpret_cast<std::byte*>(f16.data() + r * D);
  REQUIRE(s.decode_rows(sy, info, b, dtype::f16, rows.data()));
  for (std::size_t i = 0; i < f16.size(); ++i) CHECK(f16[i] == f32_to_f16_bits(ref.data[i]));
  // ragged: head 0 keeps 5 rows, head 1 keeps 9
  block rg = b;
  rg.count = {5, 9};
  rg.pos.clear();
  for (int t = 0; t < 5; ++t) rg.pos.push_back(t * 2);
  for (int t = 0; t < 9; ++t) rg.pos.push_back(t * 3);
  rg.data.resize(14 * D);
  s.encode(rg, info, sy);
  block back = rg;
  back.data.clear();
  s.decode(sy, info, back);
  const std::vector<float> m = s.scales(rg, info);
  for (std::size_t i = 0; i < rg.data.size(); ++i) CHECK(std::fabs(back.data[i] - rg.data[i]) <= m[i % D] / 511 * 0.51f + 1e-6f);
}

TEST_CASE("weighted-quant: derope=on quantizes keys before RoPE and rotates them back as it decodes") {
  for (const char* style : {"interleaved-pairs", "rotate-half"}) {
    for (const int D : {16, 12, 32}) {
      CAPTURE(style);
      CAPTURE(D);
      const int H = 2, T = 40;
      cache_info info = info_for(1, H, D);
      info.metadata = {{"rope", style}, {"rope_theta", "10000"}};
      quant::weighted p;
      p.kstep = 0.05;
      p.derope = "on";
      cpu::weighted_quant s(p);
      block b = dense_block(0, true, H, D, T, 9);
      for (std::size_t r = 0; r < b.rows(); ++r) b.pos[r] = static_cast<std::int32_t>(300 + r % T);  // a later chunk
      // keys with RoPE applied to a constant pre-RoPE row: before RoPE every row is the same
      const rope_style st = *parse_rope_style(style);
      for (std::size_t r = 0; r < b.rows(); ++r) {
        for (int d = 0; d < D; ++d) b.data[r * D + static_cast<std::size_t>(d)] = 1.0f + 0.25f * static_cast<float>(d);
        rope_apply(b.data.data() + r * D, static_cast<std::size_t>(D), b.pos[r], 10000.0, st);
      }
      symbols sy;
      s.encode(b, info, sy);
      // before RoPE each channel is constant over tokens: one symbol per column
      const auto& pl = sy.planes[0];
      for (std::uint32_t c = 0; c < pl.cols; ++c)
        for (std::uint32_t r = 1; r < pl.rows; ++r) CHECK(pl.sym[r * pl.cols + c] == pl.sym[c]);
      block back = b;
      back.data.clear();
      s.decode(sy, info, back);
      // each channel within half a step before RoPE; a rotation mixes two: within step / 2 x sqrt(2)
      const double step = 0.05 * rms(b.data);  // RoPE keeps the RMS; no queries: one step for the block
      for (std::size_t i = 0; i < b.data.size(); ++i) CHECK(std::fabs(back.data[i] - b.data[i]) <= 0.71 * step * 1.01);
      // rows straight to f16 / f32 / bf16: the same values as decode() then the conversion
      std::vector<std::uint16_t> h(b.data.size());
      std::vector<float> f(b.data.size());
      std::vector<std::byte*> rows(b.rows());
      for (std::size_t r = 0; r < rows.size(); ++r) rows[r] = reinterpret_cast<std::byte*>(h.data() + r * D);
      REQUIRE(s.decode_rows(sy, info, b, dtype::f16, rows.data()));
      for (std::size_t i = 0; i < h.size(); ++i) CHECK(h[i] == f32_to_f16_bits(back.data[i]));
      REQUIRE(s.decode_rows(sy, info, b, dtype::bf16, rows.data()));
      for (std::size_t i = 0; i < h.size(); ++i) CHECK(h[i] == f32_to_bf16_bits(back.data[i]));
      for (std::size_t r = 0; r < rows.size(); ++r) rows[r] = reinterpret_cast<std::byte*>(f.data() + r * D);
      REQUIRE(s.decode_rows(sy, info, b, dtype::f32, rows.data()));
      CHECK(f == back.data);
      // values are not rotated
      block v = dense_block(0, false, H, D, T, 10);
      symbols sv;
      s.encode(v, info, sv);
      p.derope = "off";
      symbols sv2;
      cpu::weighted_quant(p).encode(v, info, sv2);
      CHECK(sv.planes[0].sym == sv2.planes[0].sym);
    }
  }
  // no RoPE metadata: a usage error naming the parameter, before any block
  quant::weighted p;
  p.derope = "on";
  cpu::weighted_quant s(p);
  const cache_info none = info_for(1, 1, 8);
  try {
    s.fit({}, none);
    FAIL("a cache without rope metadata was accepted");
  } catch (const error& e) {
    CHECK(e.kind() == error_kind::usage);
    CHECK(std::string(e.what()).find("'derope'") != std::string::npos);
  }
}

TEST_CASE("weighted-quant: bad data and corrupt symbols are named errors") {
  const cache_info info = info_for(1, 1, 4);
  const auto s = stage(0.2, 0.3);
  block b = dense_block(0, true, 1, 4, 8, 5);
  b.data[3] = NAN;
  symbols sy;
  try {
    s.encode(b, info, sy);
    FAIL("a NaN was accepted");
  } catch (const error& e) {
    CHECK(e.kind() == error_kind::bad_input);
    CHECK(std::string(e.what()).find("weighted-quant (layer 0)") != std::string::npos);
  }
  b.data[3] = 1.0f;
  s.encode(b, info, sy);
  sy.side.pop_back();
  block out = b;
  try {
    s.decode(sy, info, out);
    FAIL("short scales were accepted");
  } catch (const error& e) {
    CHECK(e.kind() == error_kind::corrupt);
    CHECK(std::string(e.what()).find("weighted-quant (layer 0 K)") != std::string::npos);
  }
  CHECK_THROWS_AS(make_codec("weighted-quant:kstep=0|rans"), error);
  CHECK_THROWS_AS(make_codec("weighted-quant:bins=7|rans"), error);
  CHECK_THROWS_AS(make_codec("weighted-quant:kweight=attention|rans"), error);
  CHECK_THROWS_AS(make_codec("kvw:derope=maybe"), error);
}

TEST_CASE("weighted-quant: queries reach the stage through encode and change the keys only") {
  eval::synth_options o;
  o.layers = 2;
  o.kv_heads = 2;
  o.q_heads = 4;
  o.head_dim = 16;
  o.tokens = 96;
  kv_cache c = eval::synth_cache(o);
  REQUIRE(c.has_queries());
  // make one query channel dominate so the weights are far from flat
  for (auto& q : c.queries)
    for (std::size_t i = 0; i < q.size(); i += 16) q[i] *= 8.0f;
  const std::string spec = "weighted-quant:kstep=0.3,vstep=0.3|rans:tables=shared";
  const encoded with = encode(spec, c);
  kv_cache noq = c;
  noq.queries.clear();
  const encoded without = encode(spec, noq);
  CHECK(with.data != without.data);
  const kv_cache a = decode(with.data), b = decode(without.data);
  CHECK(a.values == b.values);  // value steps do not read queries
  CHECK(a.keys != b.keys);
  // the dominant channel (0 of every head) is reproduced more closely with the queries' weights
  double ea = 0, eb = 0;
  for (std::size_t l = 0; l < c.keys.size(); ++l)
    for (std::size_t i = 0; i < c.keys[l].size(); i += 16) {
      ea += std::fabs(a.keys[l][i] - c.keys[l][i]);
      eb += std::fabs(b.keys[l][i] - c.keys[l][i]);
    }
  CHECK(ea < 0.5 * eb);
  // a view's caller can pass the energies itself; a wrong count is bad input naming the field
  codec cd = make_codec(spec);
  kv_extras ex = extras_of(noq);
  ex.query_energy = query_energy(c);
  const encoded passed = encode(cpu::par, cd, view_of(noq), {}, ex);
  CHECK(passed.data == with.data);
  codec cd2 = make_codec(spec);
  ex.query_energy.pop_back();
  CHECK_THROWS_WITH(encode(cpu::par, cd2, view_of(noq), {}, ex), doctest::Contains("query_energy"));
}

}  // namespace kvcodec_test_cpu_weighted_quant
