// Tests for kvcodec/core/fp8.hpp: exhaustive code round trips and a brute-force nearest-value oracle.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kvcodec/core/fp8.hpp"
#include "kvcodec/core/simd.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_fp8 {

using namespace kvcodec;

namespace {

float from_bits(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

std::uint32_t to_bits(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// Independent decoder: value of a finite code from its fields with ldexp.
double ref_value(fp8_kind k, int c) {
  const int mb = k == fp8_kind::e4m3 ? 3 : 2;
  const int bias = k == fp8_kind::e4m3 ? 7 : 15;
  const int e = (c & 0x7f) >> mb, m = c & ((1 << mb) - 1);
  const double mag = e == 0 ? std::ldexp(static_cast<double>(m), 1 - bias - mb)
                            : std::ldexp(1.0 + static_cast<double>(m) / (1 << mb), e - bias);
  return (c & 0x80) ? -mag : mag;
}

bool is_finite_code(fp8_kind k, int c) {
  if (k == fp8_kind::e4m3) return (c & 0x7f) != 0x7f;
  return (c & 0x7c) != 0x7c;
}

// Nearest finite code by exhaustive search; ties go to the code with an even mantissa; values beyond
// the largest finite magnitude saturate; the sign of zero follows the input.
int oracle(fp8_kind k, float x) {
  const double xd = x;
  int best = -1;
  double bd = 0.0;
  for (int c = 0; c < 256; ++c) {
    if (!is_finite_code(k, c)) continue;
    if ((c & 0x80) != (std::signbit(x) ? 0x80 : 0)) continue;
    const double d = std::fabs(ref_value(k, c) - xd);
    if (best < 0 || d < bd || (d == bd && (c & 1) == 0 && (best & 1) == 1)) {
      best = c;
      bd = d;
    }
  }
  return best;
}

}  // namespace

TEST_CASE("fp8: every code decodes to the independent reference and round-trips") {
  for (fp8_kind k : {fp8_kind::e4m3, fp8_kind::e5m2}) {
    CAPTURE(static_cast<int>(k));
    for (int c = 0; c < 256; ++c) {
      CAPTURE(c);
      const float v = fp8_to_f32(k, static_cast<std::uint8_t>(c));
      if (k == fp8_kind::e4m3 && (c & 0x7f) == 0x7f) {
        CHECK(std::isnan(v));
        CHECK(f32_to_fp8(k, v) == 0x7f);
        continue;
      }
      if (k == fp8_kind::e5m2 && (c & 0x7c) == 0x7c) {
        if (c & 3) {
          CHECK(std::isnan(v));
          CHECK(f32_to_fp8(k, v) == 0x7f);
        } else {
          CHECK(std::isinf(v));
          CHECK((v < 0) == ((c & 0x80) != 0));
          CHECK(f32_to_fp8(k, v) == ((c & 0x80) | 0x7b));  // satfinite: Inf -> max finite
        }
        continue;
      }
      CHECK(static_cast<double>(v) == ref_value(k, c));
      CHECK(std::signbit(v) == ((c & 0x80) != 0));
      CHECK(f32_to_fp8(k, v) == c);
    }
  }
}

TEST_CASE("fp8: format constants and special values") {
  CHECK(e4m3_to_f32(0x7e) == 448.0f);
  CHECK(e4m3_to_f32(0xfe) == -448.0f);
  CHECK(e4m3_to_f32(0x01) == std::ldexp(1.0f, -9));
  CHECK(e4m3_to_f32(0x08) == std::ldexp(1.0f, -6));
  CHECK(e4m3_to_f32(0x38) == 1.0f);
  CHECK(e5m2_to_f32(0x7b) == 57344.0f);
  CHECK(e5m2_to_f32(0x01) == std::ldexp(1.0f, -16));
  CHECK(e5m2_to_f32(0x3c) == 1.0f);
  CHECK(std::isinf(e5m2_to_f32(0x7c)));
  CHECK(f32_to_e4m3(1.0f) == 0x38);
  CHECK(f32_to_e4m3(-0.0f) == 0x80);
  CHECK(f32_to_e4m3(0.0f) == 0x00);
  // saturation
  CHECK(f32_to_e4m3(448.0f) == 0x7e);
  CHECK(f32_to_e4m3(463.9f) == 0x7e);
  CHECK(f32_to_e4m3(464.0f) == 0x7e);  // tie between 448 and (non-existent) 480 -> saturate
  CHECK(f32_to_e4m3(1e30f) == 0x7e);
  CHECK(f32_to_e4m3(-1e30f) == 0xfe);
  CHECK(f32_to_e4m3(std::numeric_limits<float>::infinity()) == 0x7e);
  CHECK(f32_to_e4m3(-std::numeric_limits<float>::infinity()) == 0xfe);
  CHECK(f32_to_e5m2(1e30f) == 0x7b);
  CHECK(f32_to_e5m2(61440.0f) == 0x7b);
  CHECK(f32_to_e5m2(-std::numeric_limits<float>::infinity()) == 0xfb);
  CHECK(f32_to_e4m3(std::numeric_limits<float>::quiet_NaN()) == 0x7f);
  CHECK(f32_to_e4m3(-std::numeric_limits<float>::quiet_NaN()) == 0x7f);
  CHECK(f32_to_e5m2(std::numeric_limits<float>::quiet_NaN()) == 0x7f);
  // ties to even
  CHECK(f32_to_e4m3(1.0625f) == 0x38);   // halfway 1 and 1.125 -> even (1.0)
  CHECK(f32_to_e4m3(1.1875f) == 0x3a);   // halfway 1.125 and 1.25 -> even (1.25)
  CHECK(f32_to_e4m3(std::ldexp(1.0f, -10)) == 0x00);           // half the smallest subnormal -> 0
  CHECK(f32_to_e4m3(std::ldexp(1.5f, -10)) == 0x01);           // 0.75 ulp -> 1
  CHECK(f32_to_e4m3(std::ldexp(3.0f, -10)) == 0x02);           // 1.5 ulps -> even 2
  CHECK(f32_to_e4m3(std::ldexp(1.0f, -10) * 1.0000001f) == 0x01);
  CHECK(f32_to_e4m3(std::numeric_limits<float>::denorm_min()) == 0x00);
  CHECK(f32_to_e4m3(-std::numeric_limits<float>::denorm_min()) == 0x80);
  CHECK(f32_to_e4m3(std::ldexp(15.5f, -10)) == 0x08);  // 7.75 subnormal ulps rounds up to min normal
}

TEST_CASE("fp8: encoder equals a brute-force nearest search (ties to even)") {
  std::mt19937_64 rng(2024);
  for (fp8_kind k : {fp8_kind::e4m3, fp8_kind::e5m2}) {
    CAPTURE(static_cast<int>(k));
    int fails = 0;
    // random bit patterns over the interesting exponent range, plus exact midpoints
    for (int i = 0; i < 200000; ++i) {
      float x;
      if (i % 4 == 3) {
        int c = static_cast<int>(rng() % 256);
        int c2 = c + 1;
        if (!is_finite_code(k, c) || !is_finite_code(k, c2) || ((c ^ c2) & 0x80)) continue;
        x = static_cast<float>(0.5 * (ref_value(k, c) + ref_value(k, c2)));  // exact in float
      } else {
        const int lo = k == fp8_kind::e4m3 ? 127 - 14 : 127 - 20;
        const int hi = k == fp8_kind::e4m3 ? 127 + 10 : 127 + 17;
        const std::uint32_t e = static_cast<std::uint32_t>(lo + static_cast<int>(rng() % (hi - lo)));
        x = from_bits(static_cast<std::uint32_t>((rng() & 1u) << 31) | (e << 23) |
                      static_cast<std::uint32_t>(rng() & 0x7fffffu));
      }
      const int want = oracle(k, x);
      const int got = f32_to_fp8(k, x);
      if (want != got && fails++ < 5) {
        CAPTURE(x);
        CAPTURE(to_bits(x));
        CHECK(got == want);
      }
    }
    CHECK(fails == 0);
  }
}

TEST_CASE("fp8: scale helpers") {
  CHECK(fp8_scale(448.0f, fp8_kind::e4m3) == 1.0f);
  CHECK(fp8_scale(896.0f, fp8_kind::e4m3) == 2.0f);
  CHECK(fp8_scale(57344.0f, fp8_kind::e5m2) == 1.0f);
  CHECK(fp8_scale(0.0f, fp8_kind::e4m3) == 1.0f);
  CHECK(fp8_scale(-3.0f, fp8_kind::e4m3) == 1.0f);
  CHECK(fp8_scale(std::numeric_limits<float>::infinity(), fp8_kind::e4m3) == 1.0f);
  CHECK(fp8_scale(std::numeric_limits<float>::quiet_NaN(), fp8_kind::e5m2) == 1.0f);
  CHECK(fp8_scale(std::numeric_limits<float>::denorm_min(), fp8_kind::e4m3) == 1.0f);  // underflows
  const float x[5] = {1.0f, -7.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(), 3.0f};
  CHECK(finite_amax(x, 5) == 7.0f);
  CHECK(finite_amax(x, 3, 2) == 3.0f);
  CHECK(finite_amax(x, 0) == 0.0f);

  // scaled round trip: relative error within half an ulp of the format (2^-4 e4m3, 2^-3 e5m2)
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 30.0f);
  std::vector<float> v(1000), y(1000);
  for (auto& a : v) a = nd(rng);
  for (fp8_kind k : {fp8_kind::e4m3, fp8_kind::e5m2}) {
    const float s = fp8_scale(finite_amax(v.data(), v.size()), k);
    std::vector<std::uint8_t> c(v.size());
    encode_fp8(k, v.data(), v.size(), s, c.data());
    decode_fp8(k, c.data(), v.size(), s, y.data());
    const double rel = k == fp8_kind::e4m3 ? 1.0 / 16 : 1.0 / 8;
    const double sub = (k == fp8_kind::e4m3 ? std::ldexp(1.0, -10) : std::ldexp(1.0, -17)) * s;
    for (std::size_t i = 0; i < v.size(); ++i) CHECK(std::fabs(y[i] - v[i]) <= std::fabs(v[i]) * rel + sub);
    float amax_back = 0.0f;
    for (float a : y) amax_back = std::max(amax_back, std::fabs(a));
    CHECK(amax_back == doctest::Approx(finite_amax(v.data(), v.size())).epsilon(1e-6));
  }
}

// ---- bulk kernels (AVX2 when available) against the per-value scalar references -----------------

namespace {

std::vector<float> fp8_edge_values(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 100.0f);
  const float specials[] = {0.0f, -0.0f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(), from_bits(0xff812345u), from_bits(0x00000003u),
                            from_bits(0x80400000u), 448.0f, 464.0f, 480.0f, -500.0f, 57344.0f, 61440.0f, 1e30f,
                            0.001953125f, 0.0009765625f, 0.00146484375f, 1.0625f, 1.1875f, 3.0517578e-05f, 1.52587890625e-05f};
  std::vector<float> v(n);
  for (auto& x : v) {
    const std::uint32_t r = rng() % 4;
    if (r == 0)
      x = specials[rng() % (sizeof(specials) / sizeof(float))];
    else if (r == 1)
      x = from_bits(static_cast<std::uint32_t>(rng()));
    else if (r == 2)
      x = from_bits((static_cast<std::uint32_t>(rng()) & 0xbff00000u) | 0x00080000u);  // e4m3 / e5m2 ties
    else
      x = nd(rng);
  }
  return v;
}

}  // namespace

