// kvcodec/model/decoder.hpp — reference CPU decoder for llama2.c checkpoints, with a pluggable KV store.
//
// Forward pass as in llama2.c's run.c: RMSNorm (eps 1e-5), RoPE (theta 10000, interleaved pairs
// (2i, 2i+1), frequency theta^(-2i/head_dim); angles in double, rounded once to float, which matches
// the reference dumps ~2x closer than run.c's float32 angles) on q and k, causal GQA
// attention scaled by 1/sqrt(head_dim) (query head h reads kv head h / (n_heads / n_kv_heads)),
// SwiGLU feed-forward, final RMSNorm and classifier. Matrix-vector products use Eigen (row-major
// weights times an aligned scratch vector).
// The KV store holds post-RoPE K/V per layer as [kv_heads][capacity][head_dim] (the kv_cache layout),
// a keep mask per (layer, kv head, position), token ids and optionally the queries. It can start
// empty, be preloaded from a kvcodec::kv_cache (kept sets become masks: a dropped token gets no
// attention weight), be truncated (rollback of rejected draft tokens) and take rows from another store.
// Invariant: forward_batch(tokens, p) runs every position through exactly the same operations, in the
// same order and on the same aligned scratch buffers, as forward(tokens[i], p + i) called in sequence,
// so both give bit-identical logits and caches. Positions [0, length()) of the store are valid.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/model/llama2c.hpp"
#include "kvcodec/tensor/kept.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::model {

inline constexpr float rms_eps = 1e-5f;
inline constexpr float rope_theta = 10000.0f;

/// out[i] = w[i] * x[i] / sqrt(mean(x^2) + eps). `out` may alias `x`.
KVCODEC_HD inline void rmsnorm(float* out, const float* x, const float* w, int n, float eps) noexcept {
  float ss = 0.0f;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  ss = ss / static_cast<float>(n) + eps;
  ss = 1.0f / std::sqrt(ss);
  for (int i = 0; i < n; ++i) out[i] = w[i] * (ss * x[i]);
}

/// cos/sin of RoPE at `pos` for the pairs i = 0..head_dim/2-1, angle pos * theta^(-2i/head_dim)
/// evaluated in double and rounded once to float.
KVCODEC_HD inline void rope_angles(float* cos_out, float* sin_out, int pos, int head_dim, float theta) noexcept {
  for (int i = 0; i < head_dim / 2; ++i) {
    const double val = static_cast<double>(pos) *
                       std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
    cos_out[i] = static_cast<float>(std::cos(val));
    sin_out[i] = static_cast<float>(std::sin(val));
  }
}

/// Rotates the interleaved pairs (2i, 2i+1) of each of `heads` consecutive head vectors in place.
KVCODEC_HD inline void rope_rotate(float* v, int heads, int head_dim, const float* cos_t, const float* sin_t) noexcept {
  for (int h = 0; h < heads; ++h) {
    float* p = v + h * head_dim;
    for (int i = 0; i < head_dim / 2; ++i) {
      const float a = p[2 * i], b = p[2 * i + 1];
      p[2 * i] = a * cos_t[i] - b * sin_t[i];
      p[2 * i + 1] = a * sin_t[i] + b * cos_t[i];
    }
  }
}

/// h1[i] = silu(h1[i]) * h3[i].
KVCODEC_HD inline void swiglu(float* h1, const float* h3, int n) noexcept {
  for (int i = 0; i < n; ++i) {
    const float a = h1[i];
    h1[i] = a * (1.0f / (1.0f + std::exp(-a))) * h3[i];
  }
}

