// kvcodec/core/x86/fp8.hpp — AVX2 / F16C kernels of the bulk fp8 conversions (encode, decode, decode
// straight to f16). Each equals its scalar reference in core/scalar/fp8.hpp bit for bit; tails run
// the reference. Compiled only where core/simd.hpp can dispatch; core/fp8.hpp picks.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/scalar/fp8.hpp"
#include "kvcodec/core/simd.hpp"

#if KVCODEC_X86_DISPATCH
namespace kvcodec::detail {

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

}  // namespace kvcodec::detail
#endif
