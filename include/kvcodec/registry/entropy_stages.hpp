// kvcodec/registry/entropy_stages.hpp — registers the entropy coders (rans, ac), CacheGen's
// quantizer, weighted-quant and klt (which store its format) and float delta. The presets built from them (cachegen, cachegen-paper, kvc) are in
// registry/presets.hpp.
#pragma once

#include "kvcodec/cpu/ac.hpp"
#include "kvcodec/cpu/cachegen.hpp"
#include "kvcodec/cpu/delta.hpp"
#include "kvcodec/cpu/klt.hpp"
#include "kvcodec/cpu/rans.hpp"
#include "kvcodec/cpu/weighted_quant.hpp"
#include "kvcodec/registry/registry.hpp"

namespace kvcodec {

inline void register_entropy_stages(registry& r) {
  r.add<entropy::rans, cpu::rans_entropy>();
  r.add<entropy::ac, cpu::ac_entropy>();
  r.add<quant::cachegen, cpu::cachegen_quant>();
  r.add<quant::weighted, cpu::weighted_quant>();
  r.add<quant::klt, cpu::klt_quant>();
  r.add<transform::delta, cpu::delta_transform>();
}

}  // namespace kvcodec
