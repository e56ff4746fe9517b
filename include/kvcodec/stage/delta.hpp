// kvcodec/stage/delta.hpp — `delta`: float-domain token delta (CacheGen's anchor groups, open loop).
//
// mode=anchor: tokens in groups of `group`; the first (anchor) stays, the others become x_t -
// x_anchor. mode=prev: x_t - x_{t-1} over the original values. The inverse adds the decoded
// reference back, so quantization errors of the reference add to every delta of its group (prev:
// they accumulate along the chunk). Kept for honest comparison with the symbol-domain prediction of
// `rans`/`ac` (pred=...), which is lossless. Dense blocks only (ragged rows are left unchanged).
#pragma once

#include <string>
#include <string_view>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::transform {

struct delta {
  static constexpr std::string_view name = "delta";
  static constexpr stage_kind kind = stage_kind::transform;
  static constexpr std::string_view summary = "float-domain token delta against group anchors or the previous token (lossy when quantized)";
  std::string mode = "anchor";
  int group = 10;
  template <class V> void visit(V& v) {
    v("mode", mode, "anchor (CacheGen groups) or prev (previous token)");
    v("group", group, "tokens per anchor group");
  }
  void validate() const {
    check_param(mode == "anchor" || mode == "prev", name, "mode", "anchor or prev", mode);
    check_param(group >= 2 && group <= 65536, name, "group", "2..65536", group);
  }
};

}  // namespace kvcodec::transform
