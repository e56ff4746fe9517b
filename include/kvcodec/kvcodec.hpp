// kvcodec/kvcodec.hpp — umbrella header: everything a library user needs.
//
//   kvcodec::kv_cache kv = kvcodec::read_kv_dump("dump.safetensors").cache;
//   auto enc = kvcodec::encode("kivi:bits=4|rans", kv);      // bytes + exact bits/element
//   kvcodec::kv_cache back = kvcodec::decode(enc.data);
//
// It includes every stage's descriptor (stage/*.hpp: the typed pipelines' `quant::raw{} | entropy::zstd{}`)
// and, through registry/builtin.hpp, every stage's CPU code, except in a program that compiles the
// registry once (KVCODEC_SEPARATE_REGISTRY): there a translation unit that calls a stage's code
// directly (cpu/<stage>.hpp) includes it itself.
#pragma once

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/cpu/policy.hpp"
#include "kvcodec/format/bytes.hpp"
#include "kvcodec/format/container.hpp"
#include "kvcodec/pipeline/codec.hpp"
#include "kvcodec/pipeline/decode.hpp"
#include "kvcodec/pipeline/encode.hpp"
#include "kvcodec/pipeline/target.hpp"
#include "kvcodec/pipeline/typed.hpp"
#include "kvcodec/registry/builtin.hpp"
#include "kvcodec/registry/registry.hpp"
#include "kvcodec/stage/ac.hpp"
#include "kvcodec/stage/cachegen.hpp"
#include "kvcodec/stage/codebook.hpp"
#include "kvcodec/stage/delta.hpp"
#include "kvcodec/stage/derope.hpp"
#include "kvcodec/stage/drop_attention.hpp"
#include "kvcodec/stage/drop_common.hpp"
#include "kvcodec/stage/drop_structural.hpp"
#include "kvcodec/stage/fp8.hpp"
#include "kvcodec/stage/ggml.hpp"
#include "kvcodec/stage/hadamard.hpp"
#include "kvcodec/stage/interface.hpp"
#include "kvcodec/stage/kivi.hpp"
#include "kvcodec/stage/klt.hpp"
#include "kvcodec/stage/pack.hpp"
#include "kvcodec/stage/params.hpp"
#include "kvcodec/stage/rans.hpp"
#include "kvcodec/stage/raw.hpp"
#include "kvcodec/stage/uniform.hpp"
#include "kvcodec/stage/weighted_quant.hpp"
#include "kvcodec/stage/zstd.hpp"
#include "kvcodec/tensor/dtype.hpp"
#include "kvcodec/tensor/kv_cache.hpp"
#include "kvcodec/tensor/kv_view.hpp"
#include "kvcodec/tensor/view.hpp"
