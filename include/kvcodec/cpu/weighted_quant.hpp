// kvcodec/cpu/weighted_quant.hpp — stage `weighted-quant` (stage/weighted_quant.hpp): chooses each
// channel's step from the query energies and the block's RMS, then stores and decodes exactly as
// cachegen-quant with one scale per channel per chunk (scale = step x MAX); the step math is
// core/weighted_quant.hpp, the quantize and dequantize kernels cpu/cachegen.hpp's.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kvcodec/core/weighted_quant.hpp"
#include "kvcodec/cpu/cachegen.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/weighted_quant.hpp"

namespace kvcodec::cpu {

class weighted_quant final : public stage_impl<quant::weighted, quant_stage> {
 public:
  explicit weighted_quant(quant::weighted p) : stage_impl(std::move(p)), inner_(inner_params(p_), quant::weighted::name) {}
  bool lossless() const override { return false; }
  bool fit_uses_blocks() const override { return false; }
  bool wants_query_energy() const override { return p_.kweight == "query"; }

  /// The scale stored for each column (kv_heads x head_dim): step x MAX, the step raised where the
  /// column's largest magnitude would clamp.
  std::vector<float> scales(const block& b, const cache_info& info) const {
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    const int MAX = p_.bins / 2 - 1;
    double ss = 0;
    for (float x : b.data) ss += static_cast<double>(x) * x;
    const double rms = b.data.empty() ? 0.0 : std::sqrt(ss / static_cast<double>(b.data.size()));
    const double base = (b.key ? p_.kstep : p_.vstep) * rms;
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
      // NaN or infinity anywhere makes rms non-finite: quantize_with reports it as bad input.
      const double step = base * rel[i];
      m[i] = static_cast<float>(std::max(step * MAX, static_cast<double>(amax[i])));
      if (!std::isfinite(rms)) m[i] = std::numeric_limits<float>::quiet_NaN();
    }
    return m;
  }

  void encode(const block& b, const cache_info& info, symbols& out) const override {
    const std::vector<float> m = scales(b, info);
    // quantize_with wants one scale per plane column: kv_heads x head_dim both for dense and ragged blocks.
    cachegen_quant::quantize_with(b, p_.bins, false, false, m, quant::weighted::name, out);
  }
  void decode(const symbols& in, const cache_info& info, block& b) const override { inner_.decode(in, info, b); }
  bool decode_rows(const symbols& in, const cache_info& info, const block& b, dtype t, std::byte* const* rows) const override {
    return inner_.decode_rows(in, info, b, t, rows);
  }

 private:
  static quant::cachegen inner_params(const quant::weighted& w) {
    quant::cachegen c;
    c.kbins = c.vbins = std::to_string(w.bins);
    c.klayers = c.vlayers = "-";
    c.scale = "f16";
    c.kaxis = c.vaxis = "channel";
    return c;
  }
  cachegen_quant inner_;
};

}  // namespace kvcodec::cpu
