// kvcodec/core/scalar/affine.hpp — uniform (affine) quantization of groups of floats to 1..8-bit
// symbols and LSB-first bit-packing of those symbols: the per-value math (host and device) and the
// scalar bulk loops (detail::*_ref) that the AVX2 kernels of core/x86/affine.hpp equal bit for bit.
//
// Follows the per-group uniform quantizers of KIVI / KVQuant / llama.cpp's q4_1 (asymmetric:
// x ≈ q·scale + min, q in [0, 2^b-1]) and q4_0 / q8_0 (symmetric: x ≈ (q - 2^(b-1))·scale with
// scale = max|x| / (2^(b-1)-1), q in [1, 2^b-1]; code 0 is never produced, so the levels are symmetric
// about zero). A group is n values read with a stride, so groups can run along tokens or channels.
//
// Invariant: parameters are rounded to their storage dtype (f16 or f32) *before* any symbol is chosen,
// and the dequantizer reads only the stored parameters, so encoder and decoder agree bit for bit.
// A constant group gets scale 0 and decodes exactly to its (stored) min; no division by zero happens.
// f16-stored parameters saturate to ±65504.
//
// Non-finite inputs: they are left out of the range (min/max/absmax) computation; NaN encodes as the
// zero point (the code whose value is nearest 0), +Inf as the largest code, -Inf as the smallest code.
// A group with no finite value gets scale 0 and min 0.
//
// Packing: symbol i occupies bits [i·b, (i+1)·b) of a little-endian bit stream (bit k is bit k%8 of
// byte k/8); the unused high bits of the last byte are zero. Symbols are masked to b bits.
//
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/scalar/floats.hpp"
#include "kvcodec/core/scalar/half.hpp"

