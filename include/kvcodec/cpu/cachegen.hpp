// kvcodec/cpu/cachegen.hpp — stage `cachegen-quant`: CacheGen's max-abs quantizer (LMCache's
// torch_quant) on blocks; the per-element math is core/cachegen.hpp, the AVX2 kernels cpu/x86/cachegen.hpp.
//
// Side bytes: the scales as little-endian u16 (f16 or bf16 bits), one per token (axis=token) or one
// per column (axis=channel), in row/column order. Decoding checks the plane's shape, alphabet,
// symbol range and the side length against the block before writing anything.
#pragma once

#include <cmath>
#include <cstring>
#include <limits>
#include <span>
#include <string>

#include "kvcodec/core/cachegen.hpp"
#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/cpu/x86/cachegen.hpp"
#include "kvcodec/stage/cachegen.hpp"
#include "kvcodec/tensor/dtype.hpp"


namespace kvcodec::cpu {

class cachegen_quant final : public stage_impl<quant::cachegen, quant_stage> {
 public:
  /// `label` names the stage in decode errors (weighted-quant decodes through this class).
  explicit cachegen_quant(quant::cachegen p, std::string_view label = quant::cachegen::name) : stage_impl(std::move(p)), label_(label) {}
  bool lossless() const override { return false; }
  bool fit_uses_blocks() const override { return false; }

  static std::uint32_t alphabet_for(int bins) { return bins <= 32 ? 32u : static_cast<std::uint32_t>(bins - 1); }
  /// What a batch encoder (pipeline/batch_encode.hpp) needs: the bins of (layer, K or V), whether its
  /// scales are per token, whether they are stored as bf16.
  int bins_for(int layer, bool key) const { return p_.bins_for(layer, key); }
  bool token_axis(bool key) const { return (key ? p_.kaxis : p_.vaxis) == "token"; }
  bool bf16_scales() const { return p_.scale == "bf16"; }

  /// Where element (r, c) of a block's symbol plane lives in the block's data (dense: rows are
  /// tokens, columns kv_heads x head_dim; ragged: rows are the block's rows, columns head_dim) and
  /// which of its scales it uses (per token, or per column / per (head, channel)).
  struct plane_map {
    bool dense, by_token;
    std::size_t D, R;
    std::vector<std::size_t> head_of_row;  ///< ragged, scales per column: the head of each row
    plane_map(const block& b, bool per_token)
        : dense(b.dense()), by_token(per_token), D(static_cast<std::size_t>(b.head_dim)),
          R(dense ? static_cast<std::size_t>(b.t1 - b.t0) : b.rows()) {
      if (dense || by_token) return;
      head_of_row.reserve(R);
      for (std::size_t h = 0; h < b.count.size(); ++h) head_of_row.insert(head_of_row.end(), b.count[h], h);
    }
    std::size_t src(std::size_t r, std::size_t c) const { return dense ? ((c / D) * R + r) * D + c % D : r * D + c; }
    std::size_t scale(std::size_t r, std::size_t c) const { return by_token ? r : dense ? c : head_of_row[r] * D + c; }
  };

