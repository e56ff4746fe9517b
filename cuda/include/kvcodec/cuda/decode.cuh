// kvcodec/cuda/decode.cuh — decode a container into a view in GPU memory: the CUDA backend's
// decode_into, the same container and the same bytes as the CPU's (pipeline/decode.hpp).
//
//   kvcodec::cuda::decode_into(kvcodec::cuda::par.on(stream), file, dst);   // dst.space == device
//
// The host parses the container and plans its blocks (pipeline/batch.hpp: checksums, stage state and
// every header checked as the CPU decoder does), uploads the entropy streams, tables, steps and the
// view's block table (view_decoder, whose phases a benchmark times apart), then on the stream: for the
// kvc levels, the rANS batch kernel (cuda/rans.cuh) decodes and dequantizes each symbol straight into
// the view (strided or paged, f16/bf16/f32) in one kernel (batch_variant::unfused: symbols to memory,
// then the cachegen-quant kernel of cuda/cachegen.cuh). It waits for the stream at the end and throws error_kind::corrupt naming the
// first failed stream or block; on an exception the view's content is unspecified.
// `cachegen-quant|ac` (the cachegen preset) decodes with cuda/ac.cuh's fused tiled kernel (range decode
// and dequantize in one, symbols kept in shared memory) where it can, else its rows kernel and then the
// cachegen-quant kernel. Scope today: the kvc levels, `cachegen-quant|rans|ac`, `uniform`, `kivi`,
// `nf4`, `kmeans`, the block formats, `fp8` and `raw`, without prediction, after the transforms
// `hadamard` and `derope` (decoded into an f32 scratch view, then inverted into dst by kv_finish_op,
// core/transform_rows.hpp), `think` as the only transform (not before a block format: its key rows
// decode at their coded width, and kv_finish_op puts each kept channel back in place), or none.
// Token-dropped containers (every quantizer above but the block formats): the kept rows decode into a
// compact device buffer, one part per head (pipeline/batch.hpp's
// kept_rows_plan), then kv_finish_op moves them into dst and writes the dropped tokens as zeros, as
// the CPU's decode_into does. Other containers are a usage error naming the stages that have a CUDA
// decode (registry/cuda_rows.hpp).
// This header includes the CPU pipeline (host code): include it from .cu files that decode containers.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/cuda/ac.cuh"
#include "kvcodec/cuda/affine.cuh"
#include "kvcodec/cuda/batch.cuh"
#include "kvcodec/cuda/cachegen.cuh"
#include "kvcodec/cuda/codebook.cuh"
#include "kvcodec/cuda/fp8.cuh"
#include "kvcodec/cuda/ggml.cuh"
#include "kvcodec/cuda/memory.cuh"
#include "kvcodec/cuda/policy.cuh"
#include "kvcodec/cuda/rans.cuh"
#include "kvcodec/cuda/raw.cuh"
#include "kvcodec/pipeline/batch.hpp"

