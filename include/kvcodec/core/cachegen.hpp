// kvcodec/core/cachegen.hpp — the per-element math of CacheGen's max-abs quantizer (LMCache's
// torch_quant), host and device: a value's symbol for a stored scale, its value back, and the scale as
// stored (f16 or bf16 bits of the max-abs, saturated to the finite range); the batch decoders' element
// step (cachegen_batch_op) and the batch encoders' two (cachegen_amax_op, cachegen_code_op). The stage:
// cpu/cachegen.hpp.
#pragma once

#include <cstdint>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/half.hpp"
#include "kvcodec/core/kv_address.hpp"

namespace kvcodec {

/// Symbol of x for a stored scale s (> 0) and MAX = bins/2 - 1: clamp(round(x * MAX / s)) + MAX,
/// rounding half to even. Clamping first is exact (the bounds are integers) and leaves |q| < 2^22,
/// where adding and subtracting 1.5 * 2^23 rounds to nearest-even with no libm call.
KVCODEC_HD inline std::uint16_t cachegen_quantize(float x, float inv_step, int max) {
  const float m = static_cast<float>(max);
  float q = x * inv_step;
  q = q < -m ? -m : q;
  q = q > m ? m : q;
  constexpr float round_magic = 12582912.0f;
  q = (q + round_magic) - round_magic;
  return static_cast<std::uint16_t>(static_cast<int>(q) + max);
}

KVCODEC_HD inline float cachegen_dequantize(std::uint16_t s, float step, int max) {
  return static_cast<float>(static_cast<int>(s) - max) * step;
}

/// The scale as stored (f16 or bf16 rounding of max-abs, saturated to the finite range).
KVCODEC_HD inline std::uint16_t cachegen_scale_bits(float m, bool bf16) {
  if (bf16) {
    const std::uint16_t b = f32_to_bf16_bits(m);
    return (b & 0x7f80u) == 0x7f80u ? static_cast<std::uint16_t>(0x7f7fu) : b;
  }
  const std::uint16_t h = f32_to_f16_bits(m);
  return (h & 0x7c00u) == 0x7c00u ? static_cast<std::uint16_t>(0x7bffu) : h;
}

KVCODEC_HD inline float cachegen_scale_value(std::uint16_t bits, bool bf16) {
  return bf16 ? bf16_bits_to_f32(bits) : f16_bits_to_f32(bits);
}

/// One dense K or V block of cachegen-quant symbols for a batch decoder (the CUDA backend and its host
/// emulation): R token rows x C = heads x head_dim columns, symbols in row-major order from sym_first of
/// the batch's symbol array, steps (scale / MAX) per token or per column from step_first.
struct cachegen_batch_block {
  std::uint64_t sym_first = 0, step_first = 0;
  std::uint32_t rows = 0, cols = 0;
  std::int32_t layer = 0, max = 0;
  std::uint32_t key = 1, by_token = 0;
  std::int64_t t_first = 0;        ///< destination token of row 0 (may be negative: rows before the range)
  std::int64_t t_end = 0;          ///< destination tokens: rows map into [0, t_end) are written, others skipped
  std::uint32_t stride = 0;        ///< symbols from one row to the next (0: cols); a head's part of a dense plane has cols < stride
};

/// Dequantizes symbol s of row r, column c of block b and stores it in the destination's dtype, exactly
/// as the CPU stage does (f32 value, then f16/bf16 rounding to nearest even). Returns false (and writes
/// nothing) for a symbol above 2*MAX; rows outside the destination's tokens are skipped.
KVCODEC_HD inline bool cachegen_batch_put(const cachegen_batch_block& b, std::uint32_t s, const float* steps, const kv_batch_dest& d, std::uint64_t r,
                                          std::uint64_t c) noexcept {
  if (s > static_cast<std::uint32_t>(2 * b.max)) return false;
  const std::int64_t t = b.t_first + static_cast<std::int64_t>(r);
  if (t < 0 || t >= b.t_end) return true;
  const std::uint64_t D = kv_batch_width(d, b.key != 0);
  kv_batch_put(d, b.key != 0, b.layer, static_cast<std::int64_t>(c / D), t, static_cast<std::int64_t>(c % D),
               cachegen_dequantize(static_cast<std::uint16_t>(s), steps[b.step_first + (b.by_token ? r : c)], b.max));
  return true;
}

/// The same for element i of block b, its symbol read from `sym` (the rANS batch's output).
KVCODEC_HD inline bool cachegen_batch_store(const cachegen_batch_block& b, const std::uint16_t* sym, const float* steps, const kv_batch_dest& d,
                                            std::uint64_t i) noexcept {
  const std::uint64_t r = i / b.cols, c = i % b.cols;
  return cachegen_batch_put(b, sym[b.sym_first + r * (b.stride != 0 ? b.stride : b.cols) + c], steps, d, r, c);
}

/// The fused form for the rANS batch decoder (core/rans_batch.hpp's sinks): symbol i of stream `stream`
/// is dequantized straight into the view, so no symbol goes through memory. block_of[stream] is the
/// stream's block; its symbols start at the block's sym_first. False for a symbol above 2*MAX.
struct cachegen_rans_sink {
  const cachegen_batch_block* blocks = nullptr;
  const std::uint32_t* block_of = nullptr;
  const float* steps = nullptr;
  kv_batch_dest d;
  template <class Stream>
  KVCODEC_HD bool operator()(std::size_t stream, const Stream& s, std::uint64_t i, std::uint16_t sym) const noexcept {
    const cachegen_batch_block& b = blocks[block_of[stream]];
    const std::uint64_t k = s.out_offset - b.sym_first + i;
    return cachegen_batch_put(b, sym, steps, d, k / b.cols, k % b.cols);
  }
};

/// cachegen_batch_store as the batch decoders' element step (cuda/batch.cuh, pipeline/batch.hpp):
/// item i of a block is its element i; false for a symbol above 2*MAX.
struct cachegen_batch_op {
  const std::uint16_t* sym = nullptr;
  const float* steps = nullptr;
  kv_batch_dest d;
  KVCODEC_HD std::uint64_t count(const cachegen_batch_block& b) const noexcept { return static_cast<std::uint64_t>(b.rows) * b.cols; }
  KVCODEC_HD bool operator()(const cachegen_batch_block& b, std::uint64_t i) const noexcept { return cachegen_batch_store(b, sym, steps, d, i); }
};

/// One dense K or V block for the cachegen-quant batch encoders (cpu/cachegen.hpp's layout): a plane of
/// `tokens` rows x heads * head_dim columns, symbols from `sym_first` of the encoder's bytes (a byte each,
/// or two little-endian when `wide`), one scale per row (by_token) or per column, from index
/// `scale_first` of the encoder's per-scale arrays.
struct cachegen_encode_block {
  std::uint64_t sym_first = 0, scale_first = 0;
  std::uint32_t tokens = 0, heads = 0;
  std::int32_t max = 0;
  std::uint32_t by_token = 0, wide = 0;
  std::int32_t layer = 0;
  std::uint32_t key = 1;
  std::int64_t t_first = 0;  ///< the source token of row 0
  std::uint64_t slot = 0;    ///< the block's index (its non-finite flag)
};

/// First step of the cachegen-quant batch encoders: item j of block b is its scale j (row j by_token,
/// else column j = head * head_dim + channel), amax[b.scale_first + j] = max |x| over the values it
/// scales; a non-finite value sets nonfinite[b.slot] (the CPU stage refuses the block then).
struct cachegen_amax_op {
  kv_batch_src s;
  float* amax = nullptr;
  std::uint8_t* nonfinite = nullptr;
  KVCODEC_HD std::uint64_t count(const cachegen_encode_block& b) const noexcept {
    return b.by_token != 0 ? b.tokens : static_cast<std::uint64_t>(b.heads) * static_cast<std::uint64_t>(s.head_dim);
  }
  KVCODEC_HD bool operator()(const cachegen_encode_block& b, std::uint64_t j) const noexcept {
    const std::int64_t D = s.head_dim;
    float m = 0.0f;
    bool bad = false;
    const auto take = [&](std::int64_t h, std::int64_t r, std::int64_t c) {
      const float a = bit_cast_hd<float>(bit_cast_hd<std::uint32_t>(kv_batch_get(s, b.key != 0, b.layer, h, b.t_first + r, c)) & 0x7fffffffu);  // fabs
      bad |= !(a <= 3.4028235e38f);
      m = a > m ? a : m;
    };
    if (b.by_token != 0) {
      for (std::int64_t h = 0; h < static_cast<std::int64_t>(b.heads); ++h)
        for (std::int64_t c = 0; c < D; ++c) take(h, static_cast<std::int64_t>(j), c);
    } else {
      for (std::int64_t r = 0; r < static_cast<std::int64_t>(b.tokens); ++r) take(static_cast<std::int64_t>(j) / D, r, static_cast<std::int64_t>(j) % D);
    }
    amax[b.scale_first + j] = m;
    if (bad) nonfinite[b.slot] = 1;
    return true;
  }
};

/// Second step: value k of block b (row k / C, column k % C, C = heads * head_dim) is coded by
/// cachegen_quantize with its scale's inverse step (inv[b.scale_first + row or column], MAX / stored
/// scale as the CPU computes it) into the encoder's bytes.
struct cachegen_code_op {
  kv_batch_src s;
  const float* inv = nullptr;
  std::uint8_t* out = nullptr;
  KVCODEC_HD std::uint64_t count(const cachegen_encode_block& b) const noexcept {
    return static_cast<std::uint64_t>(b.tokens) * b.heads * static_cast<std::uint64_t>(s.head_dim);
  }
  KVCODEC_HD bool operator()(const cachegen_encode_block& b, std::uint64_t k) const noexcept {
    const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), C = b.heads * D, r = k / C, c = k % C;
    const float x = kv_batch_get(s, b.key != 0, b.layer, static_cast<std::int64_t>(c / D), b.t_first + static_cast<std::int64_t>(r), static_cast<std::int64_t>(c % D));
    const std::uint16_t q = cachegen_quantize(x, inv[b.scale_first + (b.by_token != 0 ? r : c)], b.max);
    if (b.wide != 0)
      kvcodec::detail::store_le16(out + b.sym_first + 2 * k, q);
    else
      out[b.sym_first + k] = static_cast<std::uint8_t>(q);
    return true;
  }
};

}  // namespace kvcodec
