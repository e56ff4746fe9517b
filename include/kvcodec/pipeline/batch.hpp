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
//
// Token-dropped containers: each block is planned as one part per head (the quantizer's per-head
// share of its codes, parameters and exact rows, as the CPU stage lays out a block whose heads keep
// different rows), written into a compact buffer of kept rows (kept_rows_plan); kv_finish_op then
// moves every kept row into the view (inverting the transforms) and writes the dropped tokens as
// zeros, as decode_into does. Not for the llama.cpp block formats (their dense rows span the heads).
//
// `think` containers: every block is planned at the width its stages code it (segment_decoder::
// coded_skeleton: key rows of the head's kept channels only), each plan carries that width for its
// destination (kv_batch_dest::key_head_dim: the element steps write key rows that wide into the f32
// scratch), and kv_finish_op puts each kept channel back in place, zeros in the pruned ones.
//
// Containers coded with `pack` (the llama.cpp block formats q8_0..iq4_nl, fp8, raw) need no entropy
// decoder: plan_pack_batch finds where each block's packed plane and side bytes lie in the segments'
// bytes (checked as the CPU stages check them), and plan_ggml_batch / plan_fp8_batch / plan_raw_batch
// turn them into the element steps of core/ggml_blocks.hpp, core/fp8.hpp and core/raw.hpp, which the
// CUDA kernels (cuda/ggml.cuh, fp8.cuh, raw.cuh) and decode_batch_emulated run. plan_affine_batch does the
// same for the affine quantizers `uniform` and `kivi`, coded with rans (symbols from the rANS batch) or
// pack (codes unpacked in place).
#pragma once

#include <array>
#include <cstddef>
#include <deque>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/core/ac_batch.hpp"
#include "kvcodec/core/rans_batch.hpp"
#include "kvcodec/core/affine.hpp"
#include "kvcodec/core/cachegen.hpp"
#include "kvcodec/core/codebook.hpp"
#include "kvcodec/core/fp8.hpp"
#include "kvcodec/core/ggml_blocks.hpp"
#include "kvcodec/core/pred.hpp"
#include "kvcodec/core/raw.hpp"
#include "kvcodec/core/transform_rows.hpp"
#include "kvcodec/cpu/ac.hpp"
#include "kvcodec/cpu/cachegen.hpp"
#include "kvcodec/cpu/codebook.hpp"
#include "kvcodec/cpu/derope.hpp"
#include "kvcodec/cpu/fp8.hpp"
#include "kvcodec/cpu/hadamard.hpp"
#include "kvcodec/cpu/kivi.hpp"
#include "kvcodec/cpu/pack.hpp"
#include "kvcodec/cpu/rans.hpp"
#include "kvcodec/cpu/raw.hpp"
#include "kvcodec/cpu/think.hpp"
#include "kvcodec/cpu/uniform.hpp"
#include "kvcodec/cpu/weighted_quant.hpp"
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
  std::vector<std::uint64_t> plane_first;  ///< per plane: its symbols' first (restored from its sub-planes when predicted)
};

/// Where a token-dropped container's kept rows land in a batch decode: the planners' parts decode
/// them into a compact buffer of 2 x total rows of head_dim values; layer l's K rows are rows
/// [layer_first[l], layer_first[l + 1]), its V rows the same plus `total`; within a layer, segment
/// after segment (in the order planned), head after head, each head's kept rows in token order.
/// kv_finish_op (row_of) then moves them into the view and writes the dropped tokens as zeros.
struct kept_rows_plan {
  std::vector<std::uint64_t> layer_first;              ///< layers + 1
  std::vector<std::vector<std::uint64_t>> head_first;  ///< per header segment (empty: not planned): each head's first row within its layer
  std::vector<std::int64_t> row_of;                    ///< per (layer, head, destination token): its row within its layer, or -1 (dropped)
  std::uint64_t total = 0, max_layer = 0;
  kept_sets kept;  ///< the kept destination tokens per (layer, head), as decode_into reports them
  /// The compact buffer at `base` (2 x total x head_dim values of `t`) as the one-head view the parts
  /// write (layer l's rows from its first; tokens: the largest layer's rows, at least 1).
  kv_view view(std::byte* base, dtype t, std::int32_t head_dim, memory_space space) const {
    const std::uint64_t rb = static_cast<std::uint64_t>(head_dim) * dtype_size(t);
    std::vector<std::byte*> k, v;
    for (std::size_t l = 0; l + 1 < layer_first.size(); ++l) {
      k.push_back(base + layer_first[l] * rb);
      v.push_back(base + (total + layer_first[l]) * rb);
    }
    kv_view w = kv_view::hf(std::move(k), std::move(v), t, 1, static_cast<std::int64_t>(std::max<std::uint64_t>(max_layer, 1)), head_dim);
    w.space = space;
    return w;
  }
};

/// The compact layout of the kept rows of `segments` (bytes(i): segment i's checked bytes) of a
/// token-dropped container, for a batch decode into destination tokens [0, tokens), destination token 0
/// being cache token `base`.
inline kept_rows_plan plan_kept_rows(const segment_decoder& dec, std::span<const std::size_t> segments,
                                     const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, std::int64_t base, std::int64_t tokens) {
  const kvc_header& h = dec.header();
  if (!h.sparse) throw_usage("plan_kept_rows: the container keeps every token");
  const std::size_t L = static_cast<std::size_t>(h.shape.layers), H = static_cast<std::size_t>(h.shape.kv_heads);
  const std::size_t T = static_cast<std::size_t>(tokens);
  kept_rows_plan p;
  p.head_first.resize(h.segments.size());
  p.row_of.assign(L * H * T, -1);
  p.kept.assign(L, std::vector<std::vector<std::int32_t>>(H));
  std::vector<std::uint64_t> rows(L, 0);
  for (const std::size_t i : segments) {
    const segment_entry& se = h.segments.at(i);
    byte_reader r(bytes(i), "segment (layer " + std::to_string(se.layer) + ", tokens " + std::to_string(se.t0) + ".." + std::to_string(se.t1) + ")");
    const auto kc = dec.read_kept(r, se);
    const std::size_t l = static_cast<std::size_t>(se.layer);
    for (std::size_t hh = 0; hh < H; ++hh) {
      p.head_first[i].push_back(rows[l]);
      for (std::size_t k = 0; k < kc[hh].size(); ++k) {
        const std::int64_t t = kc[hh][k] - base;
        if (t < 0 || t >= tokens) continue;
        p.row_of[(l * H + hh) * T + static_cast<std::size_t>(t)] = static_cast<std::int64_t>(rows[l] + k);
        p.kept[l][hh].push_back(static_cast<std::int32_t>(t));
      }
      rows[l] += kc[hh].size();
    }
  }
  p.layer_first.assign(L + 1, 0);
  for (std::size_t l = 0; l < L; ++l) {
    p.layer_first[l + 1] = p.layer_first[l] + rows[l];
    p.max_layer = std::max(p.max_layer, rows[l]);
  }
  p.total = p.layer_first[L];
  return p;
}

namespace detail {
/// One head's rows of a token-dropped container's block: `rows` rows from block row `row` on, decoded
/// into compact rows [dest, dest + rows) (kept_rows_plan's view, head 0).
struct head_part {
  std::uint32_t head = 0, rows = 0;
  std::uint64_t row = 0;
  std::int64_t dest = 0;
};
inline std::vector<head_part> head_parts(const block& sk, const kept_rows_plan& kp, std::size_t segment) {
  std::vector<head_part> out;
  std::uint64_t row = 0;
  const auto& first = kp.head_first.at(segment);
  if (first.size() != sk.count.size()) throw_usage("batch decode: the kept-rows plan does not hold this segment (plan it with the same segments)");
  for (std::size_t h = 0; h < sk.count.size(); ++h) {
    out.push_back({static_cast<std::uint32_t>(h), sk.count[h], row, static_cast<std::int64_t>(first[h])});
    row += sk.count[h];
  }
  return out;
}
/// Parts write compact rows: nothing past the end to skip.
inline constexpr std::int64_t all_tokens = INT64_MAX;
/// A planner's check that a token-dropped container comes with its compact layout (plan_kept_rows).
inline void check_kept(const kvc_header& h, const kept_rows_plan* kept) {
  if (h.sparse && kept == nullptr)
    throw_usage("batch decode: a container with dropped tokens decodes its kept rows into a compact buffer: pass plan_kept_rows' layout to the planner");
}
/// The per-head parts of a cachegen-quant block `g` (its plane: dense, tokens x heads*head_dim, or
/// ragged, rows x head_dim; scales per row or per (head, channel), cpu/cachegen.hpp's plane_map).
inline void add_cachegen_parts(const cachegen_batch_block& g, const block& sk, const kept_rows_plan& kp, std::size_t segment, std::vector<cachegen_batch_block>& out) {
  const bool dense = sk.dense();
  const std::uint32_t D = static_cast<std::uint32_t>(sk.head_dim);
  for (const head_part& p : head_parts(sk, kp, segment)) {
    if (p.rows == 0) continue;
    cachegen_batch_block q = g;
    q.rows = p.rows;
    q.cols = D;
    q.stride = dense ? g.cols : D;
    q.sym_first = g.sym_first + (dense ? static_cast<std::uint64_t>(p.head) * D : p.row * D);
    q.step_first = g.step_first + (g.by_token != 0 ? (dense ? 0 : p.row) : static_cast<std::uint64_t>(p.head) * D);
    q.t_first = p.dest;
    q.t_end = all_tokens;
    out.push_back(q);
  }
}
}  // namespace detail

namespace detail {
/// A planner's check of the codec's transforms: none, unless the caller inverts them (transforms_ok:
/// decode_batch_emulated and cuda::decode_into, with batch_row_transforms and kv_finish_op).
inline void check_plan_transforms(const codec& c, bool transforms_ok) {
  if (!c.transforms.empty() && !transforms_ok)
    throw_usage("batch decode: transforms (" + c.transforms.front()->spec().name + ") are inverted by the batch decoder's last step, which this planner's caller does not run");
}
}  // namespace detail