  void encode(const block& b, const cache_info&, symbols& out) const override {
    const int bins = p_.bins_for(b.layer, b.key);
    const bool bf = p_.scale == "bf16";
    const bool by_token = (b.key ? p_.kaxis : p_.vaxis) == "token";
    const bool dense = b.dense();
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    const std::size_t R = dense ? static_cast<std::size_t>(b.t1 - b.t0) : b.rows();
    const std::size_t C = dense ? H * D : D;
    const plane_map pm(b, by_token);
    const std::size_t nscales = by_token ? R : (dense ? C : H * D);
    std::vector<float> m(nscales, 0.0f);
    if (dense) {
#if KVCODEC_X86_DISPATCH
      const bool vec = simd::avx2();
#endif
      for (std::size_t h = 0; h < H; ++h)
        for (std::size_t r = 0; r < R; ++r) {
          const float* x = b.data.data() + (h * R + r) * D;
          std::size_t d0 = 0;
          if (by_token) {
            float mm = m[r];
#if KVCODEC_X86_DISPATCH
            if (vec) d0 = cachegen_detail::absmax_avx2(x, D, mm);
#endif
            for (std::size_t d = d0; d < D; ++d) mm = std::max(mm, std::fabs(x[d]));
            m[r] = mm;
          } else {
            float* mc = m.data() + h * D;
#if KVCODEC_X86_DISPATCH
            if (vec) d0 = cachegen_detail::absmax_cols_avx2(x, D, mc);
#endif
            for (std::size_t d = d0; d < D; ++d) mc[d] = std::max(mc[d], std::fabs(x[d]));
          }
        }
      // The scalar form of this check took 15% of a kvc encode (not vectorized by the compiler).
      bool finite = true;
      std::size_t i0 = 0;
#if KVCODEC_X86_DISPATCH
      if (vec) finite = cachegen_detail::all_finite_avx2(b.data.data(), b.data.size(), i0);
#endif
      for (std::size_t i = i0; i < b.data.size(); ++i) finite &= std::fabs(b.data[i]) <= 3.4028235e38f;
      if (!finite) m.assign(nscales, std::numeric_limits<float>::quiet_NaN());
    } else {
      for (std::size_t r = 0; r < R; ++r)
        for (std::size_t c = 0; c < C; ++c) {
          const float a = std::fabs(b.data[pm.src(r, c)]);
          float& mm = m[pm.scale(r, c)];
          if (a > mm || a != a) mm = a;
        }
    }
    quantize_with(b, bins, by_token, bf, m, "cachegen-quant", out);
  }

  /// Quantizes `b` with the magnitudes `m` stored as its scales (one per token for by_token, else
  /// one per column: kv_heads x head_dim; step = scale / MAX): cachegen-quant's symbols and side
  /// bytes for any choice of scales (weighted-quant chooses its own). A non-finite m is bad input.
  static void quantize_with(const block& b, int bins, bool by_token, bool bf, const std::vector<float>& m, std::string_view stage,
                            symbols& out) {
    const int MAX = bins / 2 - 1;
    const bool dense = b.dense();
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    const std::size_t R = dense ? static_cast<std::size_t>(b.t1 - b.t0) : b.rows();
    const std::size_t C = dense ? H * D : D;
    const std::size_t nscales = by_token ? R : (dense ? C : H * D);
    if (m.size() != nscales) throw_usage(std::string(stage) + ": " + std::to_string(m.size()) + " scales for " + std::to_string(nscales));
    out.planes.resize(1);  // reuses the plane's memory when `out` held one (every symbol is written)
    symbol_plane& p = out.planes[0];
    p.sym_bound = 0;
    p.alphabet = alphabet_for(bins);
    p.rows = static_cast<std::uint32_t>(R);
    p.cols = static_cast<std::uint32_t>(C);
    p.sym.resize(R * C);
    const plane_map pm(b, by_token);
    std::vector<std::uint16_t> sc(nscales, 0);
    std::vector<float> inv(nscales);
    for (std::size_t i = 0; i < nscales; ++i) {
      if (!std::isfinite(m[i]))
        throw_bad_input(std::string(stage) + " (layer " + std::to_string(b.layer) + ")", "data", "finite values", "a NaN or infinity");
      sc[i] = cachegen_scale_bits(m[i], bf);
      const float s = cachegen_scale_value(sc[i], bf);
      inv[i] = s > 0 ? static_cast<float>(MAX) / s : 0.0f;
    }
    if (dense) {
#if KVCODEC_X86_DISPATCH
      const bool vec = simd::avx2();
#endif
      for (std::size_t h = 0; h < H; ++h)
        for (std::size_t r = 0; r < R; ++r) {
          const float* x = b.data.data() + (h * R + r) * D;
          std::uint16_t* o = p.sym.data() + r * C + h * D;
          std::size_t d0 = 0;
          if (by_token) {
            const float iv = inv[r];
#if KVCODEC_X86_DISPATCH
            if (vec) d0 = cachegen_detail::quantize_avx2(x, &iv, true, MAX, o, D);
#endif
            for (std::size_t d = d0; d < D; ++d) o[d] = cachegen_quantize(x[d], iv, MAX);
          } else {
            const float* iv = inv.data() + h * D;
#if KVCODEC_X86_DISPATCH
            if (vec) d0 = cachegen_detail::quantize_avx2(x, iv, false, MAX, o, D);
#endif
            for (std::size_t d = d0; d < D; ++d) o[d] = cachegen_quantize(x[d], iv[d], MAX);
          }
        }
    } else {
      for (std::size_t r = 0; r < R; ++r)
        for (std::size_t c = 0; c < C; ++c) p.sym[r * C + c] = cachegen_quantize(b.data[pm.src(r, c)], inv[pm.scale(r, c)], MAX);
    }
    out.side.resize(2 * nscales);
    for (std::size_t i = 0; i < nscales; ++i) kvcodec::detail::store_le16(out.side.data() + 2 * i, sc[i]);
  }

