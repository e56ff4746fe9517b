// kvcodec/cuda/drop/select.cuh — the GPU side of cpu/drop/select.hpp's choice: per (layer, kv head)
// segment of n scores coded by drop_rank_code (core/drop_score.hpp), the b best tokens, ties to the
// lower token, in increasing order. A CUB segmented radix sort of (code, token) pairs, descending and
// stable (so equal codes keep the lower token first), its first b tokens per segment, then a second
// segmented sort of those b ascending. The same rule as the CPU selector and the host emulation
// (core/drop_topk.hpp), so kept sets are equal. Follows CUB's two-phase temp-storage convention.
#pragma once

#include <cuda_runtime.h>

#include <cub/device/device_segmented_radix_sort.cuh>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/error.hpp"
#include "kvcodec/cuda/memory.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

namespace detail {

__global__ void topk_offsets_kernel(std::int32_t* off_n, std::int32_t* off_b, std::int64_t segments, std::int64_t n, std::int64_t b) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i <= segments; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    off_n[i] = static_cast<std::int32_t>(i * n);
    off_b[i] = static_cast<std::int32_t>(i * b);
  }
}

__global__ void topk_first_kernel(const std::int32_t* sorted_tokens, std::int32_t* first, std::int64_t segments, std::int64_t n, std::int64_t b) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < segments * b; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    first[i] = sorted_tokens[(i / b) * n + i % b];
}

inline unsigned grid_for(std::int64_t items, unsigned threads) {
  const std::int64_t g = (items + threads - 1) / threads;
  return static_cast<unsigned>(g < 1 ? 1 : g > 65535 ? 65535 : g);
}

/// A core/ step F(a, i) over items i < count, one thread an item (grid-stride).
template <class Args, void (*F)(const Args&, std::int64_t) noexcept>
__global__ void step_kernel(Args a, std::int64_t count) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) F(a, i);
}

/// Queues step_kernel<Args, F> over `count` items (nothing when there are none).
template <class Args, void (*F)(const Args&, std::int64_t) noexcept>
void launch_step(const Args& a, std::int64_t count, unsigned threads, const par_t& p, const char* what) {
  if (count <= 0) return;
  step_kernel<Args, F><<<grid_for(count, threads), threads, 0, p.stream>>>(a, count);
  check(cudaGetLastError(), what);
}

}  // namespace detail

/// Scratch of topk_select: where each of its arrays starts in the caller's temp storage.
struct topk_scratch {
  std::size_t codes_out = 0, tokens_in = 0, tokens_out = 0, off_n = 0, off_b = 0, first = 0, cub = 0, cub_bytes = 0, total = 0;
};

/// The scratch layout for `segments` segments of n scores keeping b (the CUB sizes are asked here).
inline topk_scratch topk_layout(std::int64_t segments, std::int64_t n, std::int64_t b, const par_t& p) {
  if (segments < 1 || n < 1 || b < 1 || b > n || segments * n > INT32_MAX)
    throw_usage("cuda topk_select: need 1 <= b <= n and segments x n < 2^31 (segments " + std::to_string(segments) + ", n " + std::to_string(n) + ", b " +
                std::to_string(b) + ")");
  topk_scratch s;
  const std::size_t items = static_cast<std::size_t>(segments * n);
  std::size_t a = 0, c = 0;
  check(cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, a, static_cast<const std::uint64_t*>(nullptr), static_cast<std::uint64_t*>(nullptr),
                                                            static_cast<const std::int32_t*>(nullptr), static_cast<std::int32_t*>(nullptr), static_cast<int>(items),
                                                            static_cast<int>(segments), static_cast<const std::int32_t*>(nullptr),
                                                            static_cast<const std::int32_t*>(nullptr), 0, 64, p.stream),
        "topk_select: size of the score sort");
  check(cub::DeviceSegmentedRadixSort::SortKeys(nullptr, c, static_cast<const std::int32_t*>(nullptr), static_cast<std::int32_t*>(nullptr), static_cast<int>(segments * b),
                                                static_cast<int>(segments), static_cast<const std::int32_t*>(nullptr), static_cast<const std::int32_t*>(nullptr), 0, 32,
                                                p.stream),
        "topk_select: size of the token sort");
  using detail::align256;
  s.codes_out = 0;
  s.tokens_in = s.codes_out + align256(items * sizeof(std::uint64_t));
  s.tokens_out = s.tokens_in + align256(items * sizeof(std::int32_t));
  s.off_n = s.tokens_out + align256(items * sizeof(std::int32_t));
  s.off_b = s.off_n + align256(static_cast<std::size_t>(segments + 1) * sizeof(std::int32_t));
  s.first = s.off_b + align256(static_cast<std::size_t>(segments + 1) * sizeof(std::int32_t));
  s.cub = s.first + align256(static_cast<std::size_t>(segments * b) * sizeof(std::int32_t));
  s.cub_bytes = a > c ? a : c;
  s.total = s.cub + align256(s.cub_bytes);
  return s;
}

