// kvcodec/stage/ggml.hpp — llama.cpp KV-cache formats as stages: `q8_0`, `q4_0`, `q4_1`, `q5_0`,
// `q5_1`, `iq4_nl` (ggml-quants.c reference quantizers, byte-compatible via core/ggml_blocks.hpp).
//
// A dense block's side bytes are literally the ggml rows of its tokens: for each token, its
// kv_heads × head_dim values (head-major, as llama.cpp's K/V cache rows) in blocks of 32 with f16
// scales; kv_heads·head_dim must be a multiple of 32. A ragged (token-dropped) block is coded per head
// row instead, each row zero-padded to a multiple of 32. No symbol planes.
#pragma once

#include <string_view>

#include "kvcodec/core/ggml_blocks.hpp"
#include "kvcodec/stage/interface.hpp"

namespace kvcodec::quant {

template <ggml::block_type T>
struct ggml_format {
  static constexpr ggml::block_type type = T;
  static constexpr std::string_view name = ggml::block_type_name(T);
  static constexpr stage_kind kind = stage_kind::quant;
  static constexpr std::string_view summary = "llama.cpp KV block format (byte-compatible ggml blocks of 32, f16 scales)";
  template <class V> void visit(V&) {}
  void validate() const {}
};

using q8_0 = ggml_format<ggml::block_type::q8_0>;
using q4_0 = ggml_format<ggml::block_type::q4_0>;
using q4_1 = ggml_format<ggml::block_type::q4_1>;
using q5_0 = ggml_format<ggml::block_type::q5_0>;
using q5_1 = ggml_format<ggml::block_type::q5_1>;
using iq4_nl = ggml_format<ggml::block_type::iq4_nl>;

}  // namespace kvcodec::quant
