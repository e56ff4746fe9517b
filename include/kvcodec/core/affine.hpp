// kvcodec/core/affine.hpp — uniform (affine) quantization of groups of floats to 1..8-bit symbols,
// and LSB-first bit-packing of those symbols.
//
// The per-value math (parameters, codes, parameter storage, packing; host and device) and its
// invariants are in core/scalar/affine.hpp. This header adds the bulk host entry points:
// quantize_groups / dequantize_groups for runs of contiguous groups, *_columns for strided groups,
// *_packed with bit packing, pack_bits_fast / unpack_bits_fast. They run the AVX2 kernels of
// core/x86/affine.hpp when core/simd.hpp allows and the scalar references (detail::*_ref) otherwise,
// with the same bytes either way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcodec/core/half.hpp"
#include "kvcodec/core/scalar/affine.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/core/x86/affine.hpp"

namespace kvcodec::affine {

/// Quantizes `ngroups` consecutive groups of G contiguous values: group g's parameters go to
/// side + g·param_bytes (store_params layout), its codes to q[g·G .. g·G + G). bits as compute_params.
template <class Sym>
inline void quantize_groups(const float* x, std::size_t ngroups, std::size_t G, int bits, mode m, param_dtype pd, std::uint8_t* side,
                            Sym* q) noexcept {
#if KVCODEC_X86_DISPATCH
  if (G > 0 && G % 8 == 0 && simd::avx2()) return detail::quantize_groups_avx2(x, ngroups, G, bits, m, pd, side, q);
#endif
  detail::quantize_groups_ref(x, ngroups, G, bits, m, pd, side, q);
}

/// Inverse of quantize_groups (codes must be < 2^bits).
template <class Sym>
inline void dequantize_groups(const Sym* q, const std::uint8_t* side, std::size_t ngroups, std::size_t G, int bits, mode m, param_dtype pd,
                              float* y) noexcept {
#if KVCODEC_X86_DISPATCH
  if (G > 0 && G % 8 == 0 && simd::avx2()) return detail::dequantize_groups_avx2(q, side, ngroups, G, bits, m, pd, y);
#endif
  detail::dequantize_groups_ref(q, side, ngroups, G, bits, m, pd, y);
}

/// Column groups of a row-major block: for c < ncols, the group of n values x[c], x[c + ld], ...; its
/// parameters go to side + c·param_bytes, its codes to q[i·ld + c].
template <class Sym>
inline void quantize_columns(const float* x, std::size_t n, std::size_t ncols, std::size_t ld, int bits, mode m, param_dtype pd,
                             std::uint8_t* side, Sym* q) noexcept {
  std::size_t c = 0;
#if KVCODEC_X86_DISPATCH
  if (simd::avx2())
    for (; c + 8 <= ncols; c += 8) detail::quantize_cols8_avx2(x + c, n, ld, bits, m, pd, side + c * param_bytes(m, pd), q + c);
#endif
  detail::quantize_columns_ref(x + c, n, ncols - c, ld, bits, m, pd, side + c * param_bytes(m, pd), q + c);
}

/// Inverse of quantize_columns.
template <class Sym>
inline void dequantize_columns(const Sym* q, const std::uint8_t* side, std::size_t n, std::size_t ncols, std::size_t ld, int bits, mode m,
                               param_dtype pd, float* y) noexcept {
  std::size_t c = 0;
#if KVCODEC_X86_DISPATCH
  if (simd::avx2())
    for (; c + 8 <= ncols; c += 8) detail::dequantize_cols8_avx2(q + c, side + c * param_bytes(m, pd), n, ld, bits, m, pd, y + c);
#endif
  detail::dequantize_columns_ref(q + c, side + c * param_bytes(m, pd), n, ncols - c, ld, bits, m, pd, y + c);
}

/// pack_bits / unpack_bits with the AVX2 kernels for 2-, 4- and 8-bit symbols (same bytes).
inline void pack_bits_fast(const std::uint8_t* sym, std::size_t n, int bits, std::uint8_t* out) noexcept {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return detail::pack_bits_avx2(sym, n, bits, out);
#endif
  pack_bits(sym, n, bits, out);
}
inline void unpack_bits_fast(const std::uint8_t* in, std::size_t n, int bits, std::uint8_t* sym) noexcept {
#if KVCODEC_X86_DISPATCH
  if (simd::avx2()) return detail::unpack_bits_avx2(in, n, bits, sym);
#endif
  unpack_bits(in, n, bits, sym);
}

namespace detail {
/// Groups per chunk of the *_packed functions: a multiple of 8 (so every chunk starts on a byte).
inline std::size_t packed_chunk(std::size_t G) noexcept {
  const std::size_t k = (4096 / G) / 8 * 8;
  return k < 8 ? 8 : k;
}
}  // namespace detail

/// quantize_groups with the codes of all groups bit-packed (pack_bits of the concatenated codes) into
/// `packed` (packed_bytes(ngroups·G, bits) bytes).
inline void quantize_groups_packed(const float* x, std::size_t ngroups, std::size_t G, int bits, mode m, param_dtype pd,
                                   std::uint8_t* side, std::uint8_t* packed) {
  if (G == 0 || ngroups == 0) return;
  const std::size_t chunk = detail::packed_chunk(G), pb = param_bytes(m, pd);
  std::vector<std::uint8_t> buf(chunk * G);
  for (std::size_t g = 0; g < ngroups; g += chunk) {
    const std::size_t k = ngroups - g < chunk ? ngroups - g : chunk;
    quantize_groups(x + g * G, k, G, bits, m, pd, side + g * pb, buf.data());
    pack_bits_fast(buf.data(), k * G, bits, packed + g * G * static_cast<std::size_t>(bits) / 8u);
  }
}

/// Inverse of quantize_groups_packed.
inline void dequantize_groups_packed(const std::uint8_t* packed, const std::uint8_t* side, std::size_t ngroups, std::size_t G, int bits,
                                     mode m, param_dtype pd, float* y) {
  if (G == 0 || ngroups == 0) return;
  const std::size_t chunk = detail::packed_chunk(G), pb = param_bytes(m, pd);
  std::vector<std::uint8_t> buf(chunk * G);
  for (std::size_t g = 0; g < ngroups; g += chunk) {
    const std::size_t k = ngroups - g < chunk ? ngroups - g : chunk;
    unpack_bits_fast(packed + g * G * static_cast<std::size_t>(bits) / 8u, k * G, bits, buf.data());
    dequantize_groups(buf.data(), side + g * pb, k, G, bits, m, pd, y + g * G);
  }
}

/// dequantize_groups_packed to f16 (f32_to_f16_bits of its values).
inline void dequantize_groups_packed_f16(const std::uint8_t* packed, const std::uint8_t* side, std::size_t ngroups, std::size_t G,
                                         int bits, mode m, param_dtype pd, std::uint16_t* y) {
  if (G == 0 || ngroups == 0) return;
  const std::size_t chunk = detail::packed_chunk(G), pb = param_bytes(m, pd);
  std::vector<std::uint8_t> buf(chunk * G);
  std::vector<float> f(chunk * G);
  for (std::size_t g = 0; g < ngroups; g += chunk) {
    const std::size_t k = ngroups - g < chunk ? ngroups - g : chunk;
    unpack_bits_fast(packed + g * G * static_cast<std::size_t>(bits) / 8u, k * G, bits, buf.data());
    dequantize_groups(buf.data(), side + g * pb, k, G, bits, m, pd, f.data());
    f32_to_f16_n(f.data(), k * G, y + g * G);
  }
}

}  // namespace kvcodec::affine
