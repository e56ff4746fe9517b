// Tests for kvcodec/core/affine.hpp: group parameters, codes, stored-parameter agreement, non-finite
// rule, bit packing.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/core/affine.hpp"
#include "kvcodec/core/simd.hpp"
#include <cstring>
#include "../support/shared_data.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_affine {

using namespace kvcodec;
using namespace kvcodec::affine;

TEST_CASE("affine: asymmetric hand-computed group") {
  const float x[5] = {-1.0f, 0.0f, 0.5f, 2.0f, 1.1f};
  const params p = compute_params(x, 5, 1, 2, mode::asymmetric, param_dtype::f32);
  CHECK(p.min == -1.0f);
  CHECK(p.scale == 1.0f);  // range 3 over 3 steps
  std::uint8_t q[5];
  quantize_group(x, 5, 1, p, 2, mode::asymmetric, q, 1);
  CHECK(q[0] == 0);
  CHECK(q[1] == 1);
  CHECK(q[2] == 2);  // 1.5 rounds half up
  CHECK(q[3] == 3);
  CHECK(q[4] == 2);  // 2.1
  float y[5];
  dequantize_group(q, 5, 1, p, 2, mode::asymmetric, y, 1);
  CHECK(y[0] == -1.0f);
  CHECK(y[2] == 1.0f);
  CHECK(y[3] == 2.0f);
}

TEST_CASE("affine: symmetric hand-computed group") {
  const float x[4] = {-3.0f, 1.4f, 0.0f, 2.0f};
  const params p = compute_params(x, 4, 1, 3, mode::symmetric, param_dtype::f32);
  CHECK(p.scale == 1.0f);  // amax 3 over 3 positive levels
  std::uint8_t q[4];
  quantize_group(x, 4, 1, p, 3, mode::symmetric, q, 1);
  CHECK(q[0] == 1);  // -3 + 4
  CHECK(q[1] == 5);
  CHECK(q[2] == 4);
  CHECK(q[3] == 6);
  float y[4];
  dequantize_group(q, 4, 1, p, 3, mode::symmetric, y, 1);
  CHECK(y[0] == -3.0f);
  CHECK(y[1] == 1.0f);
  CHECK(y[2] == 0.0f);
}

TEST_CASE("affine: strided groups along tokens and channels / error bounds for 1..8 bits") {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.5f, 2.0f);
  const std::size_t tokens = 37, dim = 13;
  std::vector<float> x(tokens * dim);
  for (auto& v : x) v = nd(rng);
  double last_rmse[2][2] = {{1e9, 1e9}, {1e9, 1e9}};
  for (int bits = 1; bits <= 8; ++bits) {
    for (mode m : {mode::asymmetric, mode::symmetric}) {
      if (m == mode::symmetric && bits < 2) continue;
      for (param_dtype pd : {param_dtype::f32, param_dtype::f16}) {
        CAPTURE(bits);
        CAPTURE(static_cast<int>(m));
        CAPTURE(static_cast<int>(pd));
        // per-channel groups: column c, stride dim (along tokens)
        std::vector<std::uint8_t> q(x.size());
        std::vector<float> y(x.size());
        for (std::size_t c = 0; c < dim; ++c) {
          const params p = affine::quantize(x.data() + c, tokens, dim, bits, m, pd, q.data() + c, dim);
          dequantize_group(q.data() + c, tokens, dim, p, bits, m, y.data() + c, dim);
          float lo = x[c], hi = x[c], amax = 0;
          for (std::size_t t = 0; t < tokens; ++t) {
            lo = std::min(lo, x[t * dim + c]);
            hi = std::max(hi, x[t * dim + c]);
            amax = std::max(amax, std::fabs(x[t * dim + c]));
            CHECK(q[t * dim + c] <= max_code(bits));
            if (m == mode::symmetric) CHECK(q[t * dim + c] >= 1);
          }
          const double step = m == mode::asymmetric ? (hi - lo) / max_code(bits) : amax / (sym_zero(bits) - 1.0);
          const double slack = pd == param_dtype::f16 ? 2e-3 * (std::fabs(lo) + amax) + step * 0.01 : 1e-5;
          for (std::size_t t = 0; t < tokens; ++t)
            CHECK(std::fabs(y[t * dim + c] - x[t * dim + c]) <= 0.5 * step + slack);
        }
        // per-token groups: row t, stride 1 (along channels)
        for (std::size_t t = 0; t < tokens; ++t) {
          const params p = affine::quantize(x.data() + t * dim, dim, 1, bits, m, pd, q.data() + t * dim, 1);
          dequantize_group(q.data() + t * dim, dim, 1, p, bits, m, y.data() + t * dim, 1);
        }
        double se = 0;
        for (std::size_t i = 0; i < x.size(); ++i) se += (y[i] - x[i]) * (y[i] - x[i]);
        MESSAGE("bits " << bits << " mode " << static_cast<int>(m) << " pd " << static_cast<int>(pd)
                        << " per-token RMSE " << std::sqrt(se / x.size()));
        const double rmse = std::sqrt(se / x.size());
        if (bits >= 4) CHECK(rmse < 0.2);
        if (bits == 8) CHECK(rmse < 0.01);
        double& last = last_rmse[static_cast<int>(m)][static_cast<int>(pd)];
        CHECK(rmse < 0.7 * last);  // each extra bit roughly halves the error
        last = rmse;
      }
    }
  }
}