  void decode(const symbols& in, const cache_info&, block& b) const override {
    b.data.resize(b.rows() * static_cast<std::size_t>(b.head_dim));
    float* out = b.data.data();
    const std::size_t D = static_cast<std::size_t>(b.head_dim);
    decode_to(in, b, [out, D](std::size_t r) { return out + r * D; }, [](float v) { return v; });
  }

  bool decode_rows(const symbols& in, const cache_info&, const block& b, dtype t, std::byte* const* rows) const override {
    if (t == dtype::f32) {
      decode_to(in, b, [rows](std::size_t r) { return reinterpret_cast<float*>(rows[r]); }, [](float v) { return v; });
    } else if (t == dtype::f16) {
      auto row = [rows](std::size_t r) { return reinterpret_cast<std::uint16_t*>(rows[r]); };
#if KVCODEC_X86_DISPATCH
      if (simd::avx2()) {
        decode_to(
            in, b, row, [](float v) { return f32_to_f16_bits(v); },
            [](const std::uint16_t* s, const float* st, bool bcast, int max, std::uint16_t* o, std::size_t n) {
              return cachegen_detail::dequant_f16_f16c(s, st, bcast, max, o, n);
            },
            [](const std::uint16_t* s, std::size_t ss, const float* st, bool per_row, int max, std::uint16_t* o, std::ptrdiff_t os, std::size_t R,
               std::size_t n) { return cachegen_detail::dequant_rows_f16_f16c(s, ss, st, per_row, max, o, os, R, n); });
        return true;
      }
#endif
      decode_to(in, b, row, [](float v) { return f32_to_f16_bits(v); });
    } else if (t == dtype::bf16) {
      decode_to(in, b, [rows](std::size_t r) { return reinterpret_cast<std::uint16_t*>(rows[r]); }, [](float v) { return f32_to_bf16_bits(v); });
    } else {
      return false;
    }
    return true;
  }

  /// Decodes straight to f16 bits in decode()'s value order (b.rows() x head_dim values, block
  /// order); value i equals f32_to_f16_bits(decode()'s value i). Same checks and errors as decode.
  void decode_f16(const symbols& in, const block& b, std::uint16_t* out) const {
    const std::size_t D = static_cast<std::size_t>(b.head_dim);
#if KVCODEC_X86_DISPATCH
    if (simd::avx2()) {
      decode_to(
          in, b, [out, D](std::size_t r) { return out + r * D; }, [](float v) { return f32_to_f16_bits(v); },
          [](const std::uint16_t* s, const float* st, bool bcast, int max, std::uint16_t* o, std::size_t n) {
            return cachegen_detail::dequant_f16_f16c(s, st, bcast, max, o, n);
          },
          [](const std::uint16_t* s, std::size_t ss, const float* st, bool per_row, int max, std::uint16_t* o, std::ptrdiff_t os, std::size_t R,
             std::size_t n) { return cachegen_detail::dequant_rows_f16_f16c(s, ss, st, per_row, max, o, os, R, n); });
      return;
    }
#endif
    decode_to(in, b, [out, D](std::size_t r) { return out + r * D; }, [](float v) { return f32_to_f16_bits(v); });
  }

 private:
  std::string_view label_;

  /// The largest of s[0..n) (0 when n = 0).
  static std::uint32_t max_symbol(const std::uint16_t* s, std::size_t n) {
#if KVCODEC_X86_DISPATCH
    if (simd::avx2()) return cachegen_detail::max_symbol_avx2(s, n);
#endif
    std::uint16_t m = 0;
    for (std::size_t i = 0; i < n; ++i) m = s[i] > m ? s[i] : m;
    return m;
  }

