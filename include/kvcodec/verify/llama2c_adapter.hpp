// kvcodec/verify/llama2c_adapter.hpp — the llama2.c reference decoder as a draft-and-verify client.
//
// decoder_verifier: install() makes the fetched full context resident (first call: load_cache;
// later calls: the context rows [0, C) are written over the resident ones, a swap-in), score() is
// one decoder::forward_batch. With check_exact it replays every scored block token by token on a
// copy of the pre-batch cache and counts positions whose logits differ in any bit.
// decoder_drafter: decodes with a compressed context (kept masks applied) and adopts verified rows
// with decoder::copy_cache_rows, then runs its after-adopt hook (decoding compression:
// verify/decoding.hpp). Both take decoder_options: record_queries keeps every position's queries,
// which a query-aware drop stage of decoding compression scores with.
// Invariant: forward_batch == sequential forward bit for bit (model/decoder.hpp), so greedy
// draft-and-verify with these adapters reproduces full-cache greedy decoding exactly.
#pragma once

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/model/decoder.hpp"
#include "kvcodec/tensor/kept.hpp"
#include "kvcodec/verify/hooks.hpp"

namespace kvcodec::verify {

class decoder_verifier final : public verifier {
 public:
  explicit decoder_verifier(std::shared_ptr<const model::llama2c_model> m, bool check_exact = false, model::decoder_options opt = {})
      : dec_(m, opt), check_(check_exact) {
    if (check_exact) ref_ = std::make_unique<model::decoder>(m);
  }
  const model::decoder& decoder() const noexcept { return dec_; }
  model::decoder& decoder() noexcept { return dec_; }
  int length() const override { return dec_.length(); }
  int capacity() const noexcept { return dec_.config().seq_len; }

  void install(const full_cache_ptr& ctx) override {
    if (!ctx) throw_usage("decoder_verifier install: null context");
    if (ctx == installed_ && dec_.length() >= ctx->shape.tokens) return;
    const auto C = static_cast<int>(ctx->shape.tokens);
    if (dec_.length() <= C) {
      dec_.load_cache(*ctx, C);
    } else {
      ctx->validate("decoder_verifier install: context");
      model::kv_store& s = dec_.cache();
      if (ctx->shape.layers != s.layers() || ctx->shape.kv_heads != s.kv_heads() || ctx->shape.head_dim != s.head_dim())
        throw_bad_input("decoder_verifier install", "context shape", "the model's layers/kv_heads/head_dim", "a different shape");
      const auto hd = static_cast<std::size_t>(s.head_dim());
      const auto T = static_cast<std::size_t>(C);
      for (int l = 0; l < s.layers(); ++l)
        for (int h = 0; h < s.kv_heads(); ++h) {
          const std::size_t off = static_cast<std::size_t>(h) * T * hd;
          std::copy_n(ctx->keys[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(off), T * hd, s.key(l, h, 0));
          std::copy_n(ctx->values[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(off), T * hd, s.value(l, h, 0));
          kept_mask(*ctx, l, h, s.keep(l, h), T);
        }
    }
    installed_ = ctx;
  }

  std::vector<std::vector<float>> score(const std::vector<int>& tokens) override {
    if (check_) ref_->restore(dec_.cache());
    auto out = dec_.forward_batch(tokens, dec_.length());
    if (check_)
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        const auto one = ref_->forward(tokens[i], ref_->length());
        ++counts_.checked;
        if (one.size() != out[i].size() || std::memcmp(one.data(), out[i].data(), one.size() * sizeof(float)) != 0) ++counts_.mismatched;
      }
    return out;
  }
  void truncate(int n) override { dec_.truncate(n); }
  exactness_counts exactness() const override { return counts_; }

 private:
  model::decoder dec_;
  bool check_;
  std::unique_ptr<model::decoder> ref_;
  full_cache_ptr installed_;
  exactness_counts counts_;
};

class decoder_drafter final : public drafter {
 public:
  explicit decoder_drafter(std::shared_ptr<const model::llama2c_model> m, model::decoder_options opt = {}) : dec_(std::move(m), opt) {}
  /// Runs `f` on the drafter's decoder after every adopt (e.g. a verify::decoding_compressor).
  void set_after_adopt(std::function<void(model::decoder&)> f) { after_adopt_ = std::move(f); }
  /// Positions [0, C) from a (decoded, possibly sparse) compressed context.
  void load(const kv_cache& compressed, std::int64_t C) {
    dec_.reset();
    dec_.load_cache(compressed, C);
  }
  const model::decoder& decoder() const noexcept { return dec_; }
  model::decoder& decoder() noexcept { return dec_; }
  int length() const override { return dec_.length(); }
  std::vector<float> step(int token) override { return dec_.forward(token, dec_.length()); }
  void truncate(int n) override { dec_.truncate(n); }
  void adopt(const verifier& v, int a, int b) override {
    const auto* dv = dynamic_cast<const decoder_verifier*>(&v);
    if (!dv) throw_usage("decoder_drafter adopt: the verifier is not a decoder_verifier");
    dec_.copy_cache_rows(dv->decoder(), a, b);
    if (after_adopt_) after_adopt_(dec_);
  }

 private:
  model::decoder dec_;
  std::function<void(model::decoder&)> after_adopt_;
};

}  // namespace kvcodec::verify
