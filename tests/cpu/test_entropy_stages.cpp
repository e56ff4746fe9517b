// Tests of the `rans` and `ac` entropy stages (cpu/rans.hpp, cpu/ac.hpp) and the
// context models (cpu/entropy_model.hpp): exact round trips over shapes, predictions and adversarial
// symbol distributions; shared tables; golden values; corrupt and truncated streams.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/cpu/rans.hpp"
#include "kvcodec/cpu/ac.hpp"
#include "kvcodec/cpu/cachegen.hpp"
#include "kvcodec/kvcodec.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_cpu_entropy_stages {

using namespace kvcodec;

namespace {
block ctx_block(int layer, bool key, std::uint32_t rows, std::uint32_t cols) {
  block b;
  b.layer = layer;
  b.key = key;
  b.heads = 1;
  b.head_dim = static_cast<std::int32_t>(std::max<std::uint32_t>(cols, 1));
  b.t0 = 0;
  b.t1 = rows;
  b.count = {rows};
  b.pos.resize(rows);
  return b;
}
symbols make_syms(std::uint32_t rows, std::uint32_t cols, std::uint32_t A, int kind, std::uint32_t seed) {
  std::mt19937 rng(seed);
  symbols s;
  symbol_plane p;
  p.alphabet = A;
  p.rows = rows;
  p.cols = cols;
  p.sym.resize(static_cast<std::size_t>(rows) * cols);
  for (std::size_t i = 0; i < p.sym.size(); ++i) {
    std::uint32_t v = 0;
    if (kind == 0) v = rng() % A;                                            // uniform
    else if (kind == 1) v = A / 2;                                           // constant
    else if (kind == 2) v = (rng() % 1000 == 0) ? A - 1 : A / 2;             // one rare symbol
    else if (kind == 3) v = static_cast<std::uint32_t>(i % cols) % A;         // column = symbol
    else v = static_cast<std::uint32_t>(std::clamp<int>(static_cast<int>(A / 2) + static_cast<int>(rng() % 7) - 3, 0, static_cast<int>(A - 1)));
    p.sym[i] = static_cast<std::uint16_t>(v);
  }
  s.planes.push_back(std::move(p));
  s.side = {1, 2, 3};
  return s;
}
bool same(const symbols& a, const symbols& b) {
  if (a.planes.size() != b.planes.size() || a.side != b.side) return false;
  for (std::size_t i = 0; i < a.planes.size(); ++i) {
    const auto& x = a.planes[i];
    const auto& y = b.planes[i];
    if (x.alphabet != y.alphabet || x.rows != y.rows || x.cols != y.cols || x.sym != y.sym) return false;
  }
  return true;
}
std::unique_ptr<entropy_stage> make_entropy(const std::string& spec) {
  codec c = make_codec(spec);
  return std::move(c.entropy);
}
}  // namespace

TEST_CASE("rans and ac stages: exact round trips over shapes / predictions and distributions") {
  const std::vector<std::string> specs = {
      "rans", "rans:ctx=channel,model=hist", "rans:ctx=pooled,model=geometric", "rans:pred=anchor,group=3", "rans:pred=prev,lanes=64,prob_bits=15",
      "rans:prob_bits=10", "rans:pred=linear", "rans:pred=linear,ctx=pooled,model=geometric", "rans:lanes=0", "ac", "ac:ctx=pooled,streams=block", "ac:pred=anchor,group=4", "ac:pred=prev"};
  const std::vector<std::array<std::uint32_t, 3>> shapes = {{0, 4, 32}, {1, 1, 32}, {1, 33, 32}, {7, 5, 31}, {64, 32, 256}, {300, 9, 2}, {5, 3, 1}};
  for (const auto& spec : specs) {
    auto st = make_entropy(spec);
    for (const auto& sh : shapes)
      for (int kind = 0; kind < 5; ++kind) {
        if (spec.find("prob_bits=10") != std::string::npos && sh[2] > 1024) continue;
        const symbols in = make_syms(sh[0], sh[1], sh[2], kind, static_cast<std::uint32_t>(kind * 31 + sh[0]));
        const block b = ctx_block(0, true, sh[0], sh[1]);
        bytes out;
        coder_stats cs;
        st->encode(in, b, out, cs);
        const symbols back = st->decode(out, b);
        INFO(spec << " rows " << sh[0] << " cols " << sh[1] << " A " << sh[2] << " kind " << kind);
        CHECK(same(in, back));
        CHECK(cs.payload_bits + cs.side_info_bits + cs.quant_side_bits == doctest::Approx(static_cast<double>(out.size()) * 8));
        CHECK(cs.entropy_bound_bits <= cs.payload_bits + 1e-9);
      }
  }
}

