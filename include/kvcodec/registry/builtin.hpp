// kvcodec/registry/builtin.hpp — the registry of every stage and preset kvcodec ships.
//
// One line per stage: add<descriptor, implementation>().
#pragma once

#include "kvcodec/cpu/pack.hpp"
#include "kvcodec/cpu/raw.hpp"
#include "kvcodec/cpu/zstd.hpp"
#include "kvcodec/pipeline/codec.hpp"
#include "kvcodec/registry/registry.hpp"
#include "kvcodec/registry/drop_stages.hpp"
#include "kvcodec/registry/entropy_stages.hpp"
#include "kvcodec/registry/quant_stages.hpp"

namespace kvcodec {

inline registry make_builtin_registry() {
  registry r;
  r.add<quant::raw, cpu::raw_quant>();
  r.add<entropy::pack, cpu::pack_entropy>();
  r.add<entropy::zstd, cpu::zstd_entropy>();
  register_quant_stages(r);    // quantizers and transforms (issue: quantizer family)
  register_entropy_stages(r);  // rans, ac, cachegen / kvc presets
  register_drop_stages(r);     // token dropping (kvpress family)
  return r;
}

/// The process-wide registry (built once, thread-safe initialisation).
inline const registry& builtin_registry() {
  static const registry r = make_builtin_registry();
  return r;
}

inline codec make_codec(std::string_view spec_text) { return make_codec(spec_text, builtin_registry()); }

}  // namespace kvcodec
