// kvcodec/stage/ac.hpp — `ac`: arithmetic (range) coding with CacheGen's static 16-bit CDFs.
//
// As LMCache's CacheGen codes with torchac: per context (column) a CDF of alphabet + 1 16-bit
// entries built from the chunk's counts as round(P(<k) * (2^16 - A)) + k (every symbol >= 1/2^16),
// stored as 16-bit values, no adaptation; streams=row codes every row (token) as its own stream
// with a 32-bit length, as CacheGen's per-token bytestreams. Stream format: cpu/ac.hpp.
#pragma once

#include <string>
#include <string_view>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::entropy {

struct ac {
  static constexpr std::string_view name = "ac";
  static constexpr stage_kind kind = stage_kind::entropy;
  static constexpr std::string_view summary = "range coder over static 16-bit CDFs per context (CacheGen / torchac semantics)";
  std::string ctx = "channel";
  std::string streams = "row";
  std::string pred = "none";
  int group = 10;

  template <class V> void visit(V& v) {
    v("ctx", ctx, "one CDF per column (channel) or one per plane (pooled)");
    v("streams", streams, "row (one stream + 32-bit length per row, as CacheGen) or block (one stream)");
    v("pred", pred, "symbol-domain token prediction: none, prev, anchor");
    v("group", group, "rows per anchor group (pred=anchor)");
  }
  void validate() const {
    check_param(ctx == "channel" || ctx == "pooled", name, "ctx", "channel or pooled", ctx);
    check_param(streams == "row" || streams == "block", name, "streams", "row or block", streams);
    check_param(pred == "none" || pred == "prev" || pred == "anchor", name, "pred", "none, prev or anchor", pred);
    check_param(group >= 2 && group <= 65536, name, "group", "2..65536", group);
  }
};

}  // namespace kvcodec::entropy