/// kept[seg * b + i] (device): segment seg's b best tokens in increasing order, from codes[seg * n + t]
/// (device; token t's drop_rank_code) and tokens[seg * n + t] = t (device, filled by the caller's
/// scoring kernel). temp == nullptr: sets temp_bytes and returns. Queued on p.stream.
inline void topk_select(void* temp, std::size_t& temp_bytes, const std::uint64_t* codes, const std::int32_t* tokens, std::int64_t segments,
                        std::int64_t n, std::int64_t b, std::int32_t* kept, const par_t& p) {
  const topk_scratch s = topk_layout(segments, n, b, p);
  if (detail::size_only(temp, temp_bytes, s.total, "cuda topk_select")) return;
  auto* base = static_cast<std::uint8_t*>(temp);
  auto* codes_out = reinterpret_cast<std::uint64_t*>(base + s.codes_out);
  auto* tokens_out = reinterpret_cast<std::int32_t*>(base + s.tokens_out);
  auto* off_n = reinterpret_cast<std::int32_t*>(base + s.off_n);
  auto* off_b = reinterpret_cast<std::int32_t*>(base + s.off_b);
  auto* first = reinterpret_cast<std::int32_t*>(base + s.first);
  const unsigned threads = 256;
  detail::topk_offsets_kernel<<<detail::grid_for(segments + 1, threads), threads, 0, p.stream>>>(off_n, off_b, segments, n, b);
  check(cudaGetLastError(), "topk_offsets_kernel launch");
  std::size_t cb = s.cub_bytes;
  check(cub::DeviceSegmentedRadixSort::SortPairsDescending(base + s.cub, cb, codes, codes_out, tokens, tokens_out, static_cast<int>(segments * n), static_cast<int>(segments),
                                                            off_n, off_n + 1, 0, 64, p.stream),
        "topk_select: score sort");
  detail::topk_first_kernel<<<detail::grid_for(segments * b, threads), threads, 0, p.stream>>>(tokens_out, first, segments, n, b);
  check(cudaGetLastError(), "topk_first_kernel launch");
  cb = s.cub_bytes;
  check(cub::DeviceSegmentedRadixSort::SortKeys(base + s.cub, cb, first, kept, static_cast<int>(segments * b), static_cast<int>(segments), off_b, off_b + 1, 0, 32,
                                                p.stream),
        "topk_select: token sort");
}

namespace detail {

/// codes[i] = coder(l, h, t) and tokens[i] = t for item i = (l * heads + h) * n + t.
template <class Coder>
__global__ void codes_kernel(Coder coder, int heads, std::int64_t n, std::int64_t items, std::uint64_t* codes, std::int32_t* tokens) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t seg = i / n, t = i % n;
    codes[i] = coder(static_cast<int>(seg / heads), seg % heads, t);
    tokens[i] = static_cast<std::int32_t>(t);
  }
}

}  // namespace detail

/// kept[(l * heads + h) * b + i] (device): the b best tokens of [0, n) of every (layer, kv head) by
/// `coder`'s codes (a core/drop_topk.hpp coder, passed by value to the kernel: its pointers must be
/// device pointers), increasing. Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
template <class Coder>
void select_by_codes(void* temp, std::size_t& temp_bytes, const Coder& coder, int layers, int heads, std::int64_t n, std::int64_t b, std::int32_t* kept,
                     const par_t& p) {
  if (layers < 1 || heads < 1) throw_usage("cuda drop selection: need layers >= 1 and heads >= 1");
  const std::int64_t segments = static_cast<std::int64_t>(layers) * heads, items = segments * n;
  std::size_t topk_bytes = 0;
  topk_select(nullptr, topk_bytes, nullptr, nullptr, segments, n, b, nullptr, p);
  const std::size_t codes_bytes = detail::align256(static_cast<std::size_t>(items) * sizeof(std::uint64_t));
  const std::size_t tokens_bytes = detail::align256(static_cast<std::size_t>(items) * sizeof(std::int32_t));
  if (detail::size_only(temp, temp_bytes, codes_bytes + tokens_bytes + topk_bytes, "cuda drop selection")) return;
  auto* base = static_cast<std::uint8_t*>(temp);
  auto* codes = reinterpret_cast<std::uint64_t*>(base);
  auto* tokens = reinterpret_cast<std::int32_t*>(base + codes_bytes);
  const unsigned threads = 128;
  detail::codes_kernel<<<detail::grid_for(items, threads), threads, 0, p.stream>>>(coder, heads, n, items, codes, tokens);
  check(cudaGetLastError(), "drop codes_kernel launch");
  std::size_t tb = topk_bytes;
  topk_select(base + codes_bytes + tokens_bytes, tb, codes, tokens, segments, n, b, kept, p);
}

