// kvcodec/tensor/kv_cache.hpp — the owning KV-cache container every stage and tool works on.
//
// A cache is, per layer, K and V of shape kv_heads x tokens x head_dim, stored contiguously in f32
// (the working precision; f16/bf16 sources convert exactly and `dtype` remembers the source type so
// writers and the `raw` codec can restore it bit for bit). Optional: queries per layer
// (q_heads x tokens x head_dim, q_heads a multiple of kv_heads), token ids, positions, metadata, and
// per-(layer, head) kept-token sets produced by token dropping (sorted, possibly different lengths).
// Invariant checked by validate(): every buffer has exactly the size the shape implies.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/tensor/dtype.hpp"
#include "kvcodec/tensor/view.hpp"

namespace kvcodec {

struct kv_shape {
  std::int32_t layers = 0;
  std::int32_t kv_heads = 0;
  std::int32_t q_heads = 0;  ///< 0 when the cache has no queries
  std::int32_t head_dim = 0;
  std::int64_t tokens = 0;

  /// Elements in one layer's K (or V): kv_heads * tokens * head_dim.
  std::size_t layer_elements() const noexcept {
    return static_cast<std::size_t>(kv_heads) * static_cast<std::size_t>(tokens) * static_cast<std::size_t>(head_dim);
  }
  /// Number of K and V elements in the whole cache (the denominator of bits per element).
  std::size_t kv_elements() const noexcept { return 2u * static_cast<std::size_t>(layers) * layer_elements(); }
  bool operator==(const kv_shape&) const = default;
};

/// kept[layer][head] = ascending token indices that survive; empty outer vector = every token kept.
using kept_sets = std::vector<std::vector<std::vector<std::int32_t>>>;

struct kv_cache {
  kv_shape shape;
  dtype source_dtype = dtype::f32;          ///< dtype the cache came in (f32, f16 or bf16)
  std::vector<std::vector<float>> keys;     ///< [layer] -> kv_heads*tokens*head_dim
  std::vector<std::vector<float>> values;   ///< [layer] -> kv_heads*tokens*head_dim
  std::vector<std::vector<float>> queries;  ///< empty, or [layer] -> q_heads*tokens*head_dim
  std::vector<std::int32_t> tokens;         ///< empty, or one id per position
  std::vector<std::int32_t> positions;      ///< empty, or the RoPE position of each token
  kept_sets kept;                           ///< empty = dense
  std::map<std::string, std::string> metadata;

  /// Allocates zeroed K/V (and queries when q_heads > 0) for `s`.
  static kv_cache zeros(const kv_shape& s, dtype src = dtype::f32) {
    kv_cache c;
    c.shape = s;
    c.source_dtype = src;
    c.keys.assign(static_cast<std::size_t>(s.layers), std::vector<float>(s.layer_elements(), 0.0f));
    c.values = c.keys;
    if (s.q_heads > 0) {
      const std::size_t qn = static_cast<std::size_t>(s.q_heads) * static_cast<std::size_t>(s.tokens) *
                             static_cast<std::size_t>(s.head_dim);
      c.queries.assign(static_cast<std::size_t>(s.layers), std::vector<float>(qn, 0.0f));
    }
    return c;
  }

  bool has_queries() const noexcept { return !queries.empty(); }
  bool is_dense() const noexcept { return kept.empty(); }

  strided_view3<float> key(int l) {
    return strided_view3<float>::dense(keys[static_cast<std::size_t>(l)].data(), shape.kv_heads, shape.tokens, shape.head_dim);
  }
  strided_view3<const float> key(int l) const {
    return strided_view3<const float>::dense(keys[static_cast<std::size_t>(l)].data(), shape.kv_heads, shape.tokens, shape.head_dim);
  }
  strided_view3<float> value(int l) {
    return strided_view3<float>::dense(values[static_cast<std::size_t>(l)].data(), shape.kv_heads, shape.tokens, shape.head_dim);
  }
  strided_view3<const float> value(int l) const {
    return strided_view3<const float>::dense(values[static_cast<std::size_t>(l)].data(), shape.kv_heads, shape.tokens, shape.head_dim);
  }
  strided_view3<const float> query(int l) const {
    return strided_view3<const float>::dense(queries[static_cast<std::size_t>(l)].data(), shape.q_heads, shape.tokens, shape.head_dim);
  }

  /// Number of kept tokens of (layer, head).
  std::int64_t kept_count(int l, int h) const {
    return kept.empty() ? shape.tokens : static_cast<std::int64_t>(kept[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)].size());
  }

