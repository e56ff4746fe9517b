// kvcodec/cuda/drop/criticalkv.cuh — the `criticalkv` stage on the GPU over any scorer (criticalkv_over:
// the window scorers snapkv, h2o, tova through criticalkv_select; knorm, keydiff, lagkv and
// expected-attention through cuda/drop_select.cuh), mirroring cpu/drop/criticalkv.hpp: the steps of core/criticalkv.hpp. Window attention
// (cuda/drop/window_attention.cuh); stage 1, the candidates' best floor(first x b) - taken by the
// scorer's value (the selection of cuda/drop/select.cuh), marked; a thread per head for the shift (in
// token order, as the CPU); the final codes, the others' value rescaled by their value row's L1 norm,
// and the b best. The host emulation of the same steps (drop_criticalkv_select_emulated) is checked
// against the CPU's select_criticalkv in CI. criticaladakv_select: Ada-KV's mask (cuda/drop/adakv.cuh)
// gives each head its budget, then both stages run within it (select_ragged: a budget per head).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/criticalkv.hpp"
#include "kvcodec/cuda/drop/adakv.cuh"
#include "kvcodec/cuda/drop/select.cuh"
#include "kvcodec/cuda/drop/window_attention.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

namespace detail {
template <class C>
__global__ void critical_shift_kernel(C c, std::int64_t segments, double* shift) {
  for (std::int64_t s = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < segments; s += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    shift[s] = critical_shift(c, static_cast<int>(s / c.heads), s % c.heads);
}
template <class C>
__global__ void critical_ada_budget_kernel(C c, const std::uint8_t* ada_mask, double first, std::int64_t segments, std::int64_t* budget, std::int64_t* k1) {
  for (std::int64_t s = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < segments; s += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    critical_ada_budgets(c, ada_mask, first, s, budget, k1);
}
}  // namespace detail

/// CriticalKV's steps over a scorer's ready coder `c` (see adakv_over), uniform budget b, stage-1 share
/// `first`, `epsilon`; v: the cache's values (device pointers): kept[(l * heads + h) * b + i] (device),
/// each (layer, kv head)'s b tokens of [0, n), increasing. Two-phase: temp == nullptr sets temp_bytes.
/// Queued on p.stream.
template <class C>
void criticalkv_over(void* temp, std::size_t& temp_bytes, const C& c, int layers, std::int64_t b, double first, double epsilon, const drop_source& v,
                     std::int32_t* kept, const par_t& p) {
  if (!(first >= 0.0 && first <= 1.0)) throw_usage("cuda criticalkv_select: first must be in [0, 1]");
  const std::int64_t segments = static_cast<std::int64_t>(layers) * c.heads, n = c.n, items = segments * n;
  const critical_budget bud = critical_budget_of(c, b, first);
  // temp: stage-1 marks, shifts, stage-1 kept, then the selections' scratch
  const std::size_t mark_bytes = detail::align256(static_cast<std::size_t>(items));
  const std::size_t shift_bytes = detail::align256(static_cast<std::size_t>(segments) * sizeof(double));
  const std::size_t kept1_bytes = detail::align256(static_cast<std::size_t>(segments * bud.k1) * sizeof(std::int32_t));
  std::size_t s1 = 0, s2 = 0;
  if (bud.k1 > 0) select_by_codes(nullptr, s1, critical_stage1_coder<C>{c}, layers, c.heads, n, bud.k1, nullptr, p);
  select_by_codes(nullptr, s2, critical_final_coder<C>{c, v, nullptr, nullptr, epsilon}, layers, c.heads, n, bud.b, nullptr, p);
  const std::size_t scratch = s1 > s2 ? s1 : s2;
  if (detail::size_only(temp, temp_bytes, mark_bytes + shift_bytes + kept1_bytes + scratch, "cuda criticalkv_select")) return;
  detail::temp_cursor cur{static_cast<std::uint8_t*>(temp)};
  auto* stage1 = cur.take(mark_bytes);
  auto* shift = reinterpret_cast<double*>(cur.take(shift_bytes));
  auto* kept1 = reinterpret_cast<std::int32_t*>(cur.take(kept1_bytes));
  const unsigned threads = 128;
  check(cudaMemsetAsync(stage1, 0, static_cast<std::size_t>(items), p.stream), "criticalkv stage-1 marks");
  if (bud.k1 > 0) {
    std::size_t sb = scratch;
    select_by_codes(cur.at, sb, critical_stage1_coder<C>{c}, layers, c.heads, n, bud.k1, kept1, p);
    detail::adakv_mark_kernel<<<detail::grid_for(segments * bud.k1, threads), threads, 0, p.stream>>>(kept1, segments * bud.k1, bud.k1, n, stage1);
    check(cudaGetLastError(), "criticalkv mark launch");
  }
  detail::critical_shift_kernel<<<detail::grid_for(segments, 32), 32, 0, p.stream>>>(c, segments, shift);
  check(cudaGetLastError(), "critical_shift_kernel launch");
  std::size_t sb = scratch;
  select_by_codes(cur.at, sb, critical_final_coder<C>{c, v, stage1, shift, epsilon}, layers, c.heads, n, bud.b, kept, p);
}

/// kept[(l * heads + h) * b + i] (device): each (layer, kv head)'s b tokens of [0, n) under CriticalKV
/// with stage-1 share `first` and `epsilon` over plan's window scorer (plan_drop_window, one budget for
/// every layer; device pointers); v: the cache's values (device pointers). Window attention, then
/// criticalkv_over. Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
inline void criticalkv_select(void* temp, std::size_t& temp_bytes, const drop_window_plan& plan, double first, double epsilon, const drop_source& v,
                              std::int32_t* kept, const par_t& p) {
  if (plan.budgets.empty() || plan.budgets.front() != plan.budgets.back()) throw_usage("cuda criticalkv_select: needs one budget for every layer");
  if (v.head_dim != plan.a.k.head_dim) throw_usage("cuda criticalkv_select: values and keys need one head_dim");
  const detail::window_temp wt(plan.a);
  drop_window_coder c = plan.coder;
  std::size_t over = 0;
  criticalkv_over(nullptr, over, c, plan.a.layers, plan.budgets.front(), first, epsilon, v, nullptr, p);
  if (detail::size_only(temp, temp_bytes, wt.bytes() + over, "cuda criticalkv_select")) return;
  detail::temp_cursor cur{static_cast<std::uint8_t*>(temp)};
  wt.run(cur, plan.a, c, p);
  criticalkv_over(cur.at, over, c, plan.a.layers, plan.budgets.front(), first, epsilon, v, kept, p);
}

/// criticaladakv over a scorer's ready coder `c`: Ada-KV's mask (adakv_over, safeguard `alpha`, uniform
/// budget b) gives each head its budget, then CriticalKV's stages run within it (select_ragged):
/// mask[(l * heads + h) * n + t] (device). Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
template <class C>
void criticaladakv_over(void* temp, std::size_t& temp_bytes, const C& c, int layers, std::int64_t b, double alpha, double first, double epsilon,
                        const drop_source& v, std::uint8_t* mask, const par_t& p) {
  if (!(first >= 0.0 && first <= 1.0)) throw_usage("cuda criticaladakv_select: first must be in [0, 1]");
  const std::int64_t segments = static_cast<std::int64_t>(layers) * c.heads, n = c.n, items = segments * n;
  std::size_t ada_temp = 0, ragged = 0;
  adakv_over(nullptr, ada_temp, c, layers, b, alpha, nullptr, p);
  select_ragged(nullptr, ragged, critical_stage1_coder<C>{c}, layers, c.heads, n, nullptr, nullptr, p);
  // temp: adakv's scratch, its mask, stage-1 marks, budgets, stage-1 sizes, shifts, the selection's scratch
  const std::size_t mask_bytes = detail::align256(static_cast<std::size_t>(items));
  const std::size_t seg_bytes = detail::align256(static_cast<std::size_t>(segments) * sizeof(std::int64_t));
  const std::size_t total = detail::align256(ada_temp) + 2 * mask_bytes + 3 * seg_bytes + ragged;
  if (detail::size_only(temp, temp_bytes, total, "cuda criticaladakv_select")) return;
  detail::temp_cursor cur{static_cast<std::uint8_t*>(temp)};
  void* ada_scratch = cur.take(detail::align256(ada_temp));
  auto* ada_mask = cur.take(mask_bytes);
  auto* stage1 = cur.take(mask_bytes);
  auto* budget = reinterpret_cast<std::int64_t*>(cur.take(seg_bytes));
  auto* k1 = reinterpret_cast<std::int64_t*>(cur.take(seg_bytes));
  auto* shift = reinterpret_cast<double*>(cur.take(seg_bytes));
  std::size_t ab = ada_temp;
  adakv_over(ada_scratch, ab, c, layers, b, alpha, ada_mask, p);
  detail::critical_ada_budget_kernel<<<detail::grid_for(segments, 32), 32, 0, p.stream>>>(c, ada_mask, first, segments, budget, k1);
  check(cudaGetLastError(), "critical_ada_budget_kernel launch");
  std::size_t rb = ragged;
  select_ragged(cur.at, rb, critical_stage1_coder<C>{c}, layers, c.heads, n, k1, stage1, p);
  detail::critical_shift_kernel<<<detail::grid_for(segments, 32), 32, 0, p.stream>>>(c, segments, shift);
  check(cudaGetLastError(), "critical_shift_kernel launch");
  rb = ragged;
  select_ragged(cur.at, rb, critical_final_coder<C>{c, v, stage1, shift, epsilon}, layers, c.heads, n, budget, mask, p);
}

/// mask[(l * heads + h) * n + t] (device): 1 where head (l, h) keeps token t < n under criticaladakv
/// (Ada-KV's head budgets with safeguard `alpha`, then CriticalKV's stages within each) over plan's
/// window scorer (uniform budget); v: the cache's values. Window attention once, then
/// criticaladakv_over. Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
inline void criticaladakv_select(void* temp, std::size_t& temp_bytes, const drop_window_plan& plan, double alpha, double first, double epsilon,
                                 const drop_source& v, std::uint8_t* mask, const par_t& p) {
  if (plan.budgets.empty() || plan.budgets.front() != plan.budgets.back()) throw_usage("cuda criticaladakv_select: needs one budget for every layer");
  if (v.head_dim != plan.a.k.head_dim) throw_usage("cuda criticaladakv_select: values and keys need one head_dim");
  const detail::window_temp wt(plan.a);
  drop_window_coder c = plan.coder;
  std::size_t over = 0;
  criticaladakv_over(nullptr, over, c, plan.a.layers, plan.budgets.front(), alpha, first, epsilon, v, nullptr, p);
  if (detail::size_only(temp, temp_bytes, wt.bytes() + over, "cuda criticaladakv_select")) return;
  detail::temp_cursor cur{static_cast<std::uint8_t*>(temp)};
  wt.run(cur, plan.a, c, p);
  criticaladakv_over(cur.at, over, c, plan.a.layers, plan.budgets.front(), alpha, first, epsilon, v, mask, p);
}

}  // namespace kvcodec::cuda