namespace detail {
/// mask[seg * n + token] = 1 for the first budget[seg] tokens of each segment in rank order
/// (tokens_out: every segment's tokens sorted by code, descending, stable).
__global__ void ragged_mark_kernel(const std::int32_t* tokens_out, const std::int64_t* budget, std::int64_t segments, std::int64_t n, std::uint8_t* mask) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < segments * n; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    if (i % n < budget[i / n]) mask[i / n * n + tokens_out[i]] = 1;
}
}  // namespace detail

/// mask[(l * heads + h) * n + t] (device, zeroed here): 1 for the budget[l * heads + h] (device) best
/// tokens of every (layer, kv head) by `coder`'s codes, ties to the lower token: the selection of
/// select_by_codes with a budget per segment (a full stable segmented sort, then the first budget of
/// each). Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
template <class Coder>
void select_ragged(void* temp, std::size_t& temp_bytes, const Coder& coder, int layers, int heads, std::int64_t n, const std::int64_t* budget, std::uint8_t* mask,
                   const par_t& p) {
  if (layers < 1 || heads < 1 || n < 1) throw_usage("cuda drop selection: need layers, heads and n >= 1");
  const std::int64_t segments = static_cast<std::int64_t>(layers) * heads, items = segments * n;
  if (items > INT32_MAX) throw_usage("cuda drop selection: segments x n must be < 2^31");
  std::size_t cub_bytes = 0;
  check(cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, cub_bytes, static_cast<const std::uint64_t*>(nullptr), static_cast<std::uint64_t*>(nullptr),
                                                            static_cast<const std::int32_t*>(nullptr), static_cast<std::int32_t*>(nullptr), static_cast<int>(items),
                                                            static_cast<int>(segments), static_cast<const std::int32_t*>(nullptr),
                                                            static_cast<const std::int32_t*>(nullptr), 0, 64, p.stream),
        "select_ragged: size of the sort");
  using detail::align256;
  const std::size_t codes_bytes = align256(static_cast<std::size_t>(items) * sizeof(std::uint64_t)), tok_bytes = align256(static_cast<std::size_t>(items) * sizeof(std::int32_t));
  const std::size_t off_bytes = align256(static_cast<std::size_t>(segments + 1) * sizeof(std::int32_t));
  const std::size_t total = 2 * codes_bytes + 2 * tok_bytes + 2 * off_bytes + align256(cub_bytes);
  if (detail::size_only(temp, temp_bytes, total, "cuda select_ragged")) return;
  auto* at = static_cast<std::uint8_t*>(temp);
  auto* codes = reinterpret_cast<std::uint64_t*>(at);
  auto* codes_out = reinterpret_cast<std::uint64_t*>(at + codes_bytes);
  auto* tokens = reinterpret_cast<std::int32_t*>(at + 2 * codes_bytes);
  auto* tokens_out = reinterpret_cast<std::int32_t*>(at + 2 * codes_bytes + tok_bytes);
  auto* off_n = reinterpret_cast<std::int32_t*>(at + 2 * codes_bytes + 2 * tok_bytes);
  auto* off_unused = reinterpret_cast<std::int32_t*>(at + 2 * codes_bytes + 2 * tok_bytes + off_bytes);
  std::uint8_t* cub_temp = at + 2 * codes_bytes + 2 * tok_bytes + 2 * off_bytes;
  const unsigned threads = 256;
  check(cudaMemsetAsync(mask, 0, static_cast<std::size_t>(items), p.stream), "select_ragged mask");
  detail::codes_kernel<<<detail::grid_for(items, threads), threads, 0, p.stream>>>(coder, heads, n, items, codes, tokens);
  check(cudaGetLastError(), "drop codes_kernel launch");
  detail::topk_offsets_kernel<<<detail::grid_for(segments + 1, threads), threads, 0, p.stream>>>(off_n, off_unused, segments, n, 0);
  check(cudaGetLastError(), "topk_offsets_kernel launch");
  std::size_t cb = cub_bytes;
  check(cub::DeviceSegmentedRadixSort::SortPairsDescending(cub_temp, cb, codes, codes_out, tokens, tokens_out, static_cast<int>(items), static_cast<int>(segments),
                                                            off_n, off_n + 1, 0, 64, p.stream),
        "select_ragged: score sort");
  detail::ragged_mark_kernel<<<detail::grid_for(items, threads), threads, 0, p.stream>>>(tokens_out, budget, segments, n, mask);
  check(cudaGetLastError(), "ragged_mark_kernel launch");
}

}  // namespace kvcodec::cuda
