// kvcodec/stage/raw.hpp — `raw`: the cache's floats stored as f32, f16 or bf16 (no quantization).
//
// Lossless when dtype is the cache's source dtype or wider; `auto` resolves to the source dtype at
// encode time and the resolved value is what the container records.
#pragma once

#include <string>
#include <string_view>

#include "kvcodec/stage/interface.hpp"
#include "kvcodec/tensor/dtype.hpp"

namespace kvcodec::quant {

struct raw {
  static constexpr std::string_view name = "raw";
  static constexpr stage_kind kind = stage_kind::quant;
  static constexpr std::string_view summary = "store floats as f32/f16/bf16; lossless for the source dtype";
  std::string dtype = "auto";

  template <class V> void visit(V& v) { v("dtype", dtype, "f32, f16, bf16, or auto (= the cache's source dtype)"); }
  void validate() const {
    check_param(dtype == "auto" || dtype == "f32" || dtype == "f16" || dtype == "bf16", name, "dtype",
                "auto, f32, f16 or bf16", dtype);
  }
};

}  // namespace kvcodec::quant
