// tests/support/small_synth.hpp — a small synthetic cache with queries (eval/synth.hpp, f32, one
// thread), the input of the drop and transform suites: small_synth({.tokens = 37, .seed = 1}).
#pragma once

#include <cstdint>

#include "kvcodec/eval/synth.hpp"

namespace kvcodec::test {

struct small_shape {
  int layers = 2, kv_heads = 2, q_heads = 4, head_dim = 8;
  std::int64_t tokens = 40;
  std::uint64_t seed = 7;
  int outliers = 4;  // synth_options's default
};

inline kv_cache small_synth(const small_shape& s) {
  eval::synth_options o;
  o.layers = s.layers;
  o.kv_heads = s.kv_heads;
  o.q_heads = s.q_heads;
  o.head_dim = s.head_dim;
  o.tokens = s.tokens;
  o.dtype = dtype::f32;
  o.seed = s.seed;
  o.outliers = s.outliers;
  o.threads = 1;
  return eval::synth_cache(o);
}

}  // namespace kvcodec::test