/// The codec's `think` stage (the transform that narrows key rows), or null.
inline const cpu::think_transform* think_of(const codec& c) {
  for (const auto& t : c.transforms)
    if (const auto* th = dynamic_cast<const cpu::think_transform*>(t.get())) return th;
  return nullptr;
}

/// A codec's transforms as row steps (core/transform_rows.hpp) for the batch encoder (inverse = false)
/// or decoder (inverse = true): hadamard and derope, derope's cos/sin tables (every token position of
/// the cache x head_dim / 2, the CPU stage's expression: cos/sin of -+rope_angle) handed to
/// upload(table) -> a pointer in the executor's memory. Decoding weighted-quant with derope=on adds its
/// key rotation, applied first (kind 2: rope_factors_run's f32 factors chunk by chunk, as the CPU
/// stage's per-chunk tables, over the container's `segments`). Usage error for other transforms, more
/// than row_transforms::max, or rows wider than transform_max_head_dim.
template <class Upload>
row_transforms batch_row_transforms(const codec& c, const cache_info& info, bool inverse, Upload&& upload, std::span<const segment_entry> segments = {}) {
  row_transforms out;
  const auto* wq = inverse ? dynamic_cast<const cpu::weighted_quant*>(c.quant.get()) : nullptr;
  const bool rotate = wq != nullptr && wq->rotates_keys();
  if (c.transforms.empty() && !rotate) return out;
  const kv_shape& s = info.shape;
  const std::string side = inverse ? "decode" : "encode";
  if (think_of(c) != nullptr) {
    if (c.transforms.size() != 1 || rotate)
      throw_usage("batch " + side + ": codec '" + c.spec() + "': think is batch-" + side + "d as a codec's only transform, before a quantizer that keeps its keys' " +
                  "channels in place (" + side + " this codec on the CPU)");
    return out;  // add_think_channels sets out.channels (the encoder once it has fitted the masks)
  }
  if (c.transforms.size() + (rotate ? 1 : 0) > row_transforms::max)
    throw_usage("batch " + side + ": codec '" + c.spec() + "': at most " + std::to_string(row_transforms::max) + " transforms");
  if (s.head_dim > transform_max_head_dim)
    throw_usage("batch " + side + ": codec '" + c.spec() + "': transforms of rows of at most " + std::to_string(transform_max_head_dim) + " values, not " +
                std::to_string(s.head_dim));
  for (const auto& t : c.transforms) {
    row_transform& r = out.t[out.n++];
    if (const auto* hd = dynamic_cast<const cpu::hadamard_transform*>(t.get())) {
      r.kind = 0;
      r.seed = static_cast<std::uint64_t>(hd->params().seed);
      r.keys = hd->params().target != "v" ? 1u : 0u;
      r.values = hd->params().target != "k" ? 1u : 0u;
    } else if (const auto* dr = dynamic_cast<const cpu::derope_transform*>(t.get())) {
      const auto rc = dr->resolved(info);
      r.kind = 1;
      r.keys = 1, r.values = 0;
      r.interleaved = rc.style == rope_style::interleaved_pairs ? 1u : 0u;
      const std::size_t half = static_cast<std::size_t>(s.head_dim) / 2;
      const double dir = inverse ? 1.0 : -1.0;
      std::vector<double> cs(static_cast<std::size_t>(s.tokens) * half), sn(cs.size());
      for (std::int64_t p = 0; p < s.tokens; ++p)
        for (std::size_t i = 0; i < half; ++i) {  // cpu/derope.hpp's trig table
          const double a = dir * rope_angle(p, i, static_cast<std::size_t>(s.head_dim), rc.theta);
          cs[static_cast<std::size_t>(p) * half + i] = std::cos(a);
          sn[static_cast<std::size_t>(p) * half + i] = std::sin(a);
        }
      r.cs = upload(cs);
      r.sn = upload(sn);
    } else {
      throw_usage("batch " + side + ": transform '" + std::string(t->name()) + "' has no CUDA " + side +
                  "; the transforms with one: hadamard, derope, think (as the only transform)");
    }
  }
  if (rotate) {  // last in the list: the inverse order applies it first, right after dequantization
    const cpu::rope_rows::rope rr = wq->key_rope(info);
    row_transform& r = out.t[out.n++];
    r.kind = 2;
    r.keys = 1, r.values = 0;
    r.interleaved = rr.pairs == rope_pairs::interleaved ? 1u : 0u;
    const std::size_t D = static_cast<std::size_t>(s.head_dim), T = static_cast<std::size_t>(s.tokens);
    std::vector<float> fc(T * D), fs(T * D);
    std::vector<std::uint8_t> done(T, 0);
    for (const segment_entry& se : segments) {  // each chunk once, from its first position (cpu/rope_rows.hpp's factors_at)
      if (se.t0 < 0 || se.t1 > s.tokens || se.t0 >= se.t1 || done[static_cast<std::size_t>(se.t0)]) continue;
      done[static_cast<std::size_t>(se.t0)] = 1;
      rope_factors_run(se.t0, se.t1 - se.t0, D, rr.theta, rr.pairs, 1.0, fc.data() + static_cast<std::size_t>(se.t0) * D, fs.data() + static_cast<std::size_t>(se.t0) * D);
    }
    std::vector<double> cs(fc.begin(), fc.end()), sn(fs.begin(), fs.end());
    r.cs = upload(cs);
    r.sn = upload(sn);
  }
  return out;
}

/// Sets ts's think channels (row_transforms::channels: [layer][kv head][kept width], increasing) from
/// the codec's think stage, fitted or loaded (shape s), through upload(std::vector<std::int32_t>) -> a
/// pointer in the executor's memory. Nothing without think.
template <class Upload>
void add_think_channels(row_transforms& ts, const codec& c, const kv_shape& s, Upload&& upload) {
  const cpu::think_transform* th = think_of(c);
  if (th == nullptr) return;
  const std::size_t D = static_cast<std::size_t>(s.head_dim);
  const std::vector<std::uint8_t>& masks = th->masks();
  if (masks.size() != static_cast<std::size_t>(s.layers) * static_cast<std::size_t>(s.kv_heads) * D)
    throw_usage("batch transforms: think has no channel masks for this cache (fit it or load its state first)");
  std::vector<std::int32_t> ch;
  for (std::size_t i = 0; i < masks.size(); ++i)
    if (masks[i]) ch.push_back(static_cast<std::int32_t>(i % D));
  ts.channels = upload(ch);
  ts.width = static_cast<std::int32_t>(th->kept_width(D));
  ts.heads = s.kv_heads;
}

namespace detail {
/// kv_batch_dest::key_head_dim for a container's blocks: the width its transforms code key rows at
/// (think), or 0 when they keep head_dim.
inline std::int32_t coded_key_width(const segment_decoder& dec) {
  const kvc_header& h = dec.header();
  segment_entry se;
  se.t1 = se.t0 + 1;
  const std::int32_t w = dec.coded_skeleton(se, true, nullptr).head_dim;
  return w == h.shape.head_dim ? 0 : w;
}
}  // namespace detail

template <class Entry>
struct rans_batch_plan {
  rans_batch_builder<Entry> builder;
  std::vector<batch_block> blocks;
  /// Planes coded with prediction: restored from their sub-planes after the rANS batch (core/pred.hpp's
  /// pred_restore_op over `restore`, pred=linear's predictors in centre/coefs); max_restore: the largest
  /// block's items.
  std::vector<pred_batch_block> restore;
  std::vector<std::uint16_t> centre;
  std::vector<std::uint8_t> coefs;
  std::uint64_t max_restore = 0;
  pred_restore_op op(std::uint16_t* sym) const { return {sym, centre.data(), coefs.data()}; }
};

/// Plans the K and V blocks of `segments` (indices into the header's segment table; bytes(i) returns
/// segment i's checked bytes) of the container that `dec` decodes. Planes coded with prediction are a
/// usage error unless `predicted` (the caller runs plan.restore after the rANS batch): their
/// sub-planes decode into their own symbols and the restored plane follows every stream's output.
template <class Entry>
rans_batch_plan<Entry> plan_rans_batch(const segment_decoder& dec, std::span<const std::size_t> segments,
                                       const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, bool predicted = false) {
  const auto* rs = dynamic_cast<const cpu::rans_entropy*>(dec.stages().entropy.get());
  if (rs == nullptr)
    throw_usage("batch decode: entropy stage '" + dec.stages().entropy->spec().name + "' has no CUDA decode; the entropy stages with one: " +
                builtin_registry().cuda_stages(stage_kind::entropy, false));
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
      bb.skeleton = dec.coded_skeleton(se, bb.key, h.sparse ? &kc : nullptr);
      const auto stream = r.get_blob(kvi == 0 ? "K stream" : "V stream");
      auto bp = rs->plan(stream, bb.skeleton, predicted);
      // tables=chunk models live in the block plan only while it is added: forget their addresses after.
      std::map<const rans_ctx_decoder*, std::uint32_t> local;
      bb.first = cpu::add_to_batch(bp, plan.builder, bp.owned.empty() ? models : local);
      for (const auto& sr : bp.streams) bb.plane.push_back(sr.plane);
      bb.plane_first.assign(bp.headers.planes.size(), 0);
      for (std::size_t k = bp.streams.size(); k-- > 0;)  // a plane's first stream (its anchors, or the whole plane)
        bb.plane_first[bp.streams[k].plane] = bb.first[k];
      for (std::size_t pi = 0; pi < bp.headers.planes.size(); ++pi) {
        const symbol_plane& p = bp.headers.planes[pi];
        if (bp.anchors[pi] == p.rows) continue;
        // predicted: the sub-planes' symbols (anchor rows, then residual rows) are consecutive from the
        // plane's first stream; the restored plane gets its own symbols after every stream's
        const std::uint64_t n = static_cast<std::uint64_t>(p.rows) * p.cols;
        pred_batch_block pb{bb.plane_first[pi], plan.builder.out_symbols, plan.centre.size(), p.rows, p.cols, p.alphabet, bp.anchors[pi],
                            rs->pred_group(), rs->pred_code(), bb.skeleton.layer, bb.key ? 1u : 0u};
        if (pb.kind == 3) {
          const auto& lc = bp.linear.at(pi);
          if (lc.centre.size() != p.cols) throw_corrupt(where, "plane " + std::to_string(pi) + ": pred=linear without its predictors");
          plan.centre.insert(plan.centre.end(), lc.centre.begin(), lc.centre.end());
          plan.coefs.insert(plan.coefs.end(), lc.coef.begin(), lc.coef.end());
        }
        plan.builder.out_symbols += n;
        bb.plane_first[pi] = pb.out;
        plan.max_restore = std::max<std::uint64_t>(plan.max_restore, pb.kind == 2 ? n : p.cols);
        plan.restore.push_back(pb);
      }
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
  std::vector<std::uint32_t> block_of_stream;  ///< the block of each rANS stream (the fused decoder's map)
  std::vector<float> steps;
  std::uint64_t elements = 0;
  std::int32_t key_head_dim = 0;  ///< think: the key rows' coded width (kv_batch_dest::key_head_dim)
  bool unfused = false;  ///< token-dropped (parts per head) or planes to restore: the fused sink cannot run (symbols in memory, then the element step)
};

