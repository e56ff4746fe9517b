// kvcodec/stage/hadamard.hpp — `hadamard`: randomized Hadamard rotation of every head row along
// head_dim before quantization (QuaRot / QuIP# incoherence processing), undone after decoding.
// Signs come from splitmix64(seed) (core/hadamard.hpp), so the seed alone reproduces the rotation.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::transform {

struct hadamard {
  static constexpr std::string_view name = "hadamard";
  static constexpr stage_kind kind = stage_kind::transform;
  static constexpr std::string_view summary = "randomized Hadamard rotation along head_dim (QuaRot-style)";
  std::int64_t seed = 0;
  std::string target = "kv";
  template <class V> void visit(V& v) {
    v("seed", seed, "seed of the random signs");
    v("target", target, "which tensors to rotate: kv, k or v");
  }
  void validate() const { check_param(target == "kv" || target == "k" || target == "v", name, "target", "kv, k or v", target); }
};

}  // namespace kvcodec::transform
