// kvcodec/cuda/rans.cuh — interleaved rANS decode and encode on the GPU, mirroring cpu/rans.hpp:
// a batch of CPU-encoded streams (core/rans.hpp layout, bytes unchanged), one CUDA block per
// stream and one thread per lane, the lane logic of core/rans_batch.hpp (whose host emulation the
// CPU tests compare with the CPU decoder byte for byte).
//
// Per step every thread decodes its lane's symbol (table entry through the read-only cache) and hands
// it to a sink (a symbol array, or a fused dequantizer that stores it into a view), then a
// warp ballot ranks the lanes that need a word and the warps' counts, exchanged in shared memory,
// give each warp its first word: the CPU form of this is the sequential loop over lanes.
//
// Device entry points follow CUB's two-phase temp-storage convention: call with d_temp == nullptr to
// get temp_bytes, then again to run. The temp storage holds one rans_batch_status per stream;
// rans_batch_statuses() copies them back (synchronising the stream) and
// rans_batch_throw_failed() turns a failure into error_kind::corrupt.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "kvcodec/core/rans_batch.hpp"
#include "kvcodec/core/warp.hpp"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

// Launch shape: the block is one stream's lanes (the format fixes it: 32..1024 threads), the grid one
// block per stream. Per-architecture tuning (blocks per SM, tables staged in shared memory) waits for
// measurements on a GPU (bench/cuda/bench_cuda.cu, scripts/gpu-check).

namespace detail {

template <class Entry, class Sink>
__global__ void __launch_bounds__(1024) rans_decode_batch_kernel(rans_batch_args<Entry> a, rans_batch_status* status, Sink sink) {
  __shared__ std::uint32_t warp_count[32];
  __shared__ std::uint32_t fail;
  const rans_batch_stream s = a.streams[blockIdx.x];
  const std::uint32_t j = threadIdx.x, w = j / warp::size, l = warp::lane_id(), nw = blockDim.x / warp::size;
  if (j == 0) fail = static_cast<std::uint32_t>(kvcodec::detail::rans_stream_check_size(s));
  __syncthreads();
  if (fail != 0) {  // uniform: read after the barrier
    if (j == 0) status[blockIdx.x] = static_cast<rans_batch_status>(fail);
    return;
  }
  const std::uint32_t N = s.lanes, M = s.prob_bits;
  const std::uint8_t* p = a.data + s.data_offset;
  const std::uint8_t* wp = p + 4ull * N;
  const std::uint64_t words = (s.size - 4ull * N) / 2;
  const bool lane = j < N;
  std::uint32_t x = lane ? kvcodec::detail::load_le32(p + 4ull * j) : rans_l;
  std::uint32_t col = lane ? j % s.cols : 0;
  if (x < rans_l) atomicCAS(&fail, 0u, static_cast<std::uint32_t>(rans_batch_status::bad_state));
  __syncthreads();
  const std::uint32_t adv = N % s.cols;
  const std::uint32_t* col_off = a.col_off + s.col_base;
  const std::uint64_t steps = (s.n + N - 1) / N;
  std::uint64_t base = 0;
  for (std::uint64_t t = 0; t < steps; ++t) {
    if (fail != 0) break;  // uniform: set before the last barrier
    const bool active = lane && t * N + j < s.n;
    std::uint16_t sym = 0;
    const std::uint32_t need = kvcodec::detail::rans_lane_decode(x, col, active, a.entries, col_off, s.cols, adv, M, sym);
    if (active && !sink(blockIdx.x, s, t * N + j, sym)) atomicCAS(&fail, 0u, static_cast<std::uint32_t>(rans_batch_status::bad_symbol));
    const std::uint32_t ballot = warp::ballot(need != 0);
    if (l == 0) warp_count[w] = warp::popc(ballot);
    __syncthreads();
    std::uint32_t before = 0, total = 0;
    for (std::uint32_t k = 0; k < nw; ++k) {
      const std::uint32_t c = warp_count[k];
      before += k < w ? c : 0u;
      total += c;
    }
    if (need && !kvcodec::detail::rans_lane_renorm(x, base + before + warp::rank_below(ballot, l), words, wp))
      atomicCAS(&fail, 0u, static_cast<std::uint32_t>(rans_batch_status::words_short));
    base += total;
    __syncthreads();
  }
  if (fail == 0 && j == 0 && base != words) fail = static_cast<std::uint32_t>(rans_batch_status::words_left);
  __syncthreads();
  if (fail == 0 && lane && x != rans_l) atomicCAS(&fail, 0u, static_cast<std::uint32_t>(rans_batch_status::bad_final));
  __syncthreads();
  if (j == 0) status[blockIdx.x] = static_cast<rans_batch_status>(fail);
}


/// The encode kernel: one block per stream, one thread per lane, steps from last to first (the lane
/// logic of core/rans_batch.hpp; rans_encode_batch_emulated is its host form).
__global__ void __launch_bounds__(1024) rans_encode_batch_kernel(rans_encode_args a) {
  __shared__ std::uint32_t warp_count[32];
  __shared__ std::uint32_t any_bad;
  const rans_encode_stream s = a.streams[blockIdx.x];
  const std::uint32_t j = threadIdx.x, w = j / warp::size, l = warp::lane_id(), nw = blockDim.x / warp::size;
  const std::uint32_t N = s.lanes;
  const std::uint64_t steps = (s.n + N - 1) / N;
  const std::uint32_t back = N % s.cols;
  std::uint32_t x = rans_l, col = j < N ? kvcodec::detail::rans_lane_last_col(s, steps, j) : 0;
  if (j == 0) any_bad = 0;
  __syncthreads();
  std::uint64_t wp = s.word_offset + s.n;
  bool bad = false;
  for (std::uint64_t t = steps; t-- > 0;) {
    const bool active = j < N && t * N + j < s.n;
    std::uint16_t word = 0;
    const std::uint32_t emit = kvcodec::detail::rans_lane_encode(x, col, active, a, s, t * N + j, back, word, bad);
    const std::uint32_t ballot = warp::ballot(emit != 0);
    if (l == 0) warp_count[w] = warp::popc(ballot);
    if (bad) any_bad = 1;
    __syncthreads();
    std::uint32_t before = 0, total = 0;
    for (std::uint32_t k = 0; k < nw; ++k) {
      const std::uint32_t c = warp_count[k];
      before += k < w ? c : 0u;
      total += c;
    }
    wp -= total;
    if (emit) a.words[wp + before + warp::rank_below(ballot, l)] = word;
    const bool stop = any_bad != 0;  // uniform: set before the barrier above
    __syncthreads();
    if (stop) break;
  }
  if (j < N) a.states[s.state_offset + j] = x;
  if (j == 0) {
    a.word_count[blockIdx.x] = s.word_offset + s.n - wp;
    a.bad[blockIdx.x] = any_bad;
  }
}

}  // namespace detail