/// Plans `segments` of the container for a batch decode into destination tokens [0, tokens), where
/// destination token 0 is cache token `base` (token-dropped: into the compact rows of `kept`). Usage
/// error for containers outside its scope.
template <class Entry>
cachegen_batch_plan<Entry> plan_cachegen_batch(const segment_decoder& dec, std::span<const std::size_t> segments,
                                               const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, std::int64_t base,
                                               std::int64_t tokens, bool transforms_ok = false, const kept_rows_plan* kept = nullptr) {
  const codec& c = dec.stages();
  // weighted-quant stores and decodes as cachegen-quant with per-channel scales (its keys, with
  // derope=on, then rotated by the caller's last step: batch_row_transforms' kind 2)
  const auto* wq = dynamic_cast<const cpu::weighted_quant*>(c.quant.get());
  const auto* q = wq != nullptr ? &wq->inner() : dynamic_cast<const cpu::cachegen_quant*>(c.quant.get());
  if (q == nullptr)
    throw_usage("batch decode: quantizer '" + c.quant->spec().name + "' has no CUDA decode; the quantizers with one: " +
                builtin_registry().cuda_stages(stage_kind::quant, false));
  detail::check_plan_transforms(c, transforms_ok);
  if (wq != nullptr && wq->rotates_keys()) {
    if (!transforms_ok)
      throw_usage("batch decode: weighted-quant with derope=on rotates its keys in the batch decoder's last step, which this planner's caller does not run");
    if (dec.header().sparse)
      throw_usage("batch decode: weighted-quant with derope=on on a token-dropped container has no CUDA decode (its RoPE tables follow each block's "
                  "kept positions); decode it on the CPU");
  }
  detail::check_kept(dec.header(), kept);
  cachegen_batch_plan<Entry> plan;
  plan.rans = plan_rans_batch<Entry>(dec, segments, bytes, true);
  plan.unfused = dec.header().sparse || !plan.rans.restore.empty();  // parts, or planes restored: decoded unfused
  plan.key_head_dim = detail::coded_key_width(dec);
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
    g.sym_first = bb.plane_first.at(0);  // restored when predicted (a token-dropped block may keep no row: no stream)
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
    if (kept != nullptr) {
      detail::add_cachegen_parts(g, bb.skeleton, *kept, bb.segment, plan.blocks);
      continue;
    }
    plan.block_of_stream.insert(plan.block_of_stream.end(), bb.first.size(), static_cast<std::uint32_t>(plan.blocks.size()));
    plan.blocks.push_back(g);
  }
  return plan;
}

/// The destination descriptor of a view (host or device pointers, as the view holds them); `k` and `v`
/// receive the per-layer bases the descriptor points to (keep them alive while it is used).
inline kv_batch_dest batch_dest(const kv_view& dst, std::vector<void*>& k, std::vector<void*>& v, std::int32_t key_head_dim = 0) {
  if (dst.dt != dtype::f32 && dst.dt != dtype::f16 && dst.dt != dtype::bf16)
    throw_usage("batch decode: destination dtype " + std::string(dtype_name(dst.dt)) + " is not f32, f16 or bf16");
  k.assign(dst.k.begin(), dst.k.end());
  v.assign(dst.v.begin(), dst.v.end());
  kv_batch_dest d;
  d.k = k.data();
  d.v = v.data();
  d.layout = dst.layout();
  d.head_dim = dst.head_dim;
  d.key_head_dim = key_head_dim;
  d.dtype_code = static_cast<std::uint32_t>(dst.dt);
  return d;
}

/// Runs an element step (core/: cachegen_batch_op, ggml_batch_op, ...) over every item of every block,
/// as the CUDA kernel of cuda/batch.cuh does; `fail(i)` is called (and must throw) for the first block i
/// with an item the step rejects.
template <class Block, class Op, class Fail>
void run_batch_emulated(std::span<const Block> blocks, const Op& op, const Fail& fail) {
  for (std::size_t bi = 0; bi < blocks.size(); ++bi) {
    const std::uint64_t n = op.count(blocks[bi]);
    for (std::uint64_t i = 0; i < n; ++i)
      if (!op(blocks[bi], i)) fail(bi);
  }
}

/// Runs a planned batch on the CPU through the CUDA kernels' lane logic (rans_decode_batch_emulated),
/// writing into the host view `dst`: fused (each symbol dequantized as it is decoded, cachegen_rans_sink),
/// or with the symbols in memory and then the element step (cachegen_batch_op). Throws corrupt naming
/// the first failed stream or block.
template <class Entry>
void decode_batch_emulated(const cachegen_batch_plan<Entry>& plan, const kv_view& dst, bool fused = true) {
  if (dst.space != memory_space::host) throw_usage("decode_batch_emulated: the destination view is in device memory");
  std::vector<rans_batch_status> st(plan.rans.builder.streams.size());
  std::vector<void*> k, v;
  const kv_batch_dest d = batch_dest(dst, k, v, plan.key_head_dim);
  const auto name = [](std::size_t i) { return "rANS stream " + std::to_string(i) + " of the batch"; };
  if (fused && !plan.unfused) {
    rans_decode_batch_emulated(plan.rans.builder.host_args(nullptr), st.data(),
                               cachegen_rans_sink{plan.blocks.data(), plan.block_of_stream.data(), plan.steps.data(), d});
    rans_batch_throw_failed(std::span<const rans_batch_status>(st), name);
    return;
  }
  std::vector<std::uint16_t> sym(plan.rans.builder.out_symbols);
  rans_decode_batch_emulated(plan.rans.builder.host_args(sym.data()), st.data());
  rans_batch_throw_failed(std::span<const rans_batch_status>(st), name);
  run_batch_emulated(std::span<const pred_batch_block>(plan.rans.restore), plan.rans.op(sym.data()), [](std::size_t) {});
  const cachegen_batch_op op{sym.data(), plan.steps.data(), d};
  run_batch_emulated(std::span<const cachegen_batch_block>(plan.blocks), op, [&](std::size_t bi) {
    const auto& g = plan.blocks[bi];
    throw_corrupt("block " + std::to_string(bi) + " of the batch (layer " + std::to_string(g.layer) + (g.key ? " K" : " V") + ")",
                  "a symbol above 2*MAX = " + std::to_string(2 * g.max));
  });
}

// ---- cachegen-quant|ac (the cachegen preset): range-coded streams -------------------------------

/// A cachegen-quant|ac container's blocks planned for a batch decoder (core/ac_batch.hpp): every
/// stream's bytes, the CDFs, one cachegen_batch_block per K/V block and the steps they read; and, when
/// every block has one stream per row (streams=row) and the CDFs fit the tile, the tiled kernel's groups.
struct cachegen_ac_plan {
  std::vector<std::uint8_t> data;
  std::vector<std::uint32_t> cdfs;
  std::vector<ac_batch_stream> streams;
  std::vector<cachegen_batch_block> blocks;
  std::vector<float> steps;
  std::vector<ac_tile_group> groups;  ///< empty: only the rows kernel can decode this batch
  std::uint32_t tile = 0;             ///< the tiled kernel's tile width (columns)
  std::uint32_t max_alphabet = 1;
  std::uint64_t out_symbols = 0;      ///< the rows kernel's symbol array
  std::uint64_t max_elements = 0;
  std::int32_t key_head_dim = 0;      ///< think: the key rows' coded width (kv_batch_dest::key_head_dim)
  /// pred=prev|anchor: each block's plane restored from its sub-planes (core/pred.hpp) between the rows
  /// kernel and the dequantize step; max_restore is the largest block's items.
  std::vector<pred_batch_block> restore;
  std::uint64_t max_restore = 0;
};

