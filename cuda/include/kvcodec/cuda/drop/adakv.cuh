// kvcodec/cuda/drop/adakv.cuh — the `adakv` stage on the GPU over a window scorer (snapkv, h2o or tova),
// mirroring cpu/drop/adakv.hpp: head-wise budgets, the layer's budget pooled over its heads. The steps
// of core/adakv.hpp: window attention (cuda/drop/window_attention.cuh); a thread per head for its
// normalisation (in token order, as the CPU); each head's safeguard by the CUB selection
// (cuda/drop/select.cuh); the pool, a stable segmented sort per layer over heads x n codes (ties to the
// lower head, then the lower token); the kept sets as a mask. The host emulation of the same steps
// (drop_adakv_select_emulated) is checked against the CPU's select_adakv in CI.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/adakv.hpp"
#include "kvcodec/cuda/drop/select.cuh"
#include "kvcodec/cuda/drop/window_attention.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

namespace detail {

__global__ void adakv_stat_kernel(drop_window_coder c, std::int64_t segments, adakv_head_stat* stats) {
  for (std::int64_t s = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < segments; s += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    stats[s] = adakv_stat(c, static_cast<int>(s / c.heads), s % c.heads);
}

__global__ void adakv_protected_kernel(drop_window_coder c, adakv_budget bud, std::int64_t items, std::uint8_t* mask) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    mask[i] = adakv_protected_mark(c, bud, i);
}

/// mask[seg * n + kept[i]] = 1 for the b kept tokens of every segment (kept: segment after segment).
__global__ void adakv_mark_kernel(const std::int32_t* kept, std::int64_t count, std::int64_t b, std::int64_t n, std::uint8_t* mask) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    mask[i / b * n + kept[i]] = 1;
}

__global__ void adakv_pool_codes_kernel(drop_window_coder c, const adakv_head_stat* stats, const std::uint8_t* mask, std::int64_t items, std::uint64_t* codes,
                                        std::int32_t* idx) {
  const std::int64_t per_layer = static_cast<std::int64_t>(c.heads) * c.n;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t within = i % per_layer;
    codes[i] = adakv_pool_code(c, stats, mask, static_cast<int>(i / per_layer), within / c.n, within % c.n);
    idx[i] = static_cast<std::int32_t>(within);
  }
}

}  // namespace detail