namespace kvcodec::cuda {

/// Which kernels decode a batch: the best this container allows (fused: entropy decode and dequantize in
/// one kernel, no symbol in memory), or (a benchmark's baseline) unfused: symbols to memory, then the
/// quantizer's kernel; for cachegen-quant|ac that is LMCache's one-thread-per-row design.
enum class batch_variant { best, unfused };

namespace detail {

/// The device copies a batch decode writes through: the view's per-layer bases and block table.
struct device_dest {
  device_buffer<std::int32_t> table;
  device_buffer<void*> k, v;
  kv_batch_dest d;
  explicit device_dest(const kv_view& dst, std::int32_t key_head_dim = 0) : table(std::span<const std::int32_t>(dst.block_table)) {
    std::vector<void*> hk, hv;
    d = batch_dest(dst, hk, hv, key_head_dim);
    k = device_buffer<void*>(std::span<void* const>(hk));
    v = device_buffer<void*>(std::span<void* const>(hv));
    d.k = k.data();
    d.v = v.data();
    d.layout.block_table = table.data();
  }
};

/// A device copy of a batch's segment bytes, piece by piece (no host-side concatenation).
inline device_buffer<std::uint8_t> upload(const batch_bytes& b) {
  device_buffer<std::uint8_t> d(static_cast<std::size_t>(b.total));
  for (std::size_t k = 0; k < b.pieces.size(); ++k)
    if (!b.pieces[k].empty()) check(cudaMemcpy(d.data() + b.first[k], b.pieces[k].data(), b.pieces[k].size(), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  return d;
}

/// One planned, uploaded batch: launch() queues its kernels, finish() waits and reports.
struct batch_job {
  virtual ~batch_job() = default;
  virtual void launch(const par_t& p) = 0;
  virtual void finish(const par_t& p, const std::string& name) = 0;
};

/// A pack-coded batch (ggml, fp8, raw): the segments' bytes as they are and the blocks.
template <class Block>
struct store_job final : batch_job {
  device_buffer<std::uint8_t> bytes;
  device_buffer<Block> blocks;
  device_dest dd;
  device_buffer<std::uint32_t> bad;
  std::uint64_t max_items;
  store_job(const store_batch_plan<Block>& plan, const kv_view& dst)
      : bytes(upload(plan.bytes)), blocks(std::span<const Block>(plan.blocks)), dd(dst, plan.key_head_dim), bad(plan.blocks.size() + 1), max_items(plan.max_items) {}
  void launch(const par_t& p) override {
    run_batch(blocks.data(), blocks.size(), max_items, typename batch_op_of<Block>::type{bytes.data(), dd.d}, bad.data(), p);
  }
  void finish(const par_t& p, const std::string& name) override { check(cudaStreamSynchronize(p.stream), name.c_str()); }  // no step rejects a value
};

/// A rANS batch on the device: its streams, tables and symbols, the kernel's temp storage, its launch
/// and the check of its statuses (cuda/rans.cuh).
struct rans_device {
  device_buffer<rans_batch_stream> streams;
  device_buffer<std::uint8_t> data, temp;
  device_buffer<std::uint32_t> entries, col_off;
  device_buffer<std::uint16_t> sym;
  // planes coded with prediction: restored after the batch (core/pred.hpp)
  device_buffer<pred_batch_block> restore;
  device_buffer<std::uint16_t> centre;
  device_buffer<std::uint8_t> coefs;
  device_buffer<std::uint32_t> restore_bad;
  std::uint64_t max_restore = 0;
  std::size_t count = 0, temp_bytes = 0;
  std::uint32_t max_lanes = 0;
  rans_device() = default;
  /// `symbols`: the symbol array's size (0 for a fused decode, whose sink writes elsewhere, and which
  /// a plan with planes to restore never takes).
  rans_device(const rans_batch_plan<std::uint32_t>& plan, const par_t& p, std::uint64_t symbols)
      : streams(std::span<const rans_batch_stream>(plan.builder.streams)), data(std::span<const std::uint8_t>(plan.builder.data)),
        entries(std::span<const std::uint32_t>(plan.builder.entries)), col_off(std::span<const std::uint32_t>(plan.builder.col_off)),
        sym(static_cast<std::size_t>(symbols)), restore(std::span<const pred_batch_block>(plan.restore)), centre(std::span<const std::uint16_t>(plan.centre)),
        coefs(std::span<const std::uint8_t>(plan.coefs)), restore_bad(plan.restore.size() + 1), max_restore(plan.max_restore),
        count(plan.builder.streams.size()), max_lanes(plan.builder.max_lanes) {
    rans_decode_batch(nullptr, temp_bytes, args(), p);
    temp = device_buffer<std::uint8_t>(temp_bytes);
  }
  rans_batch_args<std::uint32_t> args() { return {streams.data(), count, max_lanes, data.data(), entries.data(), col_off.data(), sym.data()}; }
  void launch(const par_t& p) {
    rans_decode_batch(temp.data(), temp_bytes, args(), p);
    run_batch(restore.data(), restore.size(), max_restore, pred_restore_op{sym.data(), centre.data(), coefs.data()}, restore_bad.data(), p);
  }
  /// Waits for p.stream; throws corrupt naming the first failed stream.
  void check_streams(const par_t& p, const std::string& name) {
    const auto st = rans_batch_statuses(temp.data(), count, p);
    rans_batch_throw_failed(std::span<const rans_batch_status>(st), [&](std::size_t i) { return name + ": rANS stream " + std::to_string(i) + " of the batch"; });
  }
};

/// Throws corrupt for the first flagged block (what(i) says why).
template <class Block, class What>
void throw_flagged(const device_buffer<std::uint32_t>& bad, const std::vector<Block>& blocks, const std::string& name, const What& what) {
  const auto flags = bad.download();
  for (std::size_t i = 0; i < blocks.size(); ++i)
    if (flags[i]) throw_corrupt(name + ": block " + std::to_string(i) + " (layer " + std::to_string(blocks[i].layer) + (blocks[i].key ? " K" : " V") + ")", what(i));
}

/// A cachegen-quant|rans batch (the kvc levels): fused, the rANS batch kernel dequantizes each symbol
/// straight into the view (cachegen_rans_sink); unfused, it writes the symbols and the cachegen-quant
/// kernel dequantizes them.
struct cachegen_job final : batch_job {
  cachegen_batch_plan<std::uint32_t> plan;
  bool fused = true;
  rans_device rans;
  device_buffer<cachegen_batch_block> blocks;
  device_buffer<std::uint32_t> block_of;
  device_buffer<float> steps;
  device_dest dd;
  device_buffer<std::uint32_t> bad;
  std::uint64_t max_elements = 0;
  cachegen_job(cachegen_batch_plan<std::uint32_t> pl, const kv_view& dst, const par_t& p, batch_variant v)
      : plan(std::move(pl)), fused(v == batch_variant::best && !plan.unfused), rans(plan.rans, p, fused ? 0 : plan.rans.builder.out_symbols),
        blocks(std::span<const cachegen_batch_block>(plan.blocks)), block_of(std::span<const std::uint32_t>(plan.block_of_stream)),
        steps(std::span<const float>(plan.steps)), dd(dst, plan.key_head_dim), bad(plan.blocks.size() + 1) {
    for (const auto& g : plan.blocks) max_elements = std::max<std::uint64_t>(max_elements, static_cast<std::uint64_t>(g.rows) * g.cols);
  }
  void launch(const par_t& p) override {
    if (fused) {
      rans_decode_batch(rans.temp.data(), rans.temp_bytes, rans.args(), p, cachegen_rans_sink{blocks.data(), block_of.data(), steps.data(), dd.d});
      return;
    }
    rans.launch(p);
    cachegen_store(blocks.data(), plan.blocks.size(), max_elements, rans.sym.data(), steps.data(), dd.d, bad.data(), p);
  }
  void finish(const par_t& p, const std::string& name) override {
    rans.check_streams(p, name);
    if (!fused) throw_flagged(bad, plan.blocks, name, [&](std::size_t i) { return "a symbol above 2*MAX = " + std::to_string(2 * plan.blocks[i].max); });
  }
};

/// A cachegen-quant|ac batch (the cachegen preset): the fused tiled kernel, or the rows kernel and
/// then dequantize + scatter.
struct cachegen_ac_job final : batch_job {
  cachegen_ac_plan plan;
  bool tiled = false;
  device_buffer<ac_batch_stream> streams;
  device_buffer<std::uint8_t> data;
  device_buffer<std::uint32_t> cdfs, status, bad;
  device_buffer<ac_tile_group> groups;
  device_buffer<cachegen_batch_block> blocks;
  device_buffer<float> steps;
  device_buffer<std::uint16_t> sym;
  device_buffer<pred_batch_block> restore;  ///< pred=prev|anchor: the planes restored between decode and dequantize
  device_buffer<std::uint32_t> restore_bad;
  device_dest dd;
  cachegen_ac_job(cachegen_ac_plan pl, const kv_view& dst, batch_variant v)
      : plan(std::move(pl)), tiled(v == batch_variant::best && !plan.groups.empty()), streams(std::span<const ac_batch_stream>(plan.streams)),
        data(std::span<const std::uint8_t>(plan.data)), cdfs(std::span<const std::uint32_t>(plan.cdfs)), status(plan.streams.size() + 1),
        bad(plan.blocks.size() + 1), groups(std::span<const ac_tile_group>(plan.groups)), blocks(std::span<const cachegen_batch_block>(plan.blocks)),
        steps(std::span<const float>(plan.steps)), sym(tiled ? 0 : static_cast<std::size_t>(plan.out_symbols)),
        restore(std::span<const pred_batch_block>(plan.restore)), restore_bad(plan.restore.size() + 1), dd(dst, plan.key_head_dim) {}
  ac_batch_args args() { return {streams.data(), plan.streams.size(), data.data(), cdfs.data(), status.data()}; }
  void launch(const par_t& p) override {
    if (tiled) {
      check(cudaMemsetAsync(bad.data(), 0, bad.size() * sizeof(std::uint32_t), p.stream), "ac flags");
      ac_decode_tiled(args(), groups.data(), plan.groups.size(), plan.tile, plan.max_alphabet, blocks.data(), steps.data(), dd.d, bad.data(), p);
    } else {
      ac_decode_rows(args(), sym.data(), p);
      run_batch(restore.data(), plan.restore.size(), plan.max_restore, pred_restore_op{sym.data()}, restore_bad.data(), p);
      cachegen_store(blocks.data(), plan.blocks.size(), plan.max_elements, sym.data(), steps.data(), dd.d, bad.data(), p);
    }
  }
  void finish(const par_t& p, const std::string& name) override {
    check(cudaStreamSynchronize(p.stream), name.c_str());
    const auto st = status.download();
    for (std::size_t i = 0; i < plan.streams.size(); ++i)
      if (st[i] != 0) throw_corrupt(name + ": range-coded stream " + std::to_string(i) + " of the batch", "does not decode exactly");
    throw_flagged(bad, plan.blocks, name, [&](std::size_t i) { return "a symbol above 2*MAX = " + std::to_string(2 * plan.blocks[i].max); });
  }
};

/// A uniform / kivi batch: the rANS batch kernel when the symbols are rANS-coded, then the affine step,
/// then (outliers > 0) the outliers' exact values written over theirs.
struct affine_job final : batch_job {
  affine_batch_plan plan;
  rans_device rans;  ///< empty for pack planes
  device_buffer<std::uint8_t> bytes;
  device_buffer<std::uint32_t> bad, put_bad;
  device_buffer<affine_batch_block> blocks;
  device_buffer<kv_put_entry> outliers;
  device_buffer<kv_put_block> put_block;
  device_dest dd;
  affine_job(affine_batch_plan pl, const kv_view& dst, const par_t& p)
      : plan(std::move(pl)), bytes(plan.packed ? upload(plan.bytes) : device_buffer<std::uint8_t>(std::span<const std::uint8_t>(plan.side))), bad(plan.blocks.size() + 1),
        put_bad(1), blocks(std::span<const affine_batch_block>(plan.blocks)), outliers(std::span<const kv_put_entry>(plan.outliers)), dd(dst, plan.key_head_dim) {
    if (!plan.packed) rans = rans_device(plan.rans, p, plan.rans.builder.out_symbols);
    const kv_put_block ob{0, plan.outliers.size(), 0, 1};
    put_block = device_buffer<kv_put_block>(std::span<const kv_put_block>(&ob, 1));
  }
  void launch(const par_t& p) override {
    if (!plan.packed) rans.launch(p);
    affine_store(blocks.data(), plan.blocks.size(), plan.max_items, rans.sym.data(), bytes.data(), dd.d, bad.data(), p);
    if (!plan.outliers.empty()) run_batch(put_block.data(), 1, plan.outliers.size(), kv_put_op{outliers.data(), dd.d}, put_bad.data(), p);
  }
  void finish(const par_t& p, const std::string& name) override {
    if (!plan.packed) rans.check_streams(p, name);
    throw_flagged(bad, plan.blocks, name, [](std::size_t) { return std::string("a symbol of 2^bits or more"); });
  }
};

/// An nf4 / kmeans batch: the rANS batch kernel when the symbols are rANS-coded, then the codebook step
/// (core/codebook.hpp's codebook_batch_op on cuda/batch.cuh's kernel).
struct codebook_job final : batch_job {
  codebook_batch_plan plan;
  rans_device rans;  ///< empty for pack planes
  device_buffer<std::uint8_t> bytes;
  device_buffer<float> books;
  device_buffer<std::uint32_t> bad;
  device_buffer<codebook_batch_block> blocks;
  device_dest dd;
  codebook_job(codebook_batch_plan pl, const kv_view& dst, const par_t& p)
      : plan(std::move(pl)), bytes(plan.packed ? upload(plan.bytes) : device_buffer<std::uint8_t>(std::span<const std::uint8_t>(plan.side))),
        books(std::span<const float>(plan.books)), bad(plan.blocks.size() + 1), blocks(std::span<const codebook_batch_block>(plan.blocks)), dd(dst, plan.key_head_dim) {
    if (!plan.packed) rans = rans_device(plan.rans, p, plan.rans.builder.out_symbols);
  }
  void launch(const par_t& p) override {
    if (!plan.packed) rans.launch(p);
    codebook_store(blocks.data(), plan.blocks.size(), plan.max_items, rans.sym.data(), bytes.data(), books.data(), dd.d, bad.data(), p);
  }
  void finish(const par_t& p, const std::string& name) override {
    if (!plan.packed) rans.check_streams(p, name);
    check(cudaStreamSynchronize(p.stream), name.c_str());
    throw_flagged(bad, plan.blocks, name, [](std::size_t) { return std::string("a symbol of 2^bits or more"); });
  }
};

}  // namespace detail

/// A container's decode into a device view in its three phases, so a benchmark can time the kernels
/// alone: the constructor parses, checks, plans and uploads (synchronous copies from pageable memory),
/// launch() queues the kernels on p.stream (again and again if wanted: they rewrite the same view),
/// finish() waits and throws error_kind::corrupt naming the first failed stream or block.
class view_decoder {
 public:
  view_decoder(const par_t& p, std::span<const std::uint8_t> file, const kv_view& dst, const decode_options& opt = {},
               batch_variant variant = batch_variant::best)
      : p_(p), name_(opt.name) {
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
    const batch_kind kind = batch_kind_of(dec.stages());
    // Transforms (hadamard, derope, think): the quantizer's kernels write an f32 scratch view (think's
    // key rows at their coded width), then kv_finish_op (core/transform_rows.hpp) inverts the
    // transforms into dst (think: the kept channels back in place, zeros in the pruned ones).
    row_transforms ts = batch_row_transforms(
        dec.stages(), cache_info{s, v.header.source_dtype, v.header.metadata, {}}, true,
        [&](const std::vector<double>& t) { return tables_.emplace_back(std::span<const double>(t)).data(); }, v.header.segments);
    add_think_channels(ts, dec.stages(), s, [&](const std::vector<std::int32_t>& ch) {
      think_channels_ = device_buffer<std::int32_t>(std::span<const std::int32_t>(ch));
      return think_channels_.data();
    });
    const bool tr = ts.any();
    const std::int64_t tokens = te - tb;
    const bool sparse = v.header.sparse;
    const kept_rows_plan* kept = nullptr;
    result_.token_begin = tb;
    result_.token_end = te;
    kv_view into = dst;
    if (sparse) {  // the kept rows: a compact buffer (f32 under transforms, else dst's dtype)
      kept_ = plan_kept_rows(dec, todo, bytes_of, tb, tokens);
      kept = &kept_;
      const dtype ct = tr ? dtype::f32 : dst.dt;
      compact_ = device_buffer<std::uint8_t>(static_cast<std::size_t>(2 * kept_.total * static_cast<std::uint64_t>(s.head_dim)) * dtype_size(ct));
      into = kept_.view(reinterpret_cast<std::byte*>(compact_.data()), ct, s.head_dim, memory_space::device);
      row_of_ = device_buffer<std::int64_t>(std::span<const std::int64_t>(kept_.row_of));
      result_.kept = kept_.kept;
    } else if (tr) {
      const std::size_t per = static_cast<std::size_t>(s.kv_heads) * static_cast<std::size_t>(tokens) * static_cast<std::size_t>(s.head_dim);
      std::vector<std::byte*> kp, vp;
      for (int l = 0; l < s.layers; ++l) {
        kp.push_back(reinterpret_cast<std::byte*>(scratch_.emplace_back(per).data()));
        vp.push_back(reinterpret_cast<std::byte*>(scratch_.emplace_back(per).data()));
      }
      into = kv_view::hf(kp, vp, dtype::f32, s.kv_heads, tokens, s.head_dim);
      into.space = memory_space::device;
    }
    if (sparse || tr) {  // the finishing step: into -> dst
      scratch_dest_ = std::make_unique<detail::device_dest>(into);
      final_dest_ = std::make_unique<detail::device_dest>(dst);
      kv_batch_src src;
      src.k = scratch_dest_->d.k;
      src.v = scratch_dest_->d.v;
      src.layout = scratch_dest_->d.layout;
      src.head_dim = s.head_dim;
      src.dtype_code = scratch_dest_->d.dtype_code;
      finish_op_ = kv_finish_op{src, final_dest_->d, tokens, tb, ts, sparse ? row_of_.data() : nullptr};
      std::vector<kv_gather_block> fb;
      finish_rows_ = static_cast<std::uint64_t>(s.kv_heads) * static_cast<std::uint64_t>(tokens);
      for (std::int32_t l = 0; l < s.layers; ++l)
        for (std::uint32_t key = 0; key < 2; ++key) fb.push_back({0, finish_rows_, 0, l, key});
      finish_blocks_ = device_buffer<kv_gather_block>(std::span<const kv_gather_block>(fb));
      finish_bad_ = device_buffer<std::uint32_t>(fb.size() + 1);
    }
    switch (kind) {
      case batch_kind::affine: job_ = std::make_unique<detail::affine_job>(plan_affine_batch(dec, todo, bytes_of, tb, tokens, tr, kept), into, p); break;
      case batch_kind::codebook: job_ = std::make_unique<detail::codebook_job>(plan_codebook_batch(dec, todo, bytes_of, tb, tokens, tr, kept), into, p); break;
      case batch_kind::ggml: job_ = std::make_unique<detail::store_job<ggml_batch_block>>(plan_ggml_batch(dec, todo, bytes_of, tb, tokens, tr), into); break;
      case batch_kind::fp8: job_ = std::make_unique<detail::store_job<fp8_batch_block>>(plan_fp8_batch(dec, todo, bytes_of, tb, tokens, tr, kept), into); break;
      case batch_kind::raw: job_ = std::make_unique<detail::store_job<raw_batch_block>>(plan_raw_batch(dec, todo, bytes_of, tb, tokens, tr, kept), into); break;
      case batch_kind::cachegen:
        job_ = std::make_unique<detail::cachegen_job>(plan_cachegen_batch<std::uint32_t>(dec, todo, bytes_of, tb, tokens, tr, kept), into, p, variant);
        break;
      case batch_kind::cachegen_ac:
        job_ = std::make_unique<detail::cachegen_ac_job>(plan_cachegen_ac_batch(dec, todo, bytes_of, tb, tokens, tr, kept), into, variant);
        break;
    }
  }
  void launch() {
    job_->launch(p_);
    if (scratch_dest_) run_batch(finish_blocks_.data(), finish_blocks_.size(), finish_rows_, finish_op_, finish_bad_.data(), p_);
  }
  void finish() { job_->finish(p_, name_); }  // waits for the stream: the finishing kernel too (it rejects nothing)
  /// The decoded range and, for a token-dropped container, its kept tokens: what decode_into reports.
  const decode_result& result() const noexcept { return result_; }

 private:
  par_t p_;
  std::string name_;
  std::unique_ptr<detail::batch_job> job_;
  // transforms: the f32 scratch view, derope's tables, the finishing step; token-dropped containers:
  // the compact kept rows and where each destination row finds its own
  std::deque<device_buffer<double>> tables_;
  device_buffer<std::int32_t> think_channels_;
  std::deque<device_buffer<float>> scratch_;
  kept_rows_plan kept_;
  device_buffer<std::uint8_t> compact_;
  device_buffer<std::int64_t> row_of_;
  std::unique_ptr<detail::device_dest> scratch_dest_, final_dest_;
  kv_finish_op finish_op_;
  device_buffer<kv_gather_block> finish_blocks_;
  device_buffer<std::uint32_t> finish_bad_;
  std::uint64_t finish_rows_ = 0;
  decode_result result_;
};

/// Decodes the container `file` (host memory), all of it or the token range in `opt`, into the device
/// view `dst`; returns the range and (token-dropped containers, whose dropped tokens are written as
/// zeros) the kept tokens, as kvcodec::decode_into does. Synchronous with respect to p.stream (it waits
/// for the kernels to report).
inline decode_result decode_into(const par_t& p, std::span<const std::uint8_t> file, const kv_view& dst, const decode_options& opt = {}) {
  view_decoder d(p, file, dst, opt);
  d.launch();
  d.finish();
  return d.result();
}

}  // namespace kvcodec::cuda
