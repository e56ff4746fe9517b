// kvcodec/cpu/think.hpp — transform stage `think` (stage/think.hpp) on the CPU.
//
// fit: for every (layer l, kv head h, channel c) the score is q_energy[l][h][c] x mean over the
// prefix's tokens of k[c]^2 (core/think.hpp's steps, shared with the GPU's fit; kvpress ThinKPress: mean squared query of the head's group times mean
// squared key). q_energy is cache_info::query_energy, the mean squared query over the group's query
// heads and every observed query (ThinK and kvpress take the last 32 queries; a cache dump has them
// all, and the channel statistics of all are the steadier). Each head keeps its head_dim - floor(prune
// x head_dim) best channels (ties: the lower channel), recorded in the stage state as one bit mask per
// (layer, kv head). forward compacts each key row to its head's kept channels (the block's head_dim
// becomes the kept width, which is what the quantizer and entropy stages code); inverse writes the
// kept channels back in place and zeros in the pruned ones. Value blocks pass through.
// Needs the cache's queries (a bad_input error otherwise). The quantizer after it must code any row
// width: `klt` and `weighted-quant:kweight=query` read per-channel cache statistics and are refused.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/core/think.hpp"
#include "kvcodec/cpu/quant_common.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/format/bytes.hpp"
#include "kvcodec/stage/think.hpp"

namespace kvcodec::cpu {

class think_transform final : public stage_impl<transform::think, transform_stage> {
 public:
  using stage_impl::stage_impl;
  bool lossless() const override { return p_.prune == 0.0; }
  bool wants_query_energy() const override { return true; }

  /// Channels a head keeps for a head_dim of D.
  std::size_t kept_width(std::size_t D) const { return D - static_cast<std::size_t>(p_.prune * static_cast<double>(D)); }

  bytes fit(const std::vector<block>& blocks, const cache_info& info) override {
    const kv_shape& s = info.shape;
    const std::size_t L = static_cast<std::size_t>(s.layers), H = static_cast<std::size_t>(s.kv_heads), D = static_cast<std::size_t>(s.head_dim);
    if (info.query_energy.size() != L * H * D)
      throw_bad_input("think stage input", "queries",
                      "the cache's queries (q_heads > 0, e.g. a dump with queries.{layer}): ThinK weighs key channels by the queries' energy", "none");
    std::vector<double> k2(L * H * D, 0.0);
    std::vector<std::int64_t> rows(L * H, 0);
    for (const block& b : blocks) {
      if (!b.key) continue;
      qc::check_block(name(), b);
      const float* x = b.data.data();
      for (int hh = 0; hh < b.heads; ++hh) {
        const std::size_t at = static_cast<std::size_t>(b.layer) * H + static_cast<std::size_t>(hh);
        double* acc = k2.data() + at * D;
        for (std::uint32_t r = 0; r < b.count[static_cast<std::size_t>(hh)]; ++r, x += D)
          for (std::size_t c = 0; c < D; ++c) acc[c] += static_cast<double>(x[c]) * static_cast<double>(x[c]);
        rows[at] += b.count[static_cast<std::size_t>(hh)];
      }
    }
    const std::size_t W = kept_width(D);
    d_ = D;
    masks_.assign(L * H * D, 0);
    std::vector<double> score(D);
    for (std::size_t at = 0; at < L * H; ++at) {  // core/think.hpp's steps, as the GPU's fit (cuda/think.cuh)
      for (std::size_t c = 0; c < D; ++c) score[c] = think_score({k2[at * D + c], rows[at]}, info.query_energy[at * D + c]);
      for (std::size_t c = 0; c < D; ++c)
        masks_[at * D + c] = think_keeps(score.data(), static_cast<std::int64_t>(D), static_cast<std::int64_t>(W), static_cast<std::int64_t>(c)) ? 1 : 0;
    }
    index();
    return state_of(masks_, D, W);
  }

  /// The stage state of masks ([layer][kv head][channel], 1 = kept, W per head of D): head_dim and W as
  /// varints, then one bit mask per (layer, kv head), channel c at bit c % 8 of byte c / 8.
  static bytes state_of(const std::vector<std::uint8_t>& masks, std::size_t D, std::size_t W) {
    bytes out;
    byte_writer w(out);
    w.put_varint(D);
    w.put_varint(W);
    const std::size_t mb = (D + 7) / 8;
    for (std::size_t at = 0; D > 0 && at < masks.size() / D; ++at) {
      std::vector<std::uint8_t> bits(mb, 0);
      for (std::size_t c = 0; c < D; ++c)
        if (masks[at * D + c]) bits[c / 8] = static_cast<std::uint8_t>(bits[c / 8] | (1u << (c % 8)));
      w.put_bytes(bits.data(), bits.size());
    }
    return out;
  }

  /// The fitted masks ([layer][kv head][channel], 1 = kept).
  const std::vector<std::uint8_t>& masks() const noexcept { return masks_; }