/// Plans `segments` of a cachegen-quant|ac container for a batch decode into destination tokens
/// [0, tokens), destination token 0 being cache token `base`: parsed and checked as the CPU decoder
/// does (cpu/ac.hpp's plan, the quantizer's checked_header). Planes coded with prediction (the
/// cachegen-paper preset's pred=anchor, or prev) decode their sub-planes into their own symbols, then
/// the restore step writes the plane. Usage error outside its scope (another quantizer or entropy stage,
/// transforms the caller does not invert).
inline cachegen_ac_plan plan_cachegen_ac_batch(const segment_decoder& dec, std::span<const std::size_t> segments,
                                               const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, std::int64_t base,
                                               std::int64_t tokens, bool transforms_ok = false, const kept_rows_plan* kept = nullptr) {
  const codec& c = dec.stages();
  const auto* q = dynamic_cast<const cpu::cachegen_quant*>(c.quant.get());
  const auto* ac = dynamic_cast<const cpu::ac_entropy*>(c.entropy.get());
  if (q == nullptr || ac == nullptr)
    throw_usage("batch decode: codec '" + c.spec() + "' is not cachegen-quant|ac; the quantizers with a CUDA decode: " +
                builtin_registry().cuda_stages(stage_kind::quant, false));
  detail::check_plan_transforms(c, transforms_ok);
  const kvc_header& h = dec.header();
  detail::check_kept(h, kept);
  cachegen_ac_plan plan;
  plan.key_head_dim = detail::coded_key_width(dec);
  bool per_row = !h.sparse;  // token-dropped: parts per head, the rows kernel
  std::vector<float> step;
  for (const std::size_t i : segments) {
    const segment_entry& se = h.segments.at(i);
    const std::string where = "segment (layer " + std::to_string(se.layer) + ", tokens " + std::to_string(se.t0) + ".." + std::to_string(se.t1) + ")";
    byte_reader r(bytes(i), where);
    std::vector<std::vector<std::int32_t>> kc;
    if (h.sparse) kc = dec.read_kept(r, se);
    for (int kvi = 0; kvi < 2; ++kvi) {
      const block skeleton = dec.coded_skeleton(se, kvi == 0, h.sparse ? &kc : nullptr);
      const auto stream = r.get_blob(kvi == 0 ? "K stream" : "V stream");
      const auto bp = ac->plan(stream, skeleton, true);
      int max = 0;
      try {
        q->checked_header(bp.headers.planes, bp.headers.side, skeleton, step, max);
      } catch (const error& e) {
        throw_corrupt(where, e.what());
      }
      cachegen_batch_block g;
      g.rows = bp.headers.planes[0].rows;
      g.cols = bp.headers.planes[0].cols;
      const std::uint64_t n = static_cast<std::uint64_t>(g.rows) * g.cols;
      // with prediction the streams decode the sub-planes into symbols [raw, raw + n) and the restore
      // step writes the plane after them
      const bool predicted = bp.anchors.at(0) != g.rows;
      const std::uint64_t raw = plan.out_symbols;
      if (predicted) {
        plan.restore.push_back({raw, raw + n, 0, g.rows, g.cols, bp.headers.planes[0].alphabet, bp.anchors[0], ac->pred_group(), ac->pred_code(),
                                skeleton.layer, kvi == 0 ? 1u : 0u});
        plan.max_restore = std::max(plan.max_restore, ac->pred_code() == 2 ? n : static_cast<std::uint64_t>(g.cols));
        plan.out_symbols += n;
        per_row = false;  // the tiled kernel dequantizes as it decodes: no restore in between
      }
      g.sym_first = plan.out_symbols;
      g.step_first = plan.steps.size();
      g.layer = skeleton.layer;
      g.max = max;
      g.key = kvi == 0 ? 1u : 0u;
      g.by_token = q->by_token(skeleton) ? 1u : 0u;
      g.t_first = skeleton.t0 - base;
      g.t_end = tokens;
      plan.steps.insert(plan.steps.end(), step.begin(), step.end());
      plan.out_symbols += n;
      plan.max_elements = std::max(plan.max_elements, n);
      const auto bi = static_cast<std::uint32_t>(plan.blocks.size());
      if (h.sparse) detail::add_cachegen_parts(g, skeleton, *kept, i, plan.blocks);
      else plan.blocks.push_back(g);
      std::vector<std::pair<const std::uint32_t*, std::uint64_t>> cdf_at;  // the block's CDF arrays, appended once
      const std::uint64_t s_first = plan.streams.size();
      for (const auto& sr : bp.streams) {
        std::uint64_t at = plan.cdfs.size();
        bool found = false;
        for (const auto& [ptr, off] : cdf_at)
          if (ptr == sr.cdfs) at = off, found = true;
        if (!found) {
          const std::size_t nc = static_cast<std::size_t>(sr.pooled ? 1 : sr.cols) * (sr.alphabet + 1);
          plan.cdfs.insert(plan.cdfs.end(), sr.cdfs, sr.cdfs + nc);
          cdf_at.emplace_back(sr.cdfs, at);
        }
        ac_batch_stream as;
        as.data = plan.data.size();
        as.size = sr.bytes.size();
        as.out = predicted ? raw + (sr.sub != 0 ? static_cast<std::uint64_t>(bp.anchors[0]) * g.cols : 0) + sr.first : g.sym_first + sr.first;
        as.cdf = at;
        as.n = static_cast<std::uint32_t>(sr.n);
        as.cols = sr.cols;
        as.alphabet = sr.alphabet;
        as.pooled = sr.pooled ? 1u : 0u;
        plan.data.insert(plan.data.end(), sr.bytes.begin(), sr.bytes.end());
        plan.streams.push_back(as);
        plan.max_alphabet = std::max(plan.max_alphabet, sr.alphabet);
      }
      if (bp.streams.size() != g.rows || (g.rows > 0 && bp.streams.front().n != g.cols)) {
        per_row = false;
        continue;
      }
      for (std::uint32_t r0 = 0; r0 < g.rows; r0 += ac_tile_rows)
        plan.groups.push_back({s_first + r0, std::min<std::uint32_t>(ac_tile_rows, g.rows - r0), bi, r0});
    }
    r.expect_end();
  }
  plan.tile = ac_tile_width(plan.max_alphabet);
  if (!per_row || plan.tile == 0) plan.groups.clear();
  return plan;
}

/// Runs a cachegen-quant|ac plan on the CPU through the CUDA kernels' logic into the host view `dst`:
/// the tiled kernel when the plan has groups and `tiled` is set, else the rows kernel and then
/// cachegen_batch_op. Throws corrupt naming the first failed stream or block.
inline void decode_batch_emulated(const cachegen_ac_plan& plan, const kv_view& dst, bool tiled = true) {
  if (dst.space != memory_space::host) throw_usage("decode_batch_emulated: the destination view is in device memory");
  std::vector<std::uint32_t> st(plan.streams.size(), 0), bad(plan.blocks.size(), 0);
  const ac_batch_args a{plan.streams.data(), plan.streams.size(), plan.data.data(), plan.cdfs.data(), st.data()};
  std::vector<void*> k, v;
  const kv_batch_dest d = batch_dest(dst, k, v, plan.key_head_dim);
  std::vector<std::uint16_t> sym;
  const bool fused = tiled && !plan.groups.empty();
  if (fused) {
    ac_decode_tiled_emulated(a, plan.groups.data(), plan.groups.size(), plan.tile, plan.blocks.data(), plan.steps.data(), d, bad.data());
  } else {
    sym.resize(static_cast<std::size_t>(plan.out_symbols));
    ac_decode_rows_emulated(a, sym.data());
    run_batch_emulated(std::span<const pred_batch_block>(plan.restore), pred_restore_op{sym.data()}, [](std::size_t) {});
  }
  for (std::size_t i = 0; i < st.size(); ++i)
    if (st[i] != 0) throw_corrupt("range-coded stream " + std::to_string(i) + " of the batch", "does not decode exactly");
  if (!fused) {
    const cachegen_batch_op op{sym.data(), plan.steps.data(), d};
    run_batch_emulated(std::span<const cachegen_batch_block>(plan.blocks), op, [&](std::size_t bi) { bad[bi] = 1; });
  }
  for (std::size_t bi = 0; bi < bad.size(); ++bi)
    if (bad[bi] != 0)
      throw_corrupt("block " + std::to_string(bi) + " of the batch (layer " + std::to_string(plan.blocks[bi].layer) + (plan.blocks[bi].key ? " K" : " V") + ")",
                    "a symbol above 2*MAX = " + std::to_string(2 * plan.blocks[bi].max));
}

// ---- pack-coded containers: q8_0 .. iq4_nl, fp8, raw ----------------------------------------------

/// The chosen segments' bytes as one array (what a GPU decoder uploads): piece k starts at first[k].
struct batch_bytes {
  std::vector<std::span<const std::uint8_t>> pieces;
  std::vector<std::uint64_t> first;
  std::uint64_t total = 0;
  /// The pieces concatenated (the host emulation's copy).
  std::vector<std::uint8_t> gather() const {
    std::vector<std::uint8_t> out;
    out.reserve(static_cast<std::size_t>(total));
    for (const auto& p : pieces) out.insert(out.end(), p.begin(), p.end());
    return out;
  }
};

/// A plane of a pack-coded block: its symbols, `bits` each (LSB first), from byte `first` of the batch.
struct packed_plane {
  std::uint32_t alphabet = 0, rows = 0, cols = 0, bits = 0;
  std::uint64_t first = 0;
};

/// One K or V block of a pack-coded container: where its planes and side bytes lie in the batch bytes.
struct packed_block {
  std::size_t segment = 0;
  bool key = true;
  block skeleton;  ///< rows, heads, positions (no values)
  std::vector<packed_plane> planes;
  std::uint64_t side_first = 0, side_size = 0;
  std::string where;  ///< "segment (layer L, tokens a..b) K" for errors
};

struct pack_batch_plan {
  batch_bytes bytes;
  std::vector<packed_block> blocks;
};

