// kvcodec/pipeline/batch.hpp — a container's entropy streams laid out for a batch decoder
// (core/rans_batch.hpp: the CUDA kernel of cuda/rans.cuh, or its host emulation): every K and V
// block of the chosen segments, parsed and checked as the CPU decoder does, its rANS streams added to
// one rans_batch_builder, and where each plane's symbols land in the batch's output.
//
// Covered: entropy stage `rans` without prediction (kvc levels, `cachegen-quant|rans`, `kivi|rans`,
// ...). Other entropy stages, and planes coded with prediction, are a usage error naming them.
// plan_cachegen_batch goes on to the quantizer: for `cachegen-quant|rans` containers (the kvc levels)
// without transforms or dropped tokens it adds each block's dequantization (core/cachegen.hpp's
// cachegen_batch_block), so a batch decoder writes the values straight into a view;
// decode_batch_emulated runs the whole batch on the CPU through the kernels' lane and element logic.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/core/rans_batch.hpp"
#include "kvcodec/core/cachegen.hpp"
#include "kvcodec/cpu/cachegen.hpp"
#include "kvcodec/cpu/rans.hpp"
#include "kvcodec/pipeline/decode.hpp"

namespace kvcodec {

/// One K or V block of a segment in a batch.
struct batch_block {
  std::size_t segment = 0;
  bool key = true;
  block skeleton;                      ///< rows, heads, positions (no values)
  symbols headers;                     ///< plane shapes (sym empty) and the side bytes
  std::vector<std::size_t> plane;      ///< per stream: its plane
  std::vector<std::uint64_t> first;    ///< per stream: its first symbol in the batch output
};

template <class Entry>
struct rans_batch_plan {
  rans_batch_builder<Entry> builder;
  std::vector<batch_block> blocks;
};

/// Plans the K and V blocks of `segments` (indices into the header's segment table; bytes(i) returns
/// segment i's checked bytes) of the container that `dec` decodes.
template <class Entry>
rans_batch_plan<Entry> plan_rans_batch(const segment_decoder& dec, std::span<const std::size_t> segments,
                                       const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes) {
  const auto* rs = dynamic_cast<const cpu::rans_entropy*>(dec.stages().entropy.get());
  if (rs == nullptr)
    throw_usage("batch decode: entropy stage '" + dec.stages().entropy->spec().name + "' has no batch decoder (only rans has one)");
  const kvc_header& h = dec.header();
  rans_batch_plan<Entry> plan;
  std::map<const rans_ctx_decoder*, std::uint32_t> models;  // shared tables: added once
  for (const std::size_t i : segments) {
    const segment_entry& se = h.segments.at(i);
    const std::string where = "segment (layer " + std::to_string(se.layer) + ", tokens " + std::to_string(se.t0) + ".." + std::to_string(se.t1) + ")";
    byte_reader r(bytes(i), where);
    std::vector<std::vector<std::int32_t>> kc;
    if (h.sparse) kc = dec.read_kept(r, se);
    for (int kvi = 0; kvi < 2; ++kvi) {
      batch_block bb;
      bb.segment = i;
      bb.key = kvi == 0;
      bb.skeleton = detail::block_skeleton(h.shape, se.layer, bb.key, se.t0, se.t1, h.sparse ? &kc : nullptr);
      const auto stream = r.get_blob(kvi == 0 ? "K stream" : "V stream");
      auto bp = rs->plan(stream, bb.skeleton);
      // tables=chunk models live in the block plan only while it is added: forget their addresses after.
      std::map<const rans_ctx_decoder*, std::uint32_t> local;
      bb.first = cpu::add_to_batch(bp, plan.builder, bp.owned.empty() ? models : local);
      for (const auto& sr : bp.streams) bb.plane.push_back(sr.plane);
      bb.headers = std::move(bp.headers);
      plan.blocks.push_back(std::move(bb));
    }
    r.expect_end();
  }
  return plan;
}

/// A cachegen-quant|rans container's blocks planned for a batch decoder: the rANS batch, one
/// cachegen_batch_block per K/V block and the steps they read.
template <class Entry>
struct cachegen_batch_plan {
  rans_batch_plan<Entry> rans;
  std::vector<cachegen_batch_block> blocks;
  std::vector<float> steps;
  std::uint64_t elements = 0;
};

/// Plans `segments` of the container for a batch decode into destination tokens [0, tokens), where
/// destination token 0 is cache token `base`. Usage error for containers outside its scope.
template <class Entry>
cachegen_batch_plan<Entry> plan_cachegen_batch(const segment_decoder& dec, std::span<const std::size_t> segments,
                                               const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, std::int64_t base,
                                               std::int64_t tokens) {
  const codec& c = dec.stages();
  const auto* q = dynamic_cast<const cpu::cachegen_quant*>(c.quant.get());
  if (q == nullptr) throw_usage("batch decode: quantizer '" + c.quant->spec().name + "' has no batch decoder (cachegen-quant and the kvc levels have one)");
  if (!c.transforms.empty()) throw_usage("batch decode: transforms (" + c.transforms.front()->spec().name + ") have no batch decoder");
  if (dec.header().sparse) throw_usage("batch decode: containers with dropped tokens have no batch decoder yet");
  cachegen_batch_plan<Entry> plan;
  plan.rans = plan_rans_batch<Entry>(dec, segments, bytes);
  std::vector<float> step;
  for (const auto& bb : plan.rans.blocks) {
    int max = 0;
    try {
      q->checked_header(bb.headers.planes, bb.headers.side, bb.skeleton, step, max);
    } catch (const error& e) {
      const auto& se = dec.header().segments[bb.segment];
      throw_corrupt("segment (layer " + std::to_string(se.layer) + ", tokens " + std::to_string(se.t0) + ".." + std::to_string(se.t1) + ")", e.what());
    }
    cachegen_batch_block g;
    g.sym_first = bb.first.at(0);
    g.step_first = plan.steps.size();
    g.rows = bb.headers.planes[0].rows;
    g.cols = bb.headers.planes[0].cols;
    g.layer = bb.skeleton.layer;
    g.max = max;
    g.key = bb.key ? 1u : 0u;
    g.by_token = q->by_token(bb.skeleton) ? 1u : 0u;
    g.t_first = bb.skeleton.t0 - base;
    g.t_end = tokens;
    plan.steps.insert(plan.steps.end(), step.begin(), step.end());
    plan.elements += static_cast<std::uint64_t>(g.rows) * g.cols;
    plan.blocks.push_back(g);
  }
  return plan;
}

/// The destination descriptor of a view (host or device pointers, as the view holds them); `k` and `v`
/// receive the per-layer bases the descriptor points to (keep them alive while it is used).
inline cachegen_batch_dest batch_dest(const kv_view& dst, std::vector<void*>& k, std::vector<void*>& v) {
  if (dst.dt != dtype::f32 && dst.dt != dtype::f16 && dst.dt != dtype::bf16)
    throw_usage("batch decode: destination dtype " + std::string(dtype_name(dst.dt)) + " is not f32, f16 or bf16");
  k.assign(dst.k.begin(), dst.k.end());
  v.assign(dst.v.begin(), dst.v.end());
  cachegen_batch_dest d;
  d.k = k.data();
  d.v = v.data();
  d.layout = dst.layout();
  d.head_dim = dst.head_dim;
  d.dtype_code = static_cast<std::uint32_t>(dst.dt);
  return d;
}

/// Runs a planned batch on the CPU through the CUDA kernels' lane logic (rans_decode_batch_emulated)
/// and element logic (cachegen_batch_store), writing into the host view `dst`. Throws corrupt naming
/// the first failed stream or block.
template <class Entry>
void decode_batch_emulated(const cachegen_batch_plan<Entry>& plan, const kv_view& dst) {
  if (dst.space != memory_space::host) throw_usage("decode_batch_emulated: the destination view is in device memory");
  std::vector<std::uint16_t> sym(plan.rans.builder.out_symbols);
  std::vector<rans_batch_status> st(plan.rans.builder.streams.size());
  rans_decode_batch_emulated(plan.rans.builder.host_args(sym.data()), st.data());
  rans_batch_throw_failed(std::span<const rans_batch_status>(st), [](std::size_t i) { return "rANS stream " + std::to_string(i) + " of the batch"; });
  std::vector<void*> k, v;
  const cachegen_batch_dest d = batch_dest(dst, k, v);
  for (std::size_t bi = 0; bi < plan.blocks.size(); ++bi) {
    const auto& g = plan.blocks[bi];
    const std::uint64_t n = static_cast<std::uint64_t>(g.rows) * g.cols;
    for (std::uint64_t i = 0; i < n; ++i)
      if (!cachegen_batch_store(g, sym.data(), plan.steps.data(), d, i))
        throw_corrupt("block " + std::to_string(bi) + " of the batch (layer " + std::to_string(g.layer) + (g.key ? " K" : " V") + ")",
                      "a symbol above 2*MAX = " + std::to_string(2 * g.max));
  }
}

}  // namespace kvcodec