/// mask[(l * heads + h) * n + t] (device): 1 where head (l, h) keeps token t < n under Ada-KV with
/// safeguard share `alpha` over plan's window scorer (plan_drop_window, uniform budget; device
/// pointers). Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
inline void adakv_select(void* temp, std::size_t& temp_bytes, const drop_window_plan& plan, double alpha, std::uint8_t* mask, const par_t& p) {
  if (plan.budgets.empty() || plan.budgets.front() != plan.budgets.back()) throw_usage("cuda adakv_select: needs one budget for every layer");
  if (!(alpha >= 0.0 && alpha <= 1.0)) throw_usage("cuda adakv_select: alpha must be in [0, 1]");
  wattn_args a = plan.a;
  const std::int64_t segments = static_cast<std::int64_t>(a.layers) * a.heads, n = a.n, items = segments * n;
  const adakv_budget bud = adakv_budget_of(plan.coder, plan.budgets.front(), alpha);
  // temp: row stats, column sums, head stats, safeguard kept, pool codes and indices, then CUB's scratch
  const std::size_t rows_bytes = detail::align256(static_cast<std::size_t>(segments * wattn_rows(a)) * sizeof(float));
  const std::size_t acc_bytes = detail::align256(static_cast<std::size_t>(items) * sizeof(float));
  const std::size_t stat_bytes = detail::align256(static_cast<std::size_t>(segments) * sizeof(adakv_head_stat));
  const std::size_t safe_bytes = detail::align256(static_cast<std::size_t>(segments * (bud.safe > 0 ? bud.safe : 0)) * sizeof(std::int32_t));
  const std::size_t codes_bytes = detail::align256(static_cast<std::size_t>(items) * sizeof(std::uint64_t));
  const std::size_t idx_bytes = detail::align256(static_cast<std::size_t>(items) * sizeof(std::int32_t));
  const std::size_t pool_kept_bytes = detail::align256(static_cast<std::size_t>(a.layers * (bud.pool > 0 ? bud.pool : 0)) * sizeof(std::int32_t));
  const std::size_t own = 2 * rows_bytes + acc_bytes + stat_bytes + safe_bytes + codes_bytes + idx_bytes + pool_kept_bytes;
  drop_window_coder c = plan.coder;
  std::size_t safe_temp = 0, pool_temp = 0;
  if (bud.safe > 0) select_by_codes(nullptr, safe_temp, adakv_safe_coder{c}, a.layers, a.heads, n, bud.safe, nullptr, p);
  if (bud.pool > 0) topk_select(nullptr, pool_temp, nullptr, nullptr, a.layers, a.heads * n, bud.pool, nullptr, p);
  const std::size_t scratch = safe_temp > pool_temp ? safe_temp : pool_temp;
  if (detail::size_only(temp, temp_bytes, own + scratch, "cuda adakv_select")) return;
  detail::temp_cursor cur{static_cast<std::uint8_t*>(temp)};
  a.m = reinterpret_cast<float*>(cur.take(rows_bytes));
  a.z = reinterpret_cast<float*>(cur.take(rows_bytes));
  a.acc = reinterpret_cast<float*>(cur.take(acc_bytes));
  auto* stats = reinterpret_cast<adakv_head_stat*>(cur.take(stat_bytes));
  auto* safe_kept = reinterpret_cast<std::int32_t*>(cur.take(safe_bytes));
  auto* codes = reinterpret_cast<std::uint64_t*>(cur.take(codes_bytes));
  auto* idx = reinterpret_cast<std::int32_t*>(cur.take(idx_bytes));
  auto* pool_kept = reinterpret_cast<std::int32_t*>(cur.take(pool_kept_bytes));
  window_attention(a, p);
  c.acc = a.acc;
  const unsigned threads = 128;
  detail::adakv_stat_kernel<<<detail::grid_for(segments, 32), 32, 0, p.stream>>>(c, segments, stats);
  check(cudaGetLastError(), "adakv_stat_kernel launch");
  detail::adakv_protected_kernel<<<detail::grid_for(items, threads), threads, 0, p.stream>>>(c, bud, items, mask);
  check(cudaGetLastError(), "adakv_protected_kernel launch");
  if (bud.safe > 0) {
    std::size_t sb = scratch;
    select_by_codes(cur.at, sb, adakv_safe_coder{c}, a.layers, a.heads, n, bud.safe, safe_kept, p);
    detail::adakv_mark_kernel<<<detail::grid_for(segments * bud.safe, threads), threads, 0, p.stream>>>(safe_kept, segments * bud.safe, bud.safe, n, mask);
    check(cudaGetLastError(), "adakv_mark_kernel launch");
  }
  if (bud.pool > 0) {
    detail::adakv_pool_codes_kernel<<<detail::grid_for(items, threads), threads, 0, p.stream>>>(c, stats, mask, items, codes, idx);
    check(cudaGetLastError(), "adakv_pool_codes_kernel launch");
    std::size_t pb = scratch;
    topk_select(cur.at, pb, codes, idx, a.layers, a.heads * n, bud.pool, pool_kept, p);
    // pool_kept holds per layer the items h * n + t: as a segment of heads x n, mark_kernel's arithmetic
    detail::adakv_mark_kernel<<<detail::grid_for(a.layers * bud.pool, threads), threads, 0, p.stream>>>(pool_kept, a.layers * bud.pool, bud.pool, a.heads * n, mask);
    check(cudaGetLastError(), "adakv_mark_kernel launch");
  }
}

}  // namespace kvcodec::cuda