TEST_CASE("affine: decoder uses the stored (rounded) parameters") {
  const float x[4] = {0.1f, 0.7f, 1.3f, 3.3333f};
  std::uint8_t q[4];
  const params p = affine::quantize(x, 4, 1, 4, mode::asymmetric, param_dtype::f16, q, 1);
  // parameters are exactly f16-representable
  CHECK(f16_bits_to_f32(f32_to_f16_bits(p.scale)) == p.scale);
  CHECK(f16_bits_to_f32(f32_to_f16_bits(p.min)) == p.min);
  CHECK(p.min != 0.1f);  // 0.1 is not an f16 value: it was rounded
  std::uint8_t buf[8];
  CHECK(param_bytes(mode::asymmetric, param_dtype::f16) == 4);
  CHECK(store_params(p, mode::asymmetric, param_dtype::f16, buf) == 4);
  const params r = load_params(buf, mode::asymmetric, param_dtype::f16);
  CHECK(r.scale == p.scale);
  CHECK(r.min == p.min);
  float y1[4], y2[4];
  dequantize_group(q, 4, 1, p, 4, mode::asymmetric, y1, 1);
  dequantize_group(q, 4, 1, r, 4, mode::asymmetric, y2, 1);
  for (int i = 0; i < 4; ++i) CHECK(y1[i] == y2[i]);
  // f32 storage is exact; symmetric stores only the scale
  CHECK(param_bytes(mode::symmetric, param_dtype::f32) == 4);
  CHECK(param_bytes(mode::asymmetric, param_dtype::f32) == 8);
  const params s{0.123456789f, 0.0f};
  CHECK(store_params(s, mode::symmetric, param_dtype::f32, buf) == 4);
  CHECK(buf[0] == 0xea);  // 0.123456789f = 0x3dfcd6ea, little-endian
  CHECK(buf[3] == 0x3d);
  CHECK(load_params(buf, mode::symmetric, param_dtype::f32).scale == s.scale);
  // f16 saturates instead of overflowing
  CHECK(round_param(1e6f, param_dtype::f16) == 65504.0f);
  CHECK(round_param(-1e6f, param_dtype::f16) == -65504.0f);
}

