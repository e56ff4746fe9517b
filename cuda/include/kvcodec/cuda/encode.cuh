// kvcodec/cuda/encode.cuh — encode a cache that lives in GPU memory: the CUDA backend's encode, the same
// container and the same bytes as the CPU's (pipeline/encode.hpp).
//
//   kvcodec::encoded e = kvcodec::cuda::encode(kvcodec::cuda::par.on(stream), codec, device_view);
//
// The quantizer runs on the GPU, block-parallel over (layer, K/V, chunk), reading the engine's view in
// place (strided or paged with a device block table; f32, f16 or bf16): pipeline/batch_encode.hpp
// drives the element steps of core/ through device_batch_executor. The rANS stage without prediction
// (the kvc levels, `kivi|rans`, `fp8|rans` ...) runs on the GPU too: column histograms (rans_hist_op),
// the models fitted from them on the host, the streams coded by cuda/rans.cuh's encode kernel and laid
// out by rans_stream_gather_op; only the histograms and the coded bytes come back. Other entropy stages
// run on the host over the symbols copied back. The host writes the container. Scope today: dense caches
// quantized by cachegen-quant (the kvc levels, cachegen), the llama.cpp block formats (q8_0 .. iq4_nl),
// fp8, raw, uniform or kivi (outliers selected per block on the GPU: cuda/affine.cuh), nf4, kmeans, with any entropy stage; other codecs are a usage error naming
// the scope (encode them on the CPU). Token dropping: a drop stage selects on the GPU
// (cuda/drop_select.cuh: only the kept token indices come back), the kept rows are gathered on the GPU
// and coded by raw, fp8, uniform, kivi or nf4 (`snapkv:keep=0.5|kivi:bits=4|rans` runs end to end on
// device views; composed drop stages too, `streamingllm|snapkv`). Transforms: hadamard and derope on
// every row first; think (the codec's only transform) fits its masks on the GPU from the queries view
// (cuda/think.cuh) and the key rows are coded at the kept width. Synchronous with respect to p.stream.
// This header includes the CPU pipeline (host code): include it from .cu files that encode containers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <vector>

#include "kvcodec/cpu/drop_stages.hpp"
#include "kvcodec/cuda/affine.cuh"
#include "kvcodec/cuda/batch.cuh"
#include "kvcodec/cuda/drop_select.cuh"
#include "kvcodec/cuda/memory.cuh"
#include "kvcodec/cuda/policy.cuh"
#include "kvcodec/cuda/rans.cuh"
#include "kvcodec/cuda/think.cuh"
#include "kvcodec/pipeline/batch_encode.hpp"

