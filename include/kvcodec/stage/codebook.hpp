// kvcodec/stage/codebook.hpp — non-uniform scalar quantizers: `nf4` (QLoRA NormalFloat4 levels scaled
// by each group's absmax) and `kmeans` (KVQuant's non-uniform datatype: one Lloyd–Max codebook per
// layer for K and one for V, fitted on the whole cache and stored as stage state).
#pragma once

#include <string>
#include <string_view>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::quant {

struct nf4 {
  static constexpr std::string_view name = "nf4";
  static constexpr stage_kind kind = stage_kind::quant;
  static constexpr std::string_view summary = "NormalFloat4 levels times the absmax of each group of channels";
  int group = 0;
  std::string scale = "f16";
  template <class V> void visit(V& v) {
    v("group", group, "channels per absmax group (must divide head_dim); 0 = whole head row");
    v("scale", scale, "absmax storage: f16 or f32");
  }
  void validate() const {
    check_param(group >= 0, name, "group", ">= 0", group);
    check_param(scale == "f16" || scale == "f32", name, "scale", "f16 or f32", scale);
  }
};

struct kmeans {
  static constexpr std::string_view name = "kmeans";
  static constexpr stage_kind kind = stage_kind::quant;
  static constexpr std::string_view summary = "per-layer K and V Lloyd-Max codebooks fitted on the cache (KVQuant non-uniform)";
  int bits = 4;
  int iters = 30;
  int sample = 262144;
  template <class V> void visit(V& v) {
    v("bits", bits, "codebook size 2^bits, bits 1..8");
    v("iters", iters, "Lloyd iterations (stops early at a fixed point)");
    v("sample", sample, "at most this many values per layer and K/V are used for fitting (evenly strided)");
  }
  void validate() const {
    check_param(bits >= 1 && bits <= 8, name, "bits", "1..8", bits);
    check_param(iters >= 0 && iters <= 1000, name, "iters", "0..1000", iters);
    check_param(sample >= 1, name, "sample", ">= 1", sample);
  }
};

}  // namespace kvcodec::quant