TEST_CASE("affine: constant and empty groups give scale 0 without dividing by zero") {
  const float c[6] = {2.5f, 2.5f, 2.5f, 2.5f, 2.5f, 2.5f};
  for (mode m : {mode::asymmetric, mode::symmetric}) {
    std::uint8_t q[6];
    float y[6];
    const params p = affine::quantize(c, 6, 1, 3, m, param_dtype::f32, q, 1);
    dequantize_group(q, 6, 1, p, 3, m, y, 1);
    if (m == mode::asymmetric) {
      CHECK(p.scale == 0.0f);
      for (float v : y) CHECK(v == 2.5f);
    } else {
      for (float v : y) CHECK(v == doctest::Approx(2.5f));
    }
  }
  const float z[3] = {0.0f, 0.0f, 0.0f};
  std::uint8_t q[3];
  float y[3];
  const params p = affine::quantize(z, 3, 1, 4, mode::symmetric, param_dtype::f16, q, 1);
  CHECK(p.scale == 0.0f);
  dequantize_group(q, 3, 1, p, 4, mode::symmetric, y, 1);
  for (int i = 0; i < 3; ++i) {
    CHECK(q[i] == 8);
    CHECK(y[i] == 0.0f);
  }
  const params e = affine::quantize(nullptr, 0, 1, 4, mode::asymmetric, param_dtype::f32, nullptr, 1);
  CHECK(e.scale == 0.0f);
  CHECK(e.min == 0.0f);
}

TEST_CASE("affine: non-finite inputs") {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const float x[6] = {-2.0f, nan, 4.0f, inf, -inf, 1.0f};
  SUBCASE("asymmetric") {
    std::uint8_t q[6];
    const params p = affine::quantize(x, 6, 1, 3, mode::asymmetric, param_dtype::f32, q, 1);
    CHECK(p.min == -2.0f);               // range from finite values only
    CHECK(p.scale == doctest::Approx(6.0f / 7.0f));
    CHECK(q[1] == 2);                    // NaN -> code nearest 0: 2/(6/7) = 2.33 -> 2
    CHECK(q[3] == 7);                    // +Inf -> top
    CHECK(q[4] == 0);                    // -Inf -> bottom
  }
  SUBCASE("symmetric") {
    std::uint8_t q[6];
    const params p = affine::quantize(x, 6, 1, 4, mode::symmetric, param_dtype::f32, q, 1);
    CHECK(p.scale == doctest::Approx(4.0f / 7.0f));
    CHECK(q[1] == 8);
    CHECK(q[3] == 15);
    CHECK(q[4] == 1);
  }
  SUBCASE("all non-finite") {
    const float bad[3] = {nan, inf, -inf};
    std::uint8_t q[3];
    const params p = affine::quantize(bad, 3, 1, 4, mode::asymmetric, param_dtype::f16, q, 1);
    CHECK(p.scale == 0.0f);
    CHECK(p.min == 0.0f);
    float y[3];
    dequantize_group(q, 3, 1, p, 4, mode::asymmetric, y, 1);
    for (float v : y) CHECK(v == 0.0f);
  }
}

TEST_CASE("affine: bad specs are usage errors") {
  const float x[2] = {1, 2};
  std::uint8_t q[2];
  CHECK_THROWS_AS(affine::quantize(x, 2, 1, 0, mode::asymmetric, param_dtype::f32, q, 1), kvcodec::error);
  CHECK_THROWS_AS(affine::quantize(x, 2, 1, 9, mode::asymmetric, param_dtype::f32, q, 1), kvcodec::error);
  CHECK_THROWS_AS(affine::quantize(x, 2, 1, 1, mode::symmetric, param_dtype::f32, q, 1), kvcodec::error);
  CHECK_THROWS_AS(affine::quantize(nullptr, 2, 1, 4, mode::symmetric, param_dtype::f32, q, 1), kvcodec::error);
  try {
    check_spec(12, mode::asymmetric, "kivi");
    FAIL("no throw");
  } catch (const kvcodec::error& e) {
    CHECK(e.kind() == error_kind::usage);
    const std::string w = e.what();
    CHECK(w.find("kivi") != std::string::npos);
    CHECK(w.find("bits") != std::string::npos);
    CHECK(w.find("12") != std::string::npos);
  }
  CHECK_NOTHROW(check_spec(1, mode::asymmetric));
  CHECK_NOTHROW(check_spec(8, mode::symmetric));
}