 public:
  /// The parameters of cachegen-quant's format with one tier of `bins`, f16 scales and one scale per
  /// channel per chunk for K and V: how weighted-quant and klt store their symbols and scales.
  static quant::cachegen per_channel_params(int bins) {
    quant::cachegen c;
    c.kbins = c.vbins = std::to_string(bins);
    c.klayers = c.vlayers = "-";
    c.scale = "f16";
    c.kaxis = c.vaxis = "channel";
    return c;
  }

  /// Checks the plane and side bytes of `in` against block `b` (decode's checks and errors) and
  /// returns the plane, with `step` = each scale's step (scale / MAX) and `max` = MAX. For decoders
  /// that dequantize cachegen-quant's symbols their own way (weighted-quant rotating keys as it goes).
  const symbol_plane& checked(const symbols& in, const block& b, std::vector<float>& step, int& max) const {
    return checked(in.planes, in.side, b, step, max);
  }
  /// checked() with the side bytes given apart from the planes (klt stores its scales compactly and
  /// expands them to this layout before the checks).
  const symbol_plane& checked(const std::vector<symbol_plane>& planes, std::span<const std::uint8_t> side, const block& b, std::vector<float>& step,
                              int& max) const {
    return checked_impl(planes, side, b, step, max, true);
  }
  /// checked() for a plane whose symbols are not decoded yet (a batch decoder's plan: headers only):
  /// shape, alphabet and scales; the decoder checks each symbol against 2*MAX as it dequantizes.
  void checked_header(const std::vector<symbol_plane>& planes, std::span<const std::uint8_t> side, const block& b, std::vector<float>& step,
                      int& max) const {
    (void)checked_impl(planes, side, b, step, max, false);
  }
  /// Scales per token (else per column) for this block.
  bool by_token(const block& b) const { return (b.key ? p_.kaxis : p_.vaxis) == "token"; }

 private:
  const symbol_plane& checked_impl(const std::vector<symbol_plane>& planes, std::span<const std::uint8_t> side, const block& b,
                                   std::vector<float>& step, int& max, bool with_symbols) const {
    const std::string where = std::string(label_) + " (layer " + std::to_string(b.layer) + (b.key ? " K)" : " V)");
    const int bins = p_.bins_for(b.layer, b.key);
    const int MAX = bins / 2 - 1;
    const bool bf = p_.scale == "bf16";
    const bool by_token = (b.key ? p_.kaxis : p_.vaxis) == "token";
    const bool dense = b.dense();
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    const std::size_t R = dense ? static_cast<std::size_t>(b.t1 - b.t0) : b.rows();
    const std::size_t C = dense ? H * D : D;
    const std::size_t nscales = by_token ? R : (dense ? C : H * D);
    if (planes.size() != 1) throw_corrupt(where, "expected 1 symbol plane, found " + std::to_string(planes.size()));
    const symbol_plane& p = planes[0];
    if (p.rows != R || p.cols != C || (with_symbols && p.sym.size() != R * C) || p.alphabet != alphabet_for(bins))
      throw_corrupt(where, "plane " + std::to_string(p.rows) + "x" + std::to_string(p.cols) + " alphabet " + std::to_string(p.alphabet) +
                               ", expected " + std::to_string(R) + "x" + std::to_string(C) + " alphabet " + std::to_string(alphabet_for(bins)));
    if (side.size() != 2 * nscales)
      throw_corrupt(where, "expected " + std::to_string(2 * nscales) + " bytes of scales, found " + std::to_string(side.size()));
    step.resize(nscales);
    for (std::size_t i = 0; i < nscales; ++i) {
      const std::uint16_t bits = kvcodec::detail::load_le16(side.data() + 2 * i);
      const float s = cachegen_scale_value(bits, bf);
      if (!(s >= 0) || !std::isfinite(s)) throw_corrupt(where, "scale " + std::to_string(i) + " is negative or not finite");
      step[i] = MAX > 0 ? s / static_cast<float>(MAX) : 0.0f;
    }
    // A bound the entropy stage vouches for (rANS: from its tables) makes the scan unnecessary.
    const bool bounded = !with_symbols || (p.sym_bound != 0 && p.sym_bound <= static_cast<std::uint32_t>(2 * MAX) + 1);
    const std::uint32_t worst = bounded ? 0 : max_symbol(p.sym.data(), p.sym.size());
    if (!p.sym.empty() && worst > static_cast<std::uint32_t>(2 * MAX))
      throw_corrupt(where, "symbol " + std::to_string(worst) + " above 2*MAX = " + std::to_string(2 * MAX));
    max = MAX;
    return p;
  }

