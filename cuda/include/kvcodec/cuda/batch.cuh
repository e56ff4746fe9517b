// kvcodec/cuda/batch.cuh — the one kernel shape of the batch decoders' element steps (core/:
// cachegen_batch_op, ggml_batch_op, fp8_batch_op, raw_batch_op): grid.y = block, grid.x x blockDim.x
// threads stride over its items, each item is op(block, i). pipeline/batch.hpp's run_batch_emulated
// runs the same steps on the CPU in CI.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

namespace detail {

template <class Block, class Op>
__global__ void batch_store_kernel(const Block* blocks, Op op, std::uint32_t* bad) {
  const Block b = blocks[blockIdx.y];
  const std::uint64_t n = op.count(b);
  bool ok = true;
  for (std::uint64_t i = static_cast<std::uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<std::uint64_t>(gridDim.x) * blockDim.x)
    ok &= op(b, i);
  if (!ok) bad[blockIdx.y] = 1;
}

}  // namespace detail

/// Runs `op` over every item of the `count` blocks (a device array) on p.stream; `bad` (count entries,
/// zeroed here) flags the blocks with an item the step rejected. max_items: the largest block's items.
template <class Block, class Op>
void run_batch(const Block* blocks, std::size_t count, std::uint64_t max_items, const Op& op, std::uint32_t* bad, const par_t& p) {
  if (count == 0) return;
  check(cudaMemsetAsync(bad, 0, count * sizeof(std::uint32_t), p.stream), "batch flags");
  const unsigned threads = 256;
  const std::uint64_t per = (max_items + threads - 1) / threads;
  const unsigned gx = static_cast<unsigned>(per < 64 ? (per ? per : 1) : 64);
  for (std::size_t b0 = 0; b0 < count; b0 += 65535) {  // grid.y holds at most 65535 blocks
    const unsigned gy = static_cast<unsigned>(count - b0 < 65535 ? count - b0 : 65535);
    detail::batch_store_kernel<<<dim3(gx, gy), threads, 0, p.stream>>>(blocks + b0, op, bad + b0);
    check(cudaGetLastError(), "batch_store_kernel launch");
  }
}

}  // namespace kvcodec::cuda