  /// Checks every size against the shape; throws bad_input naming `where` and the field.
  void validate(const std::string& where = "kv cache") const {
    const auto num = [](auto v) { return std::to_string(v); };
    if (shape.layers <= 0) throw_bad_input(where, "layers", "> 0", num(shape.layers));
    if (shape.kv_heads <= 0) throw_bad_input(where, "kv_heads", "> 0", num(shape.kv_heads));
    if (shape.head_dim <= 0) throw_bad_input(where, "head_dim", "> 0", num(shape.head_dim));
    if (shape.tokens <= 0) throw_bad_input(where, "tokens", "> 0", num(shape.tokens));
    if (shape.q_heads < 0 || (shape.q_heads > 0 && shape.q_heads % shape.kv_heads != 0))
      throw_bad_input(where, "q_heads", "a multiple of kv_heads (" + num(shape.kv_heads) + ")", num(shape.q_heads));
    if (keys.size() != static_cast<std::size_t>(shape.layers) || values.size() != keys.size())
      throw_bad_input(where, "layers", num(shape.layers) + " K and V tensors",
                      num(keys.size()) + " K and " + num(values.size()) + " V");
    for (std::size_t l = 0; l < keys.size(); ++l) {
      if (keys[l].size() != shape.layer_elements())
        throw_bad_input(where, "keys[" + num(l) + "]", num(shape.layer_elements()) + " elements", num(keys[l].size()));
      if (values[l].size() != shape.layer_elements())
        throw_bad_input(where, "values[" + num(l) + "]", num(shape.layer_elements()) + " elements", num(values[l].size()));
    }
    if (!queries.empty()) {
      const std::size_t qn = static_cast<std::size_t>(shape.q_heads) * static_cast<std::size_t>(shape.tokens) *
                             static_cast<std::size_t>(shape.head_dim);
      if (queries.size() != keys.size()) throw_bad_input(where, "queries", num(shape.layers) + " layers", num(queries.size()));
      for (std::size_t l = 0; l < queries.size(); ++l)
        if (queries[l].size() != qn) throw_bad_input(where, "queries[" + num(l) + "]", num(qn) + " elements", num(queries[l].size()));
    }
    if (!tokens.empty() && tokens.size() != static_cast<std::size_t>(shape.tokens))
      throw_bad_input(where, "tokens", num(shape.tokens) + " ids", num(tokens.size()));
    if (!positions.empty() && positions.size() != static_cast<std::size_t>(shape.tokens))
      throw_bad_input(where, "positions", num(shape.tokens) + " positions", num(positions.size()));
    validate_kept(where);
  }

  /// Checks the kept sets alone: one list per (layer, kv head), strictly increasing, < tokens.
  void validate_kept(const std::string& where = "kv cache") const {
    const auto num = [](auto v) { return std::to_string(v); };
    if (!kept.empty()) {
      if (kept.size() != static_cast<std::size_t>(shape.layers)) throw_bad_input(where, "kept", num(shape.layers) + " layers", num(kept.size()));
      for (std::size_t l = 0; l < kept.size(); ++l) {
        if (kept[l].size() != static_cast<std::size_t>(shape.kv_heads))
          throw_bad_input(where, "kept[" + num(l) + "]", num(shape.kv_heads) + " heads", num(kept[l].size()));
        for (const auto& ks : kept[l]) {
          std::int64_t prev = -1;
          for (auto t : ks) {
            if (t <= prev || t >= shape.tokens)
              throw_bad_input(where, "kept[" + num(l) + "]", "strictly increasing indices < " + num(shape.tokens), num(t));
            prev = t;
          }
        }
      }
    }
  }
};

/// Mean squared query per (layer, kv head, channel) over the query heads of each kv head's group
/// and every token ([layers][kv_heads][head_dim] flattened, as cache_info::query_energy); empty
/// when the cache has no queries. Non-finite queries are skipped.
inline std::vector<float> query_energy(const kv_cache& c) {
  if (!c.has_queries() || c.shape.kv_heads <= 0 || c.shape.q_heads % c.shape.kv_heads != 0) return {};
  const std::size_t L = static_cast<std::size_t>(c.shape.layers), H = static_cast<std::size_t>(c.shape.kv_heads),
                    Q = static_cast<std::size_t>(c.shape.q_heads), T = static_cast<std::size_t>(c.shape.tokens),
                    D = static_cast<std::size_t>(c.shape.head_dim), g = Q / H;
  std::vector<float> out(L * H * D, 0.0f);
  std::vector<double> acc(D);
  std::vector<std::size_t> n(D);
  for (std::size_t l = 0; l < L; ++l)
    for (std::size_t h = 0; h < H; ++h) {
      std::fill(acc.begin(), acc.end(), 0.0);
      std::fill(n.begin(), n.end(), std::size_t{0});
      for (std::size_t qh = h * g; qh < (h + 1) * g; ++qh)
        for (std::size_t t = 0; t < T; ++t) {
          const float* q = c.queries[l].data() + (qh * T + t) * D;
          for (std::size_t d = 0; d < D; ++d)
            if (std::isfinite(q[d])) {
              acc[d] += static_cast<double>(q[d]) * q[d];
              ++n[d];
            }
        }
      for (std::size_t d = 0; d < D; ++d) out[(l * H + h) * D + d] = n[d] ? static_cast<float>(acc[d] / static_cast<double>(n[d])) : 0.0f;
    }
  return out;
}

}  // namespace kvcodec