TEST_CASE("rans: payload is within 1% of the entropy bound on a large block") {
  auto st = make_entropy("rans:ctx=pooled,model=hist");
  const symbols in = make_syms(2048, 128, 32, 4, 5);
  bytes out;
  coder_stats cs;
  st->encode(in, ctx_block(0, false, 2048, 128), out, cs);
  CHECK(cs.payload_bits < cs.entropy_bound_bits * 1.01);
  CHECK(cs.payload_bits > cs.entropy_bound_bits);
}

TEST_CASE("rans:lanes=0 stores 64 lanes for long streams and 32 for short ones") {
  auto st = make_entropy("rans:lanes=0");
  for (std::uint32_t rows : {4u, 600u}) {  // 4 x 128 = 512 symbols, 600 x 128 = 76800
    const symbols in = make_syms(rows, 128, 32, 4, rows);
    const block b = ctx_block(0, true, rows, 128);
    bytes out;
    coder_stats cs;
    st->encode(in, b, out, cs);
    CHECK(same(st->decode(out, b), in));
    // The stored lane count equals what a fixed-lane coder would need for the same stream size.
    auto fixed = make_entropy(rows >= 512 ? "rans:lanes=64" : "rans:lanes=32");
    bytes out2;
    coder_stats cs2;
    fixed->encode(in, b, out2, cs2);
    CHECK(out.size() == out2.size() + 1);
    CHECK(cs.payload_bits == cs2.payload_bits);
  }
}

TEST_CASE("rans plan: a block's streams batch-decoded by the CUDA lane logic's host emulation equal decode") {
  cache_info info;
  info.shape.layers = 2;
  for (const std::string spec : {"rans:lanes=0", "rans:lanes=0,tables=shared", "rans:lanes=96,prob_bits=12", "rans:prob_bits=14"}) {
    INFO(spec);
    std::vector<symbols> blocks;
    for (int j = 0; j < 4; ++j) {
      symbols s = make_syms(j == 0 ? 600 : 40, 128, 32, 4, static_cast<std::uint32_t>(j));
      s.planes.push_back(make_syms(7, 3, 5, 0, 99 + static_cast<std::uint32_t>(j)).planes[0]);  // a second, short plane
      blocks.push_back(std::move(s));
    }
    std::vector<const symbols*> ptrs;
    for (auto& b : blocks) ptrs.push_back(&b);
    auto st = make_entropy(spec);   // encodes (fits the shared tables)
    auto dst = make_entropy(spec);  // decodes (loads them), as a decoder of the container would
    if (spec.find("shared") != std::string::npos) dst->load_state(st->fit(ptrs, info), info);
    const auto* rs = dynamic_cast<const cpu::rans_entropy*>(dst.get());
    REQUIRE(rs != nullptr);
    std::vector<bytes> coded(blocks.size());
    std::vector<cpu::rans_entropy::block_plan> plans;
    rans_batch_builder<std::uint64_t> b;
    std::map<const rans_ctx_decoder*, std::uint32_t> models;
    std::vector<std::vector<std::uint64_t>> first;
    for (std::size_t j = 0; j < blocks.size(); ++j) {
      const block ctx = ctx_block(static_cast<int>((j / 2) % 2), j % 2 == 0, blocks[j].planes[0].rows, 128);
      coder_stats cs;
      st->encode(blocks[j], ctx, coded[j], cs);
      plans.push_back(rs->plan(coded[j], ctx));
    }
    for (const auto& bp : plans) first.push_back(cpu::add_to_batch(bp, b, models));
    std::vector<std::uint16_t> out(b.out_symbols);
    std::vector<rans_batch_status> status(b.streams.size(), rans_batch_status::bad_size);
    rans_decode_batch_emulated(b.host_args(out.data()), status.data());
    for (auto v : status) CHECK(v == rans_batch_status::ok);
    for (std::size_t j = 0; j < blocks.size(); ++j) {
      CHECK(plans[j].headers.side == blocks[j].side);
      REQUIRE(plans[j].streams.size() == blocks[j].planes.size());
      for (std::size_t k = 0; k < plans[j].streams.size(); ++k) {
        const auto& want = blocks[j].planes[plans[j].streams[k].plane].sym;
        CHECK(std::equal(want.begin(), want.end(), out.begin() + static_cast<std::ptrdiff_t>(first[j][k])));
      }
    }
    if (spec.find("prob_bits=14") != std::string::npos) {
      rans_batch_builder<std::uint32_t> b32;
      std::map<const rans_ctx_decoder*, std::uint32_t> m32;
      CHECK_THROWS_AS(cpu::add_to_batch(plans[0], b32, m32), error);
    }
  }
  // Planes with residual rows are restored on the CPU only: the plan refuses them by name.
  auto pred = make_entropy("rans:pred=prev");
  const symbols in = make_syms(40, 16, 32, 4, 3);
  const block ctx = ctx_block(0, true, 40, 16);
  bytes out;
  coder_stats cs;
  pred->encode(in, ctx, out, cs);
  const auto* rp = dynamic_cast<const cpu::rans_entropy*>(pred.get());
  REQUIRE(rp != nullptr);
  try {
    (void)rp->plan(out, ctx);
    CHECK(false);
  } catch (const error& e) {
    CHECK(e.kind() == error_kind::usage);
    CHECK(std::string(e.what()).find("pred=prev") != std::string::npos);
  }
}

