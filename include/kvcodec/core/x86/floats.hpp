// kvcodec/core/x86/floats.hpp — AVX2 counterparts of core/scalar/floats.hpp: a per-lane product that
// is never contracted into an FMA, and the finite max-abs of a run (the same value as finite_amax_ref:
// integer max of the sign-cleared bits of the finite lanes). core/floats.hpp picks.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/scalar/floats.hpp"
#include "kvcodec/core/simd.hpp"

#if KVCODEC_X86_DISPATCH
namespace kvcodec::detail {

/// a·b rounded to f32 per lane: the asm barrier keeps GCC from contracting it into a later FMA.
KVCODEC_TARGET_AVX2 inline __m256 mul_ps_rn(__m256 a, __m256 b) noexcept {
  __m256 r = _mm256_mul_ps(a, b);
  __asm__("" : "+x"(r));
  return r;
}

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

}  // namespace kvcodec::detail
#endif