TEST_CASE("affine: bit packing LSB-first / all widths and lengths") {
  // hand example: 3-bit symbols 1..5
  const std::uint8_t s3[5] = {1, 2, 3, 4, 5};
  std::uint8_t out[4] = {0xff, 0xff, 0xff, 0xff};
  pack_bits(s3, 5, 3, out);
  // stream: s0 bits0-2, s1 bits3-5, s2 bits6-8, s3 bits 9-11, s4 bits 12-14
  // byte0 = 1 | 2<<3 | (3&3)<<6 = 1 + 16 + 192 = 0xd1; byte1 = (3>>2) | 4<<1 | 5<<4 = 0 + 8 + 80 = 0x58
  CHECK(out[0] == 0xd1);
  CHECK(out[1] == 0x58);
  CHECK(out[2] == 0xff);  // untouched beyond packed_bytes
  const std::uint8_t s1[10] = {1, 0, 1, 1, 0, 0, 0, 1, 1, 1};
  pack_bits(s1, 10, 1, out);
  CHECK(out[0] == 0x8d);
  CHECK(out[1] == 0x03);
  const std::uint8_t s4[3] = {0xa, 0x5, 0xf};
  pack_bits(s4, 3, 4, out);
  CHECK(out[0] == 0x5a);
  CHECK(out[1] == 0x0f);
  const std::uint8_t s2[5] = {3, 0, 1, 2, 1};
  pack_bits(s2, 5, 2, out);
  CHECK(out[0] == 0x93);
  CHECK(out[1] == 0x01);

  std::mt19937 rng(9);
  for (int bits = 1; bits <= 8; ++bits) {
    for (std::size_t n : {0u, 1u, 2u, 7u, 8u, 9u, 31u, 32u, 33u, 100u}) {
      CAPTURE(bits);
      CAPTURE(n);
      std::vector<std::uint8_t> s(n), back(n, 0xee), p(packed_bytes(n, bits) + 1, 0xcc);
      for (auto& v : s) v = static_cast<std::uint8_t>(rng() & ((1u << bits) - 1u));
      CHECK(packed_bytes(n, bits) == (n * bits + 7) / 8);
      pack_bits(s.data(), n, bits, p.data());
      CHECK(p.back() == 0xcc);
      if (n * bits % 8 != 0) CHECK((p[packed_bytes(n, bits) - 1] >> ((n * bits) % 8)) == 0);  // zero padding
      unpack_bits(p.data(), n, bits, back.data());
      CHECK(back == s);
      // against a bit-by-bit reference
      for (std::size_t i = 0; i < n; ++i)
        for (int b = 0; b < bits; ++b) {
          const std::size_t k = i * bits + b;
          CHECK(((p[k / 8] >> (k % 8)) & 1) == ((s[i] >> b) & 1));
        }
    }
  }
  // symbols wider than bits are masked
  const std::uint8_t wide[2] = {0xff, 0x01};
  pack_bits(wide, 2, 3, out);
  CHECK(out[0] == 0x0f);
}

