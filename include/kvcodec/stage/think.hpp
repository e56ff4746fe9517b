// kvcodec/stage/think.hpp — `think`: query-driven pruning of key channels (ThinK, Xu et al. 2024,
// "ThinK: Thinner Key Cache by Query-Driven Pruning"; kvpress ThinKPress). Per (layer, kv head) the
// floor(prune x head_dim) key channels with the lowest query-weighted magnitude are removed before
// quantization, so the key rows are stored really narrower (values are untouched); decoding gives them
// back as zeros. CPU code: cpu/think.hpp.
#pragma once

#include <string_view>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::transform {

struct think {
  static constexpr std::string_view name = "think";
  static constexpr stage_kind kind = stage_kind::transform;
  static constexpr std::string_view summary = "key channels pruned per head by query-weighted magnitude, stored narrower (ThinK)";
  double prune = 0.5;
  template <class V> void visit(V& v) { v("prune", prune, "fraction of each head's key channels removed, in [0, 1)"); }
  void validate() const { check_param(prune >= 0.0 && prune < 1.0, name, "prune", "a fraction in [0, 1)", prune); }
};

}  // namespace kvcodec::transform
