// kvcodec/cuda/drop/knorm.cuh — the `knorm` stage's scorer on the GPU, mirroring cpu/drop/knorm.hpp:
// one thread per key row computes core/drop_topk.hpp's drop_knorm_code (the CPU scorer's -sqrt of
// drop_sumsq16, the same bits) straight from the engine's cache (a drop_source: strided or paged,
// f32/f16/bf16), then cuda/drop/select.cuh keeps each head's b best. Kept sets equal the CPU's
// select_knorm over tokens [0, n) (tested on a GPU; the host emulation, drop_knorm_select_emulated,
// against the CPU in CI). Head dims up to drop_max_head_dim.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/drop_topk.hpp"
#include "kvcodec/cuda/drop/select.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

namespace detail {

__global__ void knorm_codes_kernel(drop_source src, int heads, std::int64_t n, std::int64_t items, std::uint64_t* codes, std::int32_t* tokens) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t seg = i / n, t = i % n;
    codes[i] = drop_knorm_code(src, static_cast<int>(seg / heads), seg % heads, t);
    tokens[i] = static_cast<std::int32_t>(t);
  }
}

}  // namespace detail

/// kept[(l * heads + h) * b + i] (device): the b lowest-norm keys of tokens [0, n) of every (layer,
/// kv head), increasing. `src.k` is a device array of per-layer device pointers. Two-phase: temp ==
/// nullptr sets temp_bytes. Queued on p.stream.
inline void knorm_select(void* temp, std::size_t& temp_bytes, const drop_source& src, int layers, int heads, std::int64_t n, std::int64_t b, std::int32_t* kept,
                         const par_t& p) {
  if (src.head_dim < 1 || src.head_dim > drop_max_head_dim)
    throw_usage("cuda knorm_select: head_dim " + std::to_string(src.head_dim) + " outside 1.." + std::to_string(drop_max_head_dim));
  if (layers < 1 || heads < 1) throw_usage("cuda knorm_select: need layers >= 1 and heads >= 1");
  const std::int64_t segments = static_cast<std::int64_t>(layers) * heads, items = segments * n;
  std::size_t topk_bytes = 0;
  topk_select(nullptr, topk_bytes, nullptr, nullptr, segments, n, b, nullptr, p);
  const std::size_t codes_bytes = detail::align256(static_cast<std::size_t>(items) * sizeof(std::uint64_t));
  const std::size_t tokens_bytes = detail::align256(static_cast<std::size_t>(items) * sizeof(std::int32_t));
  if (temp == nullptr) {
    temp_bytes = codes_bytes + tokens_bytes + topk_bytes;
    return;
  }
  if (temp_bytes < codes_bytes + tokens_bytes + topk_bytes) throw_usage("cuda knorm_select: temp storage too small");
  auto* base = static_cast<std::uint8_t*>(temp);
  auto* codes = reinterpret_cast<std::uint64_t*>(base);
  auto* tokens = reinterpret_cast<std::int32_t*>(base + codes_bytes);
  const unsigned threads = 128;
  detail::knorm_codes_kernel<<<detail::grid_for(items, threads), threads, 0, p.stream>>>(src, heads, n, items, codes, tokens);
  check(cudaGetLastError(), "knorm_codes_kernel launch");
  std::size_t tb = topk_bytes;
  topk_select(base + codes_bytes + tokens_bytes, tb, codes, tokens, segments, n, b, kept, p);
}

}  // namespace kvcodec::cuda