TEST_CASE("rans:tables=shared fits once / stores state and decodes after load_state") {
  cache_info info;
  info.shape.layers = 2;
  std::vector<symbols> blocks;
  for (int j = 0; j < 8; ++j) blocks.push_back(make_syms(16, 8, 32, 4, static_cast<std::uint32_t>(j)));
  std::vector<const symbols*> ptrs;
  for (auto& b : blocks) ptrs.push_back(&b);
  auto enc = make_entropy("rans:tables=shared");
  const bytes state = enc->fit(ptrs, info);
  REQUIRE(!state.empty());
  auto dec = make_entropy("rans:tables=shared");
  dec->load_state(state, info);
  for (std::size_t j = 0; j < blocks.size(); ++j) {
    const block b = ctx_block(static_cast<int>((j / 2) % 2), j % 2 == 0, 16, 8);
    bytes out;
    coder_stats cs;
    enc->encode(blocks[j], b, out, cs);
    CHECK(same(blocks[j], dec->decode(out, b)));
  }
  auto bad = make_entropy("rans:tables=shared");
  bytes cut(state.begin(), state.end() - 1);
  CHECK_THROWS_AS(bad->load_state(cut, info), error);
  auto chunk = make_entropy("rans");
  CHECK_THROWS_AS(chunk->load_state(state, info), error);
}

TEST_CASE("decode_reusing: into symbols that held another block (bigger - smaller - more planes) equals decode") {
  cache_info info;
  info.shape.layers = 2;
  for (const std::string spec : {"rans", "rans:tables=shared", "rans:pred=prev", "rans:pred=anchor", "ac"}) {
    CAPTURE(spec);
    std::vector<symbols> blocks;
    std::vector<block> ctx;
    const std::uint32_t rows[] = {64, 8, 33, 64};
    for (int j = 0; j < 4; ++j) {
      blocks.push_back(make_syms(rows[j], 16, j == 1 ? 7u : 32u, j % 5, static_cast<std::uint32_t>(j + 10)));
      ctx.push_back(ctx_block((j / 2) % 2, j % 2 == 0, rows[j], 16));  // the pipeline's chunk-major order (shared tables)
    }
    std::vector<const symbols*> ptrs;
    for (auto& b : blocks) ptrs.push_back(&b);
    auto enc = make_entropy(spec);
    const bytes state = enc->fit(ptrs, info);
    auto dec = make_entropy(spec);
    dec->load_state(state, info);
    symbols reused;
    reused.planes.resize(3);  // more planes than any block: decode_reusing must drop the extra ones
    reused.planes[0].sym.assign(100000, 7);
    reused.side.assign(50, 9);
    for (std::size_t j = 0; j < blocks.size(); ++j) {
      bytes out;
      coder_stats cs;
      enc->encode(blocks[j], ctx[j], out, cs);
      dec->decode_reusing(out, ctx[j], reused);
      CHECK(same(blocks[j], reused));
      CHECK(same(blocks[j], dec->decode(out, ctx[j])));
      // rANS without prediction vouches for a bound on each plane (from its tables), and keeps it.
      const bool vouches = spec == "rans" || spec == "rans:tables=shared";
      for (const symbol_plane& p : reused.planes) {
        if (!vouches) {
          CHECK(p.sym_bound == 0);
          continue;
        }
        CHECK(p.sym_bound >= 1);
        CHECK(p.sym_bound <= p.alphabet);
        for (const auto v : p.sym) CHECK_LT(v, p.sym_bound);
      }
    }
  }
}

