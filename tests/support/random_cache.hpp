// tests/support/random_cache.hpp — a dense cache of N(0, 1) values rounded to `src`, with token ids and
// metadata, shared by the pipeline suites.
#pragma once

#include <cmath>
#include <limits>
#include <random>

#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::test {

inline kv_cache random_cache(int layers, int heads, int T, int D, dtype src = dtype::f32, unsigned seed = 1) {
  kv_cache kv = kv_cache::zeros(kv_shape{layers, heads, 0, D, T}, src);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  for (auto* side : {&kv.keys, &kv.values})
    for (auto& l : *side)
      for (auto& x : l) x = round_to_dtype(n(rng), src);
  kv.metadata["model"] = "test";
  for (int t = 0; t < T; ++t) kv.tokens.push_back(t * 7 % 100);
  return kv;
}

/// random_cache with 2 x heads query heads of N(0, 1) values (think's and the query-aware scorers' input).
inline kv_cache query_cache(int layers, int heads, int T, int D, dtype src) {
  kv_cache kv = random_cache(layers, heads, T, D, src);
  kv.shape.q_heads = 2 * heads;
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0.f, 1.f);
  kv.queries.assign(static_cast<std::size_t>(layers), std::vector<float>(static_cast<std::size_t>(2 * heads) * static_cast<std::size_t>(T) * static_cast<std::size_t>(D)));
  for (auto& l : kv.queries)
    for (auto& x : l) x = n(rng);
  return kv;
}

/// A cache that stresses the outlier selection (2 layers x 3 heads x 300 tokens x 16, f32): values on a
/// 0.5 grid (many equal magnitudes of both signs, and zeros), NaN and ±inf scattered, head 0 of every
/// layer all -0.
inline kv_cache outlier_cache() {
  kv_cache kv = random_cache(2, 3, 300, 16, dtype::f32);
  for (auto* side : {&kv.keys, &kv.values})
    for (auto& layer : *side)
      for (std::size_t i = 0; i < layer.size(); ++i) {
        layer[i] = std::round(layer[i] * 2.0f) / 2.0f;
        if (i % 997 == 13) layer[i] = std::numeric_limits<float>::quiet_NaN();
        if (i % 1451 == 7) layer[i] = i % 2 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
        if (i < 300 * 16) layer[i] = -0.0f;
      }
  return kv;
}

/// Ragged kept sets for chunks of 96 tokens (4 kv heads, 300 tokens): every head keeps a different
/// subset, head 3 keeps nothing in tokens 96..191, and in layer 0 every head keeps all of tokens
/// 192..287 (a block whose planes are dense inside a token-dropped container).
inline kept_sets ragged_kept(int layers) {
  kept_sets k(static_cast<std::size_t>(layers), std::vector<std::vector<std::int32_t>>(4));
  for (int l = 0; l < layers; ++l)
    for (int h = 0; h < 4; ++h)
      for (int t = 0; t < 300; ++t) {
        const bool all = l == 0 && t >= 192 && t < 288;
        if (all || ((t * (h + 2) + l) % 5 < 2 + h % 2 && !(h == 3 && t >= 96 && t < 192))) k[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)].push_back(t);
      }
  return k;
}

}  // namespace kvcodec::test
