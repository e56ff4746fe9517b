// kvcodec/tensor/dtype.hpp — element types of tensors and views (f32, f16, bf16, i32, u8): names,
// sizes, rounding to a type, and conversion of runs of floats to and from f32 / f16 / bf16 storage.
//
// The f16 / bf16 arithmetic itself (half_t, bf16_t, f32_to_f16_bits, ..., the bulk f32_to_f16_n and
// its F16C kernels) is host/device math and lives in core/half.hpp; this header adds the dtype tag.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/half.hpp"

namespace kvcodec {

enum class dtype : std::uint8_t { f32 = 0, f16 = 1, bf16 = 2, i32 = 3, u8 = 4 };

inline constexpr std::size_t dtype_size(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return 4;
    case dtype::f16: return 2;
    case dtype::bf16: return 2;
    case dtype::i32: return 4;
    case dtype::u8: return 1;
  }
  return 0;
}

/// Lower-case name used in specs, the CLI and the container ("f32", "f16", "bf16", "i32", "u8").
inline constexpr std::string_view dtype_name(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
    case dtype::i32: return "i32";
    case dtype::u8: return "u8";
  }
  return "?";
}

/// Parses a dtype name; accepts the safetensors spellings too (F32, F16, BF16, I32, U8).
inline std::optional<dtype> parse_dtype(std::string_view s) noexcept {
  std::string l(s);
  for (auto& c : l) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  if (l == "f32" || l == "float32" || l == "float") return dtype::f32;
  if (l == "f16" || l == "float16" || l == "half") return dtype::f16;
  if (l == "bf16" || l == "bfloat16") return dtype::bf16;
  if (l == "i32" || l == "int32") return dtype::i32;
  if (l == "u8" || l == "uint8") return dtype::u8;
  return std::nullopt;
}

/// Rounds an f32 to the nearest value representable in `t` (identity for f32).
KVCODEC_HD inline float round_to_dtype(float f, dtype t) noexcept {
  if (t == dtype::f16) return f16_bits_to_f32(f32_to_f16_bits(f));
  if (t == dtype::bf16) return bf16_bits_to_f32(f32_to_bf16_bits(f));
  return f;
}

/// Element type -> dtype tag.
template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr dtype value = dtype::f32; };
template <> struct dtype_of<half_t> { static constexpr dtype value = dtype::f16; };
template <> struct dtype_of<bf16_t> { static constexpr dtype value = dtype::bf16; };
template <> struct dtype_of<std::int32_t> { static constexpr dtype value = dtype::i32; };
template <> struct dtype_of<std::uint8_t> { static constexpr dtype value = dtype::u8; };

/// Converts `n` floats to `t` storage (f32, f16 or bf16), little-endian, into `out` (n * dtype_size(t) bytes).
inline void encode_floats(const float* in, std::size_t n, dtype t, std::uint8_t* out) noexcept {
  if (n == 0) return;
  if (t == dtype::f32)
    std::memcpy(out, in, n * 4);
  else if (t == dtype::f16)
    f32_to_f16_n(in, n, out);
  else
    f32_to_bf16_n(in, n, out);
}

/// Inverse of encode_floats.
inline void decode_floats(const std::uint8_t* in, std::size_t n, dtype t, float* out) noexcept {
  if (n == 0) return;
  if (t == dtype::f32)
    std::memcpy(out, in, n * 4);
  else if (t == dtype::f16)
    f16_to_f32_n(in, n, out);
  else
    bf16_to_f32_n(in, n, out);
}

}  // namespace kvcodec