  struct no_kernel {
    template <class T>
    std::size_t operator()(const std::uint16_t*, const float*, bool, int, T*, std::size_t) const {
      return 0;
    }
  };

  struct no_head_kernel {};

  /// Checks the plane and side bytes against the block, then writes conv(value) of every element
  /// of block row r to row_out(r) (head_dim values); kernel(s, step, bcast, MAX, o, n) may do a row
  /// prefix in bulk, and head_kernel(s, sstride, step, per_row, MAX, o, ostride, rows, n) a prefix of
  /// every row of one head at once when the head's rows are evenly spaced in the destination.
  template <class RowOut, class Conv, class Kernel = no_kernel, class HeadKernel = no_head_kernel>
  void decode_to(const symbols& in, const block& b, RowOut row_out, Conv conv, Kernel kernel = {}, HeadKernel head_kernel = {}) const {
    std::vector<float> step;
    int MAX = 0;
    const symbol_plane& p = checked(in, b, step, MAX);
    const bool by_token = (b.key ? p_.kaxis : p_.vaxis) == "token";
    const bool dense = b.dense();
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    const std::size_t R = dense ? static_cast<std::size_t>(b.t1 - b.t0) : b.rows();
    const std::size_t C = dense ? H * D : D;
    if (dense) {
      for (std::size_t h = 0; h < H; ++h) {
        if constexpr (!std::is_same_v<HeadKernel, no_head_kernel>) {
          // A [heads, tokens, head_dim]-like destination: one call for the head's R rows.
          if (R >= 2) {
            auto* const d0 = row_out(h * R);
            const std::ptrdiff_t os = row_out(h * R + 1) - d0;
            bool even = true;
            for (std::size_t r = 2; r < R && even; ++r) even = row_out(h * R + r) == d0 + static_cast<std::ptrdiff_t>(r) * os;
            if (even) {
              const float* st = by_token ? step.data() : step.data() + h * D;
              const std::size_t done = head_kernel(p.sym.data() + h * D, C, st, by_token, MAX, d0, os, R, D);
              for (std::size_t r = 0; r < R && done < D; ++r) {
                const std::uint16_t* srow = p.sym.data() + r * C + h * D;
                auto* dst = d0 + static_cast<std::ptrdiff_t>(r) * os;
                for (std::size_t d = done; d < D; ++d) dst[d] = conv(cachegen_dequantize(srow[d], by_token ? step[r] : st[d], MAX));
              }
              continue;
            }
          }
        }
        for (std::size_t r = 0; r < R; ++r) {
          const std::uint16_t* srow = p.sym.data() + r * C + h * D;
          auto* dst = row_out(h * R + r);
          if (by_token) {
            const float st = step[r];
            for (std::size_t d = kernel(srow, &st, true, MAX, dst, D); d < D; ++d) dst[d] = conv(cachegen_dequantize(srow[d], st, MAX));
          } else {
            const float* st = step.data() + h * D;
            for (std::size_t d = kernel(srow, st, false, MAX, dst, D); d < D; ++d) dst[d] = conv(cachegen_dequantize(srow[d], st[d], MAX));
          }
        }
      }
    } else {
      std::size_t r = 0;
      for (std::size_t h = 0; h < H; ++h)
        for (std::uint32_t k = 0; k < b.count[h]; ++k, ++r) {
          auto* dst = row_out(r);
          for (std::size_t d = 0; d < D; ++d) dst[d] = conv(cachegen_dequantize(p.sym[r * D + d], by_token ? step[r] : step[h * D + d], MAX));
        }
    }
  }
};

}  // namespace kvcodec::cpu
