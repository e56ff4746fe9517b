// kvcodec/cuda/drop/knorm.cuh — the `knorm` stage's scorer on the GPU, mirroring cpu/drop/knorm.hpp:
// one thread per key row computes core/drop_topk.hpp's drop_knorm_coder (the CPU scorer's -sqrt of
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

/// knorm's coder handed to then(temp, temp_bytes, coder), a selection over it with CUB's two-phase
/// convention (knorm has no steps before its codes; the presses over a scorer take it this way).
template <class Then>
void knorm_run(void* temp, std::size_t& temp_bytes, const drop_source& src, const Then& then) {
  if (src.head_dim < 1 || src.head_dim > drop_max_head_dim)
    throw_usage("cuda knorm_select: head_dim " + std::to_string(src.head_dim) + " outside 1.." + std::to_string(drop_max_head_dim));
  then(temp, temp_bytes, drop_knorm_coder{src});
}

/// kept[(l * heads + h) * b + i] (device): the b lowest-norm keys of tokens [0, n) of every (layer,
/// kv head), increasing (ranked by wrap(coder): chunkkv). `src.k` is a device array of per-layer device
/// pointers. Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
template <class Wrap = drop_same_coder>
void knorm_select(void* temp, std::size_t& temp_bytes, const drop_source& src, int layers, int heads, std::int64_t n, std::int64_t b, std::int32_t* kept,
                  const par_t& p, const Wrap& wrap = {}) {
  knorm_run(temp, temp_bytes, src, [&](void* t, std::size_t& tb, const drop_knorm_coder& c) { select_by_codes(t, tb, wrap(c), layers, heads, n, b, kept, p); });
}

}  // namespace kvcodec::cuda
