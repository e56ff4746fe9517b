// kvcodec/cuda/affine.cuh — the affine quantizers `uniform` and `kivi` decoded on the GPU, mirroring
// cpu/uniform.hpp and cpu/kivi.hpp: one thread per value runs core/affine.hpp's affine_batch_op (its
// group's parameters, affine::dequantize_value, or kivi's exact residual rows) into the view. The
// symbols come from the rANS batch kernel (cuda/rans.cuh) or are unpacked in place from a pack plane.
// Blocks come from pipeline/batch.hpp's plan_affine_batch. The encoders' outlier selection
// (affine_outlier_select: per block, the largest rank keys of core/affine.hpp's outlier steps) is two
// CUB segmented radix sorts, CUB's two-phase temp-storage convention.
#pragma once

#include <cuda_runtime.h>

#include <cub/device/device_segmented_radix_sort.cuh>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/affine.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/cuda/batch.cuh"
#include "kvcodec/cuda/memory.cuh"

namespace kvcodec::cuda {

/// Decodes `count` blocks (device array) into `d` on p.stream: symbols at `sym` (u16, rans) or in
/// `bytes` (pack), parameters and exact rows in `bytes`; `bad` flags blocks with a symbol of 2^bits or more.
inline void affine_store(const affine_batch_block* blocks, std::size_t count, std::uint64_t max_items, const std::uint16_t* sym, const std::uint8_t* bytes,
                         const kv_batch_dest& d, std::uint32_t* bad, const par_t& p) {
  run_batch(blocks, count, max_items, affine_batch_op{sym, bytes, d}, bad, p);
}

namespace detail {
/// Copies the first take[i + 1] - take[i] entries of segment i (from seg[i]) of `from` to take[i] on of `to`.
__global__ void outlier_first_kernel(const std::int32_t* from, std::int32_t* to, const std::int32_t* seg, const std::int32_t* take, std::int64_t segments) {
  for (std::int64_t i = blockIdx.x; i < segments; i += gridDim.x)
    for (std::int32_t j = static_cast<std::int32_t>(threadIdx.x); j < take[i + 1] - take[i]; j += static_cast<std::int32_t>(blockDim.x)) to[take[i] + j] = from[seg[i] + j];
}
}  // namespace detail

/// sel[take[i] ..] (device): for each of `segments` segments, entries [seg[i], seg[i + 1]) of key and pos
/// (device), the positions of the take[i + 1] - take[i] largest keys in increasing order; equal keys go to
/// the earlier entry (the sort is stable). seg and take: segments + 1 device offsets, increasing, the
/// last below 2^31. temp == nullptr: sets temp_bytes and returns. Queued on p.stream.
/// The host emulation is affine_outlier_select_emulated. Keys are below 2^32 (the sort reads 32 bits) but
/// 64-bit, and positions (below 2^31) sort as int32: the sorts are then the instantiations the drop
/// selection (drop/select.cuh) compiles anyway, each of which costs nvcc minutes per architecture.
inline void affine_outlier_select(void* temp, std::size_t& temp_bytes, const std::uint64_t* key, const std::uint32_t* pos_u, const std::int32_t* seg,
                                  const std::int32_t* take, std::int64_t segments, std::int64_t items, std::int64_t taken, std::uint32_t* sel_u,
                                  const par_t& p) {
  const auto* pos = reinterpret_cast<const std::int32_t*>(pos_u);
  auto* sel = reinterpret_cast<std::int32_t*>(sel_u);
  if (segments < 0 || items < 0 || taken < 0 || taken > items || items > INT32_MAX)
    throw_usage("cuda affine_outlier_select: need 0 <= taken <= items < 2^31 (items " + std::to_string(items) + ", taken " + std::to_string(taken) + ")");
  std::size_t a = 0, c = 0;
  check(cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, a, key, static_cast<std::uint64_t*>(nullptr), pos, static_cast<std::int32_t*>(nullptr),
                                                            static_cast<int>(items), static_cast<int>(segments), seg, seg + 1, 0, 32, p.stream),
        "affine_outlier_select: size of the key sort");
  check(cub::DeviceSegmentedRadixSort::SortKeys(nullptr, c, static_cast<const std::int32_t*>(nullptr), sel, static_cast<int>(taken), static_cast<int>(segments),
                                                take, take + 1, 0, 32, p.stream),
        "affine_outlier_select: size of the index sort");
  using detail::align256;
  const std::size_t keys_out = 0, pos_out = align256(static_cast<std::size_t>(items) * 8), first = pos_out + align256(static_cast<std::size_t>(items) * 4),
                    cub = first + align256(static_cast<std::size_t>(taken) * 4), cub_bytes = a > c ? a : c, total = cub + align256(cub_bytes);
  if (detail::size_only(temp, temp_bytes, total, "cuda affine_outlier_select")) return;
  if (segments == 0 || items == 0) return;
  auto* base = static_cast<std::uint8_t*>(temp);
  auto* ko = reinterpret_cast<std::uint64_t*>(base + keys_out);
  auto* po = reinterpret_cast<std::int32_t*>(base + pos_out);
  auto* fi = reinterpret_cast<std::int32_t*>(base + first);
  std::size_t cb = cub_bytes;
  check(cub::DeviceSegmentedRadixSort::SortPairsDescending(base + cub, cb, key, ko, pos, po, static_cast<int>(items), static_cast<int>(segments), seg, seg + 1, 0, 32,
                                                            p.stream),
        "affine_outlier_select: key sort");
  if (taken == 0) return;
  detail::outlier_first_kernel<<<static_cast<unsigned>(segments < 65535 ? segments : 65535), 128, 0, p.stream>>>(po, fi, seg, take, segments);
  check(cudaGetLastError(), "outlier_first_kernel launch");
  cb = cub_bytes;
  check(cub::DeviceSegmentedRadixSort::SortKeys(base + cub, cb, fi, sel, static_cast<int>(taken), static_cast<int>(segments), take, take + 1, 0, 32, p.stream),
        "affine_outlier_select: index sort");
}

}  // namespace kvcodec::cuda
