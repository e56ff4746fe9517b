// kvcodec/core/scalar/half.hpp — f16 and bf16: storage types, exact per-value conversions
// (host and device), and the scalar bulk loops that the vector kernels of core/x86/half.hpp equal.
//
// Conversions to the 16-bit formats round to nearest, ties to even (IEEE 754). Documented rule for
// special values: NaN stays NaN (sign kept, quiet bit set, top payload bits kept); ±Inf stays ±Inf;
// finite values beyond the target's range become ±Inf (f16: |x| >= 65520); subnormals are produced
// and read exactly. Widening (f16/bf16 -> f32) is exact. All per-value functions are KVCODEC_HD.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvcodec/core/config.hpp"

namespace kvcodec {

/// Storage type of a 16-bit IEEE half; a distinct type so views over f16 memory are typed.
struct half_t {
  std::uint16_t bits = 0;
};
/// Storage type of a bfloat16 (the top 16 bits of an f32).
struct bf16_t {
  std::uint16_t bits = 0;
};

// ---- f16 ------------------------------------------------------------------------------------

KVCODEC_HD inline std::uint16_t f32_to_f16_bits(float f) noexcept {
  const std::uint32_t x = bit_cast_hd<std::uint32_t>(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // Inf or NaN
    if (ax > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  }
  if (ax >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520 -> Inf
  if (ax < 0x38800000u) {                                                     // f16 subnormal or 0
    if (ax < 0x33000000u) return sign;  // < 2^-25 (and exactly 2^-25 ties to even 0)
    const std::uint32_t e = ax >> 23;
    const std::uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // 14..24
    std::uint32_t r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<std::uint16_t>(sign | r);
  }
  std::uint32_t r = (ax >> 13) - (112u << 10);
  const std::uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return static_cast<std::uint16_t>(sign | r);
}

KVCODEC_HD inline float f16_bits_to_f32(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu;
  const std::uint32_t m = h & 0x3ffu;
  std::uint32_t x;
  if (e == 0) {
    if (m == 0) {
      x = sign;
    } else {  // subnormal: normalise
      std::uint32_t mm = m;
      std::int32_t ee = -1;
      do {
        ++ee;
        mm <<= 1;
      } while ((mm & 0x400u) == 0);
      x = sign | (static_cast<std::uint32_t>(127 - 15 - ee) << 23) | ((mm & 0x3ffu) << 13);
    }
  } else if (e == 31) {
    x = sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u);
  } else {
    x = sign | ((e + 112u) << 23) | (m << 13);
  }
  return bit_cast_hd<float>(x);
}

// ---- bf16 -----------------------------------------------------------------------------------

KVCODEC_HD inline std::uint16_t f32_to_bf16_bits(float f) noexcept {
  const std::uint32_t x = bit_cast_hd<std::uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

KVCODEC_HD inline float bf16_bits_to_f32(std::uint16_t b) noexcept {
  return bit_cast_hd<float>(static_cast<std::uint32_t>(b) << 16);
}

KVCODEC_HD inline half_t to_half(float f) noexcept { return half_t{f32_to_f16_bits(f)}; }
KVCODEC_HD inline bf16_t to_bf16(float f) noexcept { return bf16_t{f32_to_bf16_bits(f)}; }
KVCODEC_HD inline float to_float(float f) noexcept { return f; }
KVCODEC_HD inline float to_float(half_t h) noexcept { return f16_bits_to_f32(h.bits); }
KVCODEC_HD inline float to_float(bf16_t b) noexcept { return bf16_bits_to_f32(b.bits); }

// ---- scalar bulk loops (the references of the vector kernels) -----------------------------------

namespace detail {

inline void f32_to_f16_ref(const float* in, std::size_t n, std::uint8_t* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint16_t b = f32_to_f16_bits(in[i]);
    std::memcpy(out + 2 * i, &b, 2);
  }
}
inline void f16_to_f32_ref(const std::uint8_t* in, std::size_t n, float* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    std::uint16_t b;
    std::memcpy(&b, in + 2 * i, 2);
    out[i] = f16_bits_to_f32(b);
  }
}
inline void f32_to_bf16_ref(const float* in, std::size_t n, std::uint8_t* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint16_t b = f32_to_bf16_bits(in[i]);
    std::memcpy(out + 2 * i, &b, 2);
  }
}
inline void bf16_to_f32_ref(const std::uint8_t* in, std::size_t n, float* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    std::uint16_t b;
    std::memcpy(&b, in + 2 * i, 2);
    out[i] = bf16_bits_to_f32(b);
  }
}

}  // namespace detail

}  // namespace kvcodec
