// kvcodec/cuda/decode.cuh — decode a container into a view in GPU memory: the CUDA backend's
// decode_into, the same container and the same bytes as the CPU's (pipeline/decode.hpp).
//
//   kvcodec::cuda::decode_into(kvcodec::cuda::par.on(stream), file, dst);   // dst.space == device
//
// The host parses the container and plans its blocks (pipeline/batch.hpp: checksums, stage state and
// every header checked as the CPU decoder does), uploads the entropy streams, tables, steps and the
// view's block table, then on the stream: the rANS batch kernel (cuda/rans.cuh) writes symbols, the
// cachegen-quant kernel (cuda/cachegen.cuh) dequantizes them straight into the view (strided or
// paged, f16/bf16/f32). It waits for the stream at the end and throws error_kind::corrupt naming the
// first failed stream or block; on an exception the view's content is unspecified.
// Scope today: kvc levels and `cachegen-quant|rans` without prediction, transforms or dropped tokens;
// other containers are a usage error naming what has no CUDA implementation (decode them on the CPU).
// This header includes the CPU pipeline (host code): include it from .cu files that decode containers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/cuda/cachegen.cuh"
#include "kvcodec/cuda/fp8.cuh"
#include "kvcodec/cuda/ggml.cuh"
#include "kvcodec/cuda/memory.cuh"
#include "kvcodec/cuda/policy.cuh"
#include "kvcodec/cuda/rans.cuh"
#include "kvcodec/cuda/raw.cuh"
#include "kvcodec/pipeline/batch.hpp"

