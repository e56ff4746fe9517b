// kvcodec/core/half.hpp — f16 and bf16: storage types, exact per-value conversions (host and device;
// core/scalar/half.hpp) and bulk conversions of runs of values.
//
// The bulk conversions run the F16C / AVX2 kernels of core/x86/half.hpp when core/simd.hpp allows and
// the scalar loops otherwise; both produce exactly the bytes of the per-value functions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/scalar/half.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/core/x86/half.hpp"

namespace kvcodec {

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

}  // namespace kvcodec
