// kvcodec/cpu/x86/weighted_quant.hpp — AVX2 / F16C kernel of weighted-quant (cpu/weighted_quant.hpp):
// a decoded key row rotated back to RoPE and written as f16 in one pass. Does the largest part of the
// row it can in 8-wide steps with the float operations of core/weighted_quant.hpp's rope_rotated
// (two products, one sum: no fused multiply-add) and returns how many it did; the caller's scalar
// loop does the rest. Compiled only where core/simd.hpp can dispatch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/simd.hpp"

#if KVCODEC_X86_DISPATCH
namespace kvcodec::cpu::weighted_detail {

/// o[d] = f16 of x[d] * c[d] + x[partner(d)] * s[d]; partner = d ^ 1 (interleaved) or d -+ D/2 (rotate-half,
/// done only when D/2 is a multiple of 8).
__attribute__((target("avx2,f16c"))) inline std::size_t rope_row_f16_f16c(const float* x, const float* c, const float* s, bool interleaved,
                                                                          std::size_t D, std::uint16_t* o) {
  constexpr int rn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  if (interleaved) {
    std::size_t d = 0;
    for (; d + 8 <= D; d += 8) {
      const __m256 v = _mm256_loadu_ps(x + d);
      const __m256 p = _mm256_permute_ps(v, 0xB1);  // swap each pair
      const __m256 y = _mm256_add_ps(_mm256_mul_ps(v, _mm256_loadu_ps(c + d)), _mm256_mul_ps(p, _mm256_loadu_ps(s + d)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + d), _mm256_cvtps_ph(y, rn));
    }
    return d;
  }
  const std::size_t half = D / 2;
  if (half % 8 != 0) return 0;
  for (std::size_t d = 0; d < D; d += 8) {
    const __m256 v = _mm256_loadu_ps(x + d);
    const __m256 p = _mm256_loadu_ps(x + (d < half ? d + half : d - half));
    const __m256 y = _mm256_add_ps(_mm256_mul_ps(v, _mm256_loadu_ps(c + d)), _mm256_mul_ps(p, _mm256_loadu_ps(s + d)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + d), _mm256_cvtps_ph(y, rn));
  }
  return D;
}

/// (sym[d..d+8) - max) * st[d..d+8) as f32: cachegen-quant's dequantization.
__attribute__((target("avx2,f16c"))) inline __m256 dequant8(const std::uint16_t* sym, const float* st, __m256i mx) {
  const __m256i q = _mm256_sub_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sym))), mx);
  return _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_loadu_ps(st));
}

/// o[0..8) = f16 of v * c + p * s (two products, one sum).
__attribute__((target("avx2,f16c"))) inline void rotate8_f16(__m256 v, __m256 p, const float* c, const float* s, std::uint16_t* o) {
  const __m256 y = _mm256_add_ps(_mm256_mul_ps(v, _mm256_loadu_ps(c)), _mm256_mul_ps(p, _mm256_loadu_ps(s)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/// The same from symbols: x[d] = (sym[d] - max) * st[d] (cachegen-quant's dequantization, as f32),
/// then rotated and written as f16; returns how many of the row it did.
__attribute__((target("avx2,f16c"))) inline std::size_t dequant_rope_row_f16_f16c(const std::uint16_t* sym, const float* st, int max,
                                                                                  const float* c, const float* s, bool interleaved, std::size_t D,
                                                                                  std::uint16_t* o) {
  const __m256i mx = _mm256_set1_epi32(max);
  if (interleaved) {
    std::size_t d = 0;
    for (; d + 8 <= D; d += 8) {
      const __m256 v = dequant8(sym + d, st + d, mx);
      rotate8_f16(v, _mm256_permute_ps(v, 0xB1), c + d, s + d, o + d);
    }
    return d;
  }
  const std::size_t half = D / 2;
  if (half % 8 != 0) return 0;
  for (std::size_t d = 0; d < half; d += 8) {
    const __m256 a = dequant8(sym + d, st + d, mx), b = dequant8(sym + d + half, st + d + half, mx);
    rotate8_f16(a, b, c + d, s + d, o + d);
    rotate8_f16(b, a, c + d + half, s + d + half, o + d + half);
  }
  return D;
}

}  // namespace kvcodec::cpu::weighted_detail
#endif
