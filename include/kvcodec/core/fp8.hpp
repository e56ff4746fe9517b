// kvcodec/core/fp8.hpp — 8-bit floating point e4m3 / e5m2: the per-value conversions and scale
// helpers of core/scalar/fp8.hpp, and bulk kernels (finite_amax of core/floats.hpp, encode_fp8,
// decode_fp8, decode_fp8_f16) that run the AVX2 code of core/x86/fp8.hpp when core/simd.hpp allows;
// their output equals the per-value scalar references (detail::*_ref) bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/floats.hpp"
#include "kvcodec/core/scalar/fp8.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/core/x86/fp8.hpp"

namespace kvcodec {

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
