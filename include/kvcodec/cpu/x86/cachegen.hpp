// kvcodec/cpu/x86/cachegen.hpp — AVX2 / F16C kernels of the cachegen-quant stage (cpu/cachegen.hpp):
// max-abs per row or per column, symbols, the largest symbol of a plane, and dequantization straight to
// f16. Each does the largest multiple of 8 of its row (the caller's scalar loop does the rest, with the
// per-element math of core/cachegen.hpp) and gives the same values. Compiled only where core/simd.hpp
// can dispatch; the stage picks.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/simd.hpp"

#if KVCODEC_X86_DISPATCH
namespace kvcodec::cpu::cachegen_detail {

/// o[d] = f16 of (s[d] - max) * step (step = st[0] when bcast, else st[d]) for the largest
/// multiple of 8 of n; returns how many were done. F16C's round-to-nearest-even conversion equals
/// f32_to_f16_bits on the finite values produced here.
__attribute__((target("avx2,f16c"))) inline std::size_t dequant_f16_f16c(const std::uint16_t* s, const float* st, bool bcast, int max,
                                                                         std::uint16_t* o, std::size_t n) {
  const __m256i mx = _mm256_set1_epi32(max);
  const __m256 b = _mm256_set1_ps(st[0]);
  std::size_t d = 0;
  for (; d + 8 <= n; d += 8) {
    const __m256i q = _mm256_sub_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + d))), mx);
    const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(q), bcast ? b : _mm256_loadu_ps(st + d));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + d), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  return d;
}

/// dequant_f16_f16c over R rows of n values: row r reads s + r * sstride and writes o + r * ostride,
/// with step st[r] (per_row) or st[d] (one per column, shared by the rows). One call per head of a
/// block instead of one per row. Returns how many values of each row were done (n rounded down to 8).
__attribute__((target("avx2,f16c"))) inline std::size_t dequant_rows_f16_f16c(const std::uint16_t* s, std::size_t sstride, const float* st,
                                                                              bool per_row, int max, std::uint16_t* o, std::ptrdiff_t ostride,
                                                                              std::size_t R, std::size_t n) {
  const __m256i mx = _mm256_set1_epi32(max);
  const std::size_t n8 = n & ~std::size_t{7};
  for (std::size_t r = 0; r < R; ++r, s += sstride, o += ostride) {
    const __m256 b = _mm256_set1_ps(per_row ? st[r] : 0.0f);
    for (std::size_t d = 0; d < n8; d += 8) {
      const __m256i q = _mm256_sub_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + d))), mx);
      const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(q), per_row ? b : _mm256_loadu_ps(st + d));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + d), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  }
  return n8;
}

/// True when none of x[0..done) is a NaN or an infinity (exponent bits all ones), done being the
/// largest multiple of 8 of n; the caller checks the rest.
KVCODEC_TARGET_AVX2 inline bool all_finite_avx2(const float* x, std::size_t n, std::size_t& done) {
  const __m256i e = _mm256_set1_epi32(0x7f800000);
  __m256i bad = _mm256_setzero_si256();
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), e), e));
  done = i;
  return _mm256_testz_si256(bad, bad) != 0;
}

/// mm = max(mm, |x[d]|) over the largest multiple of 8 of n (NaN never enters: the caller's
/// finiteness check rejects such blocks); returns how many were done.
KVCODEC_TARGET_AVX2 inline std::size_t absmax_avx2(const float* x, std::size_t n, float& mm) {
  const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 a = _mm256_set1_ps(mm);
  std::size_t d = 0;
  for (; d + 8 <= n; d += 8) a = _mm256_max_ps(a, _mm256_and_ps(_mm256_loadu_ps(x + d), abs));
  __m128 v = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  v = _mm_max_ps(v, _mm_movehl_ps(v, v));
  v = _mm_max_ss(v, _mm_shuffle_ps(v, v, 1));
  mm = _mm_cvtss_f32(v);
  return d;
}
/// mc[d] = max(mc[d], |x[d]|) for the largest multiple of 8 of n.
KVCODEC_TARGET_AVX2 inline std::size_t absmax_cols_avx2(const float* x, std::size_t n, float* mc) {
  const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  std::size_t d = 0;
  for (; d + 8 <= n; d += 8)
    _mm256_storeu_ps(mc + d, _mm256_max_ps(_mm256_loadu_ps(mc + d), _mm256_and_ps(_mm256_loadu_ps(x + d), abs)));
  return d;
}
/// o[d] = cachegen_quantize(x[d], iv (bcast) or iv[d], max) for the largest multiple of 8 of n:
/// the same multiply, clamp and magic-number rounding, in the same order.
KVCODEC_TARGET_AVX2 inline std::size_t quantize_avx2(const float* x, const float* iv, bool bcast, int max, std::uint16_t* o,
                                                     std::size_t n) {
  const __m256 hi = _mm256_set1_ps(static_cast<float>(max)), lo = _mm256_set1_ps(-static_cast<float>(max));
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  const __m256i mx = _mm256_set1_epi32(max);
  const __m256 b = _mm256_set1_ps(iv[0]);
  std::size_t d = 0;
  for (; d + 8 <= n; d += 8) {
    __m256 q = _mm256_mul_ps(_mm256_loadu_ps(x + d), bcast ? b : _mm256_loadu_ps(iv + d));
    q = _mm256_max_ps(q, lo);  // q < -m ? -m : q, then q > m ? m : q (finite inputs)
    q = _mm256_min_ps(q, hi);
    q = _mm256_sub_ps(_mm256_add_ps(q, magic), magic);
    const __m256i k = _mm256_add_epi32(_mm256_cvttps_epi32(q), mx);
    const __m256i p16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(k, k), 0x88);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + d), _mm256_castsi256_si128(p16));
  }
  return d;
}

KVCODEC_TARGET_AVX2 inline std::uint32_t max_symbol_avx2(const std::uint16_t* s, std::size_t n) {
  __m256i a = _mm256_setzero_si256(), b = a;
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a = _mm256_max_epu16(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
    b = _mm256_max_epu16(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 16)));
  }
  a = _mm256_max_epu16(a, b);
  __m128i m = _mm_max_epu16(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  m = _mm_max_epu16(m, _mm_srli_si128(m, 8));
  m = _mm_max_epu16(m, _mm_srli_si128(m, 4));
  m = _mm_max_epu16(m, _mm_srli_si128(m, 2));
  std::uint16_t r = static_cast<std::uint16_t>(_mm_cvtsi128_si32(m));
  for (; i < n; ++i) r = s[i] > r ? s[i] : r;
  return r;
}

}  // namespace kvcodec::cpu::cachegen_detail
#endif