TEST_CASE("pred=linear: integer predictor / least-squares fit and shared predictors in the stage state") {
  using namespace kvcodec::cpu::em;
  // k = 16 reproduces the previous symbol, k = 0 the centre, k = 8 the rounded midpoint; clamped.
  CHECK(linear_ref(7, 3, 16, 32) == 7);
  CHECK(linear_ref(7, 3, 0, 32) == 3);
  CHECK(linear_ref(7, 3, 8, 32) == 5);
  CHECK(linear_ref(0, 10, 8, 32) == 5);
  CHECK(linear_ref(0, 31, 16, 32) == 0);
  CHECK(linear_ref(31, 0, 16, 32) == 31);
  // Column 0 follows an AR(1) with slope 1/2 around 16, column 1 is constant, column 2 a random walk.
  symbol_plane p;
  p.alphabet = 32;
  p.rows = 4000;
  p.cols = 3;
  p.sym.resize(3 * 4000);
  std::mt19937 rng(9);
  double a = 0;
  int w = 16;
  for (std::uint32_t r = 0; r < p.rows; ++r) {
    a = 0.5 * a + std::normal_distribution<double>(0, 3)(rng);
    w = std::clamp(w + static_cast<int>(rng() % 3) - 1, 4, 27);
    p.sym[r * 3] = static_cast<std::uint16_t>(std::clamp(16 + static_cast<int>(std::lround(a)), 0, 31));
    p.sym[r * 3 + 1] = 9;
    p.sym[r * 3 + 2] = static_cast<std::uint16_t>(w);
  }
  linear_sums sm;
  sm.add(p);
  const linear_coefs lc = sm.fit(3, 32);
  CHECK(lc.coef[0] >= 6);
  CHECK(lc.coef[0] <= 10);
  CHECK(lc.centre[0] == 16);
  CHECK(lc.coef[1] == 0);
  CHECK(lc.centre[1] == 9);
  CHECK(lc.coef[2] >= 15);
  // Linear prediction codes the AR(1) + random-walk plane in fewer bits than no prediction or prev.
  symbols s;
  s.planes.push_back(p);
  std::map<std::string, std::size_t> size;
  for (const std::string spec : {"rans", "rans:pred=prev", "rans:pred=linear"}) {
    auto st = make_entropy(spec);
    bytes out;
    coder_stats cs;
    const block b = ctx_block(0, true, p.rows, p.cols);
    st->encode(s, b, out, cs);
    CHECK(same(st->decode(out, b), s));
    size[spec] = out.size();
  }
  CHECK(size["rans:pred=linear"] < size["rans"]);
  CHECK(size["rans:pred=linear"] < size["rans:pred=prev"]);
  // tables=shared keeps the predictors in the stage state; a decoder without them refuses.
  cache_info info;
  info.shape.layers = 1;
  std::vector<symbols> blocks(4, s);
  std::vector<const symbols*> ptrs;
  for (auto& x : blocks) ptrs.push_back(&x);
  auto enc = make_entropy("rans:pred=linear,tables=shared");
  const bytes state = enc->fit(ptrs, info);
  auto dec = make_entropy("rans:pred=linear,tables=shared");
  dec->load_state(state, info);
  const block b = ctx_block(0, true, p.rows, p.cols);
  bytes out;
  coder_stats cs;
  enc->encode(s, b, out, cs);
  CHECK(same(dec->decode(out, b), s));
  auto nolin = make_entropy("rans:tables=shared");
  CHECK_THROWS_AS(nolin->load_state(state, info), error);
  for (std::size_t cut = 0; cut + 1 < state.size(); cut += 7) {
    auto bad = make_entropy("rans:pred=linear,tables=shared");
    CHECK_THROWS_AS(bad->load_state(std::span<const std::uint8_t>(state.data(), cut), info), error);
  }
}