/// Decodes every stream of `a` (device pointers) on p.stream, each symbol handed to `sink` (by default
/// written to a.out; core/cachegen.hpp's cachegen_rans_sink dequantizes it into a view instead); temp
/// storage: one status per stream.
template <class Entry, class Sink = rans_symbol_sink>
inline void rans_decode_batch(void* d_temp, std::size_t& temp_bytes, const rans_batch_args<Entry>& a, const par_t& p, Sink sink = Sink{}) {
  const std::size_t need = (a.count ? a.count : 1) * sizeof(rans_batch_status);
  if (d_temp == nullptr) {
    temp_bytes = need;
    return;
  }
  if (temp_bytes < need) throw_bad_input("cuda::rans_decode_batch", "temp_bytes", ">= " + std::to_string(need), std::to_string(temp_bytes));
  if (a.max_lanes < rans_lane_multiple || a.max_lanes > rans_max_lanes || a.max_lanes % rans_lane_multiple != 0)
    throw_bad_input("cuda::rans_decode_batch", "max_lanes", "a multiple of 32 in 32..1024", std::to_string(a.max_lanes));
  if (a.count == 0) return;
  if (a.count > 0x7fffffffu) throw_bad_input("cuda::rans_decode_batch", "count", "< 2^31 streams", std::to_string(a.count));
  if constexpr (std::is_same_v<Sink, rans_symbol_sink>)
    if (sink.out == nullptr) sink.out = a.out;
  detail::rans_decode_batch_kernel<Entry, Sink><<<static_cast<unsigned>(a.count), a.max_lanes, 0, p.stream>>>(a, static_cast<rans_batch_status*>(d_temp), sink);
  check(cudaGetLastError(), "rans_decode_batch_kernel launch");
}

/// Encodes every stream of `a` (device pointers) on p.stream: final states, scratch words, word counts
/// and the bad flags as core/rans_batch.hpp describes them. The caller then lays the streams out with
/// rans_stream_gather_op once it has the word counts. No temp storage: the arrays are the caller's.
inline void rans_encode_batch(const rans_encode_args& a, const par_t& p) {
  if (a.max_lanes < rans_lane_multiple || a.max_lanes > rans_max_lanes || a.max_lanes % rans_lane_multiple != 0)
    throw_bad_input("cuda::rans_encode_batch", "max_lanes", "a multiple of 32 in 32..1024", std::to_string(a.max_lanes));
  if (a.count == 0) return;
  if (a.count > 0x7fffffffu) throw_bad_input("cuda::rans_encode_batch", "count", "< 2^31 streams", std::to_string(a.count));
  detail::rans_encode_batch_kernel<<<static_cast<unsigned>(a.count), a.max_lanes, 0, p.stream>>>(a);
  check(cudaGetLastError(), "rans_encode_batch_kernel launch");
}

/// The per-stream statuses of a finished rans_decode_batch (waits for p.stream).
inline std::vector<rans_batch_status> rans_batch_statuses(const void* d_temp, std::size_t count, const par_t& p) {
  std::vector<rans_batch_status> st(count);
  if (count == 0) return st;
  check(cudaMemcpyAsync(st.data(), d_temp, count * sizeof(rans_batch_status), cudaMemcpyDeviceToHost, p.stream), "rans statuses copy");
  check(cudaStreamSynchronize(p.stream), "rans_decode_batch");
  return st;
}

}  // namespace kvcodec::cuda