/// One attention head over positions [0, n): keys/values are n rows of head_dim floats; keep[t] == 0
/// excludes row t (no weight). `att` is scratch of n floats; out gets head_dim floats (zeros if no
/// row is kept).
KVCODEC_HD inline void attend_head(const float* q, const float* keys, const float* values, const std::uint8_t* keep,
                                   int n, int head_dim, float* att, float* out) noexcept {
  const float sq = std::sqrt(static_cast<float>(head_dim));
  float mx = bit_cast_hd<float>(0xff800000u);  // -infinity
  for (int t = 0; t < n; ++t) {
    if (!keep[t]) continue;
    const float* k = keys + static_cast<std::ptrdiff_t>(t) * head_dim;
    float s = 0.0f;
    for (int i = 0; i < head_dim; ++i) s += q[i] * k[i];
    s /= sq;
    att[t] = s;
    if (s > mx) mx = s;
  }
  float sum = 0.0f;
  for (int t = 0; t < n; ++t) {
    if (!keep[t]) continue;
    att[t] = std::exp(att[t] - mx);
    sum += att[t];
  }
  for (int i = 0; i < head_dim; ++i) out[i] = 0.0f;
  if (!(sum > 0.0f)) return;
  for (int t = 0; t < n; ++t) {
    if (!keep[t]) continue;
    const float a = att[t] / sum;
    const float* v = values + static_cast<std::ptrdiff_t>(t) * head_dim;
    for (int i = 0; i < head_dim; ++i) out[i] += a * v[i];
  }
}

/// Per-layer K/V (post-RoPE), keep masks, token ids and optional queries for positions [0, capacity).
class kv_store {
 public:
  kv_store() = default;
  kv_store(int layers, int kv_heads, int head_dim, int capacity, int q_heads = 0) {
    if (layers <= 0 || kv_heads <= 0 || head_dim <= 0 || capacity <= 0 || q_heads < 0 ||
        (q_heads > 0 && q_heads % kv_heads != 0))
      throw_usage("kv_store: invalid shape layers=" + std::to_string(layers) + " kv_heads=" + std::to_string(kv_heads) +
                  " head_dim=" + std::to_string(head_dim) + " capacity=" + std::to_string(capacity) +
                  " q_heads=" + std::to_string(q_heads));
    layers_ = layers;
    kv_heads_ = kv_heads;
    head_dim_ = head_dim;
    capacity_ = capacity;
    q_heads_ = q_heads;
    const std::size_t rows = static_cast<std::size_t>(layers) * static_cast<std::size_t>(kv_heads) * static_cast<std::size_t>(capacity);
    k_.assign(rows * static_cast<std::size_t>(head_dim), 0.0f);
    v_.assign(rows * static_cast<std::size_t>(head_dim), 0.0f);
    keep_.assign(rows, 1);
    if (q_heads > 0)
      q_.assign(static_cast<std::size_t>(layers) * static_cast<std::size_t>(q_heads) * static_cast<std::size_t>(capacity) *
                    static_cast<std::size_t>(head_dim), 0.0f);
    tokens_.assign(static_cast<std::size_t>(capacity), -1);
  }

  int layers() const noexcept { return layers_; }
  int kv_heads() const noexcept { return kv_heads_; }
  int q_heads() const noexcept { return q_heads_; }
  int head_dim() const noexcept { return head_dim_; }
  int capacity() const noexcept { return capacity_; }
  int length() const noexcept { return length_; }
  bool records_queries() const noexcept { return q_heads_ > 0; }

  /// Row of (layer l, kv head h) at position pos; rows of one (l, h) are contiguous.
  float* key(int l, int h, int pos) noexcept { return k_.data() + row(l, h, pos) * static_cast<std::size_t>(head_dim_); }
  const float* key(int l, int h, int pos) const noexcept { return k_.data() + row(l, h, pos) * static_cast<std::size_t>(head_dim_); }
  float* value(int l, int h, int pos) noexcept { return v_.data() + row(l, h, pos) * static_cast<std::size_t>(head_dim_); }
  const float* value(int l, int h, int pos) const noexcept { return v_.data() + row(l, h, pos) * static_cast<std::size_t>(head_dim_); }
  /// Query of (layer l, query head qh) at pos; only when records_queries().
  float* query(int l, int qh, int pos) noexcept { return q_.data() + qrow(l, qh, pos) * static_cast<std::size_t>(head_dim_); }
  const float* query(int l, int qh, int pos) const noexcept { return q_.data() + qrow(l, qh, pos) * static_cast<std::size_t>(head_dim_); }
  /// Keep mask of (l, h) for positions [0, capacity): 1 = attended, 0 = dropped.
  std::uint8_t* keep(int l, int h) noexcept { return keep_.data() + row(l, h, 0); }
  const std::uint8_t* keep(int l, int h) const noexcept { return keep_.data() + row(l, h, 0); }
  int token(int pos) const { return tokens_.at(static_cast<std::size_t>(pos)); }

