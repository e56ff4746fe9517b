// kvcodec/cuda/think.cuh — ThinK's query-aware channel choice (stage/think.hpp) on the GPU, mirroring
// cpu/think.hpp's fit: a thread per (layer, kv head, channel) for the query energy and the keys' mean
// square straight from the engine's device views (strided or paged, f32/f16/bf16), a thread per
// (layer, kv head, channel) for its rank among the head's channels; core/think.hpp's steps, the CPU
// fit's arithmetic in its order, so the masks (and the stage state) are the CPU's bit for bit.
//
//   bytes state = kvcodec::cuda::think_fit(kvcodec::cuda::par.on(s), prune, device_kv, device_queries);
//
// cuda::encode runs it for a codec whose only transform is `think` (think_masks, then the key rows
// compacted to the kept channels as the quantizer reads them); cuda::decode_into does not take `think`
// containers yet (decode them on the CPU).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/think.hpp"
#include "kvcodec/cpu/think.hpp"
#include "kvcodec/cuda/drop_select.cuh"
#include "kvcodec/cuda/memory.cuh"
#include "kvcodec/cuda/policy.cuh"
#include "kvcodec/tensor/kv_view.hpp"

namespace kvcodec::cuda {

namespace detail {
template <class Op>
__global__ void think_kernel(Op op, std::int64_t n) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) op(i);
}
template <class Op>
void think_launch(const Op& op, std::int64_t n, const par_t& p, const char* what) {
  if (n <= 0) return;
  think_kernel<<<grid_for(n, 128), 128, 0, p.stream>>>(op, n);
  check(cudaGetLastError(), what);
}
}  // namespace detail

/// mask[(l x kv_heads + h) x head_dim + c] (device) = 1 for the `kept` channels ThinK keeps of every
/// (layer, kv head) of `s` (device pointers). temp: 8 bytes per mask entry; temp == nullptr sets
/// temp_bytes and returns. Queued on p.stream.
inline void think_fit(void* temp, std::size_t& temp_bytes, const think_source& s, int layers, std::int64_t kept, std::uint8_t* mask, const par_t& p) {
  const std::int64_t n = static_cast<std::int64_t>(layers) * s.kv_heads * s.head_dim;
  if (detail::size_only(temp, temp_bytes, detail::align256(static_cast<std::size_t>(n) * sizeof(double)), "cuda think_fit")) return;
  auto* score = static_cast<double*>(temp);
  detail::think_launch(think_score_op{s, score}, n, p, "think score kernel launch");
  detail::think_launch(think_mask_op{score, mask, s.head_dim, kept}, n, p, "think mask kernel launch");
}

/// think's masks ([layer][kv head][channel], 1 = kept, `width` per head) for the cache in device view `kv`
/// (its K side is read) with queries in the K side of device view `q` (q_heads heads, a multiple of
/// kv's), over the rows `kept` keeps (null: every token; a token-dropped cache's kept sets). Synchronous.
inline std::vector<std::uint8_t> think_masks(const par_t& p, const const_kv_view& kv, const const_kv_view& q, const kept_sets* kept, std::int64_t width) {
  kv.validate("think input");
  q.validate("think queries");
  if (kv.space != memory_space::device || q.space != memory_space::device) throw_usage("cuda::think_fit: the views are in host memory; use the CPU stage");
  if (kv.dt != dtype::f32 && kv.dt != dtype::f16 && kv.dt != dtype::bf16) throw_usage("cuda::think_fit reads f32, f16 or bf16 views");
  if (q.layers != kv.layers || q.tokens != kv.tokens || q.head_dim != kv.head_dim || q.dt != kv.dt || q.kv_heads < kv.kv_heads || q.kv_heads % kv.kv_heads != 0)
    throw_bad_input("think stage input", "queries",
                    std::to_string(kv.layers) + " layers of a multiple of " + std::to_string(kv.kv_heads) + " heads x " + std::to_string(kv.tokens) + " tokens x " +
                        std::to_string(kv.head_dim) + " in " + std::string(dtype_name(kv.dt)),
                    std::to_string(q.layers) + " layers of " + std::to_string(q.kv_heads) + " heads x " + std::to_string(q.tokens) + " x " + std::to_string(q.head_dim) +
                        " in " + std::string(dtype_name(q.dt)));
  const std::size_t L = static_cast<std::size_t>(kv.layers), H = static_cast<std::size_t>(kv.kv_heads), D = static_cast<std::size_t>(kv.head_dim);
  if (width < 0 || width > kv.head_dim) throw_usage("cuda::think_masks: width " + std::to_string(width) + " outside 0.." + std::to_string(kv.head_dim));
  detail::device_side ks, qs;
  detail::side_of(kv, true, ks);
  detail::side_of(q, true, qs);
  think_source s{ks.src, qs.src, kv.kv_heads, q.kv_heads / kv.kv_heads, kv.head_dim, kv.tokens};
  device_buffer<std::int64_t> first;
  device_buffer<std::int32_t> tokens;
  if (kept != nullptr) {
    kv_cache check;
    check.shape.layers = kv.layers;
    check.shape.kv_heads = kv.kv_heads;
    check.shape.tokens = kv.tokens;
    check.shape.head_dim = kv.head_dim;
    check.kept = *kept;
    check.validate_kept("cuda::think_fit kept sets");
    const think_rows rows = think_rows_of(*kept);
    first = device_buffer<std::int64_t>{std::span<const std::int64_t>(rows.first)};
    tokens = device_buffer<std::int32_t>(rows.tokens.size());
    tokens.upload(std::span<const std::int32_t>(rows.tokens));
    s.kept_first = first.data();
    s.kept_tokens = tokens.data();
  }
  std::size_t bytes_needed = 0;
  device_buffer<std::uint8_t> mask(L * H * D);
  think_fit(nullptr, bytes_needed, s, kv.layers, width, mask.data(), p);
  device_buffer<std::uint8_t> temp(bytes_needed);
  think_fit(temp.data(), bytes_needed, s, kv.layers, width, mask.data(), p);
  check(cudaStreamSynchronize(p.stream), "cuda::think_masks");
  return mask.download();
}

/// The `think:prune=...` stage state for that cache: what cpu::think_transform::fit writes for the same
/// cache when `think` is the codec's first transform. Synchronous.
inline bytes think_fit(const par_t& p, double prune, const const_kv_view& kv, const const_kv_view& q, const kept_sets* kept = nullptr) {
  transform::think cfg;
  cfg.prune = prune;
  cfg.validate();
  const cpu::think_transform stage(cfg);
  const std::size_t D = static_cast<std::size_t>(std::max(kv.head_dim, 0)), W = stage.kept_width(D);
  return cpu::think_transform::state_of(think_masks(p, kv, q, kept, static_cast<std::int64_t>(W)), D, W);
}

}  // namespace kvcodec::cuda
