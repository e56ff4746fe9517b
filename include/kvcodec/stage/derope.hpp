// kvcodec/stage/derope.hpp — `derope`: undoes RoPE on keys before quantization and re-applies it after
// decoding (KVQuant's pre-RoPE key quantization). Style and theta come from the cache metadata
// (`rope`: interleaved-pairs | rotate-half, `rope_theta`) unless given; each row's position is its
// global token index (block.pos). Values pass through unchanged.
#pragma once

#include <string>
#include <string_view>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::transform {

struct derope {
  static constexpr std::string_view name = "derope";
  static constexpr stage_kind kind = stage_kind::transform;
  static constexpr std::string_view summary = "undo RoPE on keys before quantizing, redo after decoding (KVQuant pre-RoPE)";
  std::string style = "auto";
  double theta = 0.0;
  template <class V> void visit(V& v) {
    v("style", style, "auto (metadata 'rope'), interleaved-pairs or rotate-half");
    v("theta", theta, "RoPE base; 0 = metadata 'rope_theta'");
  }
  void validate() const {
    check_param(style == "auto" || style == "interleaved-pairs" || style == "rotate-half", name, "style",
                "auto, interleaved-pairs or rotate-half", style);
    check_param(theta == 0.0 || theta > 1.0, name, "theta", "0 (from metadata) or a number > 1", theta);
  }
};

}  // namespace kvcodec::transform
