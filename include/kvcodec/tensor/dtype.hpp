// kvcodec/tensor/dtype.hpp — element types and exact f32 <-> f16 / bf16 conversions.
//
// Conversions to the 16-bit formats round to nearest, ties to even (IEEE 754). Documented rule for
// special values: NaN stays NaN (sign kept, quiet bit set, top payload bits kept); ±Inf stays ±Inf;
// finite values beyond the target's range become ±Inf (f16: |x| >= 65520); subnormals are produced
// and read exactly. Widening (f16/bf16 -> f32) is exact. All per-value functions are KVCODEC_HD.
//
// Bulk conversions (f32_to_f16_n, ..., encode_floats / decode_floats) run F16C / AVX2 kernels when
// core/simd.hpp allows; they produce exactly the bytes of the per-value functions (detail::*_ref are
// those scalar references; F16C's RNE conversion equals f32_to_f16_bits on every f32, NaN payloads
// included, and vcvtph2ps equals f16_bits_to_f32 on every half: tests/tensor/test_dtype.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/simd.hpp"

namespace kvcodec {

/// Storage type of a 16-bit IEEE half; a distinct type so views over f16 memory are typed.
struct half_t {
  std::uint16_t bits = 0;
};
/// Storage type of a bfloat16 (the top 16 bits of an f32).
struct bf16_t {
  std::uint16_t bits = 0;
};

enum class dtype : std::uint8_t { f32 = 0, f16 = 1, bf16 = 2, i32 = 3, u8 = 4 };

inline constexpr std::size_t dtype_size(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return 4;
    case dtype::f16: return 2;
    case dtype::bf16: return 2;
    case dtype::i32: return 4;
    case dtype::u8: return 1;
  }
  return 0;
}

/// Lower-case name used in specs, the CLI and the container ("f32", "f16", "bf16", "i32", "u8").
inline constexpr std::string_view dtype_name(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
    case dtype::i32: return "i32";
    case dtype::u8: return "u8";
  }
  return "?";
}

/// Parses a dtype name; accepts the safetensors spellings too (F32, F16, BF16, I32, U8).
inline std::optional<dtype> parse_dtype(std::string_view s) noexcept {
  std::string l(s);
  for (auto& c : l) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  if (l == "f32" || l == "float32" || l == "float") return dtype::f32;
  if (l == "f16" || l == "float16" || l == "half") return dtype::f16;
  if (l == "bf16" || l == "bfloat16") return dtype::bf16;
  if (l == "i32" || l == "int32") return dtype::i32;
  if (l == "u8" || l == "uint8") return dtype::u8;
  return std::nullopt;
}

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

/// Rounds an f32 to the nearest value representable in `t` (identity for f32).
KVCODEC_HD inline float round_to_dtype(float f, dtype t) noexcept {
  if (t == dtype::f16) return f16_bits_to_f32(f32_to_f16_bits(f));
  if (t == dtype::bf16) return bf16_bits_to_f32(f32_to_bf16_bits(f));
  return f;
}

/// Element type -> dtype tag.
template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr dtype value = dtype::f32; };
template <> struct dtype_of<half_t> { static constexpr dtype value = dtype::f16; };
template <> struct dtype_of<bf16_t> { static constexpr dtype value = dtype::bf16; };
template <> struct dtype_of<std::int32_t> { static constexpr dtype value = dtype::i32; };
template <> struct dtype_of<std::uint8_t> { static constexpr dtype value = dtype::u8; };

// ---- bulk conversions ---------------------------------------------------------------------------

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

