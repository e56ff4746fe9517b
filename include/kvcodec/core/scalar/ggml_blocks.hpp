// kvcodec/core/scalar/ggml_blocks.hpp — llama.cpp / ggml KV-cache block formats q8_0, q4_0, q4_1, q5_0,
// q5_1 and iq4_nl, per block (host and device) and as scalar row loops (detail::*_ref, the references
// of core/x86/ggml_blocks.hpp), byte-compatible with ggml's reference quantizers (ggml-quants.c:
// quantize_row_*_ref and dequantize_row_*; iq4_nl as quantize_row_iq4_nl_ref, which is what ggml's CPU
// backend uses).
//
// Every block holds 32 values; byte sizes and layouts are ggml's, little-endian:
//   q8_0   34 B: f16 d, int8 qs[32]                      x ≈ qs·d,          d = amax/127
//   q4_0   18 B: f16 d, qs[16]                           x ≈ (q-8)·d,       d = signed max / -8
//   q4_1   20 B: f16 d, f16 m, qs[16]                    x ≈ q·d + m,       d = (max-min)/15
//   q5_0   22 B: f16 d, u32 qh, qs[16]                   x ≈ (q-16)·d,      d = signed max / -16
//   q5_1   24 B: f16 d, f16 m, u32 qh, qs[16]            x ≈ q·d + m,       d = (max-min)/31
//   iq4_nl 18 B: f16 d, qs[16]                           x ≈ kvalues_iq4nl[q]·d (weighted LS scale)
// Nibble order: byte j holds element j in its low nibble and element j+16 in its high nibble; the fifth
// bit of element j (q5_*) is bit j of qh. The f16 conversion is IEEE round-to-nearest-even, as ggml's.
//
// Invariant: for finite inputs the bytes equal ggml's reference output. Where ggml's reference is
// undefined or unspecified this implementation defines it (decoded values are unaffected):
//   * non-finite inputs are read as 0 (left out of the scale and encoded as the code of 0);
//   * float->int conversions that would overflow in ggml (scales so tiny that 1/d overflows) saturate
//     to the code range and a NaN product takes the code of 0; the stored f16 d is 0 then;
//   * an iq4_nl block with max|x| < 1e-15 (ggml leaves its nibbles stale) gets d = 0 and nibbles 0x88.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/scalar/floats.hpp"
#include "kvcodec/core/scalar/half.hpp"

