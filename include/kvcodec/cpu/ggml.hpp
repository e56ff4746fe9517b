// kvcodec/cpu/ggml.hpp — the llama.cpp block-format stages (stage/ggml.hpp) on the CPU, through
// core/ggml_blocks.hpp, so the side bytes equal ggml's quantize_row_*_ref output.
//
// Dense block: side = for each token t0..t1, the ggml row of its kv_heads·head_dim values (head 0's
// channels first), row_bytes(type, kv_heads·head_dim) bytes per token; kv_heads·head_dim must be a
// multiple of 32 (usage error otherwise). Ragged block (token dropping): side = for each row (heads in
// order), the row's head_dim values zero-padded to a multiple of 32. No symbol planes. Non-finite inputs
// are read as 0 (core/ggml_blocks.hpp). When head_dim is a multiple of 32 each head's slice of a token row
// is whole blocks, so heads are (de)quantized in place without assembling the row (same bytes).
#pragma once

#include <string>
#include <vector>

#include "kvcodec/core/ggml_blocks.hpp"
#include "kvcodec/cpu/quant_common.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/ggml.hpp"

namespace kvcodec::cpu {

template <class D>
class ggml_quant final : public stage_impl<D, quant_stage> {
  using base = stage_impl<D, quant_stage>;

 public:
  using base::base;
  bool lossless() const override { return false; }

  bool fit_uses_blocks() const override { return false; }  // fit reads the cache info only
  bytes fit(const std::vector<block>&, const cache_info& info) override {
    check_dense_width(info.shape.kv_heads, info.shape.head_dim);
    return {};
  }

  void encode(const block& b, const cache_info&, symbols& out) const override {
    qc::check_block(D::name, b);
    out.planes.clear();
    const std::size_t hd = static_cast<std::size_t>(b.head_dim);
    if (b.dense()) {
      check_dense_width(b.heads, b.head_dim);
      const std::size_t n = static_cast<std::size_t>(b.t1 - b.t0), w = static_cast<std::size_t>(b.heads) * hd;
      const std::size_t rb = ggml::row_bytes(D::type, w);
      out.side.assign(n * rb, 0);
      if (hd % ggml::qk == 0) {
        const std::size_t hb = ggml::row_bytes(D::type, hd);
        for (std::size_t t = 0; t < n; ++t)
          for (int h = 0; h < b.heads; ++h)
            ggml::quantize_row(D::type, b.data.data() + (static_cast<std::size_t>(h) * n + t) * hd, hd,
                               out.side.data() + t * rb + static_cast<std::size_t>(h) * hb);
        return;
      }
      std::vector<float> row(w);
      for (std::size_t t = 0; t < n; ++t) {
        for (int h = 0; h < b.heads; ++h)
          std::copy_n(b.data.data() + (static_cast<std::size_t>(h) * n + t) * hd, hd, row.data() + static_cast<std::size_t>(h) * hd);
        ggml::quantize_row(D::type, row.data(), w, out.side.data() + t * rb);
      }
    } else {
      const std::size_t pw = padded(hd), rb = ggml::row_bytes(D::type, pw);
      out.side.assign(b.rows() * rb, 0);
      std::vector<float> row(pw, 0.0f);
      for (std::size_t r = 0; r < b.rows(); ++r) {
        std::copy_n(b.data.data() + r * hd, hd, row.data());
        ggml::quantize_row(D::type, row.data(), pw, out.side.data() + r * rb);
      }
    }
  }

  void decode(const symbols& in, const cache_info&, block& b) const override {
    const std::string w = qc::where(D::name, b);
    if (!in.planes.empty()) throw_corrupt(w, "expected no symbol planes, found " + std::to_string(in.planes.size()));
    const std::size_t hd = static_cast<std::size_t>(b.head_dim);
    b.data.resize(b.rows() * hd);
    if (b.dense()) {
      check_dense_width(b.heads, b.head_dim);
      const std::size_t n = static_cast<std::size_t>(b.t1 - b.t0), wd = static_cast<std::size_t>(b.heads) * hd;
      const std::size_t rb = ggml::row_bytes(D::type, wd);
      expect_size(in, n * rb, w);
      if (hd % ggml::qk == 0) {
        const std::size_t hb = ggml::row_bytes(D::type, hd);
        for (std::size_t t = 0; t < n; ++t)
          for (int h = 0; h < b.heads; ++h)
            ggml::dequantize_row(D::type, in.side.data() + t * rb + static_cast<std::size_t>(h) * hb, hd,
                                 b.data.data() + (static_cast<std::size_t>(h) * n + t) * hd);
        return;
      }
      std::vector<float> row(wd);
      for (std::size_t t = 0; t < n; ++t) {
        ggml::dequantize_row(D::type, in.side.data() + t * rb, wd, row.data());
        for (int h = 0; h < b.heads; ++h)
          std::copy_n(row.data() + static_cast<std::size_t>(h) * hd, hd, b.data.data() + (static_cast<std::size_t>(h) * n + t) * hd);
      }
    } else {
      const std::size_t pw = padded(hd), rb = ggml::row_bytes(D::type, pw);
      expect_size(in, b.rows() * rb, w);
      std::vector<float> row(pw);
      for (std::size_t r = 0; r < b.rows(); ++r) {
        ggml::dequantize_row(D::type, in.side.data() + r * rb, pw, row.data());
        std::copy_n(row.data(), hd, b.data.data() + r * hd);
      }
    }
  }

 private:
  static std::size_t padded(std::size_t hd) { return (hd + ggml::qk - 1) / ggml::qk * ggml::qk; }
  static void expect_size(const symbols& in, std::size_t n, const std::string& w) {
    if (in.side.size() != n)
      throw_corrupt(w, "expected " + std::to_string(n) + " bytes of " + std::string(D::name) + " blocks, found " + std::to_string(in.side.size()));
  }
  static void check_dense_width(int heads, int head_dim) {
    const long long w = static_cast<long long>(heads) * head_dim;
    if (w <= 0 || w % static_cast<long long>(ggml::qk) != 0)
      throw_usage(describe_mismatch("stage '" + std::string(D::name) + "'", "kv_heads*head_dim",
                                    "a multiple of 32 (llama.cpp blocks of 32 along each token's K/V row)",
                                    std::to_string(w) + " (" + std::to_string(heads) + " heads x " + std::to_string(head_dim) + ")"));
  }
};

}  // namespace kvcodec::cpu
