// kvcodec/core/fp8.hpp — 8-bit floating point: OCP / NVIDIA e4m3 ("e4m3fn") and e5m2.
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
//
// Bulk kernels (finite_amax, encode_fp8, decode_fp8, decode_fp8_f16) run AVX2 code on the host when
// core/simd.hpp allows; their output equals the per-value scalar references in detail::*_ref bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/tensor/dtype.hpp"

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

KVCODEC_HD inline float finite_amax_ref(const float* x, std::size_t n, std::size_t stride) noexcept {
  float a = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t b = bit_cast_hd<std::uint32_t>(x[i * stride]) & 0x7fffffffu;
    if (b >= 0x7f800000u) continue;
    const float v = bit_cast_hd<float>(b);
    a = v > a ? v : a;
  }
  return a;
}

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

#if KVCODEC_X86_DISPATCH
KVCODEC_TARGET_AVX2 inline float finite_amax_avx2(const float* x, std::size_t n) noexcept {
  const __m256i absm = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
  __m256i m0 = _mm256_setzero_si256(), m1 = m0;
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i a = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), absm);
    const __m256i b = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 8)), absm);
    m0 = _mm256_max_epi32(m0, _mm256_and_si256(a, _mm256_cmpgt_epi32(inf, a)));
    m1 = _mm256_max_epi32(m1, _mm256_and_si256(b, _mm256_cmpgt_epi32(inf, b)));
  }
  m0 = _mm256_max_epi32(m0, m1);
  __m128i h = _mm_max_epi32(_mm256_castsi256_si128(m0), _mm256_extracti128_si256(m0, 1));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0x4e));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0xb1));
  const float v = bit_cast_hd<float>(static_cast<std::uint32_t>(_mm_cvtsi128_si32(h)));
  const float t = finite_amax_ref(x + i, n - i, 1);
  return t > v ? t : v;
}

/// f32_to_fp8 of 8 lanes (codes in the low byte of each 32-bit lane).
template <int MB, int BIAS, int MAXMAG>
KVCODEC_TARGET_AVX2 inline __m256i fp8_code8(__m256 v) noexcept {
  constexpr int shift = 23 - MB;
  const __m256i x = _mm256_castps_si256(v);
  const __m256i ax = _mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff));
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(x, 24), _mm256_set1_epi32(0x80));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(ax, shift), _mm256_set1_epi32(1));
  __m256i rn = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(ax, _mm256_set1_epi32((1 << (shift - 1)) - 1)), odd), shift);
  rn = _mm256_sub_epi32(rn, _mm256_set1_epi32((127 - BIAS) << MB));
  const __m256 sub_unit = _mm256_castsi256_ps(_mm256_set1_epi32((127 + BIAS - 1 + MB) << 23));
  const __m256i rs = _mm256_cvttps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_castsi256_ps(ax), sub_unit),
                                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  const __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32((128 - BIAS) << 23), ax);
  __m256i r = _mm256_min_epi32(_mm256_blendv_epi8(rn, rs, is_sub), _mm256_set1_epi32(MAXMAG));
  r = _mm256_or_si256(r, sign);
  const __m256i nan = _mm256_cmpgt_epi32(ax, _mm256_set1_epi32(0x7f800000));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7f), nan);
}

template <int MB, int BIAS, int MAXMAG, class Sym>
KVCODEC_TARGET_AVX2 inline void encode_fp8_avx2_t(const float* x, std::size_t n, float scale, Sym* out) noexcept {
  const __m256 s = _mm256_set1_ps(scale);
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i r0 = fp8_code8<MB, BIAS, MAXMAG>(_mm256_div_ps(_mm256_loadu_ps(x + i), s));
    const __m256i r1 = fp8_code8<MB, BIAS, MAXMAG>(_mm256_div_ps(_mm256_loadu_ps(x + i + 8), s));
    const __m256i r2 = fp8_code8<MB, BIAS, MAXMAG>(_mm256_div_ps(_mm256_loadu_ps(x + i + 16), s));
    const __m256i r3 = fp8_code8<MB, BIAS, MAXMAG>(_mm256_div_ps(_mm256_loadu_ps(x + i + 24), s));
    const __m256i p01 = _mm256_permute4x64_epi64(_mm256_packus_epi32(r0, r1), 0xd8);
    const __m256i p23 = _mm256_permute4x64_epi64(_mm256_packus_epi32(r2, r3), 0xd8);
    if constexpr (sizeof(Sym) == 1) {
      const __m256i b = _mm256_permute4x64_epi64(_mm256_packus_epi16(p01, p23), 0xd8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), b);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), p01);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i + 16), p23);
    }
  }
  for (; i < n; ++i) out[i] = static_cast<Sym>(detail::f32_to_fp8_impl(x[i] / scale, MB, BIAS, MAXMAG));
}

