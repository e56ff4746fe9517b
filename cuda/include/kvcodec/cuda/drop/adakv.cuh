// kvcodec/cuda/drop/adakv.cuh — the `adakv` stage on the GPU over any scorer (adakv_over: the window
// scorers snapkv, h2o, tova through adakv_select; knorm, keydiff, lagkv, expected-attention through
// cuda/drop_select.cuh), mirroring cpu/drop/adakv.hpp: head-wise budgets, the layer's budget pooled over its heads. The steps
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

template <class C>
__global__ void adakv_stat_kernel(C c, std::int64_t segments, adakv_head_stat* stats) {
  for (std::int64_t s = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < segments; s += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    stats[s] = adakv_stat(c, static_cast<int>(s / c.heads), s % c.heads);
}

template <class C>
__global__ void adakv_protected_kernel(C c, adakv_budget bud, std::int64_t items, std::uint8_t* mask) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    mask[i] = adakv_protected_mark(c, bud, i);
}

/// mask[seg * n + kept[i]] = 1 for the b kept tokens of every segment (kept: segment after segment).
__global__ void adakv_mark_kernel(const std::int32_t* kept, std::int64_t count, std::int64_t b, std::int64_t n, std::uint8_t* mask) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    mask[i / b * n + kept[i]] = 1;
}

template <class C>
__global__ void adakv_pool_codes_kernel(C c, const adakv_head_stat* stats, const std::uint8_t* mask, std::int64_t items, std::uint64_t* codes, std::int32_t* idx) {
  const std::int64_t per_layer = static_cast<std::int64_t>(c.heads) * c.n;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t within = i % per_layer;
    codes[i] = adakv_pool_code(c, stats, mask, static_cast<int>(i / per_layer), within / c.n, within % c.n);
    idx[i] = static_cast<std::int32_t>(within);
  }
}

/// A window plan's attention temp (row stats, column sums), shared by the window entry points of the presses.
struct window_temp {
  std::size_t rows = 0, acc = 0;
  explicit window_temp(const wattn_args& a)
      : rows(align256(static_cast<std::size_t>(static_cast<std::int64_t>(a.layers) * a.heads * wattn_rows(a)) * sizeof(float))),
        acc(align256(static_cast<std::size_t>(static_cast<std::int64_t>(a.layers) * a.heads * a.n) * sizeof(float))) {}
  std::size_t bytes() const { return 2 * rows + acc; }
  /// Carves the three arrays, runs window attention and points the coder at its column sums.
  void run(temp_cursor& cur, wattn_args a, drop_window_coder& c, const par_t& p) const {
    a.m = reinterpret_cast<float*>(cur.take(rows));
    a.z = reinterpret_cast<float*>(cur.take(rows));
    a.acc = reinterpret_cast<float*>(cur.take(acc));
    window_attention(a, p);
    c.acc = a.acc;
  }
};
}  // namespace detail