namespace kvcodec::ggml {

inline constexpr std::size_t qk = 32;

enum class block_type : std::uint8_t { q8_0 = 0, q4_0 = 1, q4_1 = 2, q5_0 = 3, q5_1 = 4, iq4_nl = 5 };

KVCODEC_HD constexpr std::size_t block_bytes(block_type t) noexcept {
  switch (t) {
    case block_type::q8_0: return 34;
    case block_type::q4_0: return 18;
    case block_type::q4_1: return 20;
    case block_type::q5_0: return 22;
    case block_type::q5_1: return 24;
    case block_type::iq4_nl: return 18;
  }
  return 0;
}

/// ggml's type names ("q8_0", ..., "iq4_nl").
constexpr std::string_view block_type_name(block_type t) noexcept {
  switch (t) {
    case block_type::q8_0: return "q8_0";
    case block_type::q4_0: return "q4_0";
    case block_type::q4_1: return "q4_1";
    case block_type::q5_0: return "q5_0";
    case block_type::q5_1: return "q5_1";
    case block_type::iq4_nl: return "iq4_nl";
  }
  return "?";
}

inline std::optional<block_type> parse_block_type(std::string_view s) noexcept {
  for (int i = 0; i <= 5; ++i) {
    const auto t = static_cast<block_type>(i);
    if (s == block_type_name(t)) return t;
  }
  return std::nullopt;
}

/// The 16 non-linear iq4_nl levels (ggml-common.h kvalues_iq4nl).
KVCODEC_HD inline int iq4nl_value(int i) noexcept {
  const std::int8_t v[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  return v[i & 15];
}

namespace detail {

KVCODEC_HD inline float finite_or_zero(float v) noexcept { return kvcodec::detail::is_finite_f32(v) ? v : 0.0f; }

KVCODEC_HD inline void put_f16(std::uint8_t* p, float v) noexcept { kvcodec::detail::store_le16(p, f32_to_f16_bits(v)); }

KVCODEC_HD inline float get_f16(const std::uint8_t* p) noexcept { return f16_bits_to_f32(kvcodec::detail::load_le16(p)); }

/// C's float->integer conversion (truncation toward zero) where defined, saturated to [lo, hi]
/// otherwise; NaN gives `nan_code`.
KVCODEC_HD inline int trunc_sat(float v, int lo, int hi, int nan_code) noexcept {
  if (kvcodec::detail::is_nan_f32(v)) return nan_code;
  if (v <= static_cast<float>(lo)) return lo;
  if (v >= static_cast<float>(hi)) return hi;
  return static_cast<int>(v);
}

/// Signed value of largest magnitude (the first one on ties), as ggml's q4_0 / q5_0 / iq4_nl pick it.
KVCODEC_HD inline float signed_absmax(const float* x, float* amax_out) noexcept {
  float amax = 0.0f, mx = 0.0f;
  for (std::size_t j = 0; j < qk; ++j) {
    const float v = finite_or_zero(x[j]);
    if (amax < std::fabs(v)) {
      amax = std::fabs(v);
      mx = v;
    }
  }
  if (amax_out) *amax_out = amax;
  return mx;
}

KVCODEC_HD inline void min_max(const float* x, float* mn, float* mx) noexcept {
  float lo = 3.40282347e+38f, hi = -3.40282347e+38f;
  for (std::size_t j = 0; j < qk; ++j) {
    const float v = finite_or_zero(x[j]);
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  *mn = lo;
  *mx = hi;
}

/// ggml's best_index_int8 over kvalues_iq4nl: nearest level, the upper one on ties.
KVCODEC_HD inline int iq4nl_best_index(float x) noexcept {
  if (x <= static_cast<float>(iq4nl_value(0))) return 0;
  if (x >= static_cast<float>(iq4nl_value(15))) return 15;
  int ml = 0, mu = 15;
  while (mu - ml > 1) {
    const int mav = (ml + mu) / 2;
    if (x < static_cast<float>(iq4nl_value(mav)))
      mu = mav;
    else
      ml = mav;
  }
  return x - static_cast<float>(iq4nl_value(mu - 1)) < static_cast<float>(iq4nl_value(mu)) - x ? mu - 1 : mu;
}

}  // namespace detail

// ---- q8_0 ---------------------------------------------------------------------------------------

KVCODEC_HD inline void quantize_block_q8_0(const float* x, std::uint8_t* out) noexcept {
  float amax = 0.0f;
  for (std::size_t j = 0; j < qk; ++j) {
    const float a = std::fabs(detail::finite_or_zero(x[j]));
    amax = amax > a ? amax : a;
  }
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  detail::put_f16(out, d);
  for (std::size_t j = 0; j < qk; ++j) {
    const float v = kvcodec::detail::mul_rn(detail::finite_or_zero(x[j]), id);
    const int q = kvcodec::detail::is_nan_f32(v) ? 0 : (v >= 127.0f ? 127 : (v <= -127.0f ? -127 : static_cast<int>(std::round(v))));
    out[2 + j] = static_cast<std::uint8_t>(static_cast<std::int8_t>(q));
  }
}

/// Value k (0..31) of a q8_0 block (the per-block decoder is the loop over it; the GPU decodes one
/// value per thread).
KVCODEC_HD inline float dequantize_value_q8_0(const std::uint8_t* in, std::size_t k) noexcept {
  return kvcodec::detail::mul_rn(static_cast<float>(static_cast<std::int8_t>(in[2 + k])), detail::get_f16(in));
}
KVCODEC_HD inline void dequantize_block_q8_0(const std::uint8_t* in, float* y) noexcept {
  for (std::size_t k = 0; k < qk; ++k) y[k] = dequantize_value_q8_0(in, k);
}

// ---- q4_0 ---------------------------------------------------------------------------------------

KVCODEC_HD inline void quantize_block_q4_0(const float* x, std::uint8_t* out) noexcept {
  const float mx = detail::signed_absmax(x, nullptr);
  const float d = mx / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  detail::put_f16(out, d);
  for (std::size_t j = 0; j < qk / 2; ++j) {
    const float x0 = kvcodec::detail::mul_rn(detail::finite_or_zero(x[j]), id);
    const float x1 = kvcodec::detail::mul_rn(detail::finite_or_zero(x[j + qk / 2]), id);
    const int q0 = detail::trunc_sat(x0 + 8.5f, 0, 15, 8);
    const int q1 = detail::trunc_sat(x1 + 8.5f, 0, 15, 8);
    out[2 + j] = static_cast<std::uint8_t>(q0 | (q1 << 4));
  }
}

namespace detail {
/// Nibble of value k in the 16 bytes at q: byte k % 16, low nibble for k < 16.
KVCODEC_HD inline int nibble(const std::uint8_t* q, std::size_t k) noexcept { return k < qk / 2 ? q[k] & 0x0f : q[k - qk / 2] >> 4; }
/// Fifth bit of value k (q5_*): bit k of qh, as the value's 16.
KVCODEC_HD inline int high_bit(std::uint32_t qh, std::size_t k) noexcept { return static_cast<int>((qh >> k) & 1u) << 4; }
}  // namespace detail

KVCODEC_HD inline float dequantize_value_q4_0(const std::uint8_t* in, std::size_t k) noexcept {
  return kvcodec::detail::mul_rn(static_cast<float>(detail::nibble(in + 2, k) - 8), detail::get_f16(in));
}
KVCODEC_HD inline void dequantize_block_q4_0(const std::uint8_t* in, float* y) noexcept {
  for (std::size_t k = 0; k < qk; ++k) y[k] = dequantize_value_q4_0(in, k);
}

// ---- q4_1 ---------------------------------------------------------------------------------------

KVCODEC_HD inline void quantize_block_q4_1(const float* x, std::uint8_t* out) noexcept {
  float mn, mx;
  detail::min_max(x, &mn, &mx);
  const float d = (mx - mn) / 15.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  detail::put_f16(out, d);
  detail::put_f16(out + 2, mn);
  for (std::size_t j = 0; j < qk / 2; ++j) {
    const float x0 = kvcodec::detail::mul_rn(detail::finite_or_zero(x[j]) - mn, id);
    const float x1 = kvcodec::detail::mul_rn(detail::finite_or_zero(x[j + qk / 2]) - mn, id);
    const int q0 = detail::trunc_sat(x0 + 0.5f, 0, 15, 0);
    const int q1 = detail::trunc_sat(x1 + 0.5f, 0, 15, 0);
    out[4 + j] = static_cast<std::uint8_t>(q0 | (q1 << 4));
  }
}

KVCODEC_HD inline float dequantize_value_q4_1(const std::uint8_t* in, std::size_t k) noexcept {
  return kvcodec::detail::add_rn(kvcodec::detail::mul_rn(static_cast<float>(detail::nibble(in + 4, k)), detail::get_f16(in)), detail::get_f16(in + 2));
}
KVCODEC_HD inline void dequantize_block_q4_1(const std::uint8_t* in, float* y) noexcept {
  for (std::size_t k = 0; k < qk; ++k) y[k] = dequantize_value_q4_1(in, k);
}

// ---- q5_0 ---------------------------------------------------------------------------------------

KVCODEC_HD inline void quantize_block_q5_0(const float* x, std::uint8_t* out) noexcept {
  const float mx = detail::signed_absmax(x, nullptr);
  const float d = mx / -16.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  detail::put_f16(out, d);
  std::uint32_t qh = 0;
  for (std::size_t j = 0; j < qk / 2; ++j) {
    const float x0 = kvcodec::detail::mul_rn(detail::finite_or_zero(x[j]), id);
    const float x1 = kvcodec::detail::mul_rn(detail::finite_or_zero(x[j + qk / 2]), id);
    const std::uint32_t q0 = static_cast<std::uint32_t>(detail::trunc_sat(x0 + 16.5f, 0, 31, 16));
    const std::uint32_t q1 = static_cast<std::uint32_t>(detail::trunc_sat(x1 + 16.5f, 0, 31, 16));
    out[6 + j] = static_cast<std::uint8_t>((q0 & 0x0fu) | ((q1 & 0x0fu) << 4));
    qh |= ((q0 & 0x10u) >> 4) << j;
    qh |= ((q1 & 0x10u) >> 4) << (j + qk / 2);
  }
  kvcodec::detail::store_le32(out + 2, qh);
}

KVCODEC_HD inline float dequantize_value_q5_0(const std::uint8_t* in, std::size_t k) noexcept {
  const int q = detail::nibble(in + 6, k) | detail::high_bit(kvcodec::detail::load_le32(in + 2), k);
  return kvcodec::detail::mul_rn(static_cast<float>(q - 16), detail::get_f16(in));
}
KVCODEC_HD inline void dequantize_block_q5_0(const std::uint8_t* in, float* y) noexcept {
  for (std::size_t k = 0; k < qk; ++k) y[k] = dequantize_value_q5_0(in, k);
}

// ---- q5_1 ---------------------------------------------------------------------------------------

KVCODEC_HD inline void quantize_block_q5_1(const float* x, std::uint8_t* out) noexcept {
  float mn, mx;
  detail::min_max(x, &mn, &mx);
  const float d = (mx - mn) / 31.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  detail::put_f16(out, d);
  detail::put_f16(out + 2, mn);
  std::uint32_t qh = 0;
  for (std::size_t j = 0; j < qk / 2; ++j) {
    const float x0 = kvcodec::detail::mul_rn(detail::finite_or_zero(x[j]) - mn, id);
    const float x1 = kvcodec::detail::mul_rn(detail::finite_or_zero(x[j + qk / 2]) - mn, id);
    const std::uint32_t q0 = static_cast<std::uint32_t>(detail::trunc_sat(x0 + 0.5f, 0, 31, 0));
    const std::uint32_t q1 = static_cast<std::uint32_t>(detail::trunc_sat(x1 + 0.5f, 0, 31, 0));
    out[8 + j] = static_cast<std::uint8_t>((q0 & 0x0fu) | ((q1 & 0x0fu) << 4));
    qh |= ((q0 & 0x10u) >> 4) << j;
    qh |= ((q1 & 0x10u) >> 4) << (j + qk / 2);
  }
  kvcodec::detail::store_le32(out + 4, qh);
}

KVCODEC_HD inline float dequantize_value_q5_1(const std::uint8_t* in, std::size_t k) noexcept {
  const int q = detail::nibble(in + 8, k) | detail::high_bit(kvcodec::detail::load_le32(in + 4), k);
  return kvcodec::detail::add_rn(kvcodec::detail::mul_rn(static_cast<float>(q), detail::get_f16(in)), detail::get_f16(in + 2));
}
KVCODEC_HD inline void dequantize_block_q5_1(const std::uint8_t* in, float* y) noexcept {
  for (std::size_t k = 0; k < qk; ++k) y[k] = dequantize_value_q5_1(in, k);
}

// ---- iq4_nl -------------------------------------------------------------------------------------

/// ggml's quantize_row_iq4_nl_impl for one 32-value block without importance weights (weights x²).
/// ntry = -1 is quantize_row_iq4_nl_ref (no scale search); ntry = 7 is quantize_iq4_nl without an
/// imatrix (scale search over 2·ntry+1 candidates, then requantization with the best scale).
KVCODEC_HD inline void quantize_block_iq4_nl_search(const float* xin, std::uint8_t* out, int ntry) noexcept {
  using kvcodec::detail::add_rn;
  using kvcodec::detail::mul_rn;
  float x[qk];
  for (std::size_t j = 0; j < qk; ++j) x[j] = detail::finite_or_zero(xin[j]);
  std::uint8_t L[qk];
  float amax = 0.0f;
  const float mx = detail::signed_absmax(x, &amax);
  if (amax < 1e-15f) {
    detail::put_f16(out, 0.0f);
    for (std::size_t j = 0; j < qk / 2; ++j) out[2 + j] = 0x88;
    return;
  }
  const float v0 = static_cast<float>(iq4nl_value(0));
  float d = ntry > 0 ? -mx / v0 : mx / v0;
  float id = 1.0f / d;
  float sumqx = 0.0f, sumq2 = 0.0f;
  for (std::size_t j = 0; j < qk; ++j) {
    const float al = mul_rn(id, x[j]);
    const int l = detail::iq4nl_best_index(al);
    L[j] = static_cast<std::uint8_t>(l);
    const float q = static_cast<float>(iq4nl_value(l));
    const float w = mul_rn(x[j], x[j]);
    sumqx = add_rn(sumqx, mul_rn(mul_rn(w, q), x[j]));
    sumq2 = add_rn(sumq2, mul_rn(mul_rn(w, q), q));
  }
  d = sumq2 > 0.0f ? sumqx / sumq2 : 0.0f;
  float best = mul_rn(d, sumqx);
  for (int itry = -ntry; itry <= ntry; ++itry) {
    id = static_cast<float>(itry + iq4nl_value(0)) / mx;
    sumqx = sumq2 = 0.0f;
    for (std::size_t j = 0; j < qk; ++j) {
      const float al = mul_rn(id, x[j]);
      const int l = detail::iq4nl_best_index(al);
      const float q = static_cast<float>(iq4nl_value(l));
      const float w = mul_rn(x[j], x[j]);
      sumqx = add_rn(sumqx, mul_rn(mul_rn(w, q), x[j]));
      sumq2 = add_rn(sumq2, mul_rn(mul_rn(w, q), q));
    }
    if (sumq2 > 0.0f && mul_rn(sumqx, sumqx) > mul_rn(best, sumq2)) {
      d = sumqx / sumq2;
      best = mul_rn(d, sumqx);
    }
  }
  detail::put_f16(out, d);
  if (ntry > 0) {
    const float idf = d != 0.0f ? 1.0f / d : 0.0f;
    for (std::size_t j = 0; j < qk; ++j) L[j] = static_cast<std::uint8_t>(detail::iq4nl_best_index(mul_rn(idf, x[j])));
  }
  for (std::size_t j = 0; j < qk / 2; ++j) out[2 + j] = static_cast<std::uint8_t>(L[j] | (L[j + qk / 2] << 4));
}

/// quantize_row_iq4_nl_ref for one block (what ggml's CPU backend stores in an iq4_nl KV cache).
KVCODEC_HD inline void quantize_block_iq4_nl(const float* x, std::uint8_t* out) noexcept {
  quantize_block_iq4_nl_search(x, out, -1);
}

KVCODEC_HD inline float dequantize_value_iq4_nl(const std::uint8_t* in, std::size_t k) noexcept {
  return kvcodec::detail::mul_rn(detail::get_f16(in), static_cast<float>(iq4nl_value(detail::nibble(in + 2, k))));
}
KVCODEC_HD inline void dequantize_block_iq4_nl(const std::uint8_t* in, float* y) noexcept {
  for (std::size_t k = 0; k < qk; ++k) y[k] = dequantize_value_iq4_nl(in, k);
}

// ---- dispatch and rows --------------------------------------------------------------------------

KVCODEC_HD inline void quantize_block(block_type t, const float* x, std::uint8_t* out) noexcept {
  switch (t) {
    case block_type::q8_0: quantize_block_q8_0(x, out); break;
    case block_type::q4_0: quantize_block_q4_0(x, out); break;
    case block_type::q4_1: quantize_block_q4_1(x, out); break;
    case block_type::q5_0: quantize_block_q5_0(x, out); break;
    case block_type::q5_1: quantize_block_q5_1(x, out); break;
    case block_type::iq4_nl: quantize_block_iq4_nl(x, out); break;
  }
}

KVCODEC_HD inline void dequantize_block(block_type t, const std::uint8_t* in, float* y) noexcept {
  switch (t) {
    case block_type::q8_0: dequantize_block_q8_0(in, y); break;
    case block_type::q4_0: dequantize_block_q4_0(in, y); break;
    case block_type::q4_1: dequantize_block_q4_1(in, y); break;
    case block_type::q5_0: dequantize_block_q5_0(in, y); break;
    case block_type::q5_1: dequantize_block_q5_1(in, y); break;
    case block_type::iq4_nl: dequantize_block_iq4_nl(in, y); break;
  }
}

/// Value k (0..31) of a block of type t: dequantize_block's y[k].
KVCODEC_HD inline float dequantize_value(block_type t, const std::uint8_t* in, std::size_t k) noexcept {
  switch (t) {
    case block_type::q8_0: return dequantize_value_q8_0(in, k);
    case block_type::q4_0: return dequantize_value_q4_0(in, k);
    case block_type::q4_1: return dequantize_value_q4_1(in, k);
    case block_type::q5_0: return dequantize_value_q5_0(in, k);
    case block_type::q5_1: return dequantize_value_q5_1(in, k);
    case block_type::iq4_nl: return dequantize_value_iq4_nl(in, k);
  }
  return 0.0f;
}

/// Throws a usage error unless n is a multiple of 32.
inline void check_row(block_type t, std::size_t n) {
  if (n % qk != 0)
    throw_usage(describe_mismatch(std::string("ggml ") + std::string(block_type_name(t)) + " row", "n",
                                  "a multiple of 32 (the block size)", std::to_string(n)));
}

/// Bytes of a row of n values (n a multiple of 32).
inline std::size_t row_bytes(block_type t, std::size_t n) {
  check_row(t, n);
  return n / qk * block_bytes(t);
}

// ---- scalar row loops (the references of core/x86/ggml_blocks.hpp) --------------------------------

namespace detail {

/// nb blocks of type t, one at a time.
inline void quantize_row_ref(block_type t, const float* x, std::size_t nb, std::uint8_t* out) noexcept {
  for (std::size_t b = 0; b < nb; ++b) quantize_block(t, x + b * qk, out + b * block_bytes(t));
}

inline void dequantize_row_ref(block_type t, const std::uint8_t* in, std::size_t nb, float* y) noexcept {
  for (std::size_t b = 0; b < nb; ++b) dequantize_block(t, in + b * block_bytes(t), y + b * qk);
}

/// dequantize_row_ref's values as f16 (f32_to_f16_bits).
inline void dequantize_row_f16_ref(block_type t, const std::uint8_t* in, std::size_t nb, std::uint16_t* y) noexcept {
  float tmp[qk];
  for (std::size_t b = 0; b < nb; ++b) {
    dequantize_block(t, in + b * block_bytes(t), tmp);
    for (std::size_t j = 0; j < qk; ++j) y[b * qk + j] = f32_to_f16_bits(tmp[j]);
  }
}

}  // namespace detail

}  // namespace kvcodec::ggml
