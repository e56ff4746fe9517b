// kvcodec/cuda/cachegen.cuh — cachegen-quant's dequantize + scatter on the GPU, mirroring
// cpu/cachegen.hpp's decode_rows: each thread takes elements of one K/V block and writes
// core/cachegen.hpp's cachegen_batch_store (the same f32 value and f16/bf16 rounding as the CPU) into
// the destination view's layout (strided or paged). A symbol above 2*MAX marks its block in `bad`.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/cachegen.hpp"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

namespace detail {

/// grid.y = block, grid.x x blockDim.x threads stride over its R x C elements.
__global__ void cachegen_store_kernel(const cachegen_batch_block* blocks, const std::uint16_t* sym, const float* steps, cachegen_batch_dest d,
                                      std::uint32_t* bad) {
  const cachegen_batch_block b = blocks[blockIdx.y];
  const std::uint64_t n = static_cast<std::uint64_t>(b.rows) * b.cols;
  bool ok = true;
  for (std::uint64_t i = static_cast<std::uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<std::uint64_t>(gridDim.x) * blockDim.x)
    ok &= cachegen_batch_store(b, sym, steps, d, i);
  if (!ok) bad[blockIdx.y] = 1;
}

}  // namespace detail

/// Dequantizes `count` blocks (device arrays) into the destination on p.stream; `bad` (count entries,
/// zeroed here) flags blocks with a symbol out of range.
inline void cachegen_store(const cachegen_batch_block* blocks, std::size_t count, std::uint64_t max_elements, const std::uint16_t* sym,
                           const float* steps, const cachegen_batch_dest& d, std::uint32_t* bad, const par_t& p) {
  if (count == 0) return;
  check(cudaMemsetAsync(bad, 0, count * sizeof(std::uint32_t), p.stream), "cachegen_store flags");
  const unsigned threads = 256;
  const std::uint64_t per = (max_elements + threads - 1) / threads;
  const unsigned gx = static_cast<unsigned>(per < 64 ? (per ? per : 1) : 64);
  for (std::size_t b0 = 0; b0 < count; b0 += 65535) {  // grid.y holds at most 65535 blocks
    const unsigned gy = static_cast<unsigned>(count - b0 < 65535 ? count - b0 : 65535);
    detail::cachegen_store_kernel<<<dim3(gx, gy), threads, 0, p.stream>>>(blocks + b0, sym, steps, d, bad + b0);
    check(cudaGetLastError(), "cachegen_store_kernel launch");
  }
}

}  // namespace kvcodec::cuda
