// kvcodec/core/affine.hpp — uniform (affine) quantization of groups of floats to 1..8-bit symbols,
// and LSB-first bit-packing of those symbols.
//
// The per-value math (parameters, codes, parameter storage, packing; host and device) and its
// invariants are in core/scalar/affine.hpp. This header adds the bulk host entry points:
// quantize_groups / dequantize_groups for runs of contiguous groups, *_columns for strided groups,
// *_packed with bit packing, pack_bits_fast / unpack_bits_fast. They run the AVX2 kernels of
// core/x86/affine.hpp when core/simd.hpp allows and the scalar references (detail::*_ref) otherwise,
// with the same bytes either way. affine_batch_op is the batch decoders' element step for the affine
// quantizers `uniform` and `kivi`, affine_params_op, affine_code_op, affine_exact_check_op and
// affine_exact_op the batch encoders' (cuda/affine.cuh and the host emulations of pipeline/), with,
// for outliers > 0, affine_outlier_key_op, the selection (cuda::affine_outlier_select on a GPU,
// affine_outlier_select_emulated here) and affine_outlier_take_op.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <vector>

#include "kvcodec/core/atomic.hpp"
#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/half.hpp"
#include "kvcodec/core/kv_address.hpp"
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

namespace kvcodec {

/// One dense K or V block of a `uniform` or `kivi` container for a batch decoder (cpu/uniform.hpp,
/// cpu/kivi.hpp and qc::affine_encode's layout): each of the `heads` heads has `tokens` rows, of which
/// the first `q` are quantized (rows heads x q in the symbol plane) and the rest (kivi's residual) are
/// stored exactly. Symbols: u16 symbol `sym_first` on of the batch's symbols, or (packed != 0) `bits`-bit
/// LSB-first codes from byte `sym_first` of the batch's bytes. Group parameters from byte `params`;
/// per_channel: per head, ceil(q / G) groups of G rows, head_dim parameters each (G = group, or q when
/// group is 0); else per row, head_dim / group groups of channels. Exact rows from byte `exact`, in
/// dtype exact_dtype (0 f32, 1 f16, 2 bf16), heads in order.
struct affine_batch_block {
  std::uint64_t sym_first = 0, params = 0, exact = 0;
  std::uint32_t tokens = 0, q = 0, heads = 0;
  std::uint32_t bits = 4, group = 0, per_channel = 0, mode = 0, param_dtype = 0, exact_dtype = 0, packed = 0;
  std::int32_t layer = 0;
  std::uint32_t key = 1;
  std::int64_t t_first = 0;  ///< destination (encoders: source) token of a head's row 0
  std::int64_t t_end = 0;    ///< rows landing outside [0, t_end) are skipped
  std::uint64_t slot = 0;    ///< encoders: the block's index (its flag)
  std::uint64_t sym_off = 0; ///< decoders: the block's first symbol within the plane at sym_first (a head's part of a token-dropped block)
};

namespace detail {
/// Code k of a plane of `bits`-bit LSB-first codes starting at `base` (pack's layout, bits 1..8).
KVCODEC_HD inline std::uint32_t packed_code(const std::uint8_t* base, std::uint64_t k, std::uint32_t bits) noexcept {
  const std::uint64_t bit = k * bits;
  const std::uint8_t* p = base + bit / 8;
  const std::uint32_t two = static_cast<std::uint32_t>(p[0]) | (bit % 8 + bits > 8 ? static_cast<std::uint32_t>(p[1]) << 8 : 0u);
  return (two >> (bit % 8)) & ((1u << bits) - 1u);
}

/// Group of quantized value (h, r, c) of block b and the group count (affine_encode's order).
KVCODEC_HD inline std::uint64_t affine_group_of(const affine_batch_block& b, std::uint64_t D, std::uint64_t h, std::uint64_t r, std::uint64_t c) noexcept {
  const std::uint64_t G = b.group > 0 ? b.group : (b.q > 0 ? b.q : 1);
  return b.per_channel != 0 ? h * ((b.q + G - 1) / G) * D + (r / G) * D + c : (h * b.q + r) * (D / G) + c / G;
}
KVCODEC_HD inline std::uint64_t affine_groups_of(const affine_batch_block& b, std::uint64_t D) noexcept {
  const std::uint64_t G = b.group > 0 ? b.group : (b.q > 0 ? b.q : 1);
  return b.per_channel != 0 ? static_cast<std::uint64_t>(b.heads) * ((b.q + G - 1) / G) * D : static_cast<std::uint64_t>(b.heads) * b.q * (D / G);
}
}  // namespace detail

/// Element step of the affine batch decoders: value i of block b (heads x tokens rows, a head's rows in
/// token order) is affine::dequantize_value of its symbol with its group's parameters, or its exact
/// value, stored through kv_batch_put. False (nothing written) for a symbol of 2^bits or more.
struct affine_batch_op {
  const std::uint16_t* sym = nullptr;  ///< the batch's u16 symbols (unpacked blocks)
  const std::uint8_t* bytes = nullptr;
  kv_batch_dest d;
  KVCODEC_HD std::uint64_t count(const affine_batch_block& b) const noexcept {
    return static_cast<std::uint64_t>(b.heads) * b.tokens * kv_batch_width(d, b.key != 0);
  }
  KVCODEC_HD bool operator()(const affine_batch_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t D = kv_batch_width(d, b.key != 0), c = i % D, row = i / D, h = row / b.tokens, r = row % b.tokens;
    const std::int64_t t = b.t_first + static_cast<std::int64_t>(r);
    float x = 0.0f;
    if (r < b.q) {
      const std::uint64_t k = b.sym_off + (h * b.q + r) * D + c;  // the value's index in the symbol plane
      const std::uint32_t s = b.packed != 0 ? detail::packed_code(bytes + b.sym_first, k, b.bits) : sym[b.sym_first + k];
      if (s >> b.bits) return false;
      const auto m = static_cast<affine::mode>(b.mode);
      const auto pd = static_cast<affine::param_dtype>(b.param_dtype);
      const std::uint64_t g = detail::affine_group_of(b, D, h, r, c);
      x = affine::dequantize_value(s, affine::load_params(bytes + b.params + g * affine::param_bytes(m, pd), m, pd), static_cast<int>(b.bits), m);
    } else {
      const std::uint64_t k = (h * (b.tokens - b.q) + (r - b.q)) * D + c;
      const std::uint8_t* p = bytes + b.exact;
      x = b.exact_dtype == 0   ? bit_cast_hd<float>(kvcodec::detail::load_le32(p + 4 * k))
          : b.exact_dtype == 2 ? bf16_bits_to_f32(kvcodec::detail::load_le16(p + 2 * k))
                               : f16_bits_to_f32(kvcodec::detail::load_le16(p + 2 * k));
    }
    if (t < 0 || t >= b.t_end) return true;
    kv_batch_put(d, b.key != 0, b.layer, static_cast<std::int64_t>(h), t, static_cast<std::int64_t>(c), x);
    return true;
  }
};

/// First step of the affine batch encoders: item g of block b is its group g (affine_encode's order),
/// whose parameters (affine::params_acc over the source's values, as compute_params) are stored at
/// out + b.params + g * param_bytes.
struct affine_params_op {
  kv_batch_src s;
  std::uint8_t* out = nullptr;
  KVCODEC_HD std::uint64_t count(const affine_batch_block& b) const noexcept { return b.q > 0 ? detail::affine_groups_of(b, static_cast<std::uint64_t>(s.head_dim)) : 0; }
  KVCODEC_HD bool operator()(const affine_batch_block& b, std::uint64_t g) const noexcept {
    const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), G = b.group > 0 ? b.group : (b.q > 0 ? b.q : 1);
    affine::params_acc a;
    if (b.per_channel != 0) {  // G rows of one channel
      const std::uint64_t per_head = (b.q + G - 1) / G * D, h = g / per_head, gi = g % per_head / D, c = g % D;
      for (std::uint64_t r = gi * G; r < b.q && r < gi * G + G; ++r)
        a.add(kv_batch_get(s, b.key != 0, b.layer, static_cast<std::int64_t>(h), b.t_first + static_cast<std::int64_t>(r), static_cast<std::int64_t>(c)));
    } else {  // G channels of one row
      const std::uint64_t row = g / (D / G), h = row / b.q, r = row % b.q, c0 = g % (D / G) * G;
      for (std::uint64_t c = c0; c < c0 + G; ++c)
        a.add(kv_batch_get(s, b.key != 0, b.layer, static_cast<std::int64_t>(h), b.t_first + static_cast<std::int64_t>(r), static_cast<std::int64_t>(c)));
    }
    const auto m = static_cast<affine::mode>(b.mode);
    const auto pd = static_cast<affine::param_dtype>(b.param_dtype);
    affine::store_params(a.finish(static_cast<int>(b.bits), m, pd), m, pd, out + b.params + g * affine::param_bytes(m, pd));
    return true;
  }
};