  bool same_shape(const kv_store& o) const noexcept {
    return layers_ == o.layers_ && kv_heads_ == o.kv_heads_ && head_dim_ == o.head_dim_ && capacity_ == o.capacity_;
  }

  /// Keeps positions [0, n) only.
  void truncate(int n) {
    if (n < 0 || n > length_)
      throw_usage("kv_store truncate: length must be in 0.." + std::to_string(length_) + ", got " + std::to_string(n));
    length_ = n;
  }

  /// Copies rows [a, b) (K, V, masks, tokens, and queries when both record them) from `src`; `a` may
  /// not leave a gap after this store's length. The length becomes max(length, b).
  void copy_rows(const kv_store& src, int a, int b) {
    if (layers_ != src.layers_ || kv_heads_ != src.kv_heads_ || head_dim_ != src.head_dim_)
      throw_usage("kv_store copy_rows: source shape (layers " + std::to_string(src.layers_) + ", kv_heads " +
                  std::to_string(src.kv_heads_) + ", head_dim " + std::to_string(src.head_dim_) + ") differs from (" +
                  std::to_string(layers_) + ", " + std::to_string(kv_heads_) + ", " + std::to_string(head_dim_) + ")");
    if (a < 0 || a > b || b > src.length_ || a > length_ || b > capacity_)
      throw_usage("kv_store copy_rows: need 0 <= a <= length (" + std::to_string(length_) + "), a <= b <= source length (" +
                  std::to_string(src.length_) + ") and b <= capacity (" + std::to_string(capacity_) + "); got a=" +
                  std::to_string(a) + " b=" + std::to_string(b));
    const auto n = static_cast<std::size_t>(b - a);
    const auto hd = static_cast<std::size_t>(head_dim_);
    for (int l = 0; l < layers_; ++l)
      for (int h = 0; h < kv_heads_; ++h) {
        std::copy_n(src.key(l, h, a), n * hd, key(l, h, a));
        std::copy_n(src.value(l, h, a), n * hd, value(l, h, a));
        std::copy_n(src.keep(l, h) + a, n, keep(l, h) + a);
      }
    if (records_queries() && src.q_heads_ == q_heads_)
      for (int l = 0; l < layers_; ++l)
        for (int h = 0; h < q_heads_; ++h) std::copy_n(src.query(l, h, a), n * hd, query(l, h, a));
    std::copy_n(src.tokens_.begin() + a, n, tokens_.begin() + a);
    if (b > length_) length_ = b;
  }

