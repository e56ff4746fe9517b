// kvcodec/cpu/codebook.hpp — stages `nf4` and `kmeans` (stage/codebook.hpp) on the CPU, through
// core/codebook.hpp.
//
// nf4: one plane rows x head_dim of alphabet 16; side = each group's absmax (f16/f32, rounded to its
// storage dtype before any code is chosen), groups in row order. kmeans: one plane rows x head_dim of
// alphabet 2^bits, no side bytes; stage state = for each layer the K codebook then the V codebook,
// 2^bits f32 each (non-decreasing; checked on load). Non-finite inputs: NaN codes as the level nearest
// 0, ±Inf as the extreme level (nf4: ±absmax); they are left out of absmax and of the fit.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "kvcodec/core/codebook.hpp"
#include "kvcodec/cpu/quant_common.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/codebook.hpp"

namespace kvcodec::cpu {

class nf4_quant final : public stage_impl<quant::nf4, quant_stage> {
 public:
  using stage_impl::stage_impl;
  bool lossless() const override { return false; }

  bool fit_uses_blocks() const override { return false; }  // fit reads the cache info only
  bytes fit(const std::vector<block>&, const cache_info& info) override {
    (void)group_of(info.shape.head_dim);
    return {};
  }

  void encode(const block& b, const cache_info&, symbols& out) const override {
    qc::check_block(name(), b);
    const std::size_t G = group_of(b.head_dim), n = b.data.size();
    out.planes.assign(1, qc::make_plane(16, b.rows(), static_cast<std::size_t>(b.head_dim)));
    const std::size_t pb = affine::param_bytes(affine::mode::symmetric, pd());
    out.side.assign(n / G * pb, 0);
    std::uint16_t* sym = out.planes[0].sym.data();
    const float* x = b.data.data();
    for (std::size_t e = 0, g = 0; e < n; e += G, ++g) {
      const float a = affine::round_param(codebook::absmax(x + e, G), pd());
      affine::store_params(affine::params{a, 0.0f}, affine::mode::symmetric, pd(), out.side.data() + g * pb);
      for (std::size_t i = 0; i < G; ++i) sym[e + i] = codebook::nf4_encode(x[e + i], a);
    }
  }

  void decode(const symbols& in, const cache_info&, block& b) const override {
    const std::string w = qc::where(name(), b);
    const std::size_t D = static_cast<std::size_t>(b.head_dim), G = group_of(b.head_dim), n = b.rows() * D;
    const symbol_plane& pl = qc::expect_plane(in, 16, b.rows(), D, w);
    const std::size_t pb = affine::param_bytes(affine::mode::symmetric, pd());
    if (in.side.size() != n / G * pb)
      throw_corrupt(w, "expected " + std::to_string(n / G * pb) + " bytes of absmax scales, found " + std::to_string(in.side.size()));
    b.data.resize(n);
    const std::uint16_t* sym = pl.sym.data();
    for (std::size_t e = 0, g = 0; e < n; e += G, ++g) {
      const float a = affine::load_params(in.side.data() + g * pb, affine::mode::symmetric, pd()).scale;
      for (std::size_t i = 0; i < G; ++i) b.data[e + i] = codebook::nf4_decode(static_cast<std::uint8_t>(sym[e + i]), a);
    }
  }

  // The batch decoders' and encoders' view of the stage (pipeline/batch.hpp, pipeline/batch_encode.hpp).
  affine::param_dtype pd() const { return p_.scale == "f32" ? affine::param_dtype::f32 : affine::param_dtype::f16; }
  /// The absmax group for this head_dim (usage error when it does not divide it).
  std::size_t group_of(int head_dim) const {
    const int g = p_.group == 0 ? head_dim : p_.group;
    qc::check_channel_group(name(), "group", g, head_dim);
    return static_cast<std::size_t>(g);
  }
};

class kmeans_quant final : public stage_impl<quant::kmeans, quant_stage> {
 public:
  using stage_impl::stage_impl;
  bool lossless() const override { return false; }