namespace kvcodec::affine {

enum class mode : std::uint8_t { asymmetric = 0, symmetric = 1 };
enum class param_dtype : std::uint8_t { f32 = 0, f16 = 1 };

/// asymmetric: x̂ = q·scale + min.  symmetric: x̂ = (q - 2^(bits-1))·scale (min is 0 and not stored).
struct params {
  float scale = 0.0f;
  float min = 0.0f;
};

KVCODEC_HD inline std::uint32_t max_code(int bits) noexcept { return (1u << bits) - 1u; }
KVCODEC_HD inline std::uint32_t sym_zero(int bits) noexcept { return 1u << (bits - 1); }

/// Rounds a parameter to its storage dtype; f16 saturates to ±65504 instead of becoming Inf.
KVCODEC_HD inline float round_param(float v, param_dtype pd) noexcept {
  if (pd == param_dtype::f32) return v;
  std::uint16_t h = f32_to_f16_bits(v);
  if ((h & 0x7fffu) == 0x7c00u) h = static_cast<std::uint16_t>((h & 0x8000u) | 0x7bffu);
  return f16_bits_to_f32(h);
}

/// round_param as a function object (the vector paths pass an F16C one with identical results).
struct round_param_fn {
  KVCODEC_HD float operator()(float v, param_dtype pd) const noexcept { return round_param(v, pd); }
};

/// Asymmetric parameters of a group whose finite values span [lo, hi] (lo = hi = 0 when none is finite).
template <class Round = round_param_fn>
KVCODEC_HD inline params params_from_range(float lo, float hi, int bits, param_dtype pd, Round round = {}) noexcept {
  params p;
  p.min = round(lo, pd);
  const float range = static_cast<float>(static_cast<double>(hi) - static_cast<double>(p.min));
  const float s = range > 0.0f ? static_cast<float>(static_cast<double>(range) / max_code(bits)) : 0.0f;
  p.scale = round(s, pd);
  if (!kvcodec::detail::is_finite_f32(p.scale)) p.scale = round(3.4028234663852886e38f, pd);
  return p;
}

/// Symmetric parameters of a group whose finite values have max |x| = amax.
template <class Round = round_param_fn>
KVCODEC_HD inline params params_from_amax(float amax, int bits, param_dtype pd, Round round = {}) noexcept {
  params p;
  p.scale = round(amax / static_cast<float>(sym_zero(bits) - 1u), pd);
  p.min = 0.0f;
  return p;
}

/// A group's parameters gathered one value at a time (what compute_params does over an array; the
/// batch encoders read a group from a strided or paged view): the finite values' range (asymmetric)
/// and max |x| (symmetric).
struct params_acc {
  float lo = 0.0f, hi = 0.0f, amax = 0.0f;
  bool any = false;
  KVCODEC_HD void add(float v) noexcept {
    if (!kvcodec::detail::is_finite_f32(v)) return;
    if (!any) {
      lo = hi = v;
      any = true;
    } else {
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
    const float a = bit_cast_hd<float>(bit_cast_hd<std::uint32_t>(v) & 0x7fffffffu);  // finite_amax_ref's |v|
    amax = a > amax ? a : amax;
  }
  KVCODEC_HD params finish(int bits, mode m, param_dtype pd) const noexcept {
    return m == mode::asymmetric ? params_from_range(lo, hi, bits, pd) : params_from_amax(amax, bits, pd);
  }
};

/// Parameters of a group of n values x[0], x[stride], ..., already rounded to storage dtype `pd`.
/// `bits` must be 1..8 (asymmetric) or 2..8 (symmetric): validate with check_spec on the host.
KVCODEC_HD inline params compute_params(const float* x, std::size_t n, std::size_t stride, int bits, mode m,
                                        param_dtype pd) noexcept {
  params_acc a;
  for (std::size_t i = 0; i < n; ++i) a.add(x[i * stride]);
  return a.finish(bits, m, pd);
}

/// The code of one value (round half up, clamped); see the header comment for non-finite values.
KVCODEC_HD inline std::uint32_t quantize_value(float v, const params& p, int bits, mode m) noexcept {
  if (m == mode::asymmetric) {
    const std::uint32_t top = max_code(bits);
    if (kvcodec::detail::is_nan_f32(v)) v = 0.0f;
    if (!(p.scale > 0.0f)) return 0u;
    const double t = (static_cast<double>(v) - static_cast<double>(p.min)) / static_cast<double>(p.scale);
    if (!(t > 0.0)) return 0u;
    if (t >= static_cast<double>(top)) return top;
    return static_cast<std::uint32_t>(std::floor(t + 0.5));
  }
  const std::uint32_t zp = sym_zero(bits);
  if (kvcodec::detail::is_nan_f32(v) || !(p.scale > 0.0f)) return zp;
  const double lim = static_cast<double>(zp - 1u);
  double t = static_cast<double>(v) / static_cast<double>(p.scale);
  t = t < -lim ? -lim : (t > lim ? lim : t);
  return static_cast<std::uint32_t>(static_cast<std::int32_t>(std::floor(t + 0.5)) + static_cast<std::int32_t>(zp));
}

KVCODEC_HD inline float dequantize_value(std::uint32_t q, const params& p, int bits, mode m) noexcept {
  if (m == mode::asymmetric) return kvcodec::detail::add_rn(kvcodec::detail::mul_rn(static_cast<float>(q), p.scale), p.min);
  return kvcodec::detail::mul_rn(static_cast<float>(static_cast<std::int32_t>(q) - static_cast<std::int32_t>(sym_zero(bits))),
                        p.scale);
}

/// Codes of a group: q[i·qstride] = quantize_value(x[i·xstride]).
KVCODEC_HD inline void quantize_group(const float* x, std::size_t n, std::size_t xstride, const params& p, int bits,
                                      mode m, std::uint8_t* q, std::size_t qstride) noexcept {
  for (std::size_t i = 0; i < n; ++i)
    q[i * qstride] = static_cast<std::uint8_t>(quantize_value(x[i * xstride], p, bits, m));
}

KVCODEC_HD inline void dequantize_group(const std::uint8_t* q, std::size_t n, std::size_t qstride, const params& p,
                                        int bits, mode m, float* y, std::size_t ystride) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i * ystride] = dequantize_value(q[i * qstride], p, bits, m);
}

// ---- parameter storage ---------------------------------------------------------------------------

/// Bytes one group's parameters take: asymmetric stores scale then min, symmetric only scale.
KVCODEC_HD inline std::size_t param_bytes(mode m, param_dtype pd) noexcept {
  const std::size_t one = pd == param_dtype::f16 ? 2u : 4u;
  return m == mode::asymmetric ? 2u * one : one;
}

