// kvcodec/stage/kivi.hpp — `kivi`: KIVI (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit
// Quantization for KV Cache"): keys per-channel in groups of `group` tokens, values per-token in
// groups of `group` channels, asymmetric round-to-nearest, and the most recent `residual` tokens of
// the whole cache (positions >= tokens − residual) kept in full precision.
//
// Key groups are formed within a token chunk (a chunk's last key group may be shorter). When
// head_dim < group, the value group clamps to head_dim (one group per head row); otherwise group must
// divide head_dim. Residual rows are stored exactly in the source dtype.
#pragma once

#include <string>
#include <string_view>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::quant {

struct kivi {
  static constexpr std::string_view name = "kivi";
  static constexpr stage_kind kind = stage_kind::quant;
  static constexpr std::string_view summary = "KIVI: per-channel keys, per-token values, recent tokens in full precision";
  int bits = 2;
  int group = 32;
  int residual = 128;
  std::string scale = "f16";
  double outliers = 0.0;

  template <class V> void visit(V& v) {
    v("bits", bits, "bits per quantized element, 1..8 (the paper uses 2 and 4)");
    v("group", group, "group size: tokens per key group, channels per value group (clamped to head_dim)");
    v("residual", residual, "most recent tokens of the cache kept in full precision");
    v("scale", scale, "storage of scales and minima: f16 or f32");
    v("outliers", outliers, "percent of values per block kept exactly in a sparse list, 0..100");
  }
  void validate() const {
    check_param(bits >= 1 && bits <= 8, name, "bits", "1..8", bits);
    check_param(group >= 1, name, "group", ">= 1", group);
    check_param(residual >= 0, name, "residual", ">= 0", residual);
    check_param(scale == "f16" || scale == "f32", name, "scale", "f16 or f32", scale);
    check_param(outliers >= 0.0 && outliers <= 100.0, name, "outliers", "a percentage 0..100", outliers);
  }
};

}  // namespace kvcodec::quant
