// kvcodec/cpu/fp8.hpp — stage `fp8` (stage/fp8.hpp) on the CPU, with core/fp8.hpp's saturating RNE
// conversions.
//
// Symbols: one plane, rows x head_dim, alphabet 256 (the fp8 codes). Side bytes: scale=tensor none (the
// per-(layer, K/V) f32 scales are stage state: 2·layers f32, K then V per layer); scale=head one f32
// per head; scale=token one f32 per row. Scales are fp8_scale(finite amax). Non-finite inputs: NaN stays
// NaN, ±Inf saturates to ±max finite · scale; both are left out of the amax.
#pragma once

#include <string>
#include <vector>

#include "kvcodec/core/fp8.hpp"
#include "kvcodec/cpu/quant_common.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/fp8.hpp"

namespace kvcodec::cpu {

class fp8_quant final : public stage_impl<quant::fp8, quant_stage> {
 public:
  explicit fp8_quant(quant::fp8 p) : stage_impl(std::move(p)) {
    kind_ = p_.format == "e5m2" ? fp8_kind::e5m2 : fp8_kind::e4m3;
  }
  bool lossless() const override { return false; }
  /// The format, the scale granularity ("tensor", "head" or "token") and, for scale=tensor, the scale of
  /// (layer, K or V) once fitted or loaded: what a batch decoder (pipeline/batch.hpp) needs.
  fp8_kind format_kind() const noexcept { return kind_; }
  const std::string& scale_mode() const noexcept { return p_.scale; }
  float tensor_scale(int layer, bool key) const {
    block b;
    b.layer = layer;
    b.key = key;
    return tensor_scale(b);
  }

  bytes fit(const std::vector<block>& blocks, const cache_info& info) override {
    if (p_.scale != "tensor") return {};
    std::vector<float> amax(2 * static_cast<std::size_t>(std::max(info.shape.layers, 0)), 0.0f);
    for (const auto& b : blocks) {
      if (b.layer < 0 || b.layer >= info.shape.layers) throw_usage(qc::where(name(), b) + ": layer outside the cache's layers");
      float& a = amax[2 * static_cast<std::size_t>(b.layer) + (b.key ? 0u : 1u)];
      a = std::max(a, finite_amax(b.data.data(), b.data.size()));
    }
    return fit_amax(amax);
  }

  /// scale=tensor's fit from the finite max-abs of each (layer, K/V) tensor (2 per layer, K first), as
  /// an encoder that scans the cache itself (the CUDA backend) finds them; returns the stage state.
  bytes fit_amax(const std::vector<float>& amax) {
    scales_.resize(amax.size());
    for (std::size_t i = 0; i < amax.size(); ++i) scales_[i] = fp8_scale(amax[i], kind_);
    bytes st(scales_.size() * 4);
    encode_floats(scales_.data(), scales_.size(), dtype::f32, st.data());
    return st;
  }

  void load_state(std::span<const std::uint8_t> state, const cache_info& info) override {
    if (p_.scale != "tensor") return stage::load_state(state, info);
    const std::size_t n = 2 * static_cast<std::size_t>(std::max(info.shape.layers, 0));
    if (state.size() != n * 4)
      throw_corrupt("fp8 stage state", "expected " + std::to_string(n * 4) + " bytes of per-tensor scales, found " + std::to_string(state.size()));
    scales_.resize(n);
    decode_floats(state.data(), n, dtype::f32, scales_.data());
    for (float s : scales_)
      if (!(s > 0.0f) || !std::isfinite(s)) throw_corrupt("fp8 stage state", "scale " + std::to_string(s) + " is not a positive finite number");
  }

  void encode(const block& b, const cache_info&, symbols& out) const override {
    qc::check_block(name(), b);
    const std::size_t D = static_cast<std::size_t>(b.head_dim), rows = b.rows();
    out.planes.assign(1, qc::make_plane(256, rows, D));
    std::uint16_t* sym = out.planes[0].sym.data();
    const float* x = b.data.data();
    out.side.clear();
    auto code_rows = [&](std::size_t r0, std::size_t nr, float s) {
      encode_fp8(kind_, x + r0 * D, nr * D, s, sym + r0 * D);
    };
    if (p_.scale == "tensor") {
      code_rows(0, rows, tensor_scale(b));
    } else if (p_.scale == "head") {
      std::vector<float> sc(static_cast<std::size_t>(b.heads));
      std::size_t off = 0;
      for (int h = 0; h < b.heads; ++h) {
        const std::size_t cnt = b.count[static_cast<std::size_t>(h)];
        sc[static_cast<std::size_t>(h)] = fp8_scale(finite_amax(x + off * D, cnt * D), kind_);
        code_rows(off, cnt, sc[static_cast<std::size_t>(h)]);
        off += cnt;
      }
      put_scales(sc, out.side);
    } else {
      std::vector<float> sc(rows);
      for (std::size_t r = 0; r < rows; ++r) {
        sc[r] = fp8_scale(finite_amax(x + r * D, D), kind_);
        code_rows(r, 1, sc[r]);
      }
      put_scales(sc, out.side);
    }
  }

  void decode(const symbols& in, const cache_info&, block& b) const override {
    const std::string w = qc::where(name(), b);
    const std::size_t D = static_cast<std::size_t>(b.head_dim), rows = b.rows();
    const symbol_plane& pl = qc::expect_plane(in, 256, rows, D, w);
    const std::size_t nscales = p_.scale == "tensor" ? 0 : (p_.scale == "head" ? static_cast<std::size_t>(b.heads) : rows);
    if (in.side.size() != nscales * 4)
      throw_corrupt(w, "expected " + std::to_string(nscales * 4) + " bytes of scales, found " + std::to_string(in.side.size()));
    std::vector<float> sc(nscales);
    decode_floats(in.side.data(), nscales, dtype::f32, sc.data());
    b.data.resize(rows * D);
    const std::uint16_t* sym = pl.sym.data();
    float* y = b.data.data();
    auto decode_rows = [&](std::size_t r0, std::size_t nr, float s) {
      decode_fp8(kind_, sym + r0 * D, nr * D, s, y + r0 * D);
    };
    if (p_.scale == "tensor") {
      decode_rows(0, rows, tensor_scale(b));
    } else if (p_.scale == "head") {
      std::size_t off = 0;
      for (int h = 0; h < b.heads; ++h) {
        const std::size_t cnt = b.count[static_cast<std::size_t>(h)];
        decode_rows(off, cnt, sc[static_cast<std::size_t>(h)]);
        off += cnt;
      }
    } else {
      for (std::size_t r = 0; r < rows; ++r) decode_rows(r, 1, sc[r]);
    }
  }

 private:
  static void put_scales(const std::vector<float>& sc, bytes& out) {
    out.resize(sc.size() * 4);
    encode_floats(sc.data(), sc.size(), dtype::f32, out.data());
  }
  float tensor_scale(const block& b) const {
    const std::size_t i = 2 * static_cast<std::size_t>(b.layer) + (b.key ? 0u : 1u);
    if (b.layer < 0 || i >= scales_.size())
      throw_usage(qc::where(name(), b) + ": scale=tensor needs the per-tensor scales of fit() / load_state() for this layer");
    return scales_[i];
  }
  fp8_kind kind_ = fp8_kind::e4m3;
  std::vector<float> scales_;
};

}  // namespace kvcodec::cpu