/// Writes the parameters little-endian; returns the bytes written (param_bytes).
KVCODEC_HD inline std::size_t store_params(const params& p, mode m, param_dtype pd, std::uint8_t* out) noexcept {
  const float vals[2] = {p.scale, p.min};
  const int count = m == mode::asymmetric ? 2 : 1;
  std::size_t off = 0;
  for (int k = 0; k < count; ++k) {
    if (pd == param_dtype::f16) {
      kvcodec::detail::store_le16(out + off, f32_to_f16_bits(round_param(vals[k], pd)));
      off += 2;
    } else {
      kvcodec::detail::store_le(out + off, vals[k]);
      off += 4;
    }
  }
  return off;
}

KVCODEC_HD inline params load_params(const std::uint8_t* in, mode m, param_dtype pd) noexcept {
  float vals[2] = {0.0f, 0.0f};
  const int count = m == mode::asymmetric ? 2 : 1;
  std::size_t off = 0;
  for (int k = 0; k < count; ++k) {
    if (pd == param_dtype::f16) {
      vals[k] = f16_bits_to_f32(kvcodec::detail::load_le16(in + off));
      off += 2;
    } else {
      vals[k] = kvcodec::detail::load_le<float>(in + off);
      off += 4;
    }
  }
  return params{vals[0], vals[1]};
}

// ---- bit packing ---------------------------------------------------------------------------------

KVCODEC_HD inline std::size_t packed_bytes(std::size_t n, int bits) noexcept {
  return (n * static_cast<std::size_t>(bits) + 7u) / 8u;
}

/// Packs n symbols of `bits` (1..8) bits LSB-first into packed_bytes(n, bits) bytes.
KVCODEC_HD inline void pack_bits(const std::uint8_t* sym, std::size_t n, int bits, std::uint8_t* out) noexcept {
  const std::size_t nb = packed_bytes(n, bits);
  if (bits == 8) {
    for (std::size_t i = 0; i < n; ++i) out[i] = sym[i];
    return;
  }
  if (bits == 1 || bits == 2 || bits == 4) {
    const std::size_t per = 8u / static_cast<std::size_t>(bits);
    const std::uint32_t mask = (1u << bits) - 1u;
    for (std::size_t b = 0; b < nb; ++b) {
      std::uint32_t v = 0;
      const std::size_t i0 = b * per;
      for (std::size_t k = 0; k < per && i0 + k < n; ++k) v |= (sym[i0 + k] & mask) << (k * bits);
      out[b] = static_cast<std::uint8_t>(v);
    }
    return;
  }
  for (std::size_t b = 0; b < nb; ++b) out[b] = 0;
  const std::uint32_t mask = (1u << bits) - 1u;
  std::size_t bit = 0;
  for (std::size_t i = 0; i < n; ++i, bit += static_cast<std::size_t>(bits)) {
    const std::uint32_t v = (sym[i] & mask) << (bit & 7u);
    const std::size_t byte = bit >> 3;
    out[byte] = static_cast<std::uint8_t>(out[byte] | (v & 0xffu));
    if ((bit & 7u) + static_cast<std::size_t>(bits) > 8u) out[byte + 1] = static_cast<std::uint8_t>(out[byte + 1] | (v >> 8));
  }
}

/// Inverse of pack_bits: reads packed_bytes(n, bits) bytes, writes n symbols.
KVCODEC_HD inline void unpack_bits(const std::uint8_t* in, std::size_t n, int bits, std::uint8_t* sym) noexcept {
  if (bits == 8) {
    for (std::size_t i = 0; i < n; ++i) sym[i] = in[i];
    return;
  }
  const std::uint32_t mask = (1u << bits) - 1u;
  if (bits == 1 || bits == 2 || bits == 4) {
    const std::size_t per = 8u / static_cast<std::size_t>(bits);
    for (std::size_t i = 0; i < n; ++i)
      sym[i] = static_cast<std::uint8_t>((in[i / per] >> ((i % per) * static_cast<std::size_t>(bits))) & mask);
    return;
  }
  std::size_t bit = 0;
  for (std::size_t i = 0; i < n; ++i, bit += static_cast<std::size_t>(bits)) {
    const std::size_t byte = bit >> 3;
    std::uint32_t v = in[byte];
    if ((bit & 7u) + static_cast<std::size_t>(bits) > 8u) v |= static_cast<std::uint32_t>(in[byte + 1]) << 8;
    sym[i] = static_cast<std::uint8_t>((v >> (bit & 7u)) & mask);
  }
}

