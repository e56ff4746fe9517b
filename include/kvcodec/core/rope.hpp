// kvcodec/core/rope.hpp — apply / undo rotary position embedding (RoPE, Su et al. 2021) on one head
// row, so keys can be quantized pre-RoPE (KVQuant) and rotated back afterwards.
//
// Pair i (0 <= i < D/2) is rotated by the angle pos · theta^(-2i/D):
//   interleaved_pairs: pairs (2i, 2i+1)    — llama2.c / Meta Llama
//   rotate_half:       pairs (i, i + D/2)  — Hugging Face Llama
// (a, b) -> (a·cos − b·sin, a·sin + b·cos); undo rotates by the negative angle. Angles, sines and the
// rotation are computed in double and rounded to float once, so undo(apply(x, p), p) = x to float
// rounding. (Device math libraries may differ from the host's in the last float bit: RoPE is a lossy
// transform, not part of any bit-exact path.) For odd D the last element is left unchanged (rotate_half uses D/2 rounded down and pairs
// (i, i + D/2)). Positions may be negative (rotation by a relative offset). Every per-row function is
// KVCODEC_HD; check_rope validates parameters on the host.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/error.hpp"

namespace kvcodec {

enum class rope_style : std::uint8_t { interleaved_pairs = 0, rotate_half = 1 };

constexpr std::string_view rope_style_name(rope_style s) noexcept {
  return s == rope_style::interleaved_pairs ? "interleaved-pairs" : "rotate-half";
}

/// Accepts "interleaved-pairs" / "interleaved" and "rotate-half" / "half" / "neox".
inline std::optional<rope_style> parse_rope_style(std::string_view s) noexcept {
  if (s == "interleaved-pairs" || s == "interleaved" || s == "interleaved_pairs") return rope_style::interleaved_pairs;
  if (s == "rotate-half" || s == "rotate_half" || s == "half" || s == "neox") return rope_style::rotate_half;
  return std::nullopt;
}

/// Angle (radians) of pair i at position pos.
KVCODEC_HD inline double rope_angle(std::int64_t pos, std::size_t i, std::size_t head_dim, double theta) noexcept {
  return static_cast<double>(pos) * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
}

namespace detail {

KVCODEC_HD inline void rope_rotate(float* x, std::size_t head_dim, std::int64_t pos, double theta, rope_style style,
                                   double dir) noexcept {
  const std::size_t half = head_dim / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const double a = dir * rope_angle(pos, i, head_dim, theta);
    const double c = std::cos(a), s = std::sin(a);
    const std::size_t i0 = style == rope_style::interleaved_pairs ? 2 * i : i;
    const std::size_t i1 = style == rope_style::interleaved_pairs ? 2 * i + 1 : i + half;
    const double x0 = x[i0], x1 = x[i1];
    x[i0] = static_cast<float>(x0 * c - x1 * s);
    x[i1] = static_cast<float>(x0 * s + x1 * c);
  }
}

}  // namespace detail

/// Rotates one head row x[0..head_dim) as RoPE at position pos.
KVCODEC_HD inline void rope_apply(float* x, std::size_t head_dim, std::int64_t pos, double theta,
                                  rope_style style) noexcept {
  detail::rope_rotate(x, head_dim, pos, theta, style, 1.0);
}

/// Inverse of rope_apply at the same position.
KVCODEC_HD inline void rope_undo(float* x, std::size_t head_dim, std::int64_t pos, double theta,
                                 rope_style style) noexcept {
  detail::rope_rotate(x, head_dim, pos, theta, style, -1.0);
}

/// Applies (forward) or undoes RoPE on `tokens` consecutive rows of length head_dim, row t at positions[t].
KVCODEC_HD inline void rope_rows(float* x, std::size_t tokens, std::size_t head_dim, const std::int64_t* positions,
                                 double theta, rope_style style, bool forward) noexcept {
  for (std::size_t t = 0; t < tokens; ++t)
    detail::rope_rotate(x + t * head_dim, head_dim, positions[t], theta, style, forward ? 1.0 : -1.0);
}

/// Throws a usage error unless head_dim is even and positive and theta is finite and > 1.
inline void check_rope(std::size_t head_dim, double theta, const std::string& where = "rope") {
  if (head_dim == 0 || head_dim % 2 != 0)
    throw_usage(describe_mismatch(where, "head_dim", "an even number > 0", std::to_string(head_dim)));
  if (!(theta > 1.0) || !std::isfinite(theta))
    throw_usage(describe_mismatch(where, "theta", "a finite number > 1", std::to_string(theta)));
}

}  // namespace kvcodec
