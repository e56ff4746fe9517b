// kvcodec/core/cachegen.hpp — the per-element math of CacheGen's max-abs quantizer (LMCache's
// torch_quant), host and device: a value's symbol for a stored scale, its value back, and the scale as
// stored (f16 or bf16 bits of the max-abs, saturated to the finite range). The stage: cpu/cachegen.hpp.
#pragma once

#include <cstdint>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/half.hpp"

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

}  // namespace kvcodec