/// Plans the K and V blocks of `segments` of a container whose entropy stage is `pack`: the layout of
/// every pack stream (cpu/pack.hpp: plane headers, packed symbols, side blob), with deserialize_symbols'
/// bounds (token-dropped containers: the blocks' kept rows). Usage error for another entropy stage;
/// corrupt for a damaged stream.
inline pack_batch_plan plan_pack_batch(const segment_decoder& dec, std::span<const std::size_t> segments,
                                       const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, bool transforms_ok = false) {
  const codec& c = dec.stages();
  if (dynamic_cast<const cpu::pack_entropy*>(c.entropy.get()) == nullptr)
    throw_usage("batch decode: entropy stage '" + c.entropy->spec().name + "' has no CUDA decode after quantizer '" + c.quant->spec().name +
                "' (pack has one); the quantizers and their limits: " + builtin_registry().cuda_stages(stage_kind::quant, false));
  detail::check_plan_transforms(c, transforms_ok);
  const kvc_header& h = dec.header();
  pack_batch_plan plan;
  for (const std::size_t i : segments) {
    const segment_entry& se = h.segments.at(i);
    const std::string where = "segment (layer " + std::to_string(se.layer) + ", tokens " + std::to_string(se.t0) + ".." + std::to_string(se.t1) + ")";
    const auto seg = bytes(i);
    const std::uint64_t base = plan.bytes.total;
    plan.bytes.pieces.push_back(seg);
    plan.bytes.first.push_back(base);
    plan.bytes.total += seg.size();
    byte_reader r(seg, where);
    std::vector<std::vector<std::int32_t>> kc;
    if (h.sparse) kc = dec.read_kept(r, se);
    for (int kvi = 0; kvi < 2; ++kvi) {
      packed_block pb;
      pb.segment = i;
      pb.key = kvi == 0;
      pb.where = where + (pb.key ? " K" : " V");
      pb.skeleton = dec.coded_skeleton(se, pb.key, h.sparse ? &kc : nullptr);
      const auto stream = r.get_blob(kvi == 0 ? "K stream" : "V stream");
      byte_reader sr(stream, "pack stream of " + pb.where);
      const std::uint64_t max_symbols = cpu::max_symbols_for(pb.skeleton);
      const auto np = sr.get_varint_max("plane count", 64);
      for (std::uint64_t k = 0; k < np; ++k) {
        packed_plane p;
        p.alphabet = static_cast<std::uint32_t>(sr.get_varint_max("alphabet", 65536));
        if (p.alphabet == 0) throw_corrupt(sr.what(), "field 'alphabet': expected >= 1, found 0");
        p.rows = static_cast<std::uint32_t>(sr.get_varint_max("rows", max_symbols));
        p.cols = static_cast<std::uint32_t>(sr.get_varint_max("cols", max_symbols));
        const std::uint64_t n = static_cast<std::uint64_t>(p.rows) * p.cols;
        if (n > max_symbols) throw_corrupt(sr.what(), "plane of " + std::to_string(n) + " symbols exceeds the block's " + std::to_string(max_symbols));
        p.bits = cpu::symbol_bits(p.alphabet);
        const auto packed = sr.get_bytes(static_cast<std::size_t>((n * p.bits + 7) / 8), "packed symbols");
        p.first = base + static_cast<std::uint64_t>(packed.data() - seg.data());
        pb.planes.push_back(p);
      }
      const auto side = sr.get_blob("side bytes");
      sr.expect_end();
      pb.side_first = base + static_cast<std::uint64_t>(side.data() - seg.data());
      pb.side_size = side.size();
      plan.blocks.push_back(std::move(pb));
    }
    r.expect_end();
  }
  return plan;
}

/// A batch of element-step blocks over the chosen segments' bytes (plan_ggml_batch, plan_fp8_batch,
/// plan_raw_batch); max_items is the largest block's item count (the kernel's grid).
template <class Block>
struct store_batch_plan {
  batch_bytes bytes;
  std::vector<Block> blocks;
  std::uint64_t max_items = 0;
  std::int32_t key_head_dim = 0;  ///< think: the key rows' coded width (kv_batch_dest::key_head_dim)
};

namespace detail {
inline const packed_plane* expect_planes(const packed_block& pb, std::size_t n) {
  if (pb.planes.size() != n)
    throw_corrupt(pb.where, "expected " + std::to_string(n) + " symbol plane" + (n == 1 ? "" : "s") + ", found " + std::to_string(pb.planes.size()));
  return n ? &pb.planes[0] : nullptr;
}
inline void expect_side(const packed_block& pb, std::uint64_t n, const std::string& what) {
  if (pb.side_size != n) throw_corrupt(pb.where, "expected " + std::to_string(n) + " bytes of " + what + ", found " + std::to_string(pb.side_size));
}
template <class Block>
void set_rows(Block& g, const packed_block& pb, std::int64_t base, std::int64_t tokens) {
  g.layer = pb.skeleton.layer;
  g.key = pb.key ? 1u : 0u;
  g.tokens = static_cast<std::uint32_t>(pb.skeleton.t1 - pb.skeleton.t0);
  g.t_first = pb.skeleton.t0 - base;
  g.t_end = tokens;
}
}  // namespace detail

/// A `q8_0`..`iq4_nl` container's blocks for a batch decode into destination tokens [0, tokens),
/// destination token 0 being cache token `base`.
inline store_batch_plan<ggml_batch_block> plan_ggml_batch(const segment_decoder& dec, std::span<const std::size_t> segments,
                                                          const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, std::int64_t base,
                                                          std::int64_t tokens, bool transforms_ok = false) {
  const auto type = ggml::parse_block_type(dec.stages().quant->spec().name);
  if (!type) throw_usage("batch decode: quantizer '" + dec.stages().quant->spec().name + "' is not a ggml block format");
  if (dec.header().sparse)
    throw_usage("batch decode: " + dec.stages().quant->spec().name + " on a token-dropped container has no CUDA decode (its dense rows span the heads, "
                "whose kept tokens differ); decode it on the CPU");
  if (detail::coded_key_width(dec) != 0)
    throw_usage("batch decode: think before " + dec.stages().quant->spec().name + " has no CUDA decode (its dense rows span the heads); decode it on the CPU");
  pack_batch_plan pp = plan_pack_batch(dec, segments, bytes, transforms_ok);
  store_batch_plan<ggml_batch_block> plan;
  const kv_shape& s = dec.header().shape;
  const std::uint64_t width = static_cast<std::uint64_t>(s.kv_heads) * static_cast<std::uint64_t>(s.head_dim);
  for (const auto& pb : pp.blocks) {
    detail::expect_planes(pb, 0);
    if (width == 0 || width % ggml::qk != 0)
      throw_corrupt(pb.where, "kv_heads*head_dim = " + std::to_string(width) + " is not a multiple of 32 (a ggml container cannot hold it)");
    ggml_batch_block g;
    detail::set_rows(g, pb, base, tokens);
    detail::expect_side(pb, g.tokens * ggml::row_bytes(*type, width), std::string(ggml::block_type_name(*type)) + " blocks");
    g.first = pb.side_first;
    g.width = static_cast<std::uint32_t>(width);
    g.type = static_cast<std::uint32_t>(*type);
    plan.max_items = std::max<std::uint64_t>(plan.max_items, static_cast<std::uint64_t>(g.tokens) * width);
    plan.blocks.push_back(g);
  }
  plan.bytes = std::move(pp.bytes);
  return plan;
}

/// An `fp8` container's blocks for a batch decode (as plan_ggml_batch).
inline store_batch_plan<fp8_batch_block> plan_fp8_batch(const segment_decoder& dec, std::span<const std::size_t> segments,
                                                        const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, std::int64_t base,
                                                        std::int64_t tokens, bool transforms_ok = false, const kept_rows_plan* kept = nullptr) {
  const auto* q = dynamic_cast<const cpu::fp8_quant*>(dec.stages().quant.get());
  if (q == nullptr) throw_usage("batch decode: quantizer '" + dec.stages().quant->spec().name + "' is not fp8");
  detail::check_kept(dec.header(), kept);
  pack_batch_plan pp = plan_pack_batch(dec, segments, bytes, transforms_ok);
  store_batch_plan<fp8_batch_block> plan;
  plan.key_head_dim = detail::coded_key_width(dec);
  const kv_shape& s = dec.header().shape;
  const std::uint32_t mode = q->scale_mode() == "tensor" ? 0u : q->scale_mode() == "head" ? 1u : 2u;
  for (const auto& pb : pp.blocks) {
    fp8_batch_block g;
    detail::set_rows(g, pb, base, tokens);
    g.heads = static_cast<std::uint32_t>(s.kv_heads);
    const packed_plane* p = detail::expect_planes(pb, 1);
    const std::uint64_t rows = pb.skeleton.rows(), D = static_cast<std::uint64_t>(pb.skeleton.head_dim);  // think: key rows coded narrower
    if (p->alphabet != 256 || p->rows != rows || p->cols != D)
      throw_corrupt(pb.where, "expected a plane of " + std::to_string(rows) + " x " + std::to_string(D) + " fp8 codes (alphabet 256), found " +
                                  std::to_string(p->rows) + " x " + std::to_string(p->cols) + " (alphabet " + std::to_string(p->alphabet) + ")");
    detail::expect_side(pb, 4 * (mode == 0 ? 0 : mode == 1 ? static_cast<std::uint64_t>(s.kv_heads) : rows), "scales");
    g.codes = p->first;
    g.scales = pb.side_first;
    g.kind = static_cast<std::uint32_t>(q->format_kind());
    g.scale_mode = mode;
    if (mode == 0) g.tensor_scale = q->tensor_scale(pb.skeleton.layer, pb.key);
    plan.max_items = std::max<std::uint64_t>(plan.max_items, rows * D);
    if (kept == nullptr) {
      plan.blocks.push_back(g);
      continue;
    }
    for (const detail::head_part& hp : detail::head_parts(pb.skeleton, *kept, pb.segment)) {  // codes and scales in head order
      if (hp.rows == 0) continue;
      fp8_batch_block part = g;
      part.heads = 1;
      part.tokens = hp.rows;
      part.codes = g.codes + hp.row * D;
      part.scales = g.scales + 4 * (mode == 1 ? hp.head : hp.row);
      part.t_first = hp.dest;
      part.t_end = detail::all_tokens;
      plan.blocks.push_back(part);
    }
  }
  plan.bytes = std::move(pp.bytes);
  return plan;
}

/// A `raw` container's blocks for a batch decode (as plan_ggml_batch).
inline store_batch_plan<raw_batch_block> plan_raw_batch(const segment_decoder& dec, std::span<const std::size_t> segments,
                                                        const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, std::int64_t base,
                                                        std::int64_t tokens, bool transforms_ok = false, const kept_rows_plan* kept = nullptr) {
  const auto* q = dynamic_cast<const cpu::raw_quant*>(dec.stages().quant.get());
  if (q == nullptr) throw_usage("batch decode: quantizer '" + dec.stages().quant->spec().name + "' is not raw");
  detail::check_kept(dec.header(), kept);
  pack_batch_plan pp = plan_pack_batch(dec, segments, bytes, transforms_ok);
  store_batch_plan<raw_batch_block> plan;
  plan.key_head_dim = detail::coded_key_width(dec);
  const kv_shape& s = dec.header().shape;
  for (const auto& pb : pp.blocks) {
    raw_batch_block g;
    detail::set_rows(g, pb, base, tokens);
    g.heads = static_cast<std::uint32_t>(s.kv_heads);
    detail::expect_planes(pb, 0);
    const std::uint64_t D = static_cast<std::uint64_t>(pb.skeleton.head_dim), n = pb.skeleton.rows() * D;  // think: key rows coded narrower
    detail::expect_side(pb, n * dtype_size(q->stored()), std::string(dtype_name(q->stored())) + " values");
    g.first = pb.side_first;
    g.stored = static_cast<std::uint32_t>(q->stored());
    plan.max_items = std::max(plan.max_items, n);
    if (kept == nullptr) {
      plan.blocks.push_back(g);
      continue;
    }
    for (const detail::head_part& hp : detail::head_parts(pb.skeleton, *kept, pb.segment)) {
      if (hp.rows == 0) continue;
      raw_batch_block part = g;
      part.heads = 1;
      part.tokens = hp.rows;
      part.first = g.first + hp.row * D * dtype_size(q->stored());
      part.t_first = hp.dest;
      part.t_end = detail::all_tokens;
      plan.blocks.push_back(part);
    }
  }
  plan.bytes = std::move(pp.bytes);
  return plan;
}

