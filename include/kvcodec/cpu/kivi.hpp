// kvcodec/cpu/kivi.hpp — stage `kivi` (stage/kivi.hpp) on the CPU.
//
// Per head, the rows with position < tokens − residual are quantized (keys: per channel in groups of
// `group` tokens within the chunk; values: per token in groups of min(group, head_dim) channels, which
// must divide head_dim); the later rows are residual. Symbols: one plane, quantized rows x head_dim,
// alphabet 2^bits. Side bytes: group parameters, then the outlier list when outliers > 0, then (when the
// block has residual rows) the residual rows exactly (qc::put_exact), heads in order.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "kvcodec/cpu/quant_common.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/kivi.hpp"

namespace kvcodec::cpu {

class kivi_quant final : public stage_impl<quant::kivi, quant_stage> {
 public:
  using stage_impl::stage_impl;
  bool lossless() const override { return false; }
  /// What a batch decoder (pipeline/batch.hpp) needs: the affine configuration of K or V, the residual
  /// tokens and the outlier percentage.
  qc::affine_cfg affine_config(bool key, int head_dim) const { return cfg(key, head_dim); }
  int residual() const noexcept { return p_.residual; }
  double outliers() const noexcept { return p_.outliers; }

  bool fit_uses_blocks() const override { return false; }  // fit reads the cache info only
  bytes fit(const std::vector<block>&, const cache_info& info) override {
    (void)cfg(false, info.shape.head_dim);
    return {};
  }

  void encode(const block& b, const cache_info& info, symbols& out) const override {
    const qc::affine_cfg c = cfg(b.key, b.head_dim);
    const std::size_t D = static_cast<std::size_t>(b.head_dim);
    qc::check_block(name(), b);
    const split s = split_rows(b, info);
    std::vector<float> xq, xr;
    xq.reserve(s.nq * D);
    xr.reserve((b.rows() - s.nq) * D);
    std::size_t off = 0;
    for (int h = 0; h < b.heads; ++h) {
      const std::size_t cnt = b.count[static_cast<std::size_t>(h)], q = s.qcount[static_cast<std::size_t>(h)];
      xq.insert(xq.end(), b.data.begin() + static_cast<std::ptrdiff_t>(off * D), b.data.begin() + static_cast<std::ptrdiff_t>((off + q) * D));
      xr.insert(xr.end(), b.data.begin() + static_cast<std::ptrdiff_t>((off + q) * D), b.data.begin() + static_cast<std::ptrdiff_t>((off + cnt) * D));
      off += cnt;
    }
    out.planes.assign(1, qc::make_plane(1u << c.bits, s.nq, D));
    out.side.assign(qc::affine_side_bytes(c, s.qcount.data(), b.heads, b.head_dim), 0);
    bytes tail;
    if (p_.outliers > 0.0) qc::take_outliers(xq.data(), xq.size(), p_.outliers, info.source_dtype, tail);
    qc::affine_encode(c, xq.data(), s.qcount.data(), b.heads, b.head_dim, out.planes[0].sym.data(), out.side.data());
    if (!xr.empty()) qc::put_exact(xr.data(), xr.size(), info.source_dtype, tail);
    out.side.insert(out.side.end(), tail.begin(), tail.end());
  }

  void decode(const symbols& in, const cache_info& info, block& b) const override {
    const std::string w = qc::where(name(), b);
    const qc::affine_cfg c = cfg(b.key, b.head_dim);
    const std::size_t D = static_cast<std::size_t>(b.head_dim);
    const split s = split_rows(b, info);
    const symbol_plane& pl = qc::expect_plane(in, 1u << c.bits, s.nq, D, w);
    const std::size_t pbytes = qc::affine_side_bytes(c, s.qcount.data(), b.heads, b.head_dim);
    if (in.side.size() < pbytes)
      throw_corrupt(w, "expected at least " + std::to_string(pbytes) + " bytes of scales, found " + std::to_string(in.side.size()));
    byte_reader r(std::span<const std::uint8_t>(in.side).subspan(pbytes), w + " side bytes");
    if (s.nq == b.rows()) {
      // no residual rows: the quantized rows are the block's rows in order
      b.data.resize(b.rows() * D);
      qc::affine_decode(c, pl.sym.data(), in.side.data(), s.qcount.data(), b.heads, b.head_dim, b.data.data());
      if (p_.outliers > 0.0) qc::put_outliers_back(r, b.data.data(), b.data.size());
      r.expect_end();
      return;
    }
    std::vector<float> yq(s.nq * D), yr((b.rows() - s.nq) * D);
    qc::affine_decode(c, pl.sym.data(), in.side.data(), s.qcount.data(), b.heads, b.head_dim, yq.data());
    if (p_.outliers > 0.0) qc::put_outliers_back(r, yq.data(), yq.size());
    if (!yr.empty()) qc::get_exact(r, yr.size(), yr.data());
    r.expect_end();
    b.data.resize(b.rows() * D);
    std::size_t off = 0, oq = 0, orr = 0;
    for (int h = 0; h < b.heads; ++h) {
      const std::size_t cnt = b.count[static_cast<std::size_t>(h)], q = s.qcount[static_cast<std::size_t>(h)];
      std::copy_n(yq.data() + oq * D, q * D, b.data.data() + off * D);
      std::copy_n(yr.data() + orr * D, (cnt - q) * D, b.data.data() + (off + q) * D);
      oq += q;
      orr += cnt - q;
      off += cnt;
    }
  }

 private:
  struct split {
    std::vector<std::uint32_t> qcount;  ///< quantized rows per head (a prefix of the head's rows)
    std::size_t nq = 0;
  };
  split split_rows(const block& b, const cache_info& info) const {
    const std::int64_t first_residual = info.shape.tokens - static_cast<std::int64_t>(p_.residual);
    split s;
    s.qcount.resize(static_cast<std::size_t>(b.heads));
    std::size_t off = 0;
    for (int h = 0; h < b.heads; ++h) {
      const std::size_t cnt = b.count[static_cast<std::size_t>(h)];
      std::uint32_t q = 0;
      while (q < cnt && b.pos[off + q] < first_residual) ++q;
      s.qcount[static_cast<std::size_t>(h)] = q;
      s.nq += q;
      off += cnt;
    }
    return s;
  }
  qc::affine_cfg cfg(bool key, int head_dim) const {
    qc::affine_cfg c;
    c.bits = p_.bits;
    c.mode = affine::mode::asymmetric;
    c.pd = p_.scale == "f32" ? affine::param_dtype::f32 : affine::param_dtype::f16;
    c.per_channel = key;
    c.group = key ? p_.group : std::min(p_.group, head_dim);
    if (!key) qc::check_channel_group(name(), "group", c.group, head_dim);
    return c;
  }
};

}  // namespace kvcodec::cpu
