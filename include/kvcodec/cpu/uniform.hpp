// kvcodec/cpu/uniform.hpp — stage `uniform` (stage/uniform.hpp) on the CPU.
//
// Symbols: one plane, rows x head_dim (column = channel), alphabet 2^bits of the block's layer.
// Side bytes: the groups' parameters (scale[, min] in f16/f32, order of qc::affine_encode), then, when
// outliers > 0, the sparse outlier list (qc::take_outliers). Decoding checks every size.
#pragma once

#include <string>
#include <vector>

#include "kvcodec/cpu/quant_common.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/uniform.hpp"

namespace kvcodec::cpu {

class uniform_quant final : public stage_impl<quant::uniform, quant_stage> {
 public:
  explicit uniform_quant(quant::uniform p) : stage_impl(std::move(p)), ks_(p_.k_schedule()), vs_(p_.v_schedule()) {}
  bool lossless() const override { return false; }
  /// What a batch decoder (pipeline/batch.hpp) needs: the affine configuration of (layer, K or V) and
  /// the outlier percentage.
  qc::affine_cfg affine_config(bool key, int layer, int head_dim) const { return cfg(key, layer, head_dim); }
  double outliers() const noexcept { return p_.outliers; }

  bool fit_uses_blocks() const override { return false; }  // fit reads the cache info only
  bytes fit(const std::vector<block>&, const cache_info& info) override {
    (void)cfg(true, 0, info.shape.head_dim);
    (void)cfg(false, 0, info.shape.head_dim);
    return {};
  }

  void encode(const block& b, const cache_info& info, symbols& out) const override {
    const qc::affine_cfg c = cfg(b.key, b.layer, b.head_dim);
    const std::size_t D = static_cast<std::size_t>(b.head_dim), n = b.rows() * D;
    qc::check_block(name(), b);
    out.planes.assign(1, qc::make_plane(1u << c.bits, b.rows(), D));
    out.side.assign(qc::affine_side_bytes(c, b.count.data(), b.heads, b.head_dim), 0);
    if (p_.outliers > 0.0) {
      std::vector<float> x(b.data);
      bytes sparse;
      qc::take_outliers(x.data(), n, p_.outliers, info.source_dtype, sparse);
      qc::affine_encode(c, x.data(), b.count.data(), b.heads, b.head_dim, out.planes[0].sym.data(), out.side.data());
      out.side.insert(out.side.end(), sparse.begin(), sparse.end());
    } else {
      qc::affine_encode(c, b.data.data(), b.count.data(), b.heads, b.head_dim, out.planes[0].sym.data(), out.side.data());
    }
  }

  void decode(const symbols& in, const cache_info&, block& b) const override {
    const std::string w = qc::where(name(), b);
    const qc::affine_cfg c = cfg(b.key, b.layer, b.head_dim);
    const std::size_t D = static_cast<std::size_t>(b.head_dim), n = b.rows() * D;
    const symbol_plane& pl = qc::expect_plane(in, 1u << c.bits, b.rows(), D, w);
    const std::size_t pbytes = qc::affine_side_bytes(c, b.count.data(), b.heads, b.head_dim);
    if (in.side.size() < pbytes || (p_.outliers == 0.0 && in.side.size() != pbytes))
      throw_corrupt(w, "expected " + std::to_string(pbytes) + " bytes of scales" + (p_.outliers > 0.0 ? " and an outlier list" : "") +
                           ", found " + std::to_string(in.side.size()) + " side bytes");
    b.data.assign(n, 0.0f);
    qc::affine_decode(c, pl.sym.data(), in.side.data(), b.count.data(), b.heads, b.head_dim, b.data.data());
    if (p_.outliers > 0.0) {
      byte_reader r(std::span<const std::uint8_t>(in.side).subspan(pbytes), w + " outliers");
      qc::put_outliers_back(r, b.data.data(), n);
      r.expect_end();
    }
  }

 private:
  qc::affine_cfg cfg(bool key, int layer, int head_dim) const {
    qc::affine_cfg c;
    c.bits = quant::schedule_bits(key ? ks_ : vs_, layer);
    c.mode = p_.mode == "sym" ? affine::mode::symmetric : affine::mode::asymmetric;
    c.pd = p_.scale == "f32" ? affine::param_dtype::f32 : affine::param_dtype::f16;
    c.per_channel = (key ? p_.kaxis : p_.vaxis) == "channel";
    c.group = p_.group;
    if (!c.per_channel) {
      if (c.group == 0) c.group = head_dim;
      qc::check_channel_group(name(), "group", c.group, head_dim);
    }
    return c;
  }
  std::vector<int> ks_, vs_;
};

}  // namespace kvcodec::cpu
