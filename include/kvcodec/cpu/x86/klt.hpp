// kvcodec/cpu/x86/klt.hpp — AVX2 kernel of klt (cpu/klt.hpp): the row product y = x M of
// core/klt.hpp's klt_row, 8 columns per register, with its float operations in its order (y starts
// at 0, then for j = 0, 1, ...: one product, one sum; no fused multiply-add), so its results are
// klt_row's bit for bit. Compiled only where core/simd.hpp can dispatch.
#pragma once

#include <cstddef>

#include "kvcodec/core/simd.hpp"

#if KVCODEC_X86_DISPATCH
namespace kvcodec::cpu::klt_detail {

/// y = x M (D x D row-major) for D a multiple of 8; 32 columns at a time, then 8.
__attribute__((target("avx2"))) inline void row_avx2(const float* x, const float* M, std::size_t D, float* y) {
  std::size_t d0 = 0;
  for (; d0 + 32 <= D; d0 += 32) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (std::size_t j = 0; j < D; ++j) {
      const __m256 xj = _mm256_set1_ps(x[j]);
      const float* m = M + j * D + d0;
      a0 = _mm256_add_ps(a0, _mm256_mul_ps(xj, _mm256_loadu_ps(m)));
      a1 = _mm256_add_ps(a1, _mm256_mul_ps(xj, _mm256_loadu_ps(m + 8)));
      a2 = _mm256_add_ps(a2, _mm256_mul_ps(xj, _mm256_loadu_ps(m + 16)));
      a3 = _mm256_add_ps(a3, _mm256_mul_ps(xj, _mm256_loadu_ps(m + 24)));
    }
    _mm256_storeu_ps(y + d0, a0);
    _mm256_storeu_ps(y + d0 + 8, a1);
    _mm256_storeu_ps(y + d0 + 16, a2);
    _mm256_storeu_ps(y + d0 + 24, a3);
  }
  for (; d0 + 8 <= D; d0 += 8) {
    __m256 a = _mm256_setzero_ps();
    for (std::size_t j = 0; j < D; ++j) a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(x[j]), _mm256_loadu_ps(M + j * D + d0)));
    _mm256_storeu_ps(y + d0, a);
  }
}

}  // namespace kvcodec::cpu::klt_detail
#endif