namespace detail {
/// The quantizer fields of the affine_batch_block of (layer, K or V, tokens [t0, t1)) for a kivi (kq)
/// or uniform (uq) stage: heads, tokens, q (kivi: rows before the residual), bits, groups, mode and
/// parameter dtype; `param_bytes` receives the size of its group parameters.
inline affine_batch_block affine_block(const cpu::kivi_quant* kq, const cpu::uniform_quant* uq, const kv_shape& s, std::int32_t layer, bool key,
                                       std::int64_t t0, std::int64_t t1, std::uint64_t& param_bytes) {
  const cpu::qc::affine_cfg cfg = kq ? kq->affine_config(key, s.head_dim) : uq->affine_config(key, layer, s.head_dim);
  affine_batch_block g;
  g.layer = layer;
  g.key = key ? 1u : 0u;
  g.tokens = static_cast<std::uint32_t>(t1 - t0);
  g.heads = static_cast<std::uint32_t>(s.kv_heads);
  const std::int64_t first_residual = kq ? s.tokens - kq->residual() : s.tokens;
  g.q = static_cast<std::uint32_t>(std::clamp<std::int64_t>(first_residual - t0, 0, g.tokens));
  g.bits = static_cast<std::uint32_t>(cfg.bits);
  g.group = static_cast<std::uint32_t>(cfg.group);
  g.per_channel = cfg.per_channel ? 1u : 0u;
  g.mode = static_cast<std::uint32_t>(cfg.mode);
  g.param_dtype = static_cast<std::uint32_t>(cfg.pd);
  const std::vector<std::uint32_t> qcount(static_cast<std::size_t>(s.kv_heads), g.q);
  param_bytes = cpu::qc::affine_side_bytes(cfg, qcount.data(), s.kv_heads, s.head_dim);
  return g;
}
}  // namespace detail

namespace detail {
/// One K or V block with a single symbol plane, wherever its entropy stage put the plane and the side
/// bytes: with pack, in the segments' bytes (codes unpacked in place, `pack_bits` each); with rans, the
/// rANS batch's symbols from sym_first and the side bytes from side_first of the appended side array.
struct plane_source {
  const block* skeleton = nullptr;
  bool key = true;
  std::size_t segment = 0;
  std::uint32_t alphabet = 0, rows = 0, cols = 0, pack_bits = 0;
  std::uint64_t sym_first = 0, side_first = 0, side_size = 0;
  std::string where;
};
/// The blocks of `segments` planned with pack (into `pp`) or rans (into `rans`, side bytes appended to
/// `side`); corrupt for a block without exactly one plane. The sources point into pp or rans.
inline std::vector<plane_source> single_planes(const segment_decoder& dec, std::span<const std::size_t> segments,
                                               const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, bool packed,
                                               pack_batch_plan& pp, rans_batch_plan<std::uint32_t>& rans, std::vector<std::uint8_t>& side) {
  std::vector<plane_source> all;
  if (packed) {
    pp = plan_pack_batch(dec, segments, bytes, true);  // the caller checked the transforms
    for (const auto& pb : pp.blocks) {
      const packed_plane* p = expect_planes(pb, 1);
      all.push_back({&pb.skeleton, pb.key, pb.segment, p->alphabet, p->rows, p->cols, p->bits, p->first, pb.side_first, pb.side_size, pb.where});
    }
    return all;
  }
  rans = plan_rans_batch<std::uint32_t>(dec, segments, bytes, true);
  for (const auto& bb : rans.blocks) {
    const auto& se = dec.header().segments[bb.segment];
    const std::string where = "segment (layer " + std::to_string(se.layer) + ", tokens " + std::to_string(se.t0) + ".." + std::to_string(se.t1) + ")" + (bb.key ? " K" : " V");
    if (bb.headers.planes.size() != 1) throw_corrupt(where, "expected 1 symbol plane, found " + std::to_string(bb.headers.planes.size()));
    const auto& pl = bb.headers.planes[0];
    const std::uint64_t sym_first = bb.plane_first.at(0);  // restored when predicted (an empty plane has no stream: 0)
    all.push_back({&bb.skeleton, bb.key, bb.segment, pl.alphabet, pl.rows, pl.cols, 0, sym_first, side.size(), bb.headers.side.size(), where});
    side.insert(side.end(), bb.headers.side.begin(), bb.headers.side.end());
  }
  return all;
}
}  // namespace detail

/// The blocks of a container with one symbol plane per block (uniform, kivi, nf4, kmeans) for a batch
/// decode: with rans, the rANS batch (its symbols are the op's `sym`) and every block's side bytes
/// concatenated in `side`; with pack, the segments' bytes in `bytes`, the codes unpacked in place.
template <class Block>
struct plane_batch_plan {
  bool packed = false;
  rans_batch_plan<std::uint32_t> rans;  ///< !packed
  std::vector<std::uint8_t> side;       ///< !packed: the op's bytes
  batch_bytes bytes;                    ///< packed: the op's bytes
  std::vector<Block> blocks;
  std::uint64_t max_items = 0;
  std::int32_t key_head_dim = 0;  ///< think: the key rows' coded width (kv_batch_dest::key_head_dim)
};

namespace detail {
/// The emulated form of a plane_batch_plan's first kernel: the rANS batch's symbols (none for pack),
/// and the op's bytes. Throws corrupt naming the first failed stream.
template <class Block>
std::vector<std::uint8_t> plane_symbols(const plane_batch_plan<Block>& plan, std::vector<std::uint16_t>& sym) {
  if (!plan.packed) {
    sym.resize(plan.rans.builder.out_symbols);
    std::vector<rans_batch_status> st(plan.rans.builder.streams.size());
    rans_decode_batch_emulated(plan.rans.builder.host_args(sym.data()), st.data());
    rans_batch_throw_failed(std::span<const rans_batch_status>(st), [](std::size_t i) { return "rANS stream " + std::to_string(i) + " of the batch"; });
    run_batch_emulated(std::span<const pred_batch_block>(plan.rans.restore), plan.rans.op(sym.data()), [](std::size_t) {});
  }
  return plan.packed ? plan.bytes.gather() : plan.side;
}
/// Runs `op` over a plan's blocks on the CPU; corrupt for the first block with a symbol of 2^bits or more.
template <class Block, class Op>
void run_plane_op(const plane_batch_plan<Block>& plan, const Op& op) {
  run_batch_emulated(std::span<const Block>(plan.blocks), op, [&](std::size_t bi) {
    throw_corrupt("block " + std::to_string(bi) + " of the batch (layer " + std::to_string(plan.blocks[bi].layer) + (plan.blocks[bi].key ? " K" : " V") + ")",
                  "a symbol of 2^bits or more");
  });
}
}  // namespace detail

/// A `uniform` or `kivi` container's blocks for a batch decode; with outliers > 0, every outlier's exact
/// value and destination (read from the blocks' side bytes on the host), written after the blocks.
struct affine_batch_plan : plane_batch_plan<affine_batch_block> {
  std::vector<kv_put_entry> outliers;
};