TEST_CASE("affine: real stories260K keys / per-channel vs per-token groups (KIVI)") {
  const kv_cache* dump = test::shared_dump("stories260K-s0.safetensors");
  KVCODEC_REQUIRE_SHARED(dump);
  REQUIRE(dump->keys.size() == 5);
  const std::size_t H = 4, T = 512, D = 8, G = 32;
  double se_ch = 0, se_tok = 0, sx = 0;
  for (int l = 0; l < 5; ++l) {
    const auto& k = dump->keys[static_cast<std::size_t>(l)];
    REQUIRE(k.size() == H * T * D);
    std::vector<std::uint8_t> q(k.size());
    std::vector<float> y(k.size());
    for (std::size_t h = 0; h < H; ++h) {
      const float* base = k.data() + h * T * D;
      // per-channel: groups of G tokens of one channel (stride D)
      for (std::size_t t0 = 0; t0 < T; t0 += G)
        for (std::size_t c = 0; c < D; ++c) {
          const std::size_t off = h * T * D + t0 * D + c;
          const params p = affine::quantize(base + t0 * D + c, G, D, 2, mode::asymmetric, param_dtype::f16,
                                            q.data() + off, D);
          dequantize_group(q.data() + off, G, D, p, 2, mode::asymmetric, y.data() + off, D);
        }
      for (std::size_t i = h * T * D; i < (h + 1) * T * D; ++i) {
        se_ch += (static_cast<double>(y[i]) - k[i]) * (static_cast<double>(y[i]) - k[i]);
        sx += static_cast<double>(k[i]) * k[i];
      }
      // per-token: one group per token (its D channels)
      for (std::size_t t = 0; t < T; ++t) {
        const std::size_t off = h * T * D + t * D;
        const params p = affine::quantize(k.data() + off, D, 1, 2, mode::asymmetric, param_dtype::f16, q.data() + off, 1);
        dequantize_group(q.data() + off, D, 1, p, 2, mode::asymmetric, y.data() + off, 1);
      }
      for (std::size_t i = h * T * D; i < (h + 1) * T * D; ++i)
        se_tok += (static_cast<double>(y[i]) - k[i]) * (static_cast<double>(y[i]) - k[i]);
    }
  }
  const double rel_ch = std::sqrt(se_ch / sx), rel_tok = std::sqrt(se_tok / sx);
  MESSAGE("2-bit keys: per-channel (group 32) relative RMS " << rel_ch << ", per-token " << rel_tok);
  CHECK(rel_ch < 0.3);
  CHECK(rel_ch < rel_tok);  // keys have per-channel outlier structure (KIVI's observation)
}

// ---- bulk kernels (AVX2 when available) against the scalar references ----------------------------

namespace {

float affine_edge_value(int kind, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  float v = nd(rng);
  switch (kind) {
    case 1: return std::round(v * 4.0f) / 4.0f;  // exact ties
    case 2: {
      const std::uint32_t b = static_cast<std::uint32_t>(rng());
      std::memcpy(&v, &b, 4);  // any bit pattern
      return v;
    }
    case 3: return rng() % 3 == 0 ? 0.0f : (rng() % 2 ? -0.0f : v * 1e-3f);  // signed zeros
    case 4: {
      const int r = static_cast<int>(rng() % 10);
      if (r == 0) return std::numeric_limits<float>::quiet_NaN();
      if (r == 1) return std::numeric_limits<float>::infinity();
      if (r == 2) return -std::numeric_limits<float>::infinity();
      return v;
    }
    case 5: return 1.5f;      // constant groups
    case 6: return v * 1e6f;  // f16 parameter saturation
    case 7: return std::numeric_limits<float>::denorm_min() * static_cast<float>(rng() % 50);
    default: return v;
  }
}

}  // namespace

