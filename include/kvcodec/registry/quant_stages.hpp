// kvcodec/registry/quant_stages.hpp — registers the quantizers and transforms: uniform, kivi, fp8,
// the llama.cpp block formats (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl), nf4, kmeans, and the transforms
// hadamard, derope and think. Parameters and formats: docs/codecs/quant.md.
#pragma once

#include "kvcodec/cpu/codebook.hpp"
#include "kvcodec/cpu/derope.hpp"
#include "kvcodec/cpu/fp8.hpp"
#include "kvcodec/cpu/ggml.hpp"
#include "kvcodec/cpu/hadamard.hpp"
#include "kvcodec/cpu/think.hpp"
#include "kvcodec/cpu/kivi.hpp"
#include "kvcodec/cpu/uniform.hpp"
#include "kvcodec/registry/registry.hpp"

namespace kvcodec {

inline void register_quant_stages(registry& r) {
  r.add<quant::uniform, cpu::uniform_quant>();
  r.add<quant::kivi, cpu::kivi_quant>();
  r.add<quant::fp8, cpu::fp8_quant>();
  r.add<quant::q8_0, cpu::ggml_quant<quant::q8_0>>();
  r.add<quant::q4_0, cpu::ggml_quant<quant::q4_0>>();
  r.add<quant::q4_1, cpu::ggml_quant<quant::q4_1>>();
  r.add<quant::q5_0, cpu::ggml_quant<quant::q5_0>>();
  r.add<quant::q5_1, cpu::ggml_quant<quant::q5_1>>();
  r.add<quant::iq4_nl, cpu::ggml_quant<quant::iq4_nl>>();
  r.add<quant::nf4, cpu::nf4_quant>();
  r.add<quant::kmeans, cpu::kmeans_quant>();
  r.add<transform::hadamard, cpu::hadamard_transform>();
  r.add<transform::derope, cpu::derope_transform>();
  r.add<transform::think, cpu::think_transform>();
}

}  // namespace kvcodec