TEST_CASE("entropy stages: corrupt and truncated streams throw kvcodec::error") {
  for (const std::string spec : {"rans", "rans:pred=anchor", "rans:pred=linear", "ac", "ac:streams=block"}) {
    auto st = make_entropy(spec);
    const symbols in = make_syms(40, 16, 32, 4, 3);
    const block b = ctx_block(1, false, 40, 16);
    bytes out;
    coder_stats cs;
    st->encode(in, b, out, cs);
    for (std::size_t cut = 0; cut < out.size(); cut += std::max<std::size_t>(1, out.size() / 40)) {
      bytes t(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(cut));
      CHECK_THROWS_AS(st->decode(t, b), error);
    }
    int detected = 0, total = 0;
    for (std::size_t i = 0; i < out.size(); i += 3) {
      bytes t = out;
      t[i] ^= 0x5a;
      ++total;
      try {
        const symbols back = st->decode(t, b);
        if (!same(back, in)) ++detected;  // silently different data is possible only inside payload bytes
      } catch (const error&) {
        ++detected;
      }
    }
    CHECK(detected * 10 >= total * 9);  // unused padding bits of packed maps may flip harmlessly
  }
}

TEST_CASE("entropy stages: bad input and bad parameters") {
  CHECK_THROWS_AS(make_codec("rans:lanes=48"), error);
  CHECK_THROWS_AS(make_codec("rans:prob_bits=16"), error);
  CHECK_THROWS_AS(make_codec("rans:ctx=head"), error);
  CHECK_THROWS_AS(make_codec("ac:streams=column"), error);
  auto st = make_entropy("rans");
  symbols s = make_syms(4, 4, 8, 0, 1);
  s.planes[0].sym[3] = 9;  // outside the alphabet
  bytes out;
  coder_stats cs;
  CHECK_THROWS_AS(st->encode(s, ctx_block(0, true, 4, 4), out, cs), error);
  symbols big = make_syms(2, 2, 8, 0, 1);
  big.planes[0].alphabet = 5000;
  CHECK_THROWS_AS(st->encode(big, ctx_block(0, true, 2, 2), out, cs), error);
}

TEST_CASE("entropy model: golden tables and the CacheGen CDF") {
  // geometric table: integer-only construction, fixed values
  const freq_table g = cpu::em::geometric_table(8, 32768, 9, 12);
  CHECK(g.freq == std::vector<std::uint32_t>{89, 178, 356, 711, 1428, 711, 356, 178, 89});
  // CacheGen CDF: round(P(<k) * (2^16 - A)) + k
  std::vector<std::uint32_t> h(32, 0);
  h[15] = 3;
  h[16] = 1;
  const auto cdf = cpu::cachegen_cdf(h.data(), 32);
  CHECK(cdf.size() == 33);
  CHECK(cdf[0] == 0);
  CHECK(cdf[15] == 15);
  CHECK(cdf[16] == 16 + (3 * 65504 * 2 + 4) / 8);
  CHECK(cdf[32] == 65536);
  // prediction residuals are invertible for every pair
  for (std::uint32_t A : {2u, 31u, 32u})
    for (std::uint32_t s = 0; s < A; ++s)
      for (std::uint32_t r = 0; r < A; ++r) CHECK(cpu::em::pred_restore(cpu::em::pred_residual(s, r, A), r, A) == s);
}

