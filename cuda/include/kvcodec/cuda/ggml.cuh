// kvcodec/cuda/ggml.cuh — the llama.cpp block formats (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl) decoded on
// the GPU, mirroring cpu/ggml.hpp: one thread per 32-value ggml block runs core/ggml_blocks.hpp's
// per-block dequantizer (ggml_batch_op, the CPU's values) and stores into the view (strided or paged,
// f16/bf16/f32). Blocks come from pipeline/batch.hpp's plan_ggml_batch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/ggml_blocks.hpp"
#include "kvcodec/cuda/batch.cuh"

namespace kvcodec::cuda {

/// Decodes `count` blocks (device array) whose bytes are at `bytes` (device) into `d` on p.stream.
inline void ggml_store(const ggml_batch_block* blocks, std::size_t count, std::uint64_t max_items, const std::uint8_t* bytes, const kv_batch_dest& d,
                       std::uint32_t* bad, const par_t& p) {
  run_batch(blocks, count, max_items, ggml_batch_op{bytes, d}, bad, p);
}

}  // namespace kvcodec::cuda