/// Second step of the affine batch encoders: quantized value k of block b (heads x q rows) is coded with
/// its group's stored parameters (exact in their dtype) by affine::quantize_value into the byte
/// out[b.sym_first + k].
struct affine_code_op {
  kv_batch_src s;
  std::uint8_t* out = nullptr;
  KVCODEC_HD std::uint64_t count(const affine_batch_block& b) const noexcept {
    return static_cast<std::uint64_t>(b.heads) * b.q * static_cast<std::uint64_t>(s.head_dim);
  }
  KVCODEC_HD bool operator()(const affine_batch_block& b, std::uint64_t k) const noexcept {
    const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), c = k % D, row = k / D, h = row / b.q, r = row % b.q;
    const auto m = static_cast<affine::mode>(b.mode);
    const auto pd = static_cast<affine::param_dtype>(b.param_dtype);
    const affine::params p = affine::load_params(out + b.params + detail::affine_group_of(b, D, h, r, c) * affine::param_bytes(m, pd), m, pd);
    const float x = kv_batch_get(s, b.key != 0, b.layer, static_cast<std::int64_t>(h), b.t_first + static_cast<std::int64_t>(r), static_cast<std::int64_t>(c));
    out[b.sym_first + k] = static_cast<std::uint8_t>(affine::quantize_value(x, p, static_cast<int>(b.bits), m));
    return true;
  }
};