#if KVCODEC_X86_DISPATCH
KVCODEC_TARGET_AVX2 inline void f32_to_f16_avx2(const float* in, std::size_t n, std::uint8_t* out) noexcept {
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i a = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m128i b = _mm256_cvtps_ph(_mm256_loadu_ps(in + i + 8), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i), _mm256_set_m128i(b, a));
  }
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  f32_to_f16_ref(in + i, n - i, out + 2 * i);
}
KVCODEC_TARGET_AVX2 inline void f16_to_f32_avx2(const std::uint8_t* in, std::size_t n, float* out) noexcept {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i))));
  f16_to_f32_ref(in + 2 * i, n - i, out + i);
}
KVCODEC_TARGET_AVX2 inline __m256i bf16_round8(__m256i x) noexcept {
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
  const __m256i hi = _mm256_srli_epi32(x, 16);
  const __m256i rnd = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(hi, _mm256_set1_epi32(1)));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(x, rnd), 16);
  return _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
}
KVCODEC_TARGET_AVX2 inline void f32_to_bf16_avx2(const float* in, std::size_t n, std::uint8_t* out) noexcept {
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i a = bf16_round8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i)));
    const __m256i b = bf16_round8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i + 8)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i), _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8));
  }
  f32_to_bf16_ref(in + i, n - i, out + 2 * i);
}
KVCODEC_TARGET_AVX2 inline void bf16_to_f32_avx2(const std::uint8_t* in, std::size_t n, float* out) noexcept {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_slli_epi32(w, 16));
  }
  bf16_to_f32_ref(in + 2 * i, n - i, out + i);
}
#endif

}  // namespace detail

/// out[i] = f32_to_f16_bits(in[i]) as little-endian bytes (2n bytes, any alignment).
inline void f32_to_f16_n(const float* in, std::size_t n, std::uint8_t* out) noexcept {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return detail::f32_to_f16_avx2(in, n, out);
#endif
  detail::f32_to_f16_ref(in, n, out);
}
inline void f32_to_f16_n(const float* in, std::size_t n, std::uint16_t* out) noexcept {
  f32_to_f16_n(in, n, reinterpret_cast<std::uint8_t*>(out));
}
/// out[i] = f16_bits_to_f32 of the i-th little-endian half.
inline void f16_to_f32_n(const std::uint8_t* in, std::size_t n, float* out) noexcept {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return detail::f16_to_f32_avx2(in, n, out);
#endif
  detail::f16_to_f32_ref(in, n, out);
}
inline void f16_to_f32_n(const std::uint16_t* in, std::size_t n, float* out) noexcept {
  f16_to_f32_n(reinterpret_cast<const std::uint8_t*>(in), n, out);
}
/// out[i] = f32_to_bf16_bits(in[i]) as little-endian bytes.
inline void f32_to_bf16_n(const float* in, std::size_t n, std::uint8_t* out) noexcept {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return detail::f32_to_bf16_avx2(in, n, out);
#endif
  detail::f32_to_bf16_ref(in, n, out);
}
/// out[i] = bf16_bits_to_f32 of the i-th little-endian bf16.
inline void bf16_to_f32_n(const std::uint8_t* in, std::size_t n, float* out) noexcept {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return detail::bf16_to_f32_avx2(in, n, out);
#endif
  detail::bf16_to_f32_ref(in, n, out);
}

/// Converts `n` floats to `t` storage (f32, f16 or bf16), little-endian, into `out` (n * dtype_size(t) bytes).
inline void encode_floats(const float* in, std::size_t n, dtype t, std::uint8_t* out) noexcept {
  if (n == 0) return;
  if (t == dtype::f32)
    std::memcpy(out, in, n * 4);
  else if (t == dtype::f16)
    f32_to_f16_n(in, n, out);
  else
    f32_to_bf16_n(in, n, out);
}

/// Inverse of encode_floats.
inline void decode_floats(const std::uint8_t* in, std::size_t n, dtype t, float* out) noexcept {
  if (n == 0) return;
  if (t == dtype::f32)
    std::memcpy(out, in, n * 4);
  else if (t == dtype::f16)
    f16_to_f32_n(in, n, out);
  else
    bf16_to_f32_n(in, n, out);
}

}  // namespace kvcodec