/// Plans `segments` of a uniform or kivi container (as plan_ggml_batch). Usage error for other
/// quantizers or entropy stages; corrupt for blocks whose plane or side bytes do not fit.
inline affine_batch_plan plan_affine_batch(const segment_decoder& dec, std::span<const std::size_t> segments,
                                           const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, std::int64_t base,
                                           std::int64_t tokens, bool transforms_ok = false, const kept_rows_plan* kept = nullptr) {
  const codec& c = dec.stages();
  const auto* kq = dynamic_cast<const cpu::kivi_quant*>(c.quant.get());
  const auto* uq = dynamic_cast<const cpu::uniform_quant*>(c.quant.get());
  if (!kq && !uq) throw_usage("batch decode: quantizer '" + c.quant->spec().name + "' is not uniform or kivi");
  const bool outl = (kq ? kq->outliers() : uq->outliers()) > 0.0;
  detail::check_plan_transforms(c, transforms_ok);
  detail::check_kept(dec.header(), kept);
  const kv_shape& s = dec.header().shape;
  const std::uint64_t H = static_cast<std::uint64_t>(s.kv_heads);
  const std::int64_t first_residual = kq ? s.tokens - kq->residual() : s.tokens;
  affine_batch_plan plan;
  plan.key_head_dim = detail::coded_key_width(dec);
  plan.packed = dynamic_cast<const cpu::pack_entropy*>(c.entropy.get()) != nullptr;
  pack_batch_plan pp;
  const std::vector<detail::plane_source> all = detail::single_planes(dec, segments, bytes, plan.packed, pp, plan.rans, plan.side);
  const auto side_of = [&](const detail::plane_source& f) {  // a block's side bytes, on the host
    if (!plan.packed) return std::span<const std::uint8_t>(plan.side).subspan(static_cast<std::size_t>(f.side_first), static_cast<std::size_t>(f.side_size));
    std::size_t k = 0;
    while (k + 1 < pp.bytes.first.size() && pp.bytes.first[k + 1] <= f.side_first) ++k;
    return pp.bytes.pieces[k].subspan(static_cast<std::size_t>(f.side_first - pp.bytes.first[k]), static_cast<std::size_t>(f.side_size));
  };
  std::vector<std::uint32_t> oidx;
  std::vector<float> oval;
  for (const auto& f : all) {
    const block& sk = *f.skeleton;
    kv_shape sw = s;  // the block's row width (think: key rows coded narrower)
    sw.head_dim = sk.head_dim;
    const std::uint64_t D = static_cast<std::uint64_t>(sk.head_dim);
    std::uint64_t pbytes = 0;
    affine_batch_block g = detail::affine_block(kq, uq, sw, sk.layer, f.key, sk.t0, sk.t1, pbytes);
    g.packed = plan.packed ? 1u : 0u;
    g.sym_first = f.sym_first;
    g.t_first = sk.t0 - base;
    g.t_end = tokens;
    // Token-dropped: one part per head, its quantized rows a prefix of its kept rows (kivi: those before
    // the residual window), as the CPU stage splits them; the block's codes, parameters and exact rows
    // are the parts' in head order.
    std::vector<affine_batch_block> parts;
    std::uint64_t q_rows = H * g.q, exact_rows = H * (g.tokens - g.q);
    if (kept != nullptr) {
      const std::uint64_t pb = affine::param_bytes(static_cast<affine::mode>(g.mode), static_cast<affine::param_dtype>(g.param_dtype));
      q_rows = exact_rows = pbytes = 0;
      for (const detail::head_part& hp : detail::head_parts(sk, *kept, f.segment)) {
        affine_batch_block part = g;
        part.heads = 1;
        part.tokens = hp.rows;
        part.q = 0;
        while (part.q < hp.rows && sk.pos[hp.row + part.q] < first_residual) ++part.q;
        part.sym_off = q_rows * D;
        part.params = pbytes;  // relative until the side bytes are found
        part.exact = exact_rows;  // rows, relative
        part.t_first = hp.dest;
        part.t_end = detail::all_tokens;
        q_rows += part.q;
        exact_rows += hp.rows - part.q;
        pbytes += part.q > 0 ? detail::affine_groups_of(part, D) * pb : 0;
        if (hp.rows > 0) parts.push_back(part);
      }
    }
    if (f.alphabet != (1u << g.bits) || f.rows != q_rows || f.cols != D)
      throw_corrupt(f.where, "expected a plane of " + std::to_string(q_rows) + " x " + std::to_string(D) + " symbols (alphabet " + std::to_string(1u << g.bits) +
                                 "), found " + std::to_string(f.rows) + " x " + std::to_string(f.cols) + " (alphabet " + std::to_string(f.alphabet) + ")");
    g.params = f.side_first;
    const std::span<const std::uint8_t> side = side_of(f);
    // outliers > 0: the outlier list follows the parameters (cpu/quant_common.hpp's take_outliers, over
    // the block's quantized values); each outlier's destination resolved here
    std::uint64_t list = 0;
    if (outl) {
      if (f.side_size < pbytes)
        throw_corrupt(f.where, "expected at least " + std::to_string(pbytes) + " bytes of group parameters, found " + std::to_string(f.side_size));
      byte_reader r(side.subspan(static_cast<std::size_t>(pbytes)), f.where + " outliers");
      cpu::qc::read_outliers(r, static_cast<std::size_t>(q_rows * D), oidx, oval);
      list = r.position();
      std::size_t pi = 0;
      for (std::size_t j = 0; j < oidx.size(); ++j) {
        const std::uint64_t row = oidx[j] / D;
        kv_put_entry e;
        e.x = oval[j];
        e.layer = sk.layer;
        e.key = f.key ? 1u : 0u;
        e.ch = static_cast<std::int32_t>(oidx[j] % D);
        if (kept == nullptr) {  // quantized rows head after head, g.q each
          e.h = static_cast<std::int32_t>(row / g.q);
          e.t = g.t_first + static_cast<std::int64_t>(row % g.q);
          if (e.t < 0 || e.t >= tokens) continue;
        } else {  // the part holding quantized row `row` (parts in head order, their quantized rows consecutive)
          while (pi + 1 < parts.size() && parts[pi].sym_off / D + parts[pi].q <= row) ++pi;
          e.h = 0;
          e.t = parts[pi].t_first + static_cast<std::int64_t>(row - parts[pi].sym_off / D);
        }
        plan.outliers.push_back(e);
      }
    }
    const std::uint64_t exact_n = exact_rows * D, head = pbytes + list;  // the bytes before the exact rows
    if (exact_n == 0) {
      if (f.side_size != head)
        throw_corrupt(f.where, "expected " + std::to_string(head) + " bytes of group parameters" + (outl ? " and outliers" : "") + ", found " + std::to_string(f.side_size));
    } else {
      if (f.side_size < head + 1) throw_corrupt(f.where, "expected " + std::to_string(head) + " bytes of group parameters and exact rows, found " + std::to_string(f.side_size));
      const std::uint8_t t = side[static_cast<std::size_t>(head)];  // the exact rows' dtype tag (qc::put_exact)
      if (t != static_cast<std::uint8_t>(dtype::f32) && t != static_cast<std::uint8_t>(dtype::f16) && t != static_cast<std::uint8_t>(dtype::bf16))
        throw_corrupt(f.where, "field 'exact float dtype': expected f32, f16 or bf16, found tag " + std::to_string(t));
      g.exact_dtype = t;
      g.exact = f.side_first + head + 1;
      const std::uint64_t want = head + 1 + exact_n * dtype_size(static_cast<dtype>(t));
      if (f.side_size != want) throw_corrupt(f.where, "expected " + std::to_string(want) + " side bytes (group parameters and exact rows), found " + std::to_string(f.side_size));
    }
    plan.max_items = std::max<std::uint64_t>(plan.max_items, H * g.tokens * D);
    if (kept == nullptr) {
      plan.blocks.push_back(g);
      continue;
    }
    for (affine_batch_block& part : parts) {
      part.params += g.params;
      part.exact = g.exact + part.exact * D * dtype_size(static_cast<dtype>(g.exact_dtype));
      part.exact_dtype = g.exact_dtype;
      plan.blocks.push_back(part);
    }
  }
  if (plan.packed) plan.bytes = std::move(pp.bytes);
  return plan;
}

/// Runs a planned uniform / kivi batch on the CPU through the CUDA kernels' logic (the rANS batch when
/// there is one, then affine_batch_op, then the outliers' kv_put_op), writing into the host view `dst`.
inline void decode_batch_emulated(const affine_batch_plan& plan, const kv_view& dst) {
  if (dst.space != memory_space::host) throw_usage("decode_batch_emulated: the destination view is in device memory");
  std::vector<std::uint16_t> sym;
  const std::vector<std::uint8_t> all = detail::plane_symbols(plan, sym);
  std::vector<void*> k, v;
  const kv_batch_dest d = batch_dest(dst, k, v, plan.key_head_dim);
  detail::run_plane_op(plan, affine_batch_op{sym.data(), all.data(), d});
  const kv_put_block ob{0, plan.outliers.size(), 0, 1};
  run_batch_emulated(std::span<const kv_put_block>(&ob, 1), kv_put_op{plan.outliers.data(), d}, [](std::size_t) {});
}

// ---- nf4, kmeans (codebook quantizers) ------------------------------------------------------------

/// An `nf4` or `kmeans` container's blocks for a batch decode (core/codebook.hpp's codebook_batch_op):
/// with rans, the rANS batch (the op's symbols) and the blocks' side bytes in `side`; with pack, the
/// segments' bytes in `bytes`, codes unpacked in place; kmeans' codebooks (the stage state) in `books`.
struct codebook_batch_plan : plane_batch_plan<codebook_batch_block> {
  std::vector<float> books;
};

/// Plans `segments` of an nf4 or kmeans container (as plan_affine_batch). Usage error for other
/// quantizers or entropy stages; corrupt for blocks whose plane or side bytes do not fit.
inline codebook_batch_plan plan_codebook_batch(const segment_decoder& dec, std::span<const std::size_t> segments,
                                               const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, std::int64_t base,
                                               std::int64_t tokens, bool transforms_ok = false, const kept_rows_plan* kept = nullptr) {
  const codec& c = dec.stages();
  const auto* nq = dynamic_cast<const cpu::nf4_quant*>(c.quant.get());
  const auto* kq = dynamic_cast<const cpu::kmeans_quant*>(c.quant.get());
  if (!nq && !kq) throw_usage("batch decode: quantizer '" + c.quant->spec().name + "' is not nf4 or kmeans");
  detail::check_plan_transforms(c, transforms_ok);
  detail::check_kept(dec.header(), kept);
  const kv_shape& s = dec.header().shape;
  const std::uint64_t H = static_cast<std::uint64_t>(s.kv_heads);
  codebook_batch_plan plan;
  plan.key_head_dim = detail::coded_key_width(dec);
  plan.packed = dynamic_cast<const cpu::pack_entropy*>(c.entropy.get()) != nullptr;
  const std::uint32_t bits = nq ? 4u : static_cast<std::uint32_t>(kq->bits());
  const std::uint64_t pb = nq ? affine::param_bytes(affine::mode::symmetric, nq->pd()) : 0;
  if (kq) {
    plan.books = kq->codebooks();
    if (plan.books.size() != 2 * static_cast<std::size_t>(s.layers) * kq->levels())
      throw_usage("batch decode: kmeans has no codebooks for this cache (load the container's stage state first)");
  }
  pack_batch_plan pp;
  const std::vector<detail::plane_source> all = detail::single_planes(dec, segments, bytes, plan.packed, pp, plan.rans, plan.side);
  for (const auto& f : all) {
    const block& sk = *f.skeleton;
    const std::uint64_t D = static_cast<std::uint64_t>(sk.head_dim), G = nq ? nq->group_of(sk.head_dim) : 1;  // think: key rows coded narrower
    codebook_batch_block g;
    g.layer = sk.layer;
    g.key = f.key ? 1u : 0u;
    g.tokens = static_cast<std::uint32_t>(sk.t1 - sk.t0);
    g.heads = static_cast<std::uint32_t>(H);
    g.bits = bits;
    g.group = static_cast<std::uint32_t>(G);
    g.packed = plan.packed ? 1u : 0u;
    g.nf4 = nq ? 1u : 0u;
    g.param_dtype = nq ? static_cast<std::uint32_t>(nq->pd()) : 0u;
    g.sym_first = f.sym_first;
    g.side = f.side_first;
    g.book = kq ? (2 * static_cast<std::uint64_t>(sk.layer) + (f.key ? 0u : 1u)) * kq->levels() : 0;
    g.t_first = sk.t0 - base;
    g.t_end = tokens;
    const std::uint64_t rows = sk.rows();  // H x tokens, or a token-dropped block's kept rows
    if (f.alphabet != (1u << bits) || f.rows != rows || f.cols != D || (plan.packed && f.pack_bits != bits))
      throw_corrupt(f.where, "expected a plane of " + std::to_string(rows) + " x " + std::to_string(D) + " symbols (alphabet " + std::to_string(1u << bits) +
                                 "), found " + std::to_string(f.rows) + " x " + std::to_string(f.cols) + " (alphabet " + std::to_string(f.alphabet) + ")");
    const std::uint64_t want = nq ? rows * D / G * pb : 0;
    if (f.side_size != want)
      throw_corrupt(f.where, "expected " + std::to_string(want) + (nq ? " bytes of absmax scales" : " side bytes") + ", found " + std::to_string(f.side_size));
    plan.max_items = std::max<std::uint64_t>(plan.max_items, rows * D);
    if (kept == nullptr) {
      plan.blocks.push_back(g);
      continue;
    }
    for (const detail::head_part& hp : detail::head_parts(sk, *kept, f.segment)) {  // codes and absmax in head order
      if (hp.rows == 0) continue;
      codebook_batch_block part = g;
      part.heads = 1;
      part.tokens = hp.rows;
      part.sym_off = hp.row * D;
      part.side = g.side + (nq ? hp.row * D / G * pb : 0);
      part.t_first = hp.dest;
      part.t_end = detail::all_tokens;
      plan.blocks.push_back(part);
    }
  }
  if (plan.packed) plan.bytes = std::move(pp.bytes);
  return plan;
}