  /// Replaces the content with positions [0, count) of `c` (count < 0: all of them). K/V must be
  /// post-RoPE at positions 0..count-1; tokens outside a (layer, head)'s kept set are masked out.
  void load(const kv_cache& c, std::int64_t count = -1) {
    const std::string where = "kv_store load";
    c.validate("kv_store load: cache");
    const auto num = [](auto v) { return std::to_string(v); };
    if (c.shape.layers != layers_) throw_bad_input(where, "layers", num(layers_), num(c.shape.layers));
    if (c.shape.kv_heads != kv_heads_) throw_bad_input(where, "kv_heads", num(kv_heads_), num(c.shape.kv_heads));
    if (c.shape.head_dim != head_dim_) throw_bad_input(where, "head_dim", num(head_dim_), num(c.shape.head_dim));
    if (count < 0) count = c.shape.tokens;
    if (count > c.shape.tokens || count > capacity_)
      throw_bad_input(where, "count", "<= cache tokens (" + num(c.shape.tokens) + ") and <= capacity (" + num(capacity_) + ")",
                      num(count));
    for (std::int64_t i = 0; i < count && !c.positions.empty(); ++i)
      if (c.positions[static_cast<std::size_t>(i)] != i)
        throw_bad_input(where, "positions[" + num(i) + "]", "position " + num(i) + " (K/V rotated at 0..count-1)",
                        num(c.positions[static_cast<std::size_t>(i)]));
    const auto n = static_cast<std::size_t>(count);
    const auto hd = static_cast<std::size_t>(head_dim_);
    const auto T = static_cast<std::size_t>(c.shape.tokens);
    for (int l = 0; l < layers_; ++l)
      for (int h = 0; h < kv_heads_; ++h) {
        const std::size_t src = static_cast<std::size_t>(h) * T * hd;
        std::copy_n(c.keys[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(src), n * hd, key(l, h, 0));
        std::copy_n(c.values[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(src), n * hd, value(l, h, 0));
        kept_mask(c, l, h, keep(l, h), n);
      }
    if (records_queries()) {
      const bool have = c.has_queries() && c.shape.q_heads == q_heads_;
      for (int l = 0; l < layers_; ++l)
        for (int h = 0; h < q_heads_; ++h) {
          if (have)
            std::copy_n(c.queries[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(h) * T * hd),
                        n * hd, query(l, h, 0));
          else
            std::fill_n(query(l, h, 0), n * hd, 0.0f);
        }
    }
    for (std::size_t i = 0; i < n; ++i) tokens_[i] = c.tokens.empty() ? -1 : c.tokens[i];
    length_ = static_cast<int>(count);
  }

  /// Positions [0, length) as a kv_cache (queries when recorded, tokens, positions 0..length-1, kept
  /// sets when any position is masked out).
  kv_cache export_cache() const {
    if (length_ == 0) throw_usage("kv_store export_cache: the store is empty");
    kv_shape s{layers_, kv_heads_, q_heads_, head_dim_, length_};
    kv_cache c = kv_cache::zeros(s);
    const auto n = static_cast<std::size_t>(length_);
    const auto hd = static_cast<std::size_t>(head_dim_);
    bool dense = true;
    for (int l = 0; l < layers_; ++l)
      for (int h = 0; h < kv_heads_; ++h) {
        const std::size_t dst = static_cast<std::size_t>(h) * n * hd;
        std::copy_n(key(l, h, 0), n * hd, c.keys[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(dst));
        std::copy_n(value(l, h, 0), n * hd, c.values[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(dst));
        for (std::size_t t = 0; t < n; ++t) dense = dense && keep(l, h)[t] != 0;
      }
    for (int l = 0; l < layers_ && records_queries(); ++l)
      for (int h = 0; h < q_heads_; ++h)
        std::copy_n(query(l, h, 0), n * hd,
                    c.queries[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(h) * n * hd));
    if (!dense) {
      c.kept.assign(static_cast<std::size_t>(layers_), std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(kv_heads_)));
      for (int l = 0; l < layers_; ++l)
        for (int h = 0; h < kv_heads_; ++h) mask_to_kept(keep(l, h), n, c.kept[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)]);
    }
    c.tokens.assign(tokens_.begin(), tokens_.begin() + length_);
    c.positions.resize(n);
    for (std::size_t i = 0; i < n; ++i) c.positions[i] = static_cast<std::int32_t>(i);
    c.metadata = {{"format", "llama2.c"},
                  {"layers", std::to_string(layers_)},
                  {"kv_heads", std::to_string(kv_heads_)},
                  {"q_heads", std::to_string(q_heads_)},
                  {"head_dim", std::to_string(head_dim_)},
                  {"tokens", std::to_string(length_)},
                  {"rope", "interleaved-pairs"},
                  {"rope_theta", "10000"},
                  {"post_rope", "true"},
                  {"positions", "0.." + std::to_string(length_ - 1)}};
    return c;
  }

  /// Opens positions [pos, pos + n) for writing: records the tokens, sets every mask to 1.
  void open_positions(const int* tokens, int pos, int n) {
    if (pos != length_ || n < 0 || pos + n > capacity_)
      throw_usage("kv_store: positions [" + std::to_string(pos) + ", " + std::to_string(pos + n) +
                  ") must start at the length (" + std::to_string(length_) + ") and end by the capacity (" +
                  std::to_string(capacity_) + ")");
    for (int l = 0; l < layers_; ++l)
      for (int h = 0; h < kv_heads_; ++h) std::fill_n(keep(l, h) + pos, n, std::uint8_t{1});
    std::copy_n(tokens, n, tokens_.begin() + pos);
    length_ = pos + n;
  }

 private:
  std::size_t row(int l, int h, int pos) const noexcept {
    return (static_cast<std::size_t>(l) * static_cast<std::size_t>(kv_heads_) + static_cast<std::size_t>(h)) *
               static_cast<std::size_t>(capacity_) + static_cast<std::size_t>(pos);
  }
  std::size_t qrow(int l, int h, int pos) const noexcept {
    return (static_cast<std::size_t>(l) * static_cast<std::size_t>(q_heads_) + static_cast<std::size_t>(h)) *
               static_cast<std::size_t>(capacity_) + static_cast<std::size_t>(pos);
  }

  int layers_ = 0, kv_heads_ = 0, head_dim_ = 0, capacity_ = 0, q_heads_ = 0, length_ = 0;
  std::vector<float> k_, v_, q_;
  std::vector<std::uint8_t> keep_;
  std::vector<std::int32_t> tokens_;
};

struct decoder_options {
  bool record_queries = false;  ///< keep every position's queries in the store (for comparison with dumps)
};

class decoder {
 public:
  explicit decoder(std::shared_ptr<const llama2c_model> m, decoder_options opt = {}) : model_(std::move(m)) {
    if (!model_) throw_usage("decoder: null model");
    const llama2c_config& c = model_->config;
    cache_ = kv_store(c.n_layers, c.n_kv_heads, c.head_dim(), c.seq_len, opt.record_queries ? c.n_heads : 0);
    const int half = c.head_dim() / 2;
    rope_cos_.resize(static_cast<std::size_t>(c.seq_len) * static_cast<std::size_t>(half));
    rope_sin_.resize(rope_cos_.size());
    for (int p = 0; p < c.seq_len; ++p)
      rope_angles(rope_cos_.data() + static_cast<std::size_t>(p) * static_cast<std::size_t>(half),
                  rope_sin_.data() + static_cast<std::size_t>(p) * static_cast<std::size_t>(half), p, c.head_dim(), rope_theta);
    xb_.setZero(c.dim);
    xb2_.setZero(c.dim);
    q_.setZero(c.dim);
    k_.setZero(c.kv_dim());
    v_.setZero(c.kv_dim());
    hb_.setZero(c.hidden_dim);
    hb2_.setZero(c.hidden_dim);
    logits_.setZero(c.vocab_size);
    att_.assign(static_cast<std::size_t>(c.seq_len), 0.0f);
  }

  const llama2c_model& model() const noexcept { return *model_; }
  const llama2c_config& config() const noexcept { return model_->config; }
  kv_store& cache() noexcept { return cache_; }
  const kv_store& cache() const noexcept { return cache_; }
  int length() const noexcept { return cache_.length(); }

  /// Logits (vocab_size) for `token` at `pos`, which must equal length(); appends this position's K/V.
  std::vector<float> forward(int token, int pos) {
    auto out = forward_batch(std::vector<int>{token}, pos);
    return std::move(out.front());
  }

  /// Runs positions [pos0, pos0 + tokens.size()) (pos0 must equal length()); logits of each.
  std::vector<std::vector<float>> forward_batch(const std::vector<int>& tokens, int pos0) {
    const llama2c_config& c = config();
    const int n = static_cast<int>(tokens.size());
    for (int i = 0; i < n; ++i)
      if (tokens[static_cast<std::size_t>(i)] < 0 || tokens[static_cast<std::size_t>(i)] >= c.vocab_size)
        throw_bad_input("decoder forward", "tokens[" + std::to_string(i) + "]", "0.." + std::to_string(c.vocab_size - 1),
                        std::to_string(tokens[static_cast<std::size_t>(i)]));
    if (pos0 < 0 || static_cast<std::int64_t>(pos0) + n > c.seq_len || pos0 != cache_.length())
      throw_usage("decoder forward: positions [" + std::to_string(pos0) + ", " + std::to_string(static_cast<std::int64_t>(pos0) + n) +
                  ") must start at the cache length (" + std::to_string(cache_.length()) + ") and end by seq_len (" +
                  std::to_string(c.seq_len) + ")");
    std::vector<std::vector<float>> out;
    if (n == 0) return out;
    cache_.open_positions(tokens.data(), pos0, n);
    resid_.resize(c.dim, n);
    for (int i = 0; i < n; ++i) resid_.col(i) = model_->token_embedding.row(tokens[static_cast<std::size_t>(i)]).transpose();
    for (int l = 0; l < c.n_layers; ++l)
      for (int i = 0; i < n; ++i) layer(l, pos0 + i, resid_.col(i).data());
    out.resize(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      rmsnorm(xb_.data(), resid_.col(i).data(), model_->rms_final.data(), c.dim, rms_eps);
      logits_.noalias() = model_->classifier() * xb_;
      out[static_cast<std::size_t>(i)].assign(logits_.data(), logits_.data() + c.vocab_size);
    }
    return out;
  }

  /// Greedy continuation: feeds `first` at length() and then each argmax, `steps` times; the argmax ids.
  std::vector<int> generate_greedy(int first, int steps) {
    std::vector<int> ids;
    int tok = first;
    for (int s = 0; s < steps; ++s) {
      const auto lg = forward(tok, length());
      int best = 0;
      for (int i = 1; i < static_cast<int>(lg.size()); ++i)
        if (lg[static_cast<std::size_t>(i)] > lg[static_cast<std::size_t>(best)]) best = i;
      ids.push_back(best);
      tok = best;
    }
    return ids;
  }

  void reset() { cache_.truncate(0); }
  void truncate(int n) { cache_.truncate(n); }
  kv_store snapshot() const { return cache_; }
  void restore(const kv_store& s) {
    if (!s.same_shape(cache_) || s.q_heads() != cache_.q_heads()) throw_usage("decoder restore: snapshot shape differs from this decoder's cache");
    cache_ = s;
  }
  /// Takes positions [a, b) of `src`'s cache (e.g. the verified tokens' K/V).
  void copy_cache_rows(const decoder& src, int a, int b) { cache_.copy_rows(src.cache_, a, b); }
  /// Preloads positions [0, count) from a kv_cache; decoding continues at position count.
  void load_cache(const kv_cache& c, std::int64_t count = -1) { cache_.load(c, count); }
  kv_cache export_cache() const { return cache_.export_cache(); }

 private:
  void layer(int l, int pos, float* x) {
    const llama2c_config& c = config();
    const llama2c_layer& w = model_->layers[static_cast<std::size_t>(l)];
    const int hd = c.head_dim();
    const auto half = static_cast<std::size_t>(hd / 2);
    rmsnorm(xb_.data(), x, w.rms_att.data(), c.dim, rms_eps);
    q_.noalias() = w.wq * xb_;
    k_.noalias() = w.wk * xb_;
    v_.noalias() = w.wv * xb_;
    const float* ct = rope_cos_.data() + static_cast<std::size_t>(pos) * half;
    const float* st = rope_sin_.data() + static_cast<std::size_t>(pos) * half;
    rope_rotate(q_.data(), c.n_heads, hd, ct, st);
    rope_rotate(k_.data(), c.n_kv_heads, hd, ct, st);
    for (int h = 0; h < c.n_kv_heads; ++h) {
      std::copy_n(k_.data() + h * hd, hd, cache_.key(l, h, pos));
      std::copy_n(v_.data() + h * hd, hd, cache_.value(l, h, pos));
    }
    if (cache_.records_queries())
      for (int h = 0; h < c.n_heads; ++h) std::copy_n(q_.data() + h * hd, hd, cache_.query(l, h, pos));
    const int group = c.kv_group();
    for (int h = 0; h < c.n_heads; ++h) {
      const int kvh = h / group;
      attend_head(q_.data() + h * hd, cache_.key(l, kvh, 0), cache_.value(l, kvh, 0), cache_.keep(l, kvh), pos + 1, hd,
                  att_.data(), xb_.data() + h * hd);
    }
    xb2_.noalias() = w.wo * xb_;
    for (int i = 0; i < c.dim; ++i) x[i] += xb2_[i];
    rmsnorm(xb_.data(), x, w.rms_ffn.data(), c.dim, rms_eps);
    hb_.noalias() = w.w1 * xb_;
    hb2_.noalias() = w.w3 * xb_;
    swiglu(hb_.data(), hb2_.data(), c.hidden_dim);
    xb_.noalias() = w.w2 * hb_;
    for (int i = 0; i < c.dim; ++i) x[i] += xb_[i];
  }

  std::shared_ptr<const llama2c_model> model_;
  kv_store cache_;
  std::vector<float> rope_cos_, rope_sin_;  ///< [seq_len][head_dim / 2]
  Eigen::MatrixXf resid_;                   ///< residual stream, one column per position of the batch
  vector_f xb_, xb2_, q_, k_, v_, hb_, hb2_, logits_;
  std::vector<float> att_;
};

}  // namespace kvcodec::model
