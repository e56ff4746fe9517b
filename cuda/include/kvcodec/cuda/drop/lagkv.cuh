// kvcodec/cuda/drop/lagkv.cuh — the `lagkv` stage on the GPU, mirroring cpu/drop/lagkv.hpp (no queries):
// core/lagkv.hpp's three steps as kernels (a thread per channel range, per token, per partition), then
// drop_lagkv_coder and the selection of cuda/drop/select.cuh. The steps repeat the CPU's arithmetic in
// its order, so kept sets equal the CPU's select_lagkv bit for bit (the host emulation,
// drop_lagkv_select_emulated, is checked against it in CI).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/lagkv.hpp"
#include "kvcodec/cuda/drop/select.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

/// lagkv's three steps, then its coder handed to then(temp, temp_bytes, coder), a selection over it with
/// CUB's two-phase convention (the presses over a scorer take it this way). Two-phase itself.
template <class Then>
void lagkv_run(void* temp, std::size_t& temp_bytes, lagkv_args a, const Then& then, const par_t& p) {
  if (a.k.head_dim < 1 || a.layers < 1 || a.heads < 1 || a.n < 1) throw_usage("cuda lagkv_select: need head_dim, layers, heads and n >= 1");
  if (a.lag < 2 || a.sink < 0) throw_usage("cuda lagkv_select: need lag >= 2 and sink >= 0 (lag " + std::to_string(a.lag) + ", sink " + std::to_string(a.sink) + ")");
  const lagkv_sizes sz = lagkv_sizes_of(a);
  const std::size_t range_bytes = detail::align256(sz.range * sizeof(double)), z_bytes = detail::align256(sz.z * sizeof(double)),
                    total_bytes = detail::align256(sz.total * sizeof(double));
  const std::size_t own = 2 * range_bytes + z_bytes + total_bytes;
  auto* base = static_cast<std::uint8_t*>(temp);
  a.lo = reinterpret_cast<double*>(base);
  a.inv = reinterpret_cast<double*>(base + range_bytes);
  a.z = reinterpret_cast<double*>(base + 2 * range_bytes);
  a.total = reinterpret_cast<double*>(base + 2 * range_bytes + z_bytes);
  std::size_t select_bytes = 0;
  then(nullptr, select_bytes, drop_lagkv_coder{a});
  if (detail::size_only(temp, temp_bytes, own + select_bytes, "cuda lagkv_select")) return;
  const lagkv_items c = lagkv_counts(a);
  detail::launch_step<lagkv_args, lagkv_range>(a, c.range, 128, p, "lagkv range kernel launch");
  detail::launch_step<lagkv_args, lagkv_sd>(a, c.sd, 128, p, "lagkv sd kernel launch");
  detail::launch_step<lagkv_args, lagkv_softmax>(a, c.softmax, 32, p, "lagkv softmax kernel launch");
  std::size_t sb = select_bytes;
  then(base + own, sb, drop_lagkv_coder{a});
}

/// kept[(l * heads + h) * b + i] (device): each (layer, kv head)'s b tokens of [0, a.n), increasing, under
/// LagKV with a.sink sinks and partitions of a.lag tokens (ranked by drop_lagkv_coder, or by wrap(coder):
/// chunkkv). a.k and a.v hold device pointers (values in the keys' layout and dtype); a's arrays are
/// ignored (they live in temp). Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
template <class Wrap = drop_same_coder>
void lagkv_select(void* temp, std::size_t& temp_bytes, const lagkv_args& a, std::int64_t b, std::int32_t* kept, const par_t& p, const Wrap& wrap = {}) {
  lagkv_run(
      temp, temp_bytes, a, [&](void* t, std::size_t& tb, const drop_lagkv_coder& c) { select_by_codes(t, tb, wrap(c), a.layers, a.heads, a.n, b, kept, p); }, p);
}

}  // namespace kvcodec::cuda
