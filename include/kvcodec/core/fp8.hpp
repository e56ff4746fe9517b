// kvcodec/core/fp8.hpp — 8-bit floating point e4m3 / e5m2: the per-value conversions and scale
// helpers of core/scalar/fp8.hpp, and bulk kernels (finite_amax of core/floats.hpp, encode_fp8,
// decode_fp8, decode_fp8_f16) that run the AVX2 code of core/x86/fp8.hpp when core/simd.hpp allows;
// their output equals the per-value scalar references (detail::*_ref) bit for bit. fp8_batch_op is the
// batch decoders' element step, fp8_amax_op and fp8_code_op the batch encoders' two (cuda/fp8.cuh and
// the host emulations of pipeline/batch.hpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/floats.hpp"
#include "kvcodec/core/kv_address.hpp"
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

namespace kvcodec {

/// One dense K or V block of an `fp8` container for a batch decoder (cpu/fp8.hpp's layout): heads x
/// tokens rows of head_dim codes (a head's rows in token order) from byte `codes` of the batch's bytes;
/// scale_mode 0 (tensor): `tensor_scale`; 1 (head): one little-endian f32 per head, 2 (token): one per
/// row, from byte `scales`.
struct fp8_batch_block {
  std::uint64_t codes = 0, scales = 0;
  std::uint32_t tokens = 0, heads = 0;
  std::int32_t layer = 0;
  std::uint32_t key = 1;
  std::uint32_t kind = 0;        ///< fp8_kind
  std::uint32_t scale_mode = 0;  ///< 0 tensor, 1 head, 2 token
  float tensor_scale = 0.0f;
  std::uint64_t row_first = 0;   ///< encoders: the block's first row in their per-row arrays
  std::int64_t t_first = 0;      ///< destination (encoders: source) token of a head's row 0
  std::int64_t t_end = 0;        ///< rows landing outside [0, t_end) are skipped
};

/// Element step of the fp8 batch decoders: value i of block b is fp8_to_f32(code) * scale, the CPU
/// stage's value (decode_fp8), stored through kv_batch_put. Never fails (every code decodes).
struct fp8_batch_op {
  const std::uint8_t* bytes = nullptr;
  kv_batch_dest d;
  KVCODEC_HD std::uint64_t count(const fp8_batch_block& b) const noexcept {
    return static_cast<std::uint64_t>(b.heads) * b.tokens * kv_batch_width(d, b.key != 0);
  }
  KVCODEC_HD bool operator()(const fp8_batch_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t D = kv_batch_width(d, b.key != 0), r = i / D, h = r / b.tokens;
    const std::int64_t t = b.t_first + static_cast<std::int64_t>(r % b.tokens);
    if (t < 0 || t >= b.t_end) return true;
    const float s = b.scale_mode == 0 ? b.tensor_scale
                                      : bit_cast_hd<float>(kvcodec::detail::load_le32(bytes + b.scales + 4 * (b.scale_mode == 1 ? h : r)));
    kv_batch_put(d, b.key != 0, b.layer, static_cast<std::int64_t>(h), t, static_cast<std::int64_t>(i % D),
                 fp8_to_f32(static_cast<fp8_kind>(b.kind), bytes[b.codes + i]) * s);
    return true;
  }
};

/// First step of the fp8 batch encoders: item r of block b (a row: heads x tokens, a head's rows in
/// token order) writes the finite max-abs of its source row to amax[b.row_first + r]; the scales
/// (fp8_scale of the max over a tensor, a head or the row, as cpu/fp8.hpp takes it) follow from them.
struct fp8_amax_op {
  kv_batch_src s;
  float* amax = nullptr;
  KVCODEC_HD std::uint64_t count(const fp8_batch_block& b) const noexcept { return static_cast<std::uint64_t>(b.heads) * b.tokens; }
  KVCODEC_HD bool operator()(const fp8_batch_block& b, std::uint64_t r) const noexcept {
    const std::int64_t h = static_cast<std::int64_t>(r / b.tokens), t = b.t_first + static_cast<std::int64_t>(r % b.tokens);
    float a = 0.0f;
    for (std::int64_t c = 0; c < s.head_dim; ++c) {
      const float x = kv_batch_get(s, b.key != 0, b.layer, h, t, c);
      const float m = kvcodec::detail::finite_amax_ref(&x, 1, 1);
      a = m > a ? m : a;
    }
    amax[b.row_first + r] = a;
    return true;
  }
};

/// Second step of the fp8 batch encoders: value i of block b is coded as f32_to_fp8(x / scale) with its
/// row's scale (scale[b.row_first + row]), the CPU's encode_fp8, into out[b.codes + i].
struct fp8_code_op {
  kv_batch_src s;
  const float* scale = nullptr;
  std::uint8_t* out = nullptr;
  KVCODEC_HD std::uint64_t count(const fp8_batch_block& b) const noexcept {
    return static_cast<std::uint64_t>(b.heads) * b.tokens * static_cast<std::uint64_t>(s.head_dim);
  }
  KVCODEC_HD bool operator()(const fp8_batch_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), r = i / D;
    const std::int64_t h = static_cast<std::int64_t>(r / b.tokens), t = b.t_first + static_cast<std::int64_t>(r % b.tokens);
    out[b.codes + i] = f32_to_fp8(static_cast<fp8_kind>(b.kind), kv_batch_get(s, b.key != 0, b.layer, h, t, static_cast<std::int64_t>(i % D)) / scale[b.row_first + r]);
    return true;
  }
};

}  // namespace kvcodec