namespace kvcodec::cuda {

namespace detail {

/// The device copies a batch decode writes through: the view's per-layer bases and block table.
struct device_dest {
  device_buffer<std::int32_t> table;
  device_buffer<void*> k, v;
  kv_batch_dest d;
  explicit device_dest(const kv_view& dst) : table(std::span<const std::int32_t>(dst.block_table)) {
    std::vector<void*> hk, hv;
    d = batch_dest(dst, hk, hv);
    k = device_buffer<void*>(std::span<void* const>(hk));
    v = device_buffer<void*>(std::span<void* const>(hv));
    d.k = k.data();
    d.v = v.data();
    d.layout.block_table = table.data();
  }
};

/// Uploads a pack-coded batch (the segments' bytes as they are, the blocks) and runs its element step.
template <class Block>
void decode_store(const par_t& p, const store_batch_plan<Block>& plan, const kv_view& dst) {
  device_buffer<std::uint8_t> bytes(static_cast<std::size_t>(plan.bytes.total));
  for (std::size_t k = 0; k < plan.bytes.pieces.size(); ++k)
    if (!plan.bytes.pieces[k].empty())
      check(cudaMemcpy(bytes.data() + plan.bytes.first[k], plan.bytes.pieces[k].data(), plan.bytes.pieces[k].size(), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  device_buffer<Block> blocks{std::span<const Block>(plan.blocks)};
  const device_dest dd(dst);
  device_buffer<std::uint32_t> bad(plan.blocks.size() + 1);
  run_batch(blocks.data(), plan.blocks.size(), plan.max_items, typename batch_op_of<Block>::type{bytes.data(), dd.d}, bad.data(), p);
  check(cudaStreamSynchronize(p.stream), "cuda::decode_into");  // no step of these formats rejects a value
}

}  // namespace detail

/// Decodes the container `file` (host memory), all of it or the token range in `opt`, into the device
/// view `dst`. Synchronous with respect to p.stream (it waits for the kernels to report).
inline void decode_into(const par_t& p, std::span<const std::uint8_t> file, const kv_view& dst, const decode_options& opt = {}) {
  const kvc_view v = parse_kvc(file, opt.name, opt.limits);
  const auto [tb, te] = kvcodec::detail::decode_range(v.header, opt);
  dst.validate("decode destination");
  if (dst.space != memory_space::device) throw_usage("cuda::decode_into: the destination view is in host memory; use kvcodec::decode_into");
  const kv_shape& s = v.header.shape;
  if (dst.layers != s.layers || dst.kv_heads != s.kv_heads || dst.head_dim != s.head_dim || dst.tokens != te - tb)
    throw_bad_input("decode destination for " + opt.name, "shape",
                    std::to_string(s.layers) + " layers x " + std::to_string(s.kv_heads) + " kv heads x " + std::to_string(te - tb) + " tokens x head_dim " +
                        std::to_string(s.head_dim),
                    std::to_string(dst.layers) + " x " + std::to_string(dst.kv_heads) + " x " + std::to_string(dst.tokens) + " x " + std::to_string(dst.head_dim));
  const segment_decoder dec(v.header, [&](std::size_t i) { return v.state_bytes(i); }, opt.name);
  const auto todo = kvcodec::detail::segments_in(v.header, tb, te);
  const auto bytes_of = [&](std::size_t i) { return v.segment_bytes(i); };
  if (dynamic_cast<const cpu::pack_entropy*>(dec.stages().entropy.get()) != nullptr) {
    const std::string& q = dec.stages().quant->spec().name;
    if (ggml::parse_block_type(q)) return detail::decode_store(p, plan_ggml_batch(dec, todo, bytes_of, tb, te - tb), dst);
    if (q == "fp8") return detail::decode_store(p, plan_fp8_batch(dec, todo, bytes_of, tb, te - tb), dst);
    if (q == "raw") return detail::decode_store(p, plan_raw_batch(dec, todo, bytes_of, tb, te - tb), dst);
    throw_usage("cuda::decode_into: quantizer '" + q + "' has no CUDA implementation (with pack: q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, fp8, raw); decode it on the CPU");
  }
  const auto plan = plan_cachegen_batch<std::uint32_t>(dec, todo, bytes_of, tb, te - tb);
  const auto& b = plan.rans.builder;
  // uploads (synchronous copies from pageable memory; the kernels below are queued on p.stream)
  device_buffer<rans_batch_stream> d_streams{std::span<const rans_batch_stream>(b.streams)};
  device_buffer<std::uint8_t> d_data{std::span<const std::uint8_t>(b.data)};
  device_buffer<std::uint32_t> d_entries{std::span<const std::uint32_t>(b.entries)};
  device_buffer<std::uint32_t> d_col_off{std::span<const std::uint32_t>(b.col_off)};
  device_buffer<std::uint16_t> d_sym(b.out_symbols);
  device_buffer<cachegen_batch_block> d_blocks{std::span<const cachegen_batch_block>(plan.blocks)};
  device_buffer<float> d_steps{std::span<const float>(plan.steps)};
  const detail::device_dest dd(dst);
  const rans_batch_args<std::uint32_t> a{d_streams.data(), b.streams.size(), b.max_lanes, d_data.data(), d_entries.data(), d_col_off.data(), d_sym.data()};
  std::size_t temp_bytes = 0;
  rans_decode_batch(nullptr, temp_bytes, a, p);
  device_buffer<std::uint8_t> d_temp(temp_bytes);
  device_buffer<std::uint32_t> d_bad(plan.blocks.size() + 1);
  rans_decode_batch(d_temp.data(), temp_bytes, a, p);
  std::uint64_t max_elements = 0;
  for (const auto& g : plan.blocks) max_elements = std::max<std::uint64_t>(max_elements, static_cast<std::uint64_t>(g.rows) * g.cols);
  cachegen_store(d_blocks.data(), plan.blocks.size(), max_elements, d_sym.data(), d_steps.data(), dd.d, d_bad.data(), p);
  const auto st = rans_batch_statuses(d_temp.data(), b.streams.size(), p);  // waits for p.stream
  rans_batch_throw_failed(std::span<const rans_batch_status>(st), [&](std::size_t i) { return opt.name + ": rANS stream " + std::to_string(i) + " of the batch"; });
  const auto bad = d_bad.download();
  for (std::size_t i = 0; i < plan.blocks.size(); ++i)
    if (bad[i]) throw_corrupt(opt.name + ": block " + std::to_string(i) + " (layer " + std::to_string(plan.blocks[i].layer) + (plan.blocks[i].key ? " K" : " V") + ")",
                              "a symbol above 2*MAX = " + std::to_string(2 * plan.blocks[i].max));
}

}  // namespace kvcodec::cuda
