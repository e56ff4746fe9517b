// kvcodec/stage/zstd.hpp — `zstd`: general-purpose lossless baseline (Zstandard over packed bytes).
//
// Alone (`zstd:level=3`) it compresses the cache's raw bytes in their source dtype; after a
// quantizer it compresses the bit-packed symbols and side bytes.
#pragma once

#include <string_view>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::entropy {

struct zstd {
  static constexpr std::string_view name = "zstd";
  static constexpr stage_kind kind = stage_kind::entropy;
  static constexpr std::string_view summary = "Zstandard over the packed bytes: the lossless general-purpose baseline";
  int level = 3;
  template <class V> void visit(V& v) { v("level", level, "compression level, 1 (fast) to 19 (small)"); }
  void validate() const { check_param(level >= 1 && level <= 19, name, "level", "1..19", level); }
};

}  // namespace kvcodec::entropy
