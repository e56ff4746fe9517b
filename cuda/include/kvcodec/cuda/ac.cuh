// kvcodec/cuda/ac.cuh — CacheGen's range-coded streams (cpu/ac.hpp, the `cachegen` preset) decoded on
// the GPU, mirroring cpu/ac.hpp's decoder, with the lane logic of core/ac_batch.hpp (whose host
// emulation the CPU tests compare with the CPU decoder):
//
//   ac_decode_rows   one thread per stream (LMCache's design): CDFs from global memory, symbols to a
//                    symbol array; cachegen_store (cuda/cachegen.cuh) then dequantizes them.
//   ac_decode_tiled  fused: one CUDA block per group of up to 64 rows of one block; per tile of T
//                    columns the block stages the tile's CDFs in shared memory, each thread decodes
//                    its row's T symbols into a shared tile, and the block dequantizes the tile into
//                    the destination view (consecutive threads store consecutive columns of a row).
//
// Both write one status per stream (0 ok, 1 the stream does not decode exactly) into the caller's
// array; the tiled kernel also flags blocks with a symbol above 2*MAX. bench_cuda times both on the
// same container in the same run.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/ac_batch.hpp"
#include "kvcodec/core/cachegen.hpp"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

namespace detail {

__global__ void ac_decode_rows_kernel(ac_batch_args a, std::uint16_t* out) {
  const std::uint64_t k = static_cast<std::uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= a.count) return;
  a.status[k] = kvcodec::detail::ac_decode_stream(a.streams[k], a.data, a.cdfs, out) ? 0u : 1u;
}

__global__ void __launch_bounds__(ac_tile_rows) ac_decode_tiled_kernel(ac_batch_args a, const ac_tile_group* groups, std::uint32_t T,
                                                                      const cachegen_batch_block* blocks, const float* steps, kv_batch_dest d,
                                                                      std::uint32_t* bad) {
  extern __shared__ std::uint32_t smem[];  // T x (alphabet + 1) CDF entries, then ac_tile_rows x T symbols
  const ac_tile_group g = groups[blockIdx.x];
  const ac_batch_stream s0 = a.streams[g.stream_first];
  std::uint32_t* cdf_tile = smem;
  auto* sym_tile = reinterpret_cast<std::uint16_t*>(smem + static_cast<std::size_t>(T) * (s0.alphabet + 1));
  const std::uint32_t j = threadIdx.x;
  const bool lane = j < g.rows;
  rc_decoder dec;
  if (lane) {
    const ac_batch_stream& s = a.streams[g.stream_first + j];
    rc_dec_init(dec, a.data + s.data, static_cast<std::size_t>(s.size));
  }
  const cachegen_batch_block b = blocks[g.block];
  bool ok = true;
  for (std::uint32_t c0 = 0; c0 < s0.cols; c0 += T) {
    const std::uint32_t ni = ac_tile_stage_items(s0, c0, T);
    for (std::uint32_t i = j; i < ni; i += blockDim.x) ac_tile_stage(s0, a.cdfs, c0, i, cdf_tile);
    __syncthreads();
    if (lane) ac_tile_decode(dec, s0, c0, T, cdf_tile, sym_tile + static_cast<std::size_t>(j) * T);
    __syncthreads();
    const std::uint32_t w = s0.cols - c0 < T ? s0.cols - c0 : T;
    for (std::uint32_t i = j; i < g.rows * w; i += blockDim.x) ok &= ac_tile_store(g, b, s0, c0, T, i, sym_tile, steps, d);
    __syncthreads();
  }
  if (!ok) bad[g.block] = 1;
  if (lane) a.status[g.stream_first + j] = rc_dec_ok(dec) ? 0u : 1u;
}

}  // namespace detail

/// The rows kernel over every stream of `a` (device pointers) on p.stream, symbols into `out`.
inline void ac_decode_rows(const ac_batch_args& a, std::uint16_t* out, const par_t& p) {
  if (a.count == 0) return;
  const unsigned threads = 128;
  const std::uint64_t grid = (a.count + threads - 1) / threads;
  if (grid > 0x7fffffffu) throw_bad_input("cuda::ac_decode_rows", "count", "< 2^31 x 128 streams", std::to_string(a.count));
  detail::ac_decode_rows_kernel<<<static_cast<unsigned>(grid), threads, 0, p.stream>>>(a, out);
  check(cudaGetLastError(), "ac_decode_rows_kernel launch");
}

/// Shared memory of the tiled kernel for tile width T and the batch's largest alphabet.
inline std::size_t ac_tiled_smem(std::uint32_t T, std::uint32_t max_alphabet) {
  return static_cast<std::size_t>(T) * (max_alphabet + 1) * 4 + static_cast<std::size_t>(ac_tile_rows) * T * 2;
}

/// The tiled kernel over `count` groups (device arrays) on p.stream: decodes and dequantizes straight
/// into the view `d`; bad (one flag per block, zeroed by the caller) marks blocks with a symbol above 2*MAX.
inline void ac_decode_tiled(const ac_batch_args& a, const ac_tile_group* groups, std::size_t count, std::uint32_t T, std::uint32_t max_alphabet,
                            const cachegen_batch_block* blocks, const float* steps, const kv_batch_dest& d, std::uint32_t* bad, const par_t& p) {
  if (count == 0) return;
  if (T == 0 || T > ac_tile_max_cols || T != ac_tile_width(max_alphabet))
    throw_bad_input("cuda::ac_decode_tiled", "T", "ac_tile_width(" + std::to_string(max_alphabet) + ")", std::to_string(T));
  if (count > 0x7fffffffu) throw_bad_input("cuda::ac_decode_tiled", "count", "< 2^31 groups", std::to_string(count));
  detail::ac_decode_tiled_kernel<<<static_cast<unsigned>(count), ac_tile_rows, ac_tiled_smem(T, max_alphabet), p.stream>>>(a, groups, T, blocks, steps, d, bad);
  check(cudaGetLastError(), "ac_decode_tiled_kernel launch");
}

}  // namespace kvcodec::cuda
