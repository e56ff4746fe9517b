// kvcodec/cuda/drop/keydiff.cuh — the `keydiff` stage on the GPU, mirroring cpu/drop/keydiff.hpp:
// score = -cos(k, anchor), the anchor being the head's mean normalised key. Three kernels run the CPU's
// order step by step (core/drop_topk.hpp): a thread per key row for its inverse norm, a thread per
// (layer, head, channel) for the anchor (blocks of 8 rows, an fma chain each, then / n), a thread per
// (layer, head) for the anchor's squared norm; then drop_keydiff_coder per row and the selection of
// cuda/drop/select.cuh. Kept sets equal the CPU's select_keydiff over tokens [0, n).
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

__global__ void keydiff_inv_kernel(drop_source src, int heads, std::int64_t n, std::int64_t items, float* inv) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t seg = i / n;
    inv[i] = drop_keydiff_inv(src, static_cast<int>(seg / heads), seg % heads, i % n);
  }
}

__global__ void keydiff_anchor_kernel(drop_source src, int heads, std::int64_t n, std::int64_t items, const float* inv, float* anchor) {
  const std::int64_t D = src.head_dim;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t seg = i / D;
    anchor[i] = drop_keydiff_anchor(src, static_cast<int>(seg / heads), seg % heads, n, i % D, inv + seg * n);
  }
}

__global__ void keydiff_yy_kernel(const float* anchor, int D, std::int64_t segments, double* yy) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < segments; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    yy[i] = drop_keydiff_yy(anchor + i * D, D);
}

}  // namespace detail

/// keydiff's three steps, then its coder handed to then(temp, temp_bytes, coder), a selection over it
/// with CUB's two-phase convention (the presses over a scorer take it this way). Two-phase itself.
template <class Then>
void keydiff_run(void* temp, std::size_t& temp_bytes, const drop_source& src, int layers, int heads, std::int64_t n, const Then& then, const par_t& p) {
  if (src.head_dim < 1 || src.head_dim > drop_max_head_dim)
    throw_usage("cuda keydiff_select: head_dim " + std::to_string(src.head_dim) + " outside 1.." + std::to_string(drop_max_head_dim));
  if (layers < 1 || heads < 1 || n < 1) throw_usage("cuda keydiff_select: need layers, heads and n >= 1");
  const std::int64_t segments = static_cast<std::int64_t>(layers) * heads, D = src.head_dim;
  const std::size_t inv_bytes = detail::align256(static_cast<std::size_t>(segments * n) * sizeof(float));
  const std::size_t anchor_bytes = detail::align256(static_cast<std::size_t>(segments * D) * sizeof(float));
  const std::size_t yy_bytes = detail::align256(static_cast<std::size_t>(segments) * sizeof(double));
  const std::size_t own = inv_bytes + anchor_bytes + yy_bytes;
  auto* base = static_cast<std::uint8_t*>(temp);
  auto* anchor = reinterpret_cast<float*>(base + inv_bytes);
  auto* yy = reinterpret_cast<double*>(base + inv_bytes + anchor_bytes);
  const drop_keydiff_coder coder{src, anchor, yy, heads};
  std::size_t select_bytes = 0;
  then(nullptr, select_bytes, coder);
  if (detail::size_only(temp, temp_bytes, own + select_bytes, "cuda keydiff_select")) return;
  auto* inv = reinterpret_cast<float*>(base);
  const unsigned threads = 128;
  detail::keydiff_inv_kernel<<<detail::grid_for(segments * n, threads), threads, 0, p.stream>>>(src, heads, n, segments * n, inv);
  check(cudaGetLastError(), "keydiff_inv_kernel launch");
  detail::keydiff_anchor_kernel<<<detail::grid_for(segments * D, threads), threads, 0, p.stream>>>(src, heads, n, segments * D, inv, anchor);
  check(cudaGetLastError(), "keydiff_anchor_kernel launch");
  detail::keydiff_yy_kernel<<<detail::grid_for(segments, threads), threads, 0, p.stream>>>(anchor, static_cast<int>(D), segments, yy);
  check(cudaGetLastError(), "keydiff_yy_kernel launch");
  std::size_t sb = select_bytes;
  then(base + own, sb, coder);
}

/// kept[(l * heads + h) * b + i] (device): each head's b keys least similar to its mean normalised key
/// among tokens [0, n), increasing (ranked by wrap(coder): chunkkv). `src.k` is a device array of
/// per-layer device pointers. Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
template <class Wrap = drop_same_coder>
void keydiff_select(void* temp, std::size_t& temp_bytes, const drop_source& src, int layers, int heads, std::int64_t n, std::int64_t b, std::int32_t* kept,
                    const par_t& p, const Wrap& wrap = {}) {
  keydiff_run(
      temp, temp_bytes, src, layers, heads, n,
      [&](void* t, std::size_t& tb, const drop_keydiff_coder& c) { select_by_codes(t, tb, wrap(c), layers, heads, n, b, kept, p); }, p);
}

}  // namespace kvcodec::cuda
