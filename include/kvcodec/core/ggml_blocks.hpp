// kvcodec/core/ggml_blocks.hpp — llama.cpp / ggml KV-cache block formats q8_0, q4_0, q4_1, q5_0, q5_1
// and iq4_nl, byte-compatible with ggml's reference quantizers (formats, per-block functions and
// invariants: core/scalar/ggml_blocks.hpp).
//
// Row functions (quantize_row, dequantize_row, dequantize_row_f16) run the AVX2 kernels of
// core/x86/ggml_blocks.hpp when core/simd.hpp allows and the scalar row loops otherwise; both write
// exactly the bytes / values of the per-block scalar functions (the reference). ggml_batch_op and
// ggml_encode_op are the batch decoders' and encoders' element steps (cuda/ggml.cuh and the host
// emulations of pipeline/batch.hpp): one ggml block of a container's K/V block, decoded into a view
// or quantized from one by the per-block functions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/kv_address.hpp"
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

namespace kvcodec {

/// One dense K or V block of a `q8_0`..`iq4_nl` container for a batch decoder: `tokens` rows of `width`
/// = kv_heads * head_dim values (head 0's channels first), ggml::row_bytes(type, width) bytes each, from
/// byte `first` of the batch's bytes (cpu/ggml.hpp's layout).
struct ggml_batch_block {
  std::uint64_t first = 0;
  std::uint32_t tokens = 0, width = 0;
  std::int32_t layer = 0;
  std::uint32_t key = 1;
  std::uint32_t type = 0;    ///< ggml::block_type
  std::int64_t t_first = 0;  ///< destination token of row 0 (negative: rows before the range)
  std::int64_t t_end = 0;    ///< rows landing outside [0, t_end) are skipped
};

/// Element step of the ggml batch decoders: item i of block b is value i % width of row i / width,
/// ggml::dequantize_value of its 32-value block (the CPU stage's value), stored through kv_batch_put;
/// consecutive items are consecutive channels, so a warp's stores are coalesced. Never fails (every
/// byte pattern is a valid block).
struct ggml_batch_op {
  const std::uint8_t* bytes = nullptr;
  kv_batch_dest d;
  KVCODEC_HD std::uint64_t count(const ggml_batch_block& b) const noexcept { return static_cast<std::uint64_t>(b.tokens) * b.width; }
  KVCODEC_HD bool operator()(const ggml_batch_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t r = i / b.width, v = i % b.width, D = static_cast<std::uint64_t>(d.head_dim);
    const std::int64_t t = b.t_first + static_cast<std::int64_t>(r);
    if (t < 0 || t >= b.t_end) return true;
    const auto type = static_cast<ggml::block_type>(b.type);
    const std::uint8_t* blk = bytes + b.first + (r * (b.width / ggml::qk) + v / ggml::qk) * ggml::block_bytes(type);
    kv_batch_put(d, b.key != 0, b.layer, static_cast<std::int64_t>(v / D), t, static_cast<std::int64_t>(v % D), ggml::dequantize_value(type, blk, v % ggml::qk));
    return true;
  }
};

/// Element step of the ggml batch encoders: item i of block b is its ggml block i, quantized by
/// ggml::quantize_block (the CPU stage's bytes) from the source's values into out + b.first + ...;
/// b.t_first is the source token of row 0 (b.t_end unused).
struct ggml_encode_op {
  kv_batch_src s;
  std::uint8_t* out = nullptr;
  KVCODEC_HD std::uint64_t count(const ggml_batch_block& b) const noexcept { return static_cast<std::uint64_t>(b.tokens) * (b.width / ggml::qk); }
  KVCODEC_HD bool operator()(const ggml_batch_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t per = b.width / ggml::qk, r = i / per, j = i % per, D = static_cast<std::uint64_t>(s.head_dim);
    const std::int64_t t = b.t_first + static_cast<std::int64_t>(r);
    float x[ggml::qk];
    for (std::uint64_t k = 0; k < ggml::qk; ++k) {
      const std::uint64_t v = j * ggml::qk + k;
      x[k] = kv_batch_get(s, b.key != 0, b.layer, static_cast<std::int64_t>(v / D), t, static_cast<std::int64_t>(v % D));
    }
    const auto type = static_cast<ggml::block_type>(b.type);
    ggml::quantize_block(type, x, out + b.first + (r * per + j) * ggml::block_bytes(type));
    return true;
  }
};

}  // namespace kvcodec
