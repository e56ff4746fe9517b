// kvcodec/cuda/raw.cuh — stage `raw` (f32/f16/bf16 values) decoded on the GPU, mirroring cpu/raw.hpp:
// one thread per value runs core/raw.hpp's raw_batch_op (a copy of the bits when the dtypes match, one
// rounding otherwise) into the view. Blocks come from pipeline/batch.hpp's plan_raw_batch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/raw.hpp"
#include "kvcodec/cuda/batch.cuh"

namespace kvcodec::cuda {

/// Decodes `count` blocks (device array) whose values are at `bytes` (device) into `d` on p.stream.
inline void raw_store(const raw_batch_block* blocks, std::size_t count, std::uint64_t max_items, const std::uint8_t* bytes, const kv_batch_dest& d,
                      std::uint32_t* bad, const par_t& p) {
  run_batch(blocks, count, max_items, raw_batch_op{bytes, d}, bad, p);
}

}  // namespace kvcodec::cuda