TEST_CASE("affine bulk: groups / columns and packing equal the scalar references byte for byte") {
  MESSAGE("simd::avx2() = " << simd::avx2());
  std::mt19937 rng(7);
  std::size_t cases = 0;
  for (int kind = 0; kind < 8; ++kind)
    for (int bits = 1; bits <= 8; ++bits)
      for (mode m : {mode::asymmetric, mode::symmetric})
        for (param_dtype pd : {param_dtype::f16, param_dtype::f32}) {
          if (m == mode::symmetric && bits < 2) continue;
          const std::size_t pb = param_bytes(m, pd);
          for (std::size_t G : {8u, 32u, 128u, 24u, 5u}) {
            const std::size_t ng = 19, n = ng * G;
            std::vector<float> x(n);
            for (auto& v : x) v = affine_edge_value(kind, rng);
            std::vector<std::uint8_t> s1(ng * pb), s2(ng * pb), b1(n), b2(n);
            std::vector<std::uint16_t> q1(n), q2(n);
            quantize_groups(x.data(), ng, G, bits, m, pd, s1.data(), q1.data());
            affine::detail::quantize_groups_ref(x.data(), ng, G, bits, m, pd, s2.data(), q2.data());
            CHECK((s1 == s2 && q1 == q2));
            quantize_groups(x.data(), ng, G, bits, m, pd, s1.data(), b1.data());
            affine::detail::quantize_groups_ref(x.data(), ng, G, bits, m, pd, s2.data(), b2.data());
            CHECK((s1 == s2 && b1 == b2));
            std::vector<float> y1(n), y2(n);
            dequantize_groups(q2.data(), s2.data(), ng, G, bits, m, pd, y1.data());
            affine::detail::dequantize_groups_ref(q2.data(), s2.data(), ng, G, bits, m, pd, y2.data());
            CHECK(std::memcmp(y1.data(), y2.data(), 4 * n) == 0);
            // strided column groups (n = G rows, 19 columns, ld 22: a tail of 3 columns)
            const std::size_t rows = G, nc = ng, ld = ng + 3;
            std::vector<float> xc(rows * ld);
            for (auto& v : xc) v = affine_edge_value(kind, rng);
            std::vector<std::uint16_t> c1(rows * ld), c2(rows * ld);
            std::vector<std::uint8_t> t1(nc * pb), t2(nc * pb);
            quantize_columns(xc.data(), rows, nc, ld, bits, m, pd, t1.data(), c1.data());
            affine::detail::quantize_columns_ref(xc.data(), rows, nc, ld, bits, m, pd, t2.data(), c2.data());
            CHECK((c1 == c2 && t1 == t2));
            std::vector<float> z1(rows * ld), z2(rows * ld);
            dequantize_columns(c2.data(), t2.data(), rows, nc, ld, bits, m, pd, z1.data());
            affine::detail::dequantize_columns_ref(c2.data(), t2.data(), rows, nc, ld, bits, m, pd, z2.data());
            CHECK(std::memcmp(z1.data(), z2.data(), 4 * z1.size()) == 0);
            // packing, and unpacking of arbitrary bytes
            std::vector<std::uint8_t> p1(packed_bytes(n, bits) + 1, 0xaa), p2(p1);
            pack_bits_fast(b2.data(), n, bits, p1.data());
            pack_bits(b2.data(), n, bits, p2.data());
            CHECK(p1 == p2);
            for (auto& c : p1) c = static_cast<std::uint8_t>(rng());
            std::vector<std::uint8_t> u1(n), u2(n);
            unpack_bits_fast(p1.data(), n, bits, u1.data());
            unpack_bits(p1.data(), n, bits, u2.data());
            CHECK(u1 == u2);
            // packed group round trip equals the unpacked path
            std::vector<std::uint8_t> ps(ng * pb), pp(packed_bytes(n, bits));
            quantize_groups_packed(x.data(), ng, G, bits, m, pd, ps.data(), pp.data());
            std::vector<std::uint8_t> ref_pp(packed_bytes(n, bits));
            pack_bits(b2.data(), n, bits, ref_pp.data());
            CHECK((ps == s2 && pp == ref_pp));
            std::vector<float> yp(n);
            std::vector<std::uint16_t> yh(n);
            dequantize_groups_packed(pp.data(), ps.data(), ng, G, bits, m, pd, yp.data());
            dequantize_groups_packed_f16(pp.data(), ps.data(), ng, G, bits, m, pd, yh.data());
            affine::detail::dequantize_groups_ref(b2.data(), s2.data(), ng, G, bits, m, pd, y2.data());
            CHECK(std::memcmp(yp.data(), y2.data(), 4 * n) == 0);
            bool f16ok = true;
            for (std::size_t i = 0; i < n; ++i) f16ok = f16ok && yh[i] == f32_to_f16_bits(y2[i]);
            CHECK(f16ok);
            // arbitrary stored parameters (NaN / Inf / subnormal scales)
            for (auto& c : s2) c = static_cast<std::uint8_t>(rng());
            dequantize_groups(q2.data(), s2.data(), ng, G, bits, m, pd, y1.data());
            affine::detail::dequantize_groups_ref(q2.data(), s2.data(), ng, G, bits, m, pd, y2.data());
            bool same = true;
            for (std::size_t i = 0; i < n; ++i) {
              std::uint32_t a, b;
              std::memcpy(&a, &y1[i], 4);
              std::memcpy(&b, &y2[i], 4);
              same = same && (a == b || (std::isnan(y1[i]) && std::isnan(y2[i])));  // NaN scale and NaN min: payload is the compiler's pick
            }
            CHECK(same);
            ++cases;
          }
        }
  CHECK(cases > 500);
}