/// fp8_to_f32 of 16 codes (in 16-bit lanes), as two f32 vectors.
template <bool E4M3>
KVCODEC_TARGET_AVX2 inline void fp8_value16(__m256i c, __m256& lo, __m256& hi) noexcept {
  __m256i h;
  if constexpr (E4M3)
    h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(c, _mm256_set1_epi16(0x80)), 8),
                        _mm256_slli_epi16(_mm256_and_si256(c, _mm256_set1_epi16(0x7f)), 7));
  else
    h = _mm256_slli_epi16(c, 8);
  __m256 v[2] = {_mm256_cvtph_ps(_mm256_castsi256_si128(h)), _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1))};
  const __m256 signm = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
  const __m256 qnan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));
  for (auto& w : v) {
    __m256 nan;
    if constexpr (E4M3) {
      w = _mm256_mul_ps(w, _mm256_set1_ps(256.0f));
      nan = _mm256_cmp_ps(_mm256_andnot_ps(signm, w), _mm256_set1_ps(480.0f), _CMP_EQ_OQ);
    } else {
      nan = _mm256_cmp_ps(w, w, _CMP_UNORD_Q);
    }
    w = _mm256_blendv_ps(w, _mm256_or_ps(qnan, _mm256_and_ps(w, signm)), nan);
  }
  lo = v[0];
  hi = v[1];
}

template <bool E4M3, class Sym>
KVCODEC_TARGET_AVX2 inline __m256i load16_codes(const Sym* in) noexcept {
  if constexpr (sizeof(Sym) == 1)
    return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in)));
  else
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in));
}

template <bool E4M3, class Sym>
KVCODEC_TARGET_AVX2 inline void decode_fp8_avx2_t(const Sym* in, std::size_t n, float scale, float* y) noexcept {
  const __m256 s = _mm256_set1_ps(scale);
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 a, b;
    fp8_value16<E4M3>(load16_codes<E4M3>(in + i), a, b);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(a, s));
    _mm256_storeu_ps(y + i + 8, _mm256_mul_ps(b, s));
  }
  decode_fp8_ref(E4M3 ? fp8_kind::e4m3 : fp8_kind::e5m2, in + i, n - i, scale, y + i);
}

template <bool E4M3>
KVCODEC_TARGET_AVX2 inline void decode_fp8_f16_avx2_t(const std::uint8_t* in, std::size_t n, float scale, std::uint16_t* y) noexcept {
  const __m256 s = _mm256_set1_ps(scale);
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 a, b;
    fp8_value16<E4M3>(load16_codes<E4M3>(in + i), a, b);
    const __m128i ha = _mm256_cvtps_ph(_mm256_mul_ps(a, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m128i hb = _mm256_cvtps_ph(_mm256_mul_ps(b, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), _mm256_set_m128i(hb, ha));
  }
  decode_fp8_f16_ref(E4M3 ? fp8_kind::e4m3 : fp8_kind::e5m2, in + i, n - i, scale, y + i);
}
#endif

}  // namespace detail

/// max |x| over the finite values of x[0], x[stride], ... (0 if none).
KVCODEC_HD inline float finite_amax(const float* x, std::size_t n, std::size_t stride = 1) noexcept {
#if KVCODEC_X86_DISPATCH
  if (stride == 1 && simd::avx2()) return detail::finite_amax_avx2(x, n);
#endif
  return detail::finite_amax_ref(x, n, stride);
}

/// out[i] = encode(x[i] / scale).
KVCODEC_HD inline void encode_fp8(fp8_kind k, const float* x, std::size_t n, float scale, std::uint8_t* out) noexcept {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2())
    return k == fp8_kind::e4m3 ? detail::encode_fp8_avx2_t<3, 7, 0x7e>(x, n, scale, out)
                               : detail::encode_fp8_avx2_t<2, 15, 0x7b>(x, n, scale, out);
#endif
  detail::encode_fp8_ref(k, x, n, scale, out);
}

/// encode_fp8 into 16-bit symbols (a stage's symbol plane).
inline void encode_fp8(fp8_kind k, const float* x, std::size_t n, float scale, std::uint16_t* out) noexcept {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2())
    return k == fp8_kind::e4m3 ? detail::encode_fp8_avx2_t<3, 7, 0x7e>(x, n, scale, out)
                               : detail::encode_fp8_avx2_t<2, 15, 0x7b>(x, n, scale, out);
#endif
  detail::encode_fp8_ref(k, x, n, scale, out);
}

/// y[i] = decode(in[i]) · scale.
KVCODEC_HD inline void decode_fp8(fp8_kind k, const std::uint8_t* in, std::size_t n, float scale, float* y) noexcept {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2())
    return k == fp8_kind::e4m3 ? detail::decode_fp8_avx2_t<true>(in, n, scale, y) : detail::decode_fp8_avx2_t<false>(in, n, scale, y);
#endif
  detail::decode_fp8_ref(k, in, n, scale, y);
}

/// decode_fp8 from 16-bit symbols; every symbol must be < 256 (the stage checks the plane's alphabet).
inline void decode_fp8(fp8_kind k, const std::uint16_t* in, std::size_t n, float scale, float* y) noexcept {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2())
    return k == fp8_kind::e4m3 ? detail::decode_fp8_avx2_t<true>(in, n, scale, y) : detail::decode_fp8_avx2_t<false>(in, n, scale, y);
#endif
  detail::decode_fp8_ref(k, in, n, scale, y);
}

/// y[i] = f32_to_f16_bits(decode(in[i]) · scale): decode_fp8 straight to f16.
inline void decode_fp8_f16(fp8_kind k, const std::uint8_t* in, std::size_t n, float scale, std::uint16_t* y) noexcept {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2())
    return k == fp8_kind::e4m3 ? detail::decode_fp8_f16_avx2_t<true>(in, n, scale, y)
                               : detail::decode_fp8_f16_avx2_t<false>(in, n, scale, y);
#endif
  detail::decode_fp8_f16_ref(k, in, n, scale, y);
}

}  // namespace kvcodec