TEST_CASE("fp8 bulk: encode / decode / amax kernels equal the scalar references (random / edges / tails)") {
  MESSAGE("simd::avx2() = " << simd::avx2());
  const std::vector<float> x = fp8_edge_values(5003, 5);
  for (fp8_kind k : {fp8_kind::e4m3, fp8_kind::e5m2}) {
    for (float scale : {1.0f, 0.37f, 3.5e-3f, 1e-30f, 1e30f}) {
      for (std::size_t n : {0u, 1u, 15u, 16u, 17u, 31u, 32u, 33u, 128u, 5003u}) {
        std::vector<std::uint8_t> a(n + 1, 0xee), r(n + 1, 0xee);
        encode_fp8(k, x.data(), n, scale, a.data());
        detail::encode_fp8_ref(k, x.data(), n, scale, r.data());
        CHECK(a == r);
        std::vector<std::uint16_t> a16(n), r16(n);
        encode_fp8(k, x.data(), n, scale, a16.data());
        detail::encode_fp8_ref(k, x.data(), n, scale, r16.data());
        CHECK(a16 == r16);
        std::vector<float> ya(n), yr(n);
        decode_fp8(k, a.data(), n, scale, ya.data());
        detail::decode_fp8_ref(k, a.data(), n, scale, yr.data());
        CHECK((n == 0 || std::memcmp(ya.data(), yr.data(), 4 * n) == 0));  // n = 0: data() may be null
        decode_fp8(k, a16.data(), n, scale, ya.data());
        CHECK((n == 0 || std::memcmp(ya.data(), yr.data(), 4 * n) == 0));  // n = 0: data() may be null
        std::vector<std::uint16_t> ha(n), hr(n);
        decode_fp8_f16(k, a.data(), n, scale, ha.data());
        detail::decode_fp8_f16_ref(k, a.data(), n, scale, hr.data());
        CHECK(ha == hr);
        CHECK(to_bits(finite_amax(x.data(), n)) == to_bits(detail::finite_amax_ref(x.data(), n, 1)));
      }
    }
    // every code, with tails
    std::vector<std::uint8_t> codes(256 + 7);
    for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<std::uint8_t>(i * 13 + 5);
    std::vector<float> ya(codes.size()), yr(codes.size());
    decode_fp8(k, codes.data(), codes.size(), 1.0f, ya.data());
    detail::decode_fp8_ref(k, codes.data(), codes.size(), 1.0f, yr.data());
    CHECK(std::memcmp(ya.data(), yr.data(), 4 * ya.size()) == 0);
  }
}

