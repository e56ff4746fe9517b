// Tests for kvcodec/core/half.hpp (and tensor/dtype.hpp's encode/decode_floats over it): the bulk
// f32 <-> f16 / bf16 kernels (core/x86/half.hpp, when the CPU has AVX2/F16C) against the per-value
// scalar references of core/scalar/half.hpp, byte for byte, on every half, random and edge f32s.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kvcodec/core/half.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/tensor/dtype.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_half {

using namespace kvcodec;

namespace {

float from_bits(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

/// Random bit patterns mixed with NaNs (quiet, signalling, payloads, both signs), ±Inf, ±0, subnormals,
/// the f16 overflow / underflow boundaries and exact RNE ties of both 16-bit formats.
std::vector<float> edge_floats(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  const std::uint32_t specials[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fa5a5a5u, 0x7fbfffffu, 0xffffffffu,
                                    0x7f800000u, 0xff800000u, 0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x00400000u,
                                    0x477fefffu, 0x477ff000u, 0x477fe000u, 0xc77ff000u, 0x33000000u, 0x33000001u, 0x387fc000u,
                                    0x38800000u, 0x3f801000u, 0x3f803000u, 0x3f808000u, 0x3f818000u, 0x7f7fffffu, 0x7f7f8000u};
  std::vector<float> v(n);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t r = rng() % 4;
    if (r == 0)
      v[i] = from_bits(specials[rng() % (sizeof(specials) / 4)]);
    else if (r == 1)
      v[i] = from_bits(static_cast<std::uint32_t>(rng()));
    else if (r == 2)
      v[i] = from_bits((static_cast<std::uint32_t>(rng()) & 0xffffe000u) | 0x1000u);  // f16 tie (normal range)
    else
      v[i] = nd(rng);
  }
  return v;
}

}  // namespace

TEST_CASE("dtype bulk: KVCODEC_NO_SIMD switches the vector paths off (what kernels.no_simd relies on)") {
  MESSAGE("simd::avx2() = " << simd::avx2() << " (KVCODEC_NO_SIMD forces the scalar path)");
  // The documented rule, read independently of simd.hpp: set to anything but "" or "0" disables SIMD.
  const char* e = std::getenv("KVCODEC_NO_SIMD");
  const bool off = e != nullptr && std::strcmp(e, "") != 0 && std::strcmp(e, "0") != 0;
  CHECK(simd::disabled() == off);
  if (off) {
    CHECK_FALSE(simd::avx2());
  } else {
#if KVCODEC_X86_DISPATCH
    CHECK(simd::avx2() == (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && simd::cpu_has_f16c() &&
                           __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt")));
#else
    CHECK_FALSE(simd::avx2());
#endif
  }
}

TEST_CASE("dtype bulk: f32 -> f16 / bf16 equal the per-value conversions on random and edge data at every tail length") {
  const std::vector<float> x = edge_floats(4099, 11);
  for (std::size_t n : {0u, 1u, 7u, 8u, 9u, 15u, 16u, 17u, 31u, 33u, 100u, 4099u}) {
    for (std::size_t off : {0u, 1u, 3u}) {
      if (off + n > x.size()) continue;
      std::vector<std::uint8_t> a(2 * n + 3, 0xcd), r(2 * n + 3, 0xcd);
      f32_to_f16_n(x.data() + off, n, a.data() + 1);  // odd output address: no alignment assumed
      detail::f32_to_f16_ref(x.data() + off, n, r.data() + 1);
      CHECK(a == r);
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, a.data() + 1 + 2 * i, 2);
        if (h != f32_to_f16_bits(x[off + i])) FAIL_CHECK("f16 mismatch at " << i);
      }
      std::fill(a.begin(), a.end(), 0xcd);
      std::fill(r.begin(), r.end(), 0xcd);
      f32_to_bf16_n(x.data() + off, n, a.data() + 1);
      detail::f32_to_bf16_ref(x.data() + off, n, r.data() + 1);
      CHECK(a == r);
      std::vector<std::uint8_t> e(2 * n), er(2 * n);
      encode_floats(x.data() + off, n, dtype::f16, e.data());
      detail::f32_to_f16_ref(x.data() + off, n, er.data());
      CHECK(e == er);
    }
  }
}

TEST_CASE("dtype bulk: every f16 and every bf16 widens exactly as the per-value functions") {
  std::vector<std::uint16_t> h(65536 + 5);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = static_cast<std::uint16_t>(i);
  for (std::size_t off : {0u, 1u}) {
    const std::size_t n = h.size() - off;
    std::vector<float> a(n), r(n);
    f16_to_f32_n(reinterpret_cast<const std::uint8_t*>(h.data()) + off, n - 1, a.data());
    detail::f16_to_f32_ref(reinterpret_cast<const std::uint8_t*>(h.data()) + off, n - 1, r.data());
    CHECK(std::memcmp(a.data(), r.data(), 4 * (n - 1)) == 0);
    bf16_to_f32_n(reinterpret_cast<const std::uint8_t*>(h.data()) + off, n - 1, a.data());
    detail::bf16_to_f32_ref(reinterpret_cast<const std::uint8_t*>(h.data()) + off, n - 1, r.data());
    CHECK(std::memcmp(a.data(), r.data(), 4 * (n - 1)) == 0);
  }
  std::vector<float> a(65536), b(65536);
  decode_floats(reinterpret_cast<const std::uint8_t*>(h.data()), 65536, dtype::f16, a.data());
  for (std::size_t i = 0; i < 65536; ++i) b[i] = f16_bits_to_f32(static_cast<std::uint16_t>(i));
  CHECK(std::memcmp(a.data(), b.data(), 4 * 65536) == 0);
}

TEST_CASE("dtype bulk: a sweep of 2^24 f32 patterns across every exponent converts identically") {
  // Stride 257 covers all exponents, mantissa tails and NaN payloads in 16.7M values.
  const std::size_t n = 1u << 20;
  std::vector<float> x(n);
  std::vector<std::uint8_t> a(2 * n), r(2 * n), c(2 * n), d(2 * n);
  std::uint32_t bits = 0;
  for (int rep = 0; rep < 16; ++rep) {
    for (std::size_t i = 0; i < n; ++i, bits += 257u * 16u + 1u) x[i] = from_bits(bits);
    f32_to_f16_n(x.data(), n, a.data());
    detail::f32_to_f16_ref(x.data(), n, r.data());
    f32_to_bf16_n(x.data(), n, c.data());
    detail::f32_to_bf16_ref(x.data(), n, d.data());
    REQUIRE(a == r);
    REQUIRE(c == d);
  }
}

}  // namespace kvcodec_test_core_half
