// kvcodec/stage/fp8.hpp — `fp8`: 8-bit float KV cache (e4m3 / e5m2, as vLLM's and TensorRT-LLM's fp8
// KV caches) with saturating round-to-nearest-even encoding and scales from the data's amax.
//
// scale=tensor: one scale per (layer, K/V) over the whole cache, fitted once and stored as stage state;
// scale=head: one per (block, head); scale=token: one per head row. Scales are f32: x ≈ fp8(x/s)·s.
#pragma once

#include <string>
#include <string_view>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::quant {

struct fp8 {
  static constexpr std::string_view name = "fp8";
  static constexpr stage_kind kind = stage_kind::quant;
  static constexpr std::string_view summary = "8-bit float (e4m3 / e5m2) with amax scales per tensor, head or token";
  std::string format = "e4m3";
  std::string scale = "tensor";

  template <class V> void visit(V& v) {
    v("format", format, "e4m3 (max 448, 3 mantissa bits) or e5m2 (max 57344, 2 mantissa bits)");
    v("scale", scale, "amax scale granularity: tensor (per layer K/V), head (per chunk and head) or token (per head row)");
  }
  void validate() const {
    check_param(format == "e4m3" || format == "e5m2", name, "format", "e4m3 or e5m2", format);
    check_param(scale == "tensor" || scale == "head" || scale == "token", name, "scale", "tensor, head or token", scale);
  }
};

}  // namespace kvcodec::quant