namespace detail {
/// Exact row value k of block b (heads x (tokens - q) rows after the quantized ones) from the source.
KVCODEC_HD inline float affine_exact_value(const kv_batch_src& s, const affine_batch_block& b, std::uint64_t k) noexcept {
  const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), c = k % D, row = k / D, n = b.tokens - b.q, h = row / n, r = b.q + row % n;
  return kv_batch_get(s, b.key != 0, b.layer, static_cast<std::int64_t>(h), b.t_first + static_cast<std::int64_t>(r), static_cast<std::int64_t>(c));
}
}  // namespace detail

/// Third step (kivi's residual rows): flags[b.slot] = 1 when an exact value does not survive a round
/// trip through dtype `dtype_code` (1 f16, 2 bf16), which then stores the block's rows in f32 (qc::put_exact).
struct affine_exact_check_op {
  kv_batch_src s;
  std::uint8_t* flags = nullptr;
  std::uint32_t dtype_code = 1;
  KVCODEC_HD std::uint64_t count(const affine_batch_block& b) const noexcept {
    return dtype_code == 0 ? 0 : static_cast<std::uint64_t>(b.heads) * (b.tokens - b.q) * static_cast<std::uint64_t>(s.head_dim);
  }
  KVCODEC_HD bool operator()(const affine_batch_block& b, std::uint64_t k) const noexcept {
    const float x = detail::affine_exact_value(s, b, k);
    const float y = dtype_code == 2 ? bf16_bits_to_f32(f32_to_bf16_bits(x)) : f16_bits_to_f32(f32_to_f16_bits(x));
    if (bit_cast_hd<std::uint32_t>(x) != bit_cast_hd<std::uint32_t>(y)) flags[b.slot] = 1;
    return true;
  }
};

/// Last step: exact value k of block b in b.exact_dtype, little-endian, at out + b.exact.
struct affine_exact_op {
  kv_batch_src s;
  std::uint8_t* out = nullptr;
  KVCODEC_HD std::uint64_t count(const affine_batch_block& b) const noexcept {
    return static_cast<std::uint64_t>(b.heads) * (b.tokens - b.q) * static_cast<std::uint64_t>(s.head_dim);
  }
  KVCODEC_HD bool operator()(const affine_batch_block& b, std::uint64_t k) const noexcept {
    const float x = detail::affine_exact_value(s, b, k);
    if (b.exact_dtype == 0)
      kvcodec::detail::store_le32(out + b.exact + 4 * k, bit_cast_hd<std::uint32_t>(x));
    else
      kvcodec::detail::store_le16(out + b.exact + 2 * k, b.exact_dtype == 2 ? f32_to_bf16_bits(x) : f32_to_f16_bits(x));
    return true;
  }
};

// ---- outliers in the batch encoders (cpu/quant_common.hpp's take_outliers) ---------------------------
//
// A block's quantized values (its parts in order, each heads x q rows of head_dim) are numbered as the
// CPU numbers them. affine_outlier_key_op gives each its rank key: |x|'s bits for a finite value (the
// order of |x|, -0 == +0), 0xffffffff for a non-finite one, and counts the non-finite ones. The
// selection keeps, per block, the qc::outlier_budget largest keys, equal keys to the lower index (a
// stable descending sort), in increasing index order: every non-finite value and the largest finite
// |x|, as take_outliers. affine_outlier_take_op then reads each selected value and leaves a NaN in its
// place in the encoder's f32 copy, which the affine steps leave out of the range and code as the zero point.

/// One part of a block for the outlier steps.
struct affine_outlier_part {
  std::int32_t layer = 0;
  std::uint32_t key = 1, heads = 0, q = 0;
  std::int64_t t_first = 0;     ///< source token of a head's row 0
  std::uint64_t at = 0;         ///< its first value's index among its block's quantized values
  std::uint64_t seg_first = 0;  ///< its block's first entry in the key and position arrays
  std::uint64_t slot = 0;       ///< its block's non-finite counter
};

