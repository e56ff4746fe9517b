// kvcodec/cpu/weighted_quant.hpp — stage `weighted-quant` (stage/weighted_quant.hpp): chooses each
// channel's step from the query energies and the block's RMS, then stores and decodes exactly as
// cachegen-quant with one scale per channel per chunk (scale = step x MAX). With derope=on, key rows
// are rotated back before RoPE before quantizing and forward as they are decoded (f16 rows written
// by one AVX2 pass from the decoded values). Math: core/weighted_quant.hpp; kernels:
// cpu/cachegen.hpp (quantize, dequantize) and cpu/x86/weighted_quant.hpp (rotate to f16).
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kvcodec/core/half.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/core/weighted_quant.hpp"
#include "kvcodec/cpu/cachegen.hpp"
#include "kvcodec/cpu/rope_rows.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/cpu/x86/weighted_quant.hpp"
#include "kvcodec/stage/weighted_quant.hpp"

namespace kvcodec::cpu {

class weighted_quant final : public stage_impl<quant::weighted, quant_stage> {
 public:
  explicit weighted_quant(quant::weighted p) : stage_impl(std::move(p)), inner_(cachegen_quant::per_channel_params(p_.bins), quant::weighted::name) {
    quant::parse_multipliers(p_.klayer, kmul_);
    quant::parse_multipliers(p_.vlayer, vmul_);
  }
  bool lossless() const override { return false; }
  bool fit_uses_blocks() const override { return false; }
  /// The cachegen-quant it stores and decodes with (the batch decoders plan with it).
  const cachegen_quant& inner() const noexcept { return inner_; }
  /// Whether keys are quantized before RoPE (derope=on), and this cache's RoPE for rotating them back.
  bool rotates_keys() const noexcept { return p_.derope == "on"; }
  rope_rows::rope key_rope(const cache_info& info) const { return rope_rows::rope_of(info, info.shape.head_dim, derope_param); }
  bool wants_query_energy() const override { return p_.kweight == "query"; }
  bytes fit(const std::vector<block>&, const cache_info& info) override {
    if (p_.derope == "on") (void)rope_rows::rope_of(info, info.shape.head_dim, derope_param);  // a cache without RoPE metadata fails before any block
    for (const auto* m : {&kmul_, &vmul_})
      if (m->size() != 1 && m->size() != static_cast<std::size_t>(info.shape.layers))
        throw_usage(std::string("weighted-quant: parameter '") + (m == &kmul_ ? "klayer" : "vlayer") + "': expected 1 or " +
                    std::to_string(info.shape.layers) + " multipliers (one per layer of the cache), found " + std::to_string(m->size()));
    return {};
  }

  /// The scale stored for each column (kv_heads x head_dim) of `b` as it is quantized (keys already
  /// rotated back when derope=on): step x MAX, the step raised where the column's largest magnitude
  /// would clamp.
  std::vector<float> scales(const block& b, const cache_info& info) const {
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    const int MAX = p_.bins / 2 - 1;
    double ss = 0;
    for (float x : b.data) ss += static_cast<double>(x) * x;
    const double rms = b.data.empty() ? 0.0 : std::sqrt(ss / static_cast<double>(b.data.size()));
    const std::vector<double>& mul = b.key ? kmul_ : vmul_;
    if (mul.size() != 1 && static_cast<std::size_t>(b.layer) >= mul.size())
      throw_usage(std::string("weighted-quant: parameter '") + (b.key ? "klayer" : "vlayer") + "': no multiplier for layer " + std::to_string(b.layer));
    const double base = (b.key ? p_.kstep : p_.vstep) * rms * (mul.size() == 1 ? mul[0] : mul[static_cast<std::size_t>(b.layer)]);
    std::vector<float> rel(H * D, 1.0f);
    const std::size_t per_layer = H * D;
    if (b.key && p_.kweight == "query" && info.query_energy.size() == static_cast<std::size_t>(info.shape.layers) * per_layer &&
        static_cast<std::size_t>(info.shape.kv_heads) == H && static_cast<std::size_t>(info.shape.head_dim) == D) {
      const auto it = info.metadata.find("rope");
      weighted_key_rel(info.query_energy.data() + static_cast<std::size_t>(b.layer) * per_layer, static_cast<int>(H), static_cast<int>(D),
                       rope_pairs_of(it == info.metadata.end() ? std::string() : it->second, static_cast<int>(D)), rel.data());
    }
    // Largest magnitude per column (rows of head h are rows [head_offset(h), +count[h])).
    std::vector<float> amax(H * D, 0.0f);
    std::size_t r0 = 0;
    for (std::size_t h = 0; h < H; ++h) {
      const std::size_t n = b.count[h];
      float* am = amax.data() + h * D;
      for (std::size_t r = r0; r < r0 + n; ++r) {
        const float* x = b.data.data() + r * D;
        for (std::size_t d = 0; d < D; ++d) am[d] = std::max(am[d], std::fabs(x[d]));
      }
      r0 += n;
    }
    std::vector<float> m(H * D);
    for (std::size_t i = 0; i < H * D; ++i) {
      const double step = base * rel[i];
      m[i] = static_cast<float>(std::max(step * MAX, static_cast<double>(amax[i])));
      // NaN or infinity anywhere makes rms non-finite: quantize_with reports it as bad input.
      if (!std::isfinite(rms)) m[i] = std::numeric_limits<float>::quiet_NaN();
    }
    return m;
  }

