// kvcodec/core/scalar/fp8.hpp — 8-bit floating point: OCP / NVIDIA e4m3 ("e4m3fn") and e5m2; the
// per-value conversions (host and device) and the scalar bulk loops (detail::*_ref) that the AVX2
// kernels of core/x86/fp8.hpp equal bit for bit.
//
//   e4m3: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no Inf; S.1111.111 is NaN; max finite 448;
//         smallest subnormal 2^-9.
//   e5m2: 1 sign, 5 exponent (bias 15), 2 mantissa bits; IEEE-like: S.11111.00 is Inf, S.11111.xx
//         (xx != 0) NaN; max finite 57344; smallest subnormal 2^-16.
// Encoding follows CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, ...): round to nearest, ties to
// even; finite values and ±Inf beyond the largest finite magnitude saturate to ±max finite; any NaN
// encodes as 0x7F (a NaN in both formats); -0 keeps its sign; subnormals are produced exactly.
// Decoding is exact. Every function is KVCODEC_HD.
//
// Scale helpers: a tensor with absolute maximum amax is stored as x / scale with
// scale = amax / max_finite, so its largest value maps to the largest code; amax that is 0, negative
// or not finite gives scale 1.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/scalar/half.hpp"

namespace kvcodec {

enum class fp8_kind : std::uint8_t { e4m3 = 0, e5m2 = 1 };

inline constexpr float e4m3_max = 448.0f;
inline constexpr float e5m2_max = 57344.0f;

namespace detail {

/// RNE + saturating encoder for a 1.E.M format with the given bias; `maxmag` is the code (without
/// sign) of the largest finite value.
KVCODEC_HD inline std::uint8_t f32_to_fp8_impl(float f, int mbits, int bias, std::uint32_t maxmag) noexcept {
  const std::uint32_t x = bit_cast_hd<std::uint32_t>(f);
  const std::uint32_t sign = (x >> 24) & 0x80u;
  const std::uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7fu;
  if (ax == 0x7f800000u) return static_cast<std::uint8_t>(sign | maxmag);
  const int e = static_cast<int>(ax >> 23) - 127;
  const int emin = 1 - bias;
  std::uint32_t r;
  if (e >= emin) {
    const int shift = 23 - mbits;
    r = (ax >> shift) - (static_cast<std::uint32_t>(127 - bias) << mbits);
    const std::uint32_t rem = ax & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
  } else {
    if (ax < 0x00800000u) return static_cast<std::uint8_t>(sign);
    const int shift = 23 - mbits + (emin - e);
    if (shift >= 25) return static_cast<std::uint8_t>(sign);
    const std::uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
  }
  if (r > maxmag) r = maxmag;
  return static_cast<std::uint8_t>(sign | r);
}

KVCODEC_HD inline float fp8_to_f32_impl(std::uint8_t c, int mbits, int bias) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(c & 0x80u) << 24;
  const std::uint32_t e = (c & 0x7fu) >> mbits;
  const std::uint32_t m = c & ((1u << mbits) - 1u);
  if (e == 0) {
    // subnormal: m · 2^(1 - bias - mbits), exact in f32
    const float unit = bit_cast_hd<float>(static_cast<std::uint32_t>(127 + 1 - bias - mbits) << 23);
    const float v = static_cast<float>(m) * unit;
    return bit_cast_hd<float>(bit_cast_hd<std::uint32_t>(v) | sign);
  }
  return bit_cast_hd<float>(sign | ((e + 127u - static_cast<std::uint32_t>(bias)) << 23) | (m << (23 - mbits)));
}

}  // namespace detail

KVCODEC_HD inline std::uint8_t f32_to_e4m3(float f) noexcept { return detail::f32_to_fp8_impl(f, 3, 7, 0x7eu); }

KVCODEC_HD inline float e4m3_to_f32(std::uint8_t c) noexcept {
  if ((c & 0x7fu) == 0x7fu) return bit_cast_hd<float>(0x7fc00000u | (static_cast<std::uint32_t>(c & 0x80u) << 24));
  return detail::fp8_to_f32_impl(c, 3, 7);
}

KVCODEC_HD inline std::uint8_t f32_to_e5m2(float f) noexcept { return detail::f32_to_fp8_impl(f, 2, 15, 0x7bu); }

KVCODEC_HD inline float e5m2_to_f32(std::uint8_t c) noexcept {
  if ((c & 0x7cu) == 0x7cu) {
    const std::uint32_t s = static_cast<std::uint32_t>(c & 0x80u) << 24;
    return bit_cast_hd<float>(s | ((c & 0x03u) ? 0x7fc00000u : 0x7f800000u));
  }
  return detail::fp8_to_f32_impl(c, 2, 15);
}

KVCODEC_HD inline std::uint8_t f32_to_fp8(fp8_kind k, float f) noexcept {
  return k == fp8_kind::e4m3 ? f32_to_e4m3(f) : f32_to_e5m2(f);
}

KVCODEC_HD inline float fp8_to_f32(fp8_kind k, std::uint8_t c) noexcept {
  return k == fp8_kind::e4m3 ? e4m3_to_f32(c) : e5m2_to_f32(c);
}

KVCODEC_HD inline float fp8_max(fp8_kind k) noexcept { return k == fp8_kind::e4m3 ? e4m3_max : e5m2_max; }

/// scale = amax / max_finite; 1 when amax is 0, negative, NaN or Inf (or the quotient underflows to 0).
KVCODEC_HD inline float fp8_scale(float amax, fp8_kind k) noexcept {
  const std::uint32_t b = bit_cast_hd<std::uint32_t>(amax);
  if ((b & 0x7f800000u) == 0x7f800000u || !(amax > 0.0f)) return 1.0f;
  const float s = amax / fp8_max(k);
  return s > 0.0f ? s : 1.0f;
}

namespace detail {

template <class Sym>
KVCODEC_HD inline void encode_fp8_ref(fp8_kind k, const float* x, std::size_t n, float scale, Sym* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = f32_to_fp8(k, x[i] / scale);
}

template <class Sym>
KVCODEC_HD inline void decode_fp8_ref(fp8_kind k, const Sym* in, std::size_t n, float scale, float* y) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] = fp8_to_f32(k, static_cast<std::uint8_t>(in[i])) * scale;
}

inline void decode_fp8_f16_ref(fp8_kind k, const std::uint8_t* in, std::size_t n, float scale, std::uint16_t* y) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] = f32_to_f16_bits(fp8_to_f32(k, in[i]) * scale);
}

}  // namespace detail

}  // namespace kvcodec
