// kvcodec/cuda/drop/window_attention.cuh — the window-attention scorers on the GPU, mirroring
// cpu/drop/window_attention.hpp: the attention a window of queries pays each key, summed over a GQA
// group (snapkv, pyramidkv, h2o, tova). Two kernels run core/window_attention.hpp's tile phases:
//   wattn_stats_kernel  a CUDA block per (64 stacked window rows, layer x kv head): each row's maximum
//                       and softmax sum, online over the key tiles it sees;
//   wattn_cols_kernel   a CUDA block per (64 keys, layer x kv head): each key's column sum of the rows'
//                       probabilities.
// Q K^T is computed twice, in 64 x 64 tiles from 32-channel chunks staged in shared memory, so memory is
// O(rows + keys), never O(tokens^2). Then drop_window_coder codes every token and cuda/drop/select.cuh
// keeps each head's b best (per layer for pyramidkv). The host emulation of the same phases
// (window_attention_emulated) is checked against the CPU scorers in CI; kept sets equal the CPU's
// except between tokens whose scores are equal within float rounding.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/window_attention.hpp"
#include "kvcodec/cuda/drop/select.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

namespace detail {

/// The tensor-core tile: warp w's two 16 x 16 score blocks (core/window_attention.hpp's wattn_mma_host is
/// its host form) from the staged 16-bit chunk, WMMA m16n16k16 with f32 accumulators (sm_80 and later).
template <class Half>
__device__ inline void wattn_tile_tensor(const wattn_args& a, int l, int g, std::int64_t r0, std::int64_t j0, wattn_smem& sm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  const int tid = static_cast<int>(threadIdx.x), w = tid / 32, fr = w / 2, fc = (w % 2) * 2;
  constexpr int ld = wattn_chunk + 8;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
  for (int d0 = 0; d0 < a.k.head_dim; d0 += wattn_chunk) {
    for (int item = tid; item < wattn_stage_items; item += wattn_threads) wattn_stage_bits(a, l, g, r0, j0, d0, item, sm);
    __syncthreads();
    for (int ks = 0; ks < wattn_chunk; ks += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, Half, wmma::row_major> qa;
      wmma::load_matrix_sync(qa, reinterpret_cast<const Half*>(&sm.in.h.q[fr * 16][ks]), ld);
      for (int c = 0; c < 2; ++c) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, Half, wmma::col_major> kb;  // K^T: key j's channels are column j
        wmma::load_matrix_sync(kb, reinterpret_cast<const Half*>(&sm.in.h.k[(fc + c) * 16][ks]), ld);
        wmma::mma_sync(acc[c], qa, kb, acc[c]);
      }
    }
    __syncthreads();
  }
  for (int c = 0; c < 2; ++c) wmma::store_matrix_sync(&sm.s[fr * 16][(fc + c) * 16], acc[c], wattn_tile + 4, wmma::mem_row_major);
  __syncthreads();
#else
  (void)a, (void)l, (void)g, (void)r0, (void)j0, (void)sm;
  __trap();  // the build targets sm_80 and sm_90; window_attention() refuses older devices
#endif
}

/// One score tile (rows r0.., keys j0..) into sm.s: every thread stages, chains its fmas, stores; or
/// the tensor-core tile when keys and queries are both f16 or both bf16.
__device__ inline void wattn_tile_device(const wattn_args& a, int l, int g, std::int64_t r0, std::int64_t j0, wattn_smem& sm) {
  if (a.k.dtype_code == 1 && a.q.dtype_code == 1) return wattn_tile_tensor<__half>(a, l, g, r0, j0, sm);
  if (a.k.dtype_code == 2 && a.q.dtype_code == 2) return wattn_tile_tensor<__nv_bfloat16>(a, l, g, r0, j0, sm);
  const int tid = static_cast<int>(threadIdx.x);
  wattn_lane L;
  for (int d0 = 0; d0 < a.k.head_dim; d0 += wattn_chunk) {
    for (int item = tid; item < wattn_stage_items; item += wattn_threads) wattn_stage(a, l, g, r0, j0, d0, item, sm);
    __syncthreads();
    wattn_fma(sm, tid, L);
    __syncthreads();
  }
  wattn_store(sm, tid, L);
  __syncthreads();
}

__global__ void __launch_bounds__(wattn_threads) wattn_stats_kernel(wattn_args a) {
  __shared__ wattn_smem sm;
  const int tid = static_cast<int>(threadIdx.x);
  const std::int64_t seg = blockIdx.y, R = wattn_rows(a);
  const int l = static_cast<int>(seg / a.heads), g = static_cast<int>(seg % a.heads);
  for (std::int64_t r0 = static_cast<std::int64_t>(blockIdx.x) * wattn_tile; r0 < R; r0 += static_cast<std::int64_t>(gridDim.x) * wattn_tile) {
    float m = -HUGE_VALF, z = 0.0f;
    for (std::int64_t j0 = 0; j0 < a.n && wattn_tile_sees(a, r0, j0); j0 += wattn_tile) {
      wattn_tile_device(a, l, g, r0, j0, sm);
      if (tid < wattn_tile) wattn_row_update(a, sm, r0, j0, tid, m, z);
      __syncthreads();
    }
    if (tid < wattn_tile && r0 + tid < R) a.m[seg * R + r0 + tid] = m, a.z[seg * R + r0 + tid] = z;
  }
}

