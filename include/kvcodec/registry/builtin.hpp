// kvcodec/registry/builtin.hpp — the registry of every stage and preset kvcodec ships.
//
// One line per stage: add<descriptor, implementation>(), by family in registry/*_stages.hpp; the
// presets in registry/presets.hpp. make_codec(spec) over this registry: pipeline/codec.hpp.
#pragma once

#include "kvcodec/registry/registry.hpp"

// Every stage's code is compiled where the registry is built. A program of many translation units
// can compile it once: define KVCODEC_SEPARATE_REGISTRY in all of them (they see declarations only,
// and none of the stages' headers: include what you use of them yourself) and
// KVCODEC_REGISTRY_IMPLEMENTATION as well in exactly one .cpp that includes this header (the test
// suites and the kvcodec command do: cli/builtin_registry.cpp). The stages' headers are most of the
// library: this header alone compiles in ~1.5 s declarations-only against ~17 s with every stage.
#if defined(KVCODEC_SEPARATE_REGISTRY) && !defined(KVCODEC_REGISTRY_IMPLEMENTATION)
#define KVCODEC_REGISTRY_DECLARE_ONLY 1
#define KVCODEC_REGISTRY_LINKAGE
#elif defined(KVCODEC_SEPARATE_REGISTRY)
#define KVCODEC_REGISTRY_LINKAGE
#else
#define KVCODEC_REGISTRY_LINKAGE inline
#endif

#ifndef KVCODEC_REGISTRY_DECLARE_ONLY
#include "kvcodec/cpu/pack.hpp"
#include "kvcodec/cpu/raw.hpp"
#include "kvcodec/cpu/zstd.hpp"
#include "kvcodec/registry/cuda_rows.hpp"
#include "kvcodec/registry/drop_stages.hpp"
#include "kvcodec/registry/entropy_stages.hpp"
#include "kvcodec/registry/presets.hpp"
#include "kvcodec/registry/quant_stages.hpp"
#endif

namespace kvcodec {

#ifdef KVCODEC_REGISTRY_DECLARE_ONLY
registry make_builtin_registry();
const registry& builtin_registry();
#else
KVCODEC_REGISTRY_LINKAGE registry make_builtin_registry() {
  registry r;
  r.add<quant::raw, cpu::raw_quant>();
  r.add<entropy::pack, cpu::pack_entropy>();
  r.add<entropy::zstd, cpu::zstd_entropy>();
  register_quant_stages(r);    // quantizers and transforms (issue: quantizer family)
  register_entropy_stages(r);  // rans, ac, cachegen-quant, delta
  register_drop_stages(r);     // token dropping (kvpress family)
  register_presets(r);         // cachegen, cachegen-paper, kvc
  register_cuda_rows(r);       // which stages have a CUDA implementation
  return r;
}

/// The process-wide registry (built once, thread-safe initialisation).
KVCODEC_REGISTRY_LINKAGE const registry& builtin_registry() {
  static const registry r = make_builtin_registry();
  return r;
}
#endif

}  // namespace kvcodec