  void encode(const block& b, const cache_info& info, symbols& out) const override {
    if (!(b.key && p_.derope == "on")) {
      cachegen_quant::quantize_with(b, p_.bins, false, false, scales(b, info), quant::weighted::name, out);
      return;
    }
    thread_local block rb;
    rb = b;
    rope_rows::rotate_rows(rb, rope_rows::rope_of(info, b.head_dim, derope_param), -1.0);
    cachegen_quant::quantize_with(rb, p_.bins, false, false, scales(rb, info), quant::weighted::name, out);
  }

  void decode(const symbols& in, const cache_info& info, block& b) const override {
    inner_.decode(in, info, b);
    if (b.key && p_.derope == "on") rope_rows::rotate_rows(b, rope_rows::rope_of(info, b.head_dim, derope_param), 1.0);
  }

  bool decode_rows(const symbols& in, const cache_info& info, const block& b, dtype t, std::byte* const* rows) const override {
    if (!(b.key && p_.derope == "on")) return inner_.decode_rows(in, info, b, t, rows);
    if (t != dtype::f32 && t != dtype::f16 && t != dtype::bf16) return false;
    const rope_rows::rope r = rope_rows::rope_of(info, b.head_dim, derope_param);
    // cachegen-quant's checks, then one pass per row: dequantize, rotate, convert, store.
    thread_local std::vector<float> step;
    int MAX = 0;
    const symbol_plane& p = inner_.checked(in, b, step, MAX);
    const bool dense = b.dense();
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    const std::size_t C = dense ? H * D : D;
    const int Di = static_cast<int>(D);
#if KVCODEC_X86_DISPATCH
    const bool vec = t == dtype::f16 && simd::avx2();
#endif
    thread_local std::vector<float> x;
    x.resize(D);
    std::size_t i = 0;
    for (std::size_t h = 0; h < H; ++h)
      for (std::uint32_t k = 0; k < b.count[h]; ++k, ++i) {
        // block row i: dense = plane row k, columns h*D..; ragged = plane row i, columns 0..D
        const std::uint16_t* srow = p.sym.data() + (dense ? static_cast<std::size_t>(k) * C + h * D : i * D);
        const float* st = step.data() + h * D;
        const rope_rows::factors f = rope_rows::factors_at(r, b, i, D, 1.0);
        std::size_t d0 = 0;
#if KVCODEC_X86_DISPATCH
        if (vec) d0 = weighted_detail::dequant_rope_row_f16_f16c(srow, st, MAX, f.c, f.s, r.pairs == rope_pairs::interleaved, D,
                                                                 reinterpret_cast<std::uint16_t*>(rows[i]));
#endif
        if (d0 == D) continue;
        for (std::size_t d = 0; d < D; ++d) x[d] = cachegen_dequantize(srow[d], st[d], MAX);
        if (t == dtype::f32) {
          float* o = reinterpret_cast<float*>(rows[i]);
          for (std::size_t d = 0; d < D; ++d) o[d] = rope_rotated(x.data(), static_cast<int>(d), Di, r.pairs, f.c, f.s);
        } else {
          auto* o = reinterpret_cast<std::uint16_t*>(rows[i]);
          const bool half = t == dtype::f16;
          for (std::size_t d = d0; d < D; ++d) {
            const float y = rope_rotated(x.data(), static_cast<int>(d), Di, r.pairs, f.c, f.s);
            o[d] = half ? f32_to_f16_bits(y) : f32_to_bf16_bits(y);
          }
        }
      }
    return true;
  }

 private:
  static constexpr std::string_view derope_param = "weighted-quant: parameter 'derope'";
  cachegen_quant inner_;
  std::vector<double> kmul_, vmul_;
};

}  // namespace kvcodec::cpu
