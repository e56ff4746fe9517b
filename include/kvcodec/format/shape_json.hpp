// kvcodec/format/shape_json.hpp — a cache's shape as the JSON object that the container header and
// `kvcodec info --json` write: {"layers", "kv_heads", "q_heads", "head_dim", "tokens"}.
#pragma once

#include <nlohmann/json.hpp>

#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec {

inline nlohmann::json shape_json(const kv_shape& s) {
  return {{"layers", s.layers}, {"kv_heads", s.kv_heads}, {"q_heads", s.q_heads}, {"head_dim", s.head_dim}, {"tokens", s.tokens}};
}

}  // namespace kvcodec
