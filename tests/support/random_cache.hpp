// tests/support/random_cache.hpp — a dense cache of N(0, 1) values rounded to `src`, with token ids and
// metadata, shared by the pipeline suites.
#pragma once

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

}  // namespace kvcodec::test