  void load_state(std::span<const std::uint8_t> state, const cache_info& info) override {
    const kv_shape& s = info.shape;
    const std::size_t L = static_cast<std::size_t>(std::max(s.layers, 0)), H = static_cast<std::size_t>(std::max(s.kv_heads, 0)),
                      D = static_cast<std::size_t>(std::max(s.head_dim, 0));
    byte_reader r(state, "think stage state");
    const std::uint64_t d = r.get_varint_max("head_dim", 1u << 20), w = r.get_varint_max("kept channels", 1u << 20);
    if (d != D) throw_corrupt("think stage state", "head_dim " + std::to_string(d) + " where the cache has " + std::to_string(D));
    if (w != kept_width(D))
      throw_corrupt("think stage state", std::to_string(w) + " kept channels where prune=" + std::to_string(p_.prune) + " keeps " + std::to_string(kept_width(D)));
    const std::size_t mb = (D + 7) / 8;
    d_ = D;
    masks_.assign(L * H * D, 0);
    for (std::size_t at = 0; at < L * H; ++at) {
      const auto bits = r.get_bytes(mb, "channel mask");
      std::size_t n = 0;
      for (std::size_t c = 0; c < D; ++c) n += masks_[at * D + c] = (bits[c / 8] >> (c % 8)) & 1u;
      if (n != w) throw_corrupt("think stage state", "a channel mask with " + std::to_string(n) + " channels set, not " + std::to_string(w));
    }
    r.expect_end();
    index();
  }

  int coded_head_dim(const block& b, const cache_info&) const override {
    return b.key ? static_cast<int>(kept_width(static_cast<std::size_t>(b.head_dim))) : b.head_dim;
  }

  void forward(block& b, const cache_info& info) const override {
    if (!b.key) return;
    qc::check_block(name(), b);
    const std::size_t D = static_cast<std::size_t>(b.head_dim), W = kept_width(D);
    check_fitted(b, info, D);
    float* x = b.data.data();
    std::size_t out = 0;
    for (int hh = 0; hh < b.heads; ++hh) {
      const std::size_t* ch = kept_.data() + (static_cast<std::size_t>(b.layer) * static_cast<std::size_t>(info.shape.kv_heads) + static_cast<std::size_t>(hh)) * W;
      for (std::uint32_t r = 0; r < b.count[static_cast<std::size_t>(hh)]; ++r, x += D, out += W)
        for (std::size_t i = 0; i < W; ++i) b.data[out + i] = x[ch[i]];  // ch[i] >= i: reads stay ahead of writes
    }
    b.data.resize(out);
    b.head_dim = static_cast<std::int32_t>(W);
  }

  void inverse(block& b, const cache_info& info) const override {
    if (!b.key) return;
    const std::size_t D = static_cast<std::size_t>(info.shape.head_dim), W = kept_width(D);
    if (static_cast<std::size_t>(b.head_dim) != W) throw_corrupt(qc::where(name(), b), "key rows of " + std::to_string(b.head_dim) + " channels, not " + std::to_string(W));
    qc::check_block(name(), b);
    check_fitted(b, info, D);
    const std::size_t rows = b.rows();
    b.data.resize(rows * D);
    std::size_t r = rows;
    for (int hh = b.heads - 1; hh >= 0; --hh) {  // back to front: row r's W values sit at or before its D-wide slot
      const std::size_t* ch = kept_.data() + (static_cast<std::size_t>(b.layer) * static_cast<std::size_t>(info.shape.kv_heads) + static_cast<std::size_t>(hh)) * W;
      for (std::uint32_t k = 0; k < b.count[static_cast<std::size_t>(hh)]; ++k) {
        --r;
        float* dst = b.data.data() + r * D;
        const float* src = b.data.data() + r * W;
        for (std::size_t i = W; i-- > 0;) {
          const float v = src[i];
          const std::size_t c = ch[i];
          for (std::size_t z = (i + 1 < W ? ch[i + 1] : D); z-- > c + 1;) dst[z] = 0.0f;
          dst[c] = v;
        }
        for (std::size_t z = 0; z < (W > 0 ? ch[0] : D); ++z) dst[z] = 0.0f;
      }
    }
    b.head_dim = static_cast<std::int32_t>(D);
  }

 private:
  /// kept_ from masks_ (d_ channels per head).
  void index() {
    kept_.clear();
    for (std::size_t i = 0; i < masks_.size(); ++i)
      if (masks_[i]) kept_.push_back(i % d_);
  }
  void check_fitted(const block& b, const cache_info& info, std::size_t D) const {
    const std::size_t need = (static_cast<std::size_t>(b.layer) + 1) * static_cast<std::size_t>(info.shape.kv_heads) * kept_width(D);
    if (kept_.size() < need || b.heads != info.shape.kv_heads)
      throw_usage(qc::where(name(), b) + ": no channel masks for this layer (fit() or load_state() first)");
  }

  std::vector<std::uint8_t> masks_;  // [layer][kv head][channel]: 1 = kept
  std::vector<std::size_t> kept_;    // [layer][kv head][W]: the kept channels, ascending
  std::size_t d_ = 0;
};

}  // namespace kvcodec::cpu
