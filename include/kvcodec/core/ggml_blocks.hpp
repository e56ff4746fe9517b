// kvcodec/core/ggml_blocks.hpp — llama.cpp / ggml KV-cache block formats q8_0, q4_0, q4_1, q5_0, q5_1
// and iq4_nl, byte-compatible with ggml's reference quantizers (formats, per-block functions and
// invariants: core/scalar/ggml_blocks.hpp).
//
// Row functions (quantize_row, dequantize_row, dequantize_row_f16) run the AVX2 kernels of
// core/x86/ggml_blocks.hpp when core/simd.hpp allows and the scalar row loops otherwise; both write
// exactly the bytes / values of the per-block scalar functions (the reference).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/scalar/ggml_blocks.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/core/x86/ggml_blocks.hpp"

namespace kvcodec::ggml {

/// Quantizes n values (a multiple of 32) into row_bytes(t, n) bytes.
inline void quantize_row(block_type t, const float* x, std::size_t n, std::uint8_t* out) {
  check_row(t, n);
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return detail::quantize_row_avx2(t, x, n / qk, out);
#endif
  detail::quantize_row_ref(t, x, n / qk, out);
}

/// Decodes row_bytes(t, n) bytes into n values.
inline void dequantize_row(block_type t, const std::uint8_t* in, std::size_t n, float* y) {
  check_row(t, n);
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return detail::dequantize_row_avx2(t, in, n / qk, y);
#endif
  detail::dequantize_row_ref(t, in, n / qk, y);
}

/// Decodes row_bytes(t, n) bytes into n f16 values (f32_to_f16_bits of dequantize_row's values).
inline void dequantize_row_f16(block_type t, const std::uint8_t* in, std::size_t n, std::uint16_t* y) {
  check_row(t, n);
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return detail::dequantize_row_f16_avx2(t, in, n / qk, y);
#endif
  detail::dequantize_row_f16_ref(t, in, n / qk, y);
}

inline void quantize_row_q8_0(const float* x, std::size_t n, std::uint8_t* out) { quantize_row(block_type::q8_0, x, n, out); }
inline void quantize_row_q4_0(const float* x, std::size_t n, std::uint8_t* out) { quantize_row(block_type::q4_0, x, n, out); }
inline void quantize_row_q4_1(const float* x, std::size_t n, std::uint8_t* out) { quantize_row(block_type::q4_1, x, n, out); }
inline void quantize_row_q5_0(const float* x, std::size_t n, std::uint8_t* out) { quantize_row(block_type::q5_0, x, n, out); }
inline void quantize_row_q5_1(const float* x, std::size_t n, std::uint8_t* out) { quantize_row(block_type::q5_1, x, n, out); }
inline void quantize_row_iq4_nl(const float* x, std::size_t n, std::uint8_t* out) { quantize_row(block_type::iq4_nl, x, n, out); }
inline void dequantize_row_q8_0(const std::uint8_t* in, std::size_t n, float* y) { dequantize_row(block_type::q8_0, in, n, y); }
inline void dequantize_row_q4_0(const std::uint8_t* in, std::size_t n, float* y) { dequantize_row(block_type::q4_0, in, n, y); }
inline void dequantize_row_q4_1(const std::uint8_t* in, std::size_t n, float* y) { dequantize_row(block_type::q4_1, in, n, y); }
inline void dequantize_row_q5_0(const std::uint8_t* in, std::size_t n, float* y) { dequantize_row(block_type::q5_0, in, n, y); }
inline void dequantize_row_q5_1(const std::uint8_t* in, std::size_t n, float* y) { dequantize_row(block_type::q5_1, in, n, y); }
inline void dequantize_row_iq4_nl(const std::uint8_t* in, std::size_t n, float* y) { dequantize_row(block_type::iq4_nl, in, n, y); }

}  // namespace kvcodec::ggml