  bytes fit(const std::vector<block>& blocks, const cache_info& info) override {
    const std::size_t L = static_cast<std::size_t>(std::max(info.shape.layers, 0));
    std::vector<std::size_t> total(2 * L, 0);
    for (const auto& b : blocks) {
      if (b.layer < 0 || static_cast<std::size_t>(b.layer) >= L) throw_usage(qc::where(name(), b) + ": layer outside the cache's layers");
      total[2 * static_cast<std::size_t>(b.layer) + (b.key ? 0u : 1u)] += b.data.size();
    }
    std::vector<std::vector<float>> sample(2 * L);
    std::vector<std::size_t> seen(2 * L, 0);
    for (const auto& b : blocks) {
      const std::size_t i = 2 * static_cast<std::size_t>(b.layer) + (b.key ? 0u : 1u);
      const std::size_t stride = sample_stride(total[i]);
      for (float v : b.data) {
        if (seen[i]++ % stride == 0) sample[i].push_back(v);
      }
    }
    return fit_samples(sample);
  }

  /// The fit from each (layer, K/V)'s sample (index 2 x layer + (V ? 1 : 0)): the values at positions
  /// 0, s, 2s, ... (s = ceil(values / sample)) of its blocks' values in encode order (chunks in order,
  /// each block head-major), as fit() takes them. The batch encoder gathers them on the GPU.
  bytes fit_samples(const std::vector<std::vector<float>>& sample) {
    const std::size_t k = levels();
    cb_.assign(sample.size() * k, 0.0f);
    for (std::size_t i = 0; i < sample.size(); ++i) {
      const auto cb = codebook::fit_codebook(sample[i].data(), sample[i].size(), static_cast<int>(k), p_.iters);
      std::copy(cb.begin(), cb.end(), cb_.begin() + static_cast<std::ptrdiff_t>(i * k));
    }
    bytes st(cb_.size() * 4);
    encode_floats(cb_.data(), cb_.size(), dtype::f32, st.data());
    return st;
  }
  /// The sample stride for a (layer, K/V) of `values` values.
  std::size_t sample_stride(std::size_t values) const {
    return (values + static_cast<std::size_t>(p_.sample) - 1) / static_cast<std::size_t>(p_.sample);
  }

  void load_state(std::span<const std::uint8_t> state, const cache_info& info) override {
    const std::size_t n = 2 * static_cast<std::size_t>(std::max(info.shape.layers, 0)) * levels();
    if (state.size() != n * 4)
      throw_corrupt("kmeans stage state", "expected " + std::to_string(n * 4) + " bytes of codebooks, found " + std::to_string(state.size()));
    cb_.resize(n);
    decode_floats(state.data(), n, dtype::f32, cb_.data());
    for (std::size_t i = 0; i < n; ++i) {
      if (!std::isfinite(cb_[i])) throw_corrupt("kmeans stage state", "codeword " + std::to_string(i) + " is not finite");
      if (i % levels() != 0 && cb_[i] < cb_[i - 1]) throw_corrupt("kmeans stage state", "codebook is not non-decreasing at codeword " + std::to_string(i));
    }
  }

  void encode(const block& b, const cache_info&, symbols& out) const override {
    qc::check_block(name(), b);
    const float* cb = book(b);
    out.planes.assign(1, qc::make_plane(static_cast<std::uint32_t>(levels()), b.rows(), static_cast<std::size_t>(b.head_dim)));
    out.side.clear();
    codebook::encode(cb, static_cast<int>(levels()), b.data.data(), b.data.size(), out.planes[0].sym.data());
  }

  void decode(const symbols& in, const cache_info&, block& b) const override {
    const std::string w = qc::where(name(), b);
    const float* cb = book(b);
    const symbol_plane& pl = qc::expect_plane(in, static_cast<std::uint32_t>(levels()), b.rows(), static_cast<std::size_t>(b.head_dim), w);
    if (!in.side.empty()) throw_corrupt(w, "expected no side bytes, found " + std::to_string(in.side.size()));
    b.data.resize(pl.sym.size());
    codebook::decode(cb, pl.sym.data(), pl.sym.size(), b.data.data());
  }

  // The batch decoders' view of the stage (pipeline/batch.hpp): 2^bits codewords, and every layer's K
  // then V codebook (fitted or loaded).
  std::size_t levels() const { return std::size_t{1} << p_.bits; }
  int bits() const { return p_.bits; }
  const std::vector<float>& codebooks() const { return cb_; }

 private:
  const float* book(const block& b) const {
    const std::size_t i = 2 * static_cast<std::size_t>(b.layer) + (b.key ? 0u : 1u);
    if (b.layer < 0 || (i + 1) * levels() > cb_.size())
      throw_usage(qc::where(name(), b) + ": no codebook for this layer (fit() or load_state() first)");
    return cb_.data() + i * levels();
  }
  std::vector<float> cb_;
};

}  // namespace kvcodec::cpu