TEST_CASE("affine bulk: rounding ties and near-ties take the scalar reference's codes") {
  std::mt19937 rng(11);
  std::size_t cases = 0;
  for (int bits = 1; bits <= 8; ++bits)
    for (mode m : {mode::asymmetric, mode::symmetric})
      for (param_dtype pd : {param_dtype::f16, param_dtype::f32})
        for (float s : {0.25f, 0.1f, 3.0f / 7.0f, 1e-3f}) {
          if (m == mode::symmetric && bits < 2) continue;
          const std::size_t G = 32, ng = 21, n = ng * G, pb = param_bytes(m, pd);
          const int top = static_cast<int>(max_code(bits)), zp = static_cast<int>(sym_zero(bits));
          std::vector<float> x(n);
          for (std::size_t g = 0; g < ng; ++g) {
            const float base = m == mode::asymmetric ? static_cast<float>(rng() % 5) - 2.0f : 0.0f;
            for (std::size_t i = 0; i < G; ++i) {
              double t;
              if (i == 0) t = m == mode::asymmetric ? 0.0 : -(zp - 1);
              else if (i == 1) t = m == mode::asymmetric ? top : zp - 1;
              else t = (m == mode::asymmetric ? 0.0 : -(zp - 1)) + static_cast<double>(rng() % static_cast<unsigned>(top)) + 0.5;
              float v = static_cast<float>(base + t * s);
              const int nudge = static_cast<int>(rng() % 5) - 2;
              for (int k = 0; k < nudge; ++k) v = std::nextafter(v, 1e30f);
              for (int k = 0; k > nudge; --k) v = std::nextafter(v, -1e30f);
              x[g * G + i] = i < 2 ? static_cast<float>(base + t * s) : v;
            }
          }
          std::vector<std::uint8_t> s1(ng * pb), s2(ng * pb), q1(n), q2(n);
          quantize_groups(x.data(), ng, G, bits, m, pd, s1.data(), q1.data());
          affine::detail::quantize_groups_ref(x.data(), ng, G, bits, m, pd, s2.data(), q2.data());
          CHECK((s1 == s2 && q1 == q2));
          // the same values as 8-wide column groups
          std::vector<std::uint8_t> c1(n), c2(n), t1(ng * pb), t2(ng * pb);
          quantize_columns(x.data(), G, ng, ng, bits, m, pd, t1.data(), c1.data());
          affine::detail::quantize_columns_ref(x.data(), G, ng, ng, bits, m, pd, t2.data(), c2.data());
          CHECK((t1 == t2 && c1 == c2));
          ++cases;
        }
  CHECK(cases > 100);
}

}  // namespace kvcodec_test_core_affine
