// kvcodec/core/cachegen.hpp — the per-element math of CacheGen's max-abs quantizer (LMCache's
// torch_quant), host and device: a value's symbol for a stored scale, its value back, and the scale as
// stored (f16 or bf16 bits of the max-abs, saturated to the finite range). The stage: cpu/cachegen.hpp.
#pragma once

#include <cstdint>

#include "kvcodec/core/config.hpp"
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
};

/// Dequantizes element i of block b and stores it in the destination's dtype, exactly as the CPU stage
/// does (f32 value, then f16/bf16 rounding to nearest even). Returns false (and writes nothing) for a
/// symbol above 2*MAX; rows outside the destination's tokens are skipped.
KVCODEC_HD inline bool cachegen_batch_store(const cachegen_batch_block& b, const std::uint16_t* sym, const float* steps, const kv_batch_dest& d,
                                            std::uint64_t i) noexcept {
  const std::uint64_t r = i / b.cols, c = i % b.cols;
  const std::uint16_t s = sym[b.sym_first + i];
  if (s > static_cast<std::uint32_t>(2 * b.max)) return false;
  const std::int64_t t = b.t_first + static_cast<std::int64_t>(r);
  if (t < 0 || t >= b.t_end) return true;
  const std::uint64_t D = static_cast<std::uint64_t>(d.head_dim);
  kv_batch_put(d, b.key != 0, b.layer, static_cast<std::int64_t>(c / D), t, static_cast<std::int64_t>(c % D),
               cachegen_dequantize(s, steps[b.step_first + (b.by_token ? r : c)], b.max));
  return true;
}

/// cachegen_batch_store as the batch decoders' element step (cuda/batch.cuh, pipeline/batch.hpp):
/// item i of a block is its element i; false for a symbol above 2*MAX.
struct cachegen_batch_op {
  const std::uint16_t* sym = nullptr;
  const float* steps = nullptr;
  kv_batch_dest d;
  KVCODEC_HD std::uint64_t count(const cachegen_batch_block& b) const noexcept { return static_cast<std::uint64_t>(b.rows) * b.cols; }
  KVCODEC_HD bool operator()(const cachegen_batch_block& b, std::uint64_t i) const noexcept { return cachegen_batch_store(b, sym, steps, d, i); }
};

}  // namespace kvcodec