__global__ void __launch_bounds__(wattn_threads) wattn_cols_kernel(wattn_args a) {
  __shared__ wattn_smem sm;
  const int tid = static_cast<int>(threadIdx.x);
  const std::int64_t seg = blockIdx.y, R = wattn_rows(a);
  const int l = static_cast<int>(seg / a.heads), g = static_cast<int>(seg % a.heads);
  for (std::int64_t j0 = static_cast<std::int64_t>(blockIdx.x) * wattn_tile; j0 < a.n; j0 += static_cast<std::int64_t>(gridDim.x) * wattn_tile) {
    float col = 0.0f;
    for (std::int64_t r0 = 0; r0 < R; r0 += wattn_tile) {
      if (!wattn_tile_sees(a, r0, j0)) continue;
      if (tid < wattn_tile) wattn_row_stage(a, l, g, r0, tid, sm);
      wattn_tile_device(a, l, g, r0, j0, sm);
      if (tid < wattn_tile) wattn_col_add(a, sm, j0, tid, col);
      __syncthreads();
    }
    if (tid < wattn_tile && j0 + tid < a.n) a.acc[seg * a.n + j0 + tid] = col;
  }
}

inline unsigned tiles_grid(std::int64_t items) {
  const std::int64_t t = (items + wattn_tile - 1) / wattn_tile;
  return static_cast<unsigned>(t < 1 ? 1 : t > 65535 ? 65535 : t);
}

}  // namespace detail

/// Both passes of window attention over a (its m, z and acc: device arrays of layers x heads x
/// wattn_rows(a), the same, and layers x heads x n floats). Queued on p.stream.
inline void window_attention(const wattn_args& a, const par_t& p) {
  const std::int64_t segments = static_cast<std::int64_t>(a.layers) * a.heads;
  if (segments < 1 || segments > 65535) throw_usage("cuda window_attention: layers x heads must be in 1..65535, got " + std::to_string(segments));
  int dev = 0, major = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
  if (major < 8) throw_usage("cuda window_attention: needs compute capability 8.0 or later (sm_80, sm_90), this device has " + std::to_string(major) + ".x");
  const dim3 stats(detail::tiles_grid(wattn_rows(a)), static_cast<unsigned>(segments)), cols(detail::tiles_grid(a.n), static_cast<unsigned>(segments));
  detail::wattn_stats_kernel<<<stats, wattn_threads, 0, p.stream>>>(a);
  check(cudaGetLastError(), "wattn_stats_kernel launch");
  detail::wattn_cols_kernel<<<cols, wattn_threads, 0, p.stream>>>(a);
  check(cudaGetLastError(), "wattn_cols_kernel launch");
}

/// kept (device, drop_window_kept_size(plan) tokens): per layer l, every head's b_l best tokens of
/// [0, n), increasing, head after head; the layers one after another; ranked by drop_window_coder, or by
/// wrap(coder) (chunkkv's chunk means, cuda/drop/chunkkv.cuh). plan's sources hold device pointers
/// (plan_drop_window). Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
template <class Wrap = drop_same_coder>
void window_select(void* temp, std::size_t& temp_bytes, const drop_window_plan& plan, std::int32_t* kept, const par_t& p, const Wrap& wrap = {}) {
  wattn_args a = plan.a;
  const std::size_t segs = static_cast<std::size_t>(a.layers) * static_cast<std::size_t>(a.heads);
  const std::size_t rows_bytes = detail::align256(segs * static_cast<std::size_t>(wattn_rows(a)) * sizeof(float));
  const std::size_t acc_bytes = detail::align256(segs * static_cast<std::size_t>(a.n) * sizeof(float));
  const std::size_t own = 2 * rows_bytes + acc_bytes;
  std::size_t select_bytes = 0;
  for (const std::int64_t b : plan.budgets) {
    std::size_t one = 0;
    select_by_codes(nullptr, one, wrap(plan.coder), 1, a.heads, a.n, b, nullptr, p);
    select_bytes = one > select_bytes ? one : select_bytes;
  }
  if (detail::size_only(temp, temp_bytes, own + select_bytes, "cuda window_select")) return;
  auto* base = static_cast<std::uint8_t*>(temp);
  a.m = reinterpret_cast<float*>(base);
  a.z = reinterpret_cast<float*>(base + rows_bytes);
  a.acc = reinterpret_cast<float*>(base + 2 * rows_bytes);
  window_attention(a, p);
  drop_window_coder coder = plan.coder;
  coder.acc = a.acc;
  std::size_t at = 0;
  for (int l = 0; l < a.layers; ++l) {
    const std::int64_t b = plan.budgets[static_cast<std::size_t>(l)];
    std::size_t sb = select_bytes;
    select_by_codes(base + own, sb, drop_layer_shift<decltype(wrap(coder))>{wrap(coder), l}, 1, a.heads, a.n, b, kept + at, p);
    at += static_cast<std::size_t>(b) * static_cast<std::size_t>(a.heads);
  }
}

}  // namespace kvcodec::cuda