TEST_CASE("fp8 bulk: encode equals the scalar reference over a sweep of 2^22 f32 patterns") {
  const std::size_t n = 1u << 16;
  std::vector<float> x(n);
  std::vector<std::uint8_t> a(n), r(n);
  std::uint32_t bits = 0;
  for (int rep = 0; rep < 64; ++rep) {
    for (std::size_t i = 0; i < n; ++i, bits += 1021u) x[i] = from_bits(bits);
    for (fp8_kind k : {fp8_kind::e4m3, fp8_kind::e5m2}) {
      encode_fp8(k, x.data(), n, 1.0f, a.data());
      detail::encode_fp8_ref(k, x.data(), n, 1.0f, r.data());
      REQUIRE(a == r);
    }
  }
}

TEST_CASE("fp8 bulk: encode equals the reference near every rounding midpoint under non-power-of-two scales") {
  // x = (midpoint or code value) · scale, nudged by a few ulps: x / scale lands on and around the
  // format's rounding boundaries, where a product with 1/scale could round the other way.
  std::mt19937 rng(11);
  for (fp8_kind k : {fp8_kind::e4m3, fp8_kind::e5m2}) {
    std::vector<float> anchors;
    for (int c = 0; c < 0x7f; ++c) {
      const float a = fp8_to_f32(k, static_cast<std::uint8_t>(c)), b = fp8_to_f32(k, static_cast<std::uint8_t>(c + 1));
      if (!std::isfinite(a)) continue;
      anchors.push_back(a);
      if (std::isfinite(b)) anchors.push_back(0.5f * (a + b));
    }
    anchors.push_back(fp8_max(k) * 1.0625f);
    for (int rep = 0; rep < 40; ++rep) {
      float scale = std::ldexp(1.0f + static_cast<float>(rng() % (1u << 23)) / 8388608.0f, static_cast<int>(rng() % 60) - 30);
      if (rep % 3 == 0) scale = -scale;
      if (rep == 0) scale = 0.37f;
      std::vector<float> x;
      for (float a : anchors)
        for (float sg : {1.0f, -1.0f}) {
          const float base = sg * a * scale;
          std::uint32_t b = to_bits(base);
          for (int d = -6; d <= 6; ++d) x.push_back(from_bits(static_cast<std::uint32_t>(static_cast<std::int64_t>(b) + d)));
        }
      std::shuffle(x.begin(), x.end(), rng);
      const std::size_t n = x.size();
      std::vector<std::uint8_t> a8(n), r8(n);
      encode_fp8(k, x.data(), n, scale, a8.data());
      detail::encode_fp8_ref(k, x.data(), n, scale, r8.data());
      REQUIRE(a8 == r8);
      std::vector<std::uint16_t> a16(n), r16(n);
      encode_fp8(k, x.data(), n, scale, a16.data());
      detail::encode_fp8_ref(k, x.data(), n, scale, r16.data());
      REQUIRE(a16 == r16);
    }
  }
}

}  // namespace kvcodec_test_core_fp8
