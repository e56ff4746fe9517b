// kvcodec/cpu/raw.hpp — stage `raw`: a block's rows as f32/f16/bf16 bytes in the side stream.
#pragma once

#include <algorithm>
#include <cstring>
#include <string>

#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/raw.hpp"

namespace kvcodec::cpu {

class raw_quant final : public stage_impl<quant::raw, quant_stage> {
 public:
  explicit raw_quant(quant::raw p) : stage_impl(std::move(p)) { lossless_ = p_.dtype == "auto" || p_.dtype == "f32"; }
  /// Lossless for the source dtype (known once bound to a cache; before that, only auto/f32 are).
  bool lossless() const override { return lossless_; }
  /// The dtype the values are stored in (the source's for dtype=auto, once fitted or loaded).
  dtype stored() const noexcept { return resolved_; }
  bool fit_uses_blocks() const override { return false; }  // fit reads the cache info only
  bytes fit(const std::vector<block>&, const cache_info& info) override {
    resolve(info);
    return {};
  }
  void load_state(std::span<const std::uint8_t> state, const cache_info& info) override {
    stage::load_state(state, info);
    resolve(info);
  }
  void encode(const block& b, const cache_info&, symbols& out) const override {
    out.planes.clear();
    out.side.resize(b.data.size() * dtype_size(resolved_));
    encode_floats(b.data.data(), b.data.size(), resolved_, out.side.data());
  }
  void decode(const symbols& in, const cache_info&, block& b) const override {
    const std::size_t n = b.rows() * static_cast<std::size_t>(b.head_dim);
    if (!in.planes.empty() || in.side.size() != n * dtype_size(resolved_))
      throw_corrupt("raw stage (layer " + std::to_string(b.layer) + ")",
                    "expected " + std::to_string(n * dtype_size(resolved_)) + " bytes of " + std::string(dtype_name(resolved_)) +
                        ", found " + std::to_string(in.side.size()));
    b.data.resize(n);
    decode_floats(in.side.data(), n, resolved_, b.data.data());
  }
  /// Rows straight from the stored bytes: a copy when the stored dtype is the destination's, one
  /// conversion (through f32, exact for widening) otherwise.
  bool decode_rows(const symbols& in, const cache_info&, const block& b, dtype t, std::byte* const* rows) const override {
    const std::size_t D = static_cast<std::size_t>(b.head_dim), R = b.rows();
    if (!in.planes.empty() || in.side.size() != R * D * dtype_size(resolved_))
      throw_corrupt("raw stage (layer " + std::to_string(b.layer) + ")",
                    "expected " + std::to_string(R * D * dtype_size(resolved_)) + " bytes of " + std::string(dtype_name(resolved_)) +
                        ", found " + std::to_string(in.side.size()));
    const std::size_t in_row = D * dtype_size(resolved_);
    if (t == resolved_) {
      for (std::size_t r = 0; r < R; ++r) std::memcpy(rows[r], in.side.data() + r * in_row, in_row);
      return true;
    }
    float tmp[512];
    for (std::size_t r = 0; r < R; ++r)
      for (std::size_t d0 = 0; d0 < D; d0 += 512) {
        const std::size_t n = std::min<std::size_t>(512, D - d0);
        decode_floats(in.side.data() + r * in_row + d0 * dtype_size(resolved_), n, resolved_, tmp);
        encode_floats(tmp, n, t, reinterpret_cast<std::uint8_t*>(rows[r]) + d0 * dtype_size(t));
      }
    return true;
  }

 private:
  void resolve(const cache_info& info) {
    if (p_.dtype == "auto") p_.dtype = std::string(dtype_name(info.source_dtype));
    resolved_ = *parse_dtype(p_.dtype);
    lossless_ = dtype_size(resolved_) >= dtype_size(info.source_dtype) &&
                !(resolved_ == dtype::f16 && info.source_dtype == dtype::bf16) &&
                !(resolved_ == dtype::bf16 && info.source_dtype == dtype::f16);
  }
  dtype resolved_ = dtype::f32;
  bool lossless_ = false;
};

}  // namespace kvcodec::cpu
