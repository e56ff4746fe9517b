// kvcodec/core/scalar/floats.hpp — f32 helpers the quantizers share, host and device: finiteness
// tests on the bits, products and sums that a compiler may not fuse into an FMA (mul_rn / add_rn: on
// the GPU the _rn intrinsics, on FMA-capable CPU targets an asm barrier, so CPU and GPU produce the
// same bits), and the max |x| over the finite values of a strided run (the reference of core/x86/floats.hpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/config.hpp"

namespace kvcodec::detail {

KVCODEC_HD inline float mul_rn(float a, float b) noexcept {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#elif defined(__x86_64__) && !defined(__FMA__)
  return a * b;  // baseline x86-64 has no FMA instruction: nothing can fuse
#elif (defined(__x86_64__) || defined(__aarch64__)) && (defined(__GNUC__) || defined(__clang__))
  // The target has FMA, so the compiler could fuse this product into a later add: an empty asm
  // that "modifies" r forces the rounded product to exist (cheaper than a volatile round trip).
  float r = a * b;
#if defined(__x86_64__)
  __asm__("" : "+x"(r));
#else
  __asm__("" : "+w"(r));
#endif
  return r;
#else
  volatile float r = a * b;  // unknown target: the portable barrier
  return r;
#endif
}

KVCODEC_HD inline float add_rn(float a, float b) noexcept {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

KVCODEC_HD inline bool is_finite_f32(float v) noexcept {
  return (bit_cast_hd<std::uint32_t>(v) & 0x7f800000u) != 0x7f800000u;
}

KVCODEC_HD inline bool is_nan_f32(float v) noexcept {
  return (bit_cast_hd<std::uint32_t>(v) & 0x7fffffffu) > 0x7f800000u;
}

/// max |x| over the finite values of x[0], x[stride], ... (0 if none).
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

}  // namespace kvcodec::detail
