// bench/bench_cuda.hpp — the device half of bench_cuda (bench_cuda_kernels.cu, built by nvcc), called by
// its host half (bench_cuda.cpp, built by the host compiler with the whole library).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/rans_batch.hpp"

namespace kvcodec_bench_cuda {

/// Name, driver and runtime of device 0, or an empty string when there is no CUDA device.
std::string device_description();

struct rans_timing {
  std::vector<double> decode_ms;  ///< each timed batch decode (CUDA events), after one warm-up
  double memcpy_ms = 0;           ///< best device-to-device cudaMemcpy of `memcpy_bytes`
  double h2d_ms = 0;              ///< best host-to-device copy of the batch's stream bytes (pinned)
  std::vector<std::uint16_t> symbols;             ///< the decoded output
  std::vector<kvcodec::rans_batch_status> status;  ///< per stream
};

/// Uploads the batch, decodes it `reps` times on the default stream, and times a device memcpy of
/// `memcpy_bytes` (the f16 cache the symbols stand for) in the same run.
rans_timing time_rans_batch(const kvcodec::rans_batch_builder<std::uint32_t>& b, std::size_t memcpy_bytes, int reps);

struct view_timing {
  std::vector<double> kernels_ms;     ///< cuda::view_decoder::launch() alone (CUDA events), after one warm-up
  std::vector<double> end_to_end_ms;  ///< cuda::decode_into from the host container (parse, plan, H2D, kernels), wall
  double memcpy_ms = 0;               ///< best device-to-device cudaMemcpy of the view's f16 bytes
  std::vector<std::vector<std::uint8_t>> k, v;  ///< the decoded f16 view, per layer [heads, tokens, head_dim]
  std::vector<double> encode_ms;        ///< cuda::encode of the decoded view with `encode_spec`, wall (empty: not run)
  std::vector<std::uint8_t> encoded;    ///< the last cuda::encode's container
};

/// Decodes `container` into an f16 device view (Hugging Face layout, one buffer per layer and K/V)
/// `reps` times: the kernels alone and end to end, and a device memcpy of the view's bytes; then, when
/// `encode_spec` is not empty, encodes that view with cuda::encode (min(reps, 3) times). unfused: decode
/// with the symbols in memory between the entropy and the dequantize kernels (for cachegen-quant|ac:
/// the one-thread-per-row kernel, LMCache's design) instead of the fused kernels.
view_timing time_view_decode(const std::vector<std::uint8_t>& container, int layers, int kv_heads, std::int64_t tokens, int head_dim, int reps,
                             const std::string& encode_spec = {}, bool unfused = false);

struct drop_timing {
  std::vector<double> ms;   ///< each timed scoring + selection (CUDA events), after one warm-up
  double memcpy_ms = 0;     ///< best device-to-device cudaMemcpy of the keys
  std::size_t key_bytes = 0;
  std::size_t kept = 0;     ///< tokens kept in all
};

/// Times a GPU drop selection (method: snapkv, pyramidkv, adakv over snapkv, h2o, tova, knorm, lagkv,
/// expected-attention; the last two read f16 values too) on device f16 keys and
/// queries (layers x kv_heads x tokens x head_dim; q_heads query heads; random normal values with
/// per-channel scales) keeping `keep` of the tokens, window `window`, and a device memcpy of the keys
/// in the same run.
drop_timing time_drop_select(const std::string& method, int layers, int kv_heads, int q_heads, std::int64_t tokens, int head_dim, std::int64_t window,
                             double keep, int reps);

struct encode_timing {
  std::vector<double> ms;        ///< each timed cuda::encode, wall (after one warm-up run)
  double memcpy_ms = 0;          ///< best device-to-device cudaMemcpy of the f16 K and V
  std::size_t cache_bytes = 0;   ///< the f16 K and V
  std::size_t container_bytes = 0, mask_bytes = 0;
};

/// Times cuda::encode with `spec` (drop stages select on the GPU) of device f16 keys and values, with
/// device f16 queries (q_heads heads) for the query-aware drop stages, in the Hugging Face layout
/// (values as time_drop_select's), and a device memcpy of the K and V bytes in the same run.
encode_timing time_encode(const std::string& spec, int layers, int kv_heads, int q_heads, std::int64_t tokens, int head_dim, int reps);

}  // namespace kvcodec_bench_cuda