/// Ada-KV's steps 1-4 over a scorer's ready coder `c` (its scores in device memory: drop_window_coder
/// after window attention, or drop_scored over knorm's, keydiff's, lagkv's or expected-attention's coder
/// after their steps), uniform budget b, safeguard share `alpha`: mask[(l * heads + h) * n + t]
/// (device), 1 where head (l, h) keeps token t < n. Two-phase: temp == nullptr sets temp_bytes (c's
/// arrays are then not read). Queued on p.stream.
template <class C>
void adakv_over(void* temp, std::size_t& temp_bytes, const C& c, int layers, std::int64_t b, double alpha, std::uint8_t* mask, const par_t& p) {
  if (!(alpha >= 0.0 && alpha <= 1.0)) throw_usage("cuda adakv_select: alpha must be in [0, 1]");
  const std::int64_t segments = static_cast<std::int64_t>(layers) * c.heads, n = c.n, items = segments * n;
  const adakv_budget bud = adakv_budget_of(c, b, alpha);
  // temp: head stats, safeguard kept, pool codes and indices, then CUB's scratch
  const std::size_t stat_bytes = detail::align256(static_cast<std::size_t>(segments) * sizeof(adakv_head_stat));
  const std::size_t safe_bytes = detail::align256(static_cast<std::size_t>(segments * (bud.safe > 0 ? bud.safe : 0)) * sizeof(std::int32_t));
  const std::size_t codes_bytes = detail::align256(static_cast<std::size_t>(items) * sizeof(std::uint64_t));
  const std::size_t idx_bytes = detail::align256(static_cast<std::size_t>(items) * sizeof(std::int32_t));
  const std::size_t pool_kept_bytes = detail::align256(static_cast<std::size_t>(layers * (bud.pool > 0 ? bud.pool : 0)) * sizeof(std::int32_t));
  const std::size_t own = stat_bytes + safe_bytes + codes_bytes + idx_bytes + pool_kept_bytes;
  std::size_t safe_temp = 0, pool_temp = 0;
  if (bud.safe > 0) select_by_codes(nullptr, safe_temp, adakv_safe_coder<C>{c}, layers, c.heads, n, bud.safe, nullptr, p);
  if (bud.pool > 0) topk_select(nullptr, pool_temp, nullptr, nullptr, layers, c.heads * n, bud.pool, nullptr, p);
  const std::size_t scratch = safe_temp > pool_temp ? safe_temp : pool_temp;
  if (detail::size_only(temp, temp_bytes, own + scratch, "cuda adakv_select")) return;
  detail::temp_cursor cur{static_cast<std::uint8_t*>(temp)};
  auto* stats = reinterpret_cast<adakv_head_stat*>(cur.take(stat_bytes));
  auto* safe_kept = reinterpret_cast<std::int32_t*>(cur.take(safe_bytes));
  auto* codes = reinterpret_cast<std::uint64_t*>(cur.take(codes_bytes));
  auto* idx = reinterpret_cast<std::int32_t*>(cur.take(idx_bytes));
  auto* pool_kept = reinterpret_cast<std::int32_t*>(cur.take(pool_kept_bytes));
  const unsigned threads = 128;
  detail::adakv_stat_kernel<<<detail::grid_for(segments, 32), 32, 0, p.stream>>>(c, segments, stats);
  check(cudaGetLastError(), "adakv_stat_kernel launch");
  detail::adakv_protected_kernel<<<detail::grid_for(items, threads), threads, 0, p.stream>>>(c, bud, items, mask);
  check(cudaGetLastError(), "adakv_protected_kernel launch");
  if (bud.safe > 0) {
    std::size_t sb = scratch;
    select_by_codes(cur.at, sb, adakv_safe_coder<C>{c}, layers, c.heads, n, bud.safe, safe_kept, p);
    detail::adakv_mark_kernel<<<detail::grid_for(segments * bud.safe, threads), threads, 0, p.stream>>>(safe_kept, segments * bud.safe, bud.safe, n, mask);
    check(cudaGetLastError(), "adakv_mark_kernel launch");
  }
  if (bud.pool > 0) {
    detail::adakv_pool_codes_kernel<<<detail::grid_for(items, threads), threads, 0, p.stream>>>(c, stats, mask, items, codes, idx);
    check(cudaGetLastError(), "adakv_pool_codes_kernel launch");
    std::size_t pb = scratch;
    topk_select(cur.at, pb, codes, idx, layers, c.heads * n, bud.pool, pool_kept, p);
    // pool_kept holds per layer the items h * n + t: as a segment of heads x n, mark_kernel's arithmetic
    detail::adakv_mark_kernel<<<detail::grid_for(layers * bud.pool, threads), threads, 0, p.stream>>>(pool_kept, layers * bud.pool, bud.pool, c.heads * n, mask);
    check(cudaGetLastError(), "adakv_mark_kernel launch");
  }
}

/// mask[(l * heads + h) * n + t] (device): 1 where head (l, h) keeps token t < n under Ada-KV with
/// safeguard share `alpha` over plan's window scorer (plan_drop_window, uniform budget; device
/// pointers): window attention, then adakv_over. Two-phase: temp == nullptr sets temp_bytes. Queued on
/// p.stream.
inline void adakv_select(void* temp, std::size_t& temp_bytes, const drop_window_plan& plan, double alpha, std::uint8_t* mask, const par_t& p) {
  if (plan.budgets.empty() || plan.budgets.front() != plan.budgets.back()) throw_usage("cuda adakv_select: needs one budget for every layer");
  const detail::window_temp wt(plan.a);
  drop_window_coder c = plan.coder;
  std::size_t over = 0;
  adakv_over(nullptr, over, c, plan.a.layers, plan.budgets.front(), alpha, nullptr, p);
  if (detail::size_only(temp, temp_bytes, wt.bytes() + over, "cuda adakv_select")) return;
  detail::temp_cursor cur{static_cast<std::uint8_t*>(temp)};
  wt.run(cur, plan.a, c, p);
  adakv_over(cur.at, over, c, plan.a.layers, plan.budgets.front(), alpha, mask, p);
}

}  // namespace kvcodec::cuda
