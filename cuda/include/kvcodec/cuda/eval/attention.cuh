// kvcodec/cuda/eval/attention.cuh — eval::compare_attention on the GPU (attention output error, KL and
// dropped mass of a reconstructed cache against the original, with the model's queries), mirroring
// eval/attention.hpp. One kernel runs core/eval_attention.hpp's tile phases: a CUDA block per 64 rows of
// a (layer, query head), pass 1 for the rows' log-sum-exps, pass 2 for their output error and KL, over
// 64-key tiles of double score tiles staged from f32 (memory O(rows + tile), never O(tokens^2)); a
// thread per (layer, query head) then sums its rows in order and the host combines them as the CPU
// does (eval::metrics_of). The metrics equal the CPU's within double rounding (the host emulation,
// eval::compare_attention_emulated, is checked against the CPU in CI).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/eval_attention.hpp"
#include "kvcodec/cuda/memory.cuh"
#include "kvcodec/cuda/policy.cuh"
#include "kvcodec/eval/attention.hpp"

namespace kvcodec::cuda {

namespace detail {

/// The tile's two score tiles (the original's keys, then the reconstruction's) into sm.s and sm.sr.
__device__ inline void eattn_scores_device(const eattn_args& a, int l, int h, std::int64_t j0, eattn_smem& sm) {
  const int tid = static_cast<int>(threadIdx.x);
  eattn_lane L;
  for (int which = 0; which < 2; ++which) {
    for (int d0 = 0; d0 < a.k.head_dim; d0 += eattn_chunk) {
      for (int item = tid; item < eattn_stage_items; item += eattn_threads) eattn_stage_qk(a, which == 0 ? a.k : a.kr, l, h, j0, d0, item, sm);
      __syncthreads();
      eattn_fma(sm, tid, L);
      __syncthreads();
    }
    eattn_store(a, which == 0 ? sm.s : sm.sr, tid, L);
  }
  __syncthreads();
}

__global__ void __launch_bounds__(eattn_threads) eattn_rows_kernel(eattn_args a) {
  extern __shared__ __align__(16) unsigned char eattn_raw[];
  eattn_smem& sm = *reinterpret_cast<eattn_smem*>(eattn_raw);
  const int tid = static_cast<int>(threadIdx.x);
  const std::int64_t task = blockIdx.y;
  const int l = static_cast<int>(task / a.q_heads), h = static_cast<int>(task % a.q_heads), g = h / (a.q_heads / a.kv_heads);
  for (std::int64_t k0 = static_cast<std::int64_t>(blockIdx.x) * eattn_tile; k0 < a.per; k0 += static_cast<std::int64_t>(gridDim.x) * eattn_tile) {
    if (tid < eattn_tile) eattn_stage_row(a, task, k0, tid, false, sm);
    __syncthreads();
    const std::int64_t end = eattn_key_end(sm);
    drop_softmax_state st[4];
    for (std::int64_t j0 = 0; j0 < end; j0 += eattn_tile) {
      eattn_scores_device(a, l, h, j0, sm);
      if (tid < eattn_tile) eattn_row_stats(a, sm, l, g, j0, tid, st);
      __syncthreads();
    }
    if (tid < eattn_tile && k0 + tid < a.per) {
      eattn_row& r = a.rows[task * a.per + k0 + tid];
      r.lse = drop_softmax_lse(st[0]), r.lse_kept = drop_softmax_lse(st[1]), r.lse_rec = drop_softmax_lse(st[2]), r.lse_drop = drop_softmax_lse(st[3]);
      eattn_stage_row(a, task, k0, tid, true, sm);  // the same thread wrote the row just above
    }
    __syncthreads();
    double kl = 0.0, err = 0.0, out = 0.0;
    eattn_lane P;
    for (int c0 = 0; c0 < a.k.head_dim; c0 += eattn_chunk) {
      for (std::int64_t j0 = 0; j0 < end; j0 += eattn_tile) {
        eattn_scores_device(a, l, h, j0, sm);
        if (tid < eattn_tile) eattn_row_probs(a, sm, l, g, j0, tid, c0 == 0, kl);
        __syncthreads();
        for (int item = tid; item < eattn_stage_items; item += eattn_threads) eattn_stage_v(a, l, h, j0, c0, item, sm);
        __syncthreads();
        eattn_pv(sm, tid, P);
        __syncthreads();
      }
      eattn_partials(sm, tid, P);
      __syncthreads();
      if (tid < eattn_tile) eattn_row_sums(sm, tid, err, out);
      __syncthreads();
    }
    if (tid < eattn_tile && k0 + tid < a.per) {
      eattn_row& r = a.rows[task * a.per + k0 + tid];
      r.err_sq = err, r.out_sq = out, r.kl = kl;
    }
    __syncthreads();
  }
}

__global__ void eattn_sums_kernel(eattn_args a, attention_sums* sums) {
  for (std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < eattn_tasks(a); t += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    sums[t] = eattn_task_sums(a, t);
}

}  // namespace detail

/// The attention metrics of `reconstructed` against `original` (host caches, as eval::compare_attention
/// takes them, with its checks and options; opt.threads is ignored), computed on the GPU: both caches
/// and the queries go to the device as f32. Waits for p.stream.
inline eval::attention_metrics compare_attention(const par_t& p, const kv_cache& original, const kv_cache& reconstructed, const eval::attention_options& opt = {}) {
  const eval::attention_plan plan = eval::plan_attention(original, reconstructed, opt);
  if (plan.tasks > 65535) throw_usage("cuda compare_attention: layers x query heads must be <= 65535, got " + std::to_string(plan.tasks));
  eval::attention_tiles t;
  eval::attention_tiles_of(original, reconstructed, plan, t);
  // device copies: per-layer f32 tensors and their base arrays, the kept mask, the rows
  std::vector<device_buffer<float>> store;
  const auto upload = [&](const std::vector<std::vector<float>>& layers, device_buffer<const void*>& bases) {
    std::vector<const void*> ptrs;
    for (const auto& layer : layers) {
      store.emplace_back(std::span<const float>(layer));
      ptrs.push_back(store.back().data());
    }
    bases = device_buffer<const void*>{std::span<const void* const>(ptrs)};
  };
  device_buffer<const void*> k, v, kr, vr, q;
  upload(original.keys, k), upload(original.values, v), upload(reconstructed.keys, kr), upload(reconstructed.values, vr), upload(original.queries, q);
  device_buffer<std::uint8_t> kept;
  if (!t.kept.empty()) kept = device_buffer<std::uint8_t>{std::span<const std::uint8_t>(t.kept)};
  device_buffer<eattn_row> rows(t.rows.size());
  device_buffer<attention_sums> sums(static_cast<std::size_t>(plan.tasks));
  eattn_args a = t.a;
  a.k.k = k.data(), a.v.k = v.data(), a.kr.k = kr.data(), a.vr.k = vr.data(), a.q.k = q.data();
  a.kept = t.kept.empty() ? nullptr : kept.data();
  a.rows = rows.data();
  const std::size_t smem = sizeof(eattn_smem);
  check(cudaFuncSetAttribute(detail::eattn_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
        "compare_attention: cudaFuncSetAttribute (dynamic shared memory of the metrics kernel)");
  const std::int64_t tiles = (plan.per + eattn_tile - 1) / eattn_tile;
  const dim3 grid(static_cast<unsigned>(tiles > 65535 ? 65535 : tiles), static_cast<unsigned>(plan.tasks));
  detail::eattn_rows_kernel<<<grid, eattn_threads, smem, p.stream>>>(a);
  check(cudaGetLastError(), "eattn_rows_kernel launch");
  detail::eattn_sums_kernel<<<static_cast<unsigned>((plan.tasks + 127) / 128), 128, 0, p.stream>>>(a, sums.data());
  check(cudaGetLastError(), "eattn_sums_kernel launch");
  check(cudaStreamSynchronize(p.stream), "compare_attention");
  return eval::metrics_of(sums.download());
}

}  // namespace kvcodec::cuda
