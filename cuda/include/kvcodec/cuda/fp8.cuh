// kvcodec/cuda/fp8.cuh — stage `fp8` (e4m3 / e5m2, per-tensor, per-head or per-token scales) decoded on
// the GPU, mirroring cpu/fp8.hpp: one thread per value runs core/fp8.hpp's fp8_batch_op (the CPU's
// fp8_to_f32(code) * scale) and stores into the view. Blocks come from pipeline/batch.hpp's plan_fp8_batch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/fp8.hpp"
#include "kvcodec/cuda/batch.cuh"

namespace kvcodec::cuda {

/// Decodes `count` blocks (device array) whose codes and scales are at `bytes` (device) into `d` on p.stream.
inline void fp8_store(const fp8_batch_block* blocks, std::size_t count, std::uint64_t max_items, const std::uint8_t* bytes, const kv_batch_dest& d,
                      std::uint32_t* bad, const par_t& p) {
  run_batch(blocks, count, max_items, fp8_batch_op{bytes, d}, bad, p);
}

}  // namespace kvcodec::cuda
