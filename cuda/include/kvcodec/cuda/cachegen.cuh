// kvcodec/cuda/cachegen.cuh — cachegen-quant's dequantize + scatter on the GPU, mirroring
// cpu/cachegen.hpp's decode_rows: the batch kernel (cuda/batch.cuh) runs core/cachegen.hpp's
// cachegen_batch_op (the same f32 value and f16/bf16 rounding as the CPU) into the destination view's
// layout (strided or paged). A symbol above 2*MAX marks its block in `bad`.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/cachegen.hpp"
#include "kvcodec/cuda/batch.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

/// Dequantizes `count` blocks (device arrays) into the destination on p.stream; `bad` (count entries,
/// zeroed here) flags blocks with a symbol out of range.
inline void cachegen_store(const cachegen_batch_block* blocks, std::size_t count, std::uint64_t max_elements, const std::uint16_t* sym,
                           const float* steps, const kv_batch_dest& d, std::uint32_t* bad, const par_t& p) {
  run_batch(blocks, count, max_elements, cachegen_batch_op{sym, steps, d}, bad, p);
}

}  // namespace kvcodec::cuda
