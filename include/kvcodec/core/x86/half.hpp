// kvcodec/core/x86/half.hpp — F16C / AVX2 kernels of the bulk f16 and bf16 conversions.
//
// Each kernel writes exactly the bytes of its scalar reference in core/scalar/half.hpp (F16C's RNE
// conversion equals f32_to_f16_bits on every f32, NaN payloads included, and vcvtph2ps equals
// f16_bits_to_f32 on every half: tests/core/test_half.cpp); the tail runs the reference.
// Compiled only where core/simd.hpp can dispatch (KVCODEC_X86_DISPATCH); core/half.hpp picks.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/scalar/half.hpp"
#include "kvcodec/core/simd.hpp"

#if KVCODEC_X86_DISPATCH
namespace kvcodec::detail {

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

}  // namespace kvcodec::detail
#endif
