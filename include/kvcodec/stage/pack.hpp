// kvcodec/stage/pack.hpp — `pack`: fixed-width bit-packing of symbol planes (no entropy modelling).
//
// The default entropy stage: each plane's symbols take ceil(log2(alphabet)) bits, LSB first.
#pragma once

#include <string_view>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::entropy {

struct pack {
  static constexpr std::string_view name = "pack";
  static constexpr stage_kind kind = stage_kind::entropy;
  static constexpr std::string_view summary = "fixed-width bit-packing of symbols (the default when no coder is named)";
  template <class V> void visit(V&) {}
  void validate() const {}
};

}  // namespace kvcodec::entropy