namespace kvcodec::cuda {

/// pipeline/batch_encode.hpp's executor on a GPU: memory is device memory, run() launches
/// cuda/batch.cuh's kernel on p.stream and waits for it.
class device_batch_executor {
 public:
  /// queries: for the query-aware drop stages (the K side of a device view; nullptr when none).
  explicit device_batch_executor(const par_t& p, const const_kv_view* queries = nullptr) : p_(p), q_(queries) {}
  /// The kept sets of codec c's drop stage, chosen on the GPU (cuda/drop_select.cuh).
  kept_sets select(const codec& c, const const_kv_view& kv, const kv_extras& ex, const kv_shape& s, dtype) {
    kv_cache check;
    check.shape = s;
    check.kept = drop_stage_select(*c.drop, kv, q_, ex.metadata, ex.positions, p_);
    check.validate_kept("drop stage '" + std::string(c.drop->name()) + "' output (GPU)");
    return std::move(check.kept);
  }
  kv_batch_src src(const const_kv_view& kv) {
    if (kv.space != memory_space::device) throw_usage("cuda::encode: the view is in host memory; use kvcodec::encode");
    auto& k = ptrs_.emplace_back(std::span<const void* const>(reinterpret_cast<const void* const*>(kv.k.data()), kv.k.size()));
    auto& v = ptrs_.emplace_back(std::span<const void* const>(reinterpret_cast<const void* const*>(kv.v.data()), kv.v.size()));
    kv_layout_desc layout = kv.layout();
    if (kv.paged()) layout.block_table = tables_.emplace_back(std::span<const std::int32_t>(kv.block_table)).data();
    return kv_batch_src{k.data(), v.data(), layout, kv.head_dim, static_cast<std::uint32_t>(kv.dt)};
  }
  std::uint8_t* bytes(std::size_t n) {
    std::uint8_t* d = mem_.emplace_back(n).data();
    if (n) check(cudaMemsetAsync(d, 0, n, p_.stream), "cudaMemsetAsync");
    return d;
  }
  float* floats(std::size_t n) { return reinterpret_cast<float*>(bytes(n * sizeof(float))); }
  template <class Block, class Op>
  void run(const std::vector<Block>& blocks, std::uint64_t max_items, const Op& op) {
    device_buffer<Block> d_blocks{std::span<const Block>(blocks)};
    device_buffer<std::uint32_t> bad(blocks.size() + 1);
    run_batch(d_blocks.data(), blocks.size(), max_items, op, bad.data(), p_);
    check(cudaStreamSynchronize(p_.stream), "cuda::encode");  // no encoding step rejects a value
  }
  void get(void* dst, const void* src, std::size_t n) {
    if (n) check(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }
  void put(void* dst, const void* src, std::size_t n) {
    if (n) check(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  void rans_encode(const rans_encode_args& a) {
    rans_encode_batch(a, p_);
    check(cudaStreamSynchronize(p_.stream), "cuda::encode (rANS)");
  }
  void outlier_select(const std::uint64_t* key, const std::uint32_t* pos, const std::vector<std::int64_t>& seg, const std::vector<std::int64_t>& take,
                      std::uint32_t* sel) {
    const std::vector<std::int32_t> seg32(seg.begin(), seg.end()), take32(take.begin(), take.end());  // the encoder keeps them below 2^31
    device_buffer<std::int32_t> d_seg{std::span<const std::int32_t>(seg32)}, d_take{std::span<const std::int32_t>(take32)};
    const auto segments = static_cast<std::int64_t>(seg.size()) - 1;
    std::size_t bytes = 0;
    affine_outlier_select(nullptr, bytes, key, pos, d_seg.data(), d_take.data(), segments, seg.back(), take.back(), sel, p_);
    device_buffer<std::uint8_t> temp(bytes);
    affine_outlier_select(temp.data(), bytes, key, pos, d_seg.data(), d_take.data(), segments, seg.back(), take.back(), sel, p_);
    check(cudaStreamSynchronize(p_.stream), "cuda::encode (outliers)");
  }
  std::vector<std::uint8_t> think_masks(const const_kv_view& kv, const kv_extras&, const kept_sets& kept, std::int64_t width) {
    if (q_ == nullptr)
      throw_bad_input("think stage input", "queries", "query tensors in device memory (cuda::encode's queries view): ThinK weighs key channels by the queries' energy", "none");
    return cuda::think_masks(p_, kv, *q_, kept.empty() ? nullptr : &kept, width);
  }

 private:
  par_t p_;
  const const_kv_view* q_ = nullptr;
  std::deque<device_buffer<const void*>> ptrs_;
  std::deque<device_buffer<std::int32_t>> tables_;
  std::deque<device_buffer<std::uint8_t>> mem_;
};

/// Encodes the cache in the device view `kv` with codec `c` (fitted to this cache: use a fresh codec
/// per cache) into a container streamed to `sink`. A drop stage selects on the GPU
/// (cuda/drop_select.cuh; composed stages in order); the query-aware ones read `queries` (the K side of a device view with
/// q_heads heads; nullptr when none).
inline encode_report encode_to(const par_t& p, codec& c, const const_kv_view& kv, byte_sink& sink, const encode_options& opt = {}, const kv_extras& ex = {},
                               const const_kv_view* queries = nullptr) {
  device_batch_executor x(p, queries);
  return encode_batch_to(x, kvcodec::cpu::par, c, kv, sink, opt, ex);
}

/// The same into a container in memory.
inline encoded encode(const par_t& p, codec& c, const const_kv_view& kv, const encode_options& opt = {}, const kv_extras& ex = {},
                      const const_kv_view* queries = nullptr) {
  encoded e;
  memory_sink sink(e.data);
  e.report = encode_to(p, c, kv, sink, opt, ex, queries);
  return e;
}

}  // namespace kvcodec::cuda