// ---- scalar bulk loops (the references of core/x86/affine.hpp) ---------------------------------------------------------------------------

namespace detail {

template <class Sym>
inline void quantize_groups_ref(const float* x, std::size_t ngroups, std::size_t G, int bits, mode m, param_dtype pd,
                                std::uint8_t* side, Sym* q) noexcept {
  const std::size_t pb = param_bytes(m, pd);
  for (std::size_t g = 0; g < ngroups; ++g) {
    const float* xg = x + g * G;
    const params p = compute_params(xg, G, 1, bits, m, pd);
    store_params(p, m, pd, side + g * pb);
    for (std::size_t i = 0; i < G; ++i) q[g * G + i] = static_cast<Sym>(quantize_value(xg[i], p, bits, m));
  }
}

template <class Sym>
inline void dequantize_groups_ref(const Sym* q, const std::uint8_t* side, std::size_t ngroups, std::size_t G, int bits, mode m,
                                  param_dtype pd, float* y) noexcept {
  const std::size_t pb = param_bytes(m, pd);
  for (std::size_t g = 0; g < ngroups; ++g) {
    const params p = load_params(side + g * pb, m, pd);
    for (std::size_t i = 0; i < G; ++i) y[g * G + i] = dequantize_value(q[g * G + i], p, bits, m);
  }
}

template <class Sym>
inline void quantize_columns_ref(const float* x, std::size_t n, std::size_t ncols, std::size_t ld, int bits, mode m,
                                 param_dtype pd, std::uint8_t* side, Sym* q) noexcept {
  const std::size_t pb = param_bytes(m, pd);
  for (std::size_t c = 0; c < ncols; ++c) {
    const params p = compute_params(x + c, n, ld, bits, m, pd);
    store_params(p, m, pd, side + c * pb);
    for (std::size_t i = 0; i < n; ++i) q[i * ld + c] = static_cast<Sym>(quantize_value(x[i * ld + c], p, bits, m));
  }
}

template <class Sym>
inline void dequantize_columns_ref(const Sym* q, const std::uint8_t* side, std::size_t n, std::size_t ncols, std::size_t ld, int bits,
                                   mode m, param_dtype pd, float* y) noexcept {
  const std::size_t pb = param_bytes(m, pd);
  for (std::size_t c = 0; c < ncols; ++c) {
    const params p = load_params(side + c * pb, m, pd);
    for (std::size_t i = 0; i < n; ++i) y[i * ld + c] = dequantize_value(q[i * ld + c], p, bits, m);
  }
}

}  // namespace detail

// ---- host-side validation and convenience ----------------------------------------------------------

/// Throws a usage error unless bits fits the mode (asymmetric 1..8, symmetric 2..8).
inline void check_spec(int bits, mode m, const std::string& where = "affine") {
  const int lo = m == mode::asymmetric ? 1 : 2;
  if (bits < lo || bits > 8)
    throw_usage(describe_mismatch(where, "bits",
                                  std::to_string(lo) + "..8 for " +
                                      (m == mode::asymmetric ? "asymmetric" : "symmetric") + " quantization",
                                  std::to_string(bits)));
}

/// Validates, computes the group's stored parameters and writes its codes (q[i·qstride]).
inline params quantize(const float* x, std::size_t n, std::size_t xstride, int bits, mode m, param_dtype pd,
                       std::uint8_t* q, std::size_t qstride) {
  check_spec(bits, m);
  if (n > 0 && (x == nullptr || q == nullptr)) throw_usage("affine::quantize: null pointer for a non-empty group");
  const params p = compute_params(x, n, xstride, bits, m, pd);
  quantize_group(x, n, xstride, p, bits, m, q, qstride);
  return p;
}

}  // namespace kvcodec::affine