/// The rank key of a value: |x|'s bits when finite, else above every finite one.
KVCODEC_HD inline std::uint32_t affine_outlier_key(float x) noexcept {
  return kvcodec::detail::is_finite_f32(x) ? bit_cast_hd<std::uint32_t>(x) & 0x7fffffffu : 0xffffffffu;
}

/// Value k of part b: its key and its index in the block (key[e], pos[e] with e = seg_first + at + k).
struct affine_outlier_key_op {
  kv_batch_src s;
  std::uint64_t* key = nullptr;  ///< 64-bit (below 2^32): the GPU sort then shares the drop selection's CUB instantiation
  std::uint32_t* pos = nullptr;
  std::uint32_t* nonfinite = nullptr;
  KVCODEC_HD std::uint64_t count(const affine_outlier_part& b) const noexcept {
    return static_cast<std::uint64_t>(b.heads) * b.q * static_cast<std::uint64_t>(s.head_dim);
  }
  KVCODEC_HD bool operator()(const affine_outlier_part& b, std::uint64_t k) const noexcept {
    const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), c = k % D, row = k / D, h = row / b.q, r = row % b.q;
    const float x = kv_batch_get(s, b.key != 0, b.layer, static_cast<std::int64_t>(h), b.t_first + static_cast<std::int64_t>(r), static_cast<std::int64_t>(c));
    const std::uint32_t kk = affine_outlier_key(x);
    key[b.seg_first + b.at + k] = kk;
    pos[b.seg_first + b.at + k] = static_cast<std::uint32_t>(b.at + k);
    if (kk == 0xffffffffu) atomic_add(nonfinite + b.slot, 1u);
    return true;
  }
};

/// A block's selected outliers: sel[sel_first .. sel_first + count) (increasing indices), and its
/// parts parts[part_first .. part_first + parts).
struct affine_outlier_block {
  std::uint64_t sel_first = 0, count = 0, part_first = 0, parts = 0;
  std::uint32_t key = 1;  ///< its side (the source the step reads)
};

/// Outlier j of block b: its value into vals[sel_first + j], a NaN in its place in `s` (the encoder's
/// own f32 copy, written through the source's pointers).
struct affine_outlier_take_op {
  kv_batch_src s;
  const affine_outlier_part* part = nullptr;
  const std::uint32_t* sel = nullptr;
  float* vals = nullptr;
  KVCODEC_HD std::uint64_t count(const affine_outlier_block& b) const noexcept { return b.count; }
  KVCODEC_HD bool operator()(const affine_outlier_block& b, std::uint64_t j) const noexcept {
    const std::uint64_t idx = sel[b.sel_first + j], D = static_cast<std::uint64_t>(s.head_dim);
    std::uint64_t p = b.part_first;
    while (p + 1 < b.part_first + b.parts && part[p + 1].at <= idx) ++p;
    const affine_outlier_part& g = part[p];
    const std::uint64_t k = idx - g.at, c = k % D, row = k / D, h = row / g.q, r = row % g.q;
    const std::int64_t off = kv_row_offset(s.layout, static_cast<std::int64_t>(h), g.t_first + static_cast<std::int64_t>(r)) + static_cast<std::int64_t>(c) * s.layout.s_dim;
    float* at = const_cast<float*>(static_cast<const float*>((g.key != 0 ? s.k : s.v)[g.layer])) + off;
    vals[b.sel_first + j] = *at;
    *at = bit_cast_hd<float>(0x7fc00000u);
    return true;
  }
};

/// The selection on the host (the emulation of cuda::affine_outlier_select): for segment i, entries
/// [seg[i], seg[i + 1]) of key and pos, the take[i + 1] - take[i] largest keys (equal keys: the earlier
/// entry), their positions in increasing order into sel[take[i] ..).
inline void affine_outlier_select_emulated(const std::uint64_t* key, const std::uint32_t* pos, const std::vector<std::int64_t>& seg,
                                           const std::vector<std::int64_t>& take, std::uint32_t* sel) {
  std::vector<std::uint32_t> order;
  for (std::size_t i = 0; i + 1 < seg.size(); ++i) {
    const auto n = static_cast<std::size_t>(seg[i + 1] - seg[i]), t = static_cast<std::size_t>(take[i + 1] - take[i]);
    const std::uint64_t* kk = key + seg[i];
    order.resize(n);
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) { return kk[a] > kk[b]; });
    std::uint32_t* o = sel + take[i];
    for (std::size_t j = 0; j < t; ++j) o[j] = pos[seg[i] + order[j]];
    std::sort(o, o + t);
  }
}

}  // namespace kvcodec
