// tests/support/typed_layers.hpp — per-layer [head][token][dim] tensors of a test cache in the dtype a GPU
// path reads (f32, f16 or bf16 by dtype code), with the base-pointer array a drop_source or eattn_args
// takes; and the rounding of a value to that dtype (what the CPU sees when the engine holds f16/bf16).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "kvcodec/core/half.hpp"

namespace kvcodec::test {

inline float round_to(float x, std::uint32_t code) {
  return code == 0 ? x : code == 2 ? bf16_bits_to_f32(f32_to_bf16_bits(x)) : f16_bits_to_f32(f32_to_f16_bits(x));
}

/// A layer tensor ([head][token][dim]) in dtype code 0 (f32), 1 (f16) or 2 (bf16).
struct typed {
  std::vector<std::vector<float>> f;
  std::vector<std::vector<std::uint16_t>> h;
  std::vector<const void*> ptr;
};

inline typed as_dtype(const std::vector<std::vector<float>>& layers, std::uint32_t code) {
  typed t;
  for (const auto& layer : layers) {
    if (code == 0) {
      t.f.push_back(layer);
      continue;
    }
    std::vector<std::uint16_t> bits(layer.size());
    for (std::size_t i = 0; i < layer.size(); ++i) bits[i] = code == 2 ? f32_to_bf16_bits(layer[i]) : f32_to_f16_bits(layer[i]);
    t.h.push_back(std::move(bits));
  }
  for (const auto& v : t.f) t.ptr.push_back(v.data());
  for (const auto& v : t.h) t.ptr.push_back(v.data());
  return t;
}

}  // namespace kvcodec::test