TEST_CASE("cachegen-quant: quantize rounds half to even like nearbyintf - decode_f16 equals decode rounded to f16") {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (int max : {1, 3, 7, 127, 32766}) {
    const auto ref = [&](float x, float inv) {
      float q = nearbyintf(x * inv);
      q = std::min(std::max(q, static_cast<float>(-max)), static_cast<float>(max));
      return static_cast<std::uint16_t>(static_cast<int>(q) + max);
    };
    for (float x : {0.0f, -0.0f, 0.5f, -0.5f, 1.5f, -1.5f, 2.5f, -2.5f, 1e30f, -1e30f, 3.4e38f, 1e-40f})
      CHECK(cachegen_quantize(x, 1.0f, max) == ref(x, 1.0f));
    for (int i = 0; i < 20000; ++i) {
      const float x = u(rng), inv = static_cast<float>(max) / (0.1f + std::fabs(u(rng)));
      CHECK(cachegen_quantize(x, inv, max) == ref(x, inv));
    }
  }
  for (const char* spec : {"kbins=256,klayers=-,vbins=24,vlayers=-,kaxis=channel,vaxis=token", "kbins=16,klayers=-,vbins=8,vlayers=-,scale=bf16"}) {
    for (std::int64_t tokens : {std::int64_t{1}, std::int64_t{7}, std::int64_t{33}})
    for (const int hd : {20, 28}) {  // two or three 8-wide vectors and a scalar tail per row
      CAPTURE(spec);
      CAPTURE(tokens);
      CAPTURE(hd);
      const codec c = make_codec(std::string("cachegen-quant:") + spec + "|rans");
      const auto* cg = dynamic_cast<const cpu::cachegen_quant*>(c.quant.get());
      REQUIRE(cg != nullptr);
      kv_shape s;
      s.layers = 1;
      s.kv_heads = 3;
      s.head_dim = hd;
      const std::size_t D = static_cast<std::size_t>(hd);
      s.tokens = tokens;
      for (bool key : {true, false}) {
        block b = detail::block_skeleton(s, 0, key, 0, tokens, nullptr);
        b.data.resize(b.rows() * D);
        for (auto& v : b.data) v = u(rng) * (rng() % 4 == 0 ? 1e-6f : 1.0f);
        const cache_info info{s, dtype::f16, {}};
        symbols sy;
        cg->encode(b, info, sy);
        {  // the (vector) encoder's symbols equal the scalar formula under the stored scales
          const bool by_token = std::string(spec).find("kaxis=channel") == std::string::npos || !key;
          const bool bf = std::string(spec).find("bf16") != std::string::npos;
          const int MAX = (key ? (std::string(spec).find("kbins=256") != std::string::npos ? 256 : 16)
                               : (std::string(spec).find("vbins=24") != std::string::npos ? 24 : 8)) / 2 - 1;
          const std::size_t R = static_cast<std::size_t>(tokens), C = 3 * D;
          std::size_t bad = 0;
          for (std::size_t r = 0; r < R; ++r)
            for (std::size_t c = 0; c < C; ++c) {
              const std::size_t si = by_token ? r : c;
              const auto bits = static_cast<std::uint16_t>(sy.side[2 * si] | (sy.side[2 * si + 1] << 8));
              const float sc = cachegen_scale_value(bits, bf);
              const float x = b.data[((c / D) * R + r) * D + c % D];
              bad += sy.planes[0].sym[r * C + c] != cachegen_quantize(x, sc > 0 ? static_cast<float>(MAX) / sc : 0.0f, MAX);
            }
          CHECK(bad == 0);
        }
        block d32 = detail::block_skeleton(s, 0, key, 0, tokens, nullptr);
        cg->decode(sy, info, d32);
        std::vector<std::uint16_t> h(b.rows() * D, 0xdead);
        cg->decode_f16(sy, d32, h.data());
        for (std::size_t i = 0; i < h.size(); ++i) CHECK(h[i] == f32_to_f16_bits(d32.data[i]));
        // decode_rows into f16 rows (the path of decode_into) gives the same bits
        std::vector<std::uint16_t> h2(b.rows() * D, 0xbeef);
        std::vector<std::byte*> rows(b.rows());
        for (std::size_t r = 0; r < rows.size(); ++r) rows[r] = reinterpret_cast<std::byte*>(h2.data() + r * D);
        REQUIRE(cg->decode_rows(sy, info, d32, dtype::f16, rows.data()));
        CHECK(h2 == h);
        // Rows in reverse order (evenly spaced, negative stride) and scattered (one call per row).
        for (const bool scatter : {false, true}) {
          std::vector<std::size_t> at(b.rows());
          for (std::size_t r = 0; r < at.size(); ++r) at[r] = at.size() - 1 - r;
          if (scatter) std::shuffle(at.begin(), at.end(), rng);
          std::vector<std::uint16_t> h3(b.rows() * D, 0xbeef);
          for (std::size_t r = 0; r < rows.size(); ++r) rows[r] = reinterpret_cast<std::byte*>(h3.data() + at[r] * D);
          REQUIRE(cg->decode_rows(sy, info, d32, dtype::f16, rows.data()));
          std::size_t diff = 0;
          for (std::size_t r = 0; r < at.size(); ++r)
            for (std::size_t d = 0; d < D; ++d) diff += h3[at[r] * D + d] != h[r * D + d];
          CHECK(diff == 0);
        }
        sy.side.pop_back();
        CHECK_THROWS_AS(cg->decode_f16(sy, d32, h.data()), error);
      }
    }
  }
}

}  // namespace kvcodec_test_cpu_entropy_stages