/// Runs a planned nf4 / kmeans batch on the CPU through the CUDA kernels' logic (the rANS batch when
/// there is one, then codebook_batch_op), writing into the host view `dst`.
inline void decode_batch_emulated(const codebook_batch_plan& plan, const kv_view& dst) {
  if (dst.space != memory_space::host) throw_usage("decode_batch_emulated: the destination view is in device memory");
  std::vector<std::uint16_t> sym;
  const std::vector<std::uint8_t> all = detail::plane_symbols(plan, sym);
  std::vector<void*> k, v;
  detail::run_plane_op(plan, codebook_batch_op{sym.data(), all.data(), plan.books.data(), batch_dest(dst, k, v, plan.key_head_dim)});
}

template <class Block> struct batch_op_of;
template <> struct batch_op_of<ggml_batch_block> { using type = ggml_batch_op; };
template <> struct batch_op_of<fp8_batch_block> { using type = fp8_batch_op; };
template <> struct batch_op_of<raw_batch_block> { using type = raw_batch_op; };

/// Runs a planned ggml / fp8 / raw batch on the CPU through the CUDA kernel's element step, writing
/// into the host view `dst`.
template <class Block>
void decode_batch_emulated(const store_batch_plan<Block>& plan, const kv_view& dst) {
  if (dst.space != memory_space::host) throw_usage("decode_batch_emulated: the destination view is in device memory");
  const std::vector<std::uint8_t> all = plan.bytes.gather();
  std::vector<void*> k, v;
  const typename batch_op_of<Block>::type op{all.data(), batch_dest(dst, k, v, plan.key_head_dim)};
  run_batch_emulated(std::span<const Block>(plan.blocks), op, [](std::size_t) {});
}

/// Which batch decoder takes a container's codec: cachegen (cachegen-quant|rans: the kvc levels),
/// cachegen_ac (cachegen-quant|ac: the cachegen preset), codebook (nf4, kmeans), affine (uniform, kivi), or, with pack, ggml (q8_0 .. iq4_nl), fp8 or raw. Usage error naming the
/// scope for any other codec (the planners then check the rest: transforms, dropped tokens, ...).
enum class batch_kind { cachegen, cachegen_ac, affine, codebook, ggml, fp8, raw };
inline batch_kind batch_kind_of(const codec& c) {
  const std::string& q = c.quant->spec().name;
  if (q == "kivi" || q == "uniform") return batch_kind::affine;
  if (q == "nf4" || q == "kmeans") return batch_kind::codebook;
  if (q == "cachegen-quant" && dynamic_cast<const cpu::ac_entropy*>(c.entropy.get()) != nullptr) return batch_kind::cachegen_ac;
  if (dynamic_cast<const cpu::pack_entropy*>(c.entropy.get()) != nullptr) {
    if (ggml::parse_block_type(q)) return batch_kind::ggml;
    if (q == "fp8") return batch_kind::fp8;
    if (q == "raw") return batch_kind::raw;
    throw_usage("batch decode: quantizer '" + q + "' with pack has no CUDA decode; the quantizers with one: " +
                builtin_registry().cuda_stages(stage_kind::quant, false));
  }
  return batch_kind::cachegen;  // plan_cachegen_batch names what it does not take
}

/// Plans `segments` with the decoder batch_kind_of picks and runs it on the CPU (the emulation of the
/// CUDA seam) into the host view `dst` of destination tokens [0, tokens), token 0 being cache token `base`.
/// With transforms (hadamard, derope, think) the quantizer's values go to an f32 scratch view first
/// (think's key rows at their coded width, the first channels of each row), then kv_finish_op inverts
/// the transforms into `dst` (think: each kept channel back in place, zeros in the pruned ones). A
/// token-dropped container's kept rows go to a compact
/// buffer (kept_rows_plan: f32 with transforms, else dst's dtype), then kv_finish_op moves them into
/// `dst` and writes the dropped tokens as zeros.
inline void decode_batch_emulated(const segment_decoder& dec, std::span<const std::size_t> segments,
                                  const std::function<std::span<const std::uint8_t>(std::size_t)>& bytes, std::int64_t base, std::int64_t tokens,
                                  const kv_view& dst) {
  const codec& c = dec.stages();
  const batch_kind kind = batch_kind_of(c);
  std::deque<std::vector<double>> tables;
  const kvc_header& h = dec.header();
  row_transforms ts = batch_row_transforms(
      c, cache_info{h.shape, h.source_dtype, h.metadata, {}}, true, [&](std::vector<double>& v) { return tables.emplace_back(std::move(v)).data(); },
      h.segments);
  std::vector<std::int32_t> channels;
  add_think_channels(ts, c, h.shape, [&](std::vector<std::int32_t>& v) { return (channels = std::move(v)).data(); });
  const bool tr = ts.any();
  const kv_shape& s = h.shape;
  kept_rows_plan kp;
  const kept_rows_plan* kept = nullptr;
  std::vector<std::vector<float>> scratch;
  std::vector<std::byte> compact;
  kv_view into = dst;
  if (h.sparse) {
    kp = plan_kept_rows(dec, segments, bytes, base, tokens);
    kept = &kp;
    const dtype ct = tr ? dtype::f32 : dst.dt;
    compact.resize(static_cast<std::size_t>(2 * kp.total * static_cast<std::uint64_t>(s.head_dim)) * dtype_size(ct));
    into = kp.view(compact.data(), ct, s.head_dim, memory_space::host);
  } else if (tr) {
    const std::size_t per = static_cast<std::size_t>(s.kv_heads) * static_cast<std::size_t>(tokens) * static_cast<std::size_t>(s.head_dim);
    scratch.assign(2 * static_cast<std::size_t>(s.layers), std::vector<float>(per));
    std::vector<std::byte*> kp2, vp;
    for (std::size_t l = 0; l < static_cast<std::size_t>(s.layers); ++l) {
      kp2.push_back(reinterpret_cast<std::byte*>(scratch[2 * l].data()));
      vp.push_back(reinterpret_cast<std::byte*>(scratch[2 * l + 1].data()));
    }
    into = kv_view::hf(kp2, vp, dtype::f32, s.kv_heads, tokens, s.head_dim);
  }
  switch (kind) {
    case batch_kind::affine: decode_batch_emulated(plan_affine_batch(dec, segments, bytes, base, tokens, tr, kept), into); break;
    case batch_kind::codebook: decode_batch_emulated(plan_codebook_batch(dec, segments, bytes, base, tokens, tr, kept), into); break;
    case batch_kind::ggml: decode_batch_emulated(plan_ggml_batch(dec, segments, bytes, base, tokens, tr), into); break;
    case batch_kind::fp8: decode_batch_emulated(plan_fp8_batch(dec, segments, bytes, base, tokens, tr, kept), into); break;
    case batch_kind::raw: decode_batch_emulated(plan_raw_batch(dec, segments, bytes, base, tokens, tr, kept), into); break;
    case batch_kind::cachegen: decode_batch_emulated(plan_cachegen_batch<std::uint32_t>(dec, segments, bytes, base, tokens, tr, kept), into); break;
    case batch_kind::cachegen_ac: decode_batch_emulated(plan_cachegen_ac_batch(dec, segments, bytes, base, tokens, tr, kept), into); break;
  }
  if (!tr && !h.sparse) return;
  std::vector<void*> sk, sv, dk, dv;
  const kv_batch_dest sd = batch_dest(into, sk, sv);
  kv_batch_src src;
  src.k = sd.k;
  src.v = sd.v;
  src.layout = sd.layout;
  src.head_dim = sd.head_dim;
  src.dtype_code = sd.dtype_code;
  std::vector<kv_gather_block> fb;
  for (std::int32_t l = 0; l < s.layers; ++l)
    for (std::uint32_t key = 0; key < 2; ++key) fb.push_back({0, static_cast<std::uint64_t>(s.kv_heads) * static_cast<std::uint64_t>(tokens), 0, l, key});
  run_batch_emulated(std::span<const kv_gather_block>(fb), kv_finish_op{src, batch_dest(dst, dk, dv), tokens, base, ts, kept ? kp.row_of.data() : nullptr},
                     [](std::size_t) {});
}

}  // namespace kvcodec
