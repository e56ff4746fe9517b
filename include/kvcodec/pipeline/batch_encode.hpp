// kvcodec/pipeline/batch_encode.hpp — encode with the quantizer run block-parallel elsewhere: the CUDA
// backend's encoder (cuda/encode.cuh) and its host emulation (host_batch_executor, what CI runs).
//
// Scope: dense caches quantized by cachegen-quant (the kvc levels), the llama.cpp block formats (q8_0
// .. iq4_nl), fp8 (tensor, head or token scales), raw, uniform or kivi (outliers 0), nf4, kmeans, with any entropy
// stage (it runs on the host), without drop stages or transforms. The element steps of core/
// (cachegen_amax_op then cachegen_code_op, the stored scales found in between as cpu/cachegen.hpp finds
// them; ggml_encode_op; fp8_amax_op then fp8_code_op, the scales found in between on
// the host as cpu/fp8.hpp finds them; raw_encode_op; affine_params_op, affine_code_op and, for kivi's
// residual rows, affine_exact_check_op and affine_exact_op) write every block's bytes into one buffer
// in the executor's memory; the host copies it back, makes each block's symbols from it and writes the container with
// encode_symbols_to. The container is the CPU encoder's, byte for byte (tests/pipeline/test_batch_encode.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/core/affine.hpp"
#include "kvcodec/core/cachegen.hpp"
#include "kvcodec/core/codebook.hpp"
#include "kvcodec/core/fp8.hpp"
#include "kvcodec/core/ggml_blocks.hpp"
#include "kvcodec/core/raw.hpp"
#include "kvcodec/core/rans_batch.hpp"
#include "kvcodec/cpu/cachegen.hpp"
#include "kvcodec/cpu/codebook.hpp"
#include "kvcodec/cpu/fp8.hpp"
#include "kvcodec/cpu/kivi.hpp"
#include "kvcodec/cpu/pack.hpp"
#include "kvcodec/cpu/rans.hpp"
#include "kvcodec/cpu/raw.hpp"
#include "kvcodec/cpu/uniform.hpp"
#include "kvcodec/pipeline/batch.hpp"
#include "kvcodec/pipeline/encode.hpp"

namespace kvcodec {

/// A batch encoder's memory and launches, on the host (the emulation of cuda/encode.cuh's executor):
///   src(view)            a kv_batch_src over the view (pointer arrays owned by the executor)
///   bytes(n), floats(n)  n zeroed elements in the executor's memory, owned by it
///   run(blocks, max, op) op over every item of every block (blocks: a host vector)
///   get(dst, src, n)     n bytes from the executor's memory to the host; put(dst, src, n) the reverse
///   rans_encode(args)    the rANS encode kernel (core/rans_batch.hpp) over arrays in its memory
struct host_batch_executor {
  kv_batch_src src(const const_kv_view& kv) {
    if (kv.space != memory_space::host) throw_usage("encode: the host batch encoder reads host memory; this view is in device memory");
    const void* const* k = ptrs_.emplace_back(kv.k.begin(), kv.k.end()).data();
    const void* const* v = ptrs_.emplace_back(kv.v.begin(), kv.v.end()).data();  // inner buffers stay put
    return kv_batch_src{k, v, kv.layout(), kv.head_dim, static_cast<std::uint32_t>(kv.dt)};
  }
  std::uint8_t* bytes(std::size_t n) { return mem_.emplace_back(n).data(); }
  float* floats(std::size_t n) { return reinterpret_cast<float*>(fmem_.emplace_back(n).data()); }
  template <class Block, class Op>
  void run(const std::vector<Block>& blocks, std::uint64_t, const Op& op) {
    run_batch_emulated(std::span<const Block>(blocks), op, [](std::size_t) {});
  }
  void get(void* dst, const void* src, std::size_t n) { if (n) std::memcpy(dst, src, n); }
  void put(void* dst, const void* src, std::size_t n) { if (n) std::memcpy(dst, src, n); }
  void rans_encode(const rans_encode_args& a) {
    rans_encode_batch_emulated(a);
    ++rans_batches;
  }
  std::size_t rans_batches = 0;  ///< rANS encode batches run (the tests check which path a codec took)

 private:
  std::vector<std::vector<const void*>> ptrs_;
  std::vector<std::vector<std::uint8_t>> mem_;
  std::vector<std::vector<float>> fmem_;
};

namespace detail {
/// Block i of a dense cache in the encoders' order: segment i / 2 = (chunk, layer) chunk-major, K when even.
struct batch_slot {
  std::int32_t layer = 0;
  bool key = true;
  std::int64_t t0 = 0, t1 = 0;
};
inline batch_slot batch_slot_of(const kv_shape& s, std::int64_t chunk_tokens, std::size_t i) {
  const std::size_t seg = i / 2, L = static_cast<std::size_t>(s.layers);
  const std::int64_t t0 = static_cast<std::int64_t>(seg / L) * chunk_tokens;
  return {static_cast<std::int32_t>(seg % L), i % 2 == 0, t0, std::min(s.tokens, t0 + chunk_tokens)};
}
}  // namespace detail

namespace detail {

/// Block i's one plane of symbols in the executor's buffer (a byte each, or 16-bit little-endian when wide).
struct batch_plane {
  std::uint64_t sym_first = 0;
  std::uint32_t alphabet = 1, rows = 0, cols = 1;
  std::uint32_t wide = 0;
};

/// Copies n elements of a host vector into new executor memory.
template <class X, class T>
T* upload(X& x, const std::vector<T>& v) {
  T* d = reinterpret_cast<T*>(x.bytes(v.size() * sizeof(T)));
  x.put(d, v.data(), v.size() * sizeof(T));
  return d;
}

/// The rANS entropy stage run by the executor (no prediction): the blocks' column histograms
/// (rans_hist_op), the models fitted from them on the host as the stage fits them (tables=shared: one
/// per (layer, K/V) over every chunk; tables=chunk: one per block), the streams coded by x.rans_encode
/// and laid out by rans_stream_gather_op; only the histograms and the coded streams come back to the
/// host, which writes each block with the stage's batch_write. side_of(i, out) appends block i's side bytes.
template <class X, cpu::cpu_policy P, class Side>
encode_report encode_rans_batch_to(X& x, const P& policy, codec& c, cpu::rans_entropy& re, const cache_info& info, const bytes& qstate, byte_sink& sink,
                                   const encode_options& opt, const kv_extras& ex, const std::uint8_t* sym_d, const std::vector<batch_plane>& planes,
                                   const Side& side_of) {
  const kv_shape& s = info.shape;
  const std::size_t nb = planes.size();
  const bool shared = re.shared_tables();
  constexpr std::size_t none = ~std::size_t{0};
  struct ctx_t {
    std::int32_t layer = 0;
    bool key = true;
    std::uint32_t alphabet = 0, cols = 0;
    std::uint64_t first = 0;
  };
  std::vector<ctx_t> ctxs;
  std::vector<std::size_t> ctx_of(nb, none);
  std::vector<rans_hist_block> hb;
  std::uint64_t hist_total = 0, max_n = 0;
  for (std::size_t i = 0; i < nb; ++i) {
    const auto sl = batch_slot_of(s, opt.chunk_tokens, i);
    const batch_plane& p = planes[i];
    re.batch_check(p.alphabet, p.rows, p.cols, "rans encode");
    const std::uint64_t n = static_cast<std::uint64_t>(p.rows) * p.cols;
    if (n == 0) continue;
    std::size_t k = ctxs.size();
    if (shared)
      for (std::size_t j = 0; j < ctxs.size(); ++j)
        if (ctxs[j].layer == sl.layer && ctxs[j].key == sl.key) k = j;
    if (k == ctxs.size()) {
      ctxs.push_back({sl.layer, sl.key, p.alphabet, p.cols, hist_total});
      hist_total += static_cast<std::uint64_t>(p.cols) * p.alphabet;
    } else if (ctxs[k].alphabet != p.alphabet || ctxs[k].cols != p.cols) {
      throw_usage("rans:tables=shared: plane 0 of layer " + std::to_string(sl.layer) + " changes shape between chunks; use tables=chunk");
    }
    ctx_of[i] = k;
    hb.push_back({p.sym_first, n, ctxs[k].first, p.cols, p.alphabet, p.wide});
    max_n = std::max(max_n, n);
  }
  // Histograms: every symbol counted in its context's column (atomic adds in the executor's memory).
  std::vector<std::uint32_t> hist(static_cast<std::size_t>(hist_total));
  if (!hb.empty()) {
    std::uint32_t* hist_d = reinterpret_cast<std::uint32_t*>(x.bytes(hist.size() * sizeof(std::uint32_t)));
    x.run(hb, max_n, rans_hist_op{sym_d, hist_d});
    x.get(hist.data(), hist_d, hist.size() * sizeof(std::uint32_t));
  }
  const auto hist_of = [&](const ctx_t& k) {
    const auto b = hist.begin() + static_cast<std::ptrdiff_t>(k.first);
    return std::vector<std::uint32_t>(b, b + static_cast<std::ptrdiff_t>(static_cast<std::uint64_t>(k.cols) * k.alphabet));
  };
  bytes est;
  if (shared) {
    std::vector<cpu::rans_entropy::batch_hist> hs;
    for (const auto& k : ctxs) hs.push_back({k.layer, k.key, k.alphabet, k.cols, hist_of(k)});
    est = re.batch_fit_shared(hs);
  } else {
    est = re.fit({}, info);
  }
  // Models per block (fitted on the host, in parallel for tables=chunk), then one table array.
  std::vector<cpu::rans_entropy::batch_model> models(nb);
  cpu::parallel_for(policy, nb, [&](std::size_t i) {
    if (ctx_of[i] == none) return;
    const auto sl = batch_slot_of(s, opt.chunk_tokens, i);
    const block b = block_skeleton(s, sl.layer, sl.key, sl.t0, sl.t1, nullptr);
    const batch_plane& p = planes[i];
    models[i] = re.batch_model_of(b, p.alphabet, p.cols, static_cast<std::uint64_t>(p.rows) * p.cols,
                                  shared ? std::vector<std::uint32_t>{} : hist_of(ctxs[ctx_of[i]]));
  });
  std::vector<rans_enc_symbol> tables;
  std::vector<std::uint32_t> col_tab, col_alpha;
  std::vector<std::pair<const void*, std::uint32_t>> model_cols;  // model -> its col_base
  std::vector<rans_encode_stream> streams;
  std::vector<std::size_t> block_of;
  std::uint64_t words = 0, states = 0;
  std::uint32_t max_lanes = 32;
  for (std::size_t i = 0; i < nb; ++i) {
    if (ctx_of[i] == none) continue;
    const auto& rm = models[i].model();
    std::uint32_t col_base = 0;
    bool found = false;
    for (const auto& [m, cb] : model_cols)
      if (m == &rm) col_base = cb, found = true;
    if (!found) {
      std::vector<std::uint32_t> first_of;
      for (const auto& t : rm.enc) {
        first_of.push_back(static_cast<std::uint32_t>(tables.size()));
        tables.insert(tables.end(), t.sym.begin(), t.sym.end());
      }
      col_base = static_cast<std::uint32_t>(col_tab.size());
      for (std::uint32_t cc = 0; cc < planes[i].cols; ++cc) {
        const std::uint32_t g = rm.m.groups == 1 ? 0 : rm.m.group_of_col[cc];
        col_tab.push_back(first_of[g]);
        col_alpha.push_back(static_cast<std::uint32_t>(rm.enc[g].sym.size()));
      }
      model_cols.emplace_back(&rm, col_base);
    }
    const batch_plane& p = planes[i];
    const std::uint64_t n = static_cast<std::uint64_t>(p.rows) * p.cols;
    const auto lanes = static_cast<std::uint32_t>(models[i].lanes);
    streams.push_back({p.sym_first, n, words, states, lanes, p.cols, col_base, p.wide});
    block_of.push_back(i);
    words += n;
    states += lanes;
    max_lanes = std::max(max_lanes, lanes);
  }
  // Code every stream, then lay them out back to back and bring them to the host.
  std::vector<std::uint64_t> word_count(streams.size());
  std::vector<std::uint32_t> bad(streams.size());
  std::vector<std::uint8_t> coded;
  std::vector<std::uint64_t> coded_first(streams.size() + 1, 0);
  if (!streams.empty()) {
    rans_encode_args a;
    a.streams = upload(x, streams);
    a.count = streams.size();
    a.max_lanes = max_lanes;
    a.sym = sym_d;
    a.tables = upload(x, tables);
    a.col_tab = upload(x, col_tab);
    a.col_alpha = upload(x, col_alpha);
    a.words = reinterpret_cast<std::uint16_t*>(x.bytes(static_cast<std::size_t>(words) * 2));
    a.states = reinterpret_cast<std::uint32_t*>(x.bytes(static_cast<std::size_t>(states) * 4));
    a.word_count = reinterpret_cast<std::uint64_t*>(x.bytes(streams.size() * 8));
    a.bad = reinterpret_cast<std::uint32_t*>(x.bytes(streams.size() * 4));
    x.rans_encode(a);
    x.get(word_count.data(), a.word_count, word_count.size() * 8);
    x.get(bad.data(), a.bad, bad.size() * 4);
    std::vector<rans_gather_block> gb(streams.size());
    std::uint64_t max_bytes = 0;
    for (std::size_t k = 0; k < streams.size(); ++k) {
      if (bad[k] != 0) {
        const auto sl = batch_slot_of(s, opt.chunk_tokens, block_of[k]);
        throw_bad_input("rans encode (layer " + std::to_string(sl.layer) + (sl.key ? " K" : " V") + ")", "symbol",
                        "symbols with a nonzero frequency in their column's table", "a symbol without one");
      }
      const rans_encode_stream& st = streams[k];
      gb[k] = {st.state_offset, st.word_offset + st.n - word_count[k], word_count[k], coded_first[k], st.lanes};
      coded_first[k + 1] = coded_first[k] + 4ull * st.lanes + 2 * word_count[k];
      max_bytes = std::max<std::uint64_t>(max_bytes, 4ull * st.lanes + 2 * word_count[k]);
    }
    std::uint8_t* coded_d = x.bytes(static_cast<std::size_t>(coded_first.back()));
    x.run(gb, max_bytes, rans_stream_gather_op{a.states, a.words, coded_d});
    coded.resize(static_cast<std::size_t>(coded_first.back()));
    x.get(coded.data(), coded_d, coded.size());
  }
  std::vector<std::size_t> stream_of(nb, none);
  for (std::size_t k = 0; k < block_of.size(); ++k) stream_of[block_of[k]] = k;
  return encode_blocks_to(policy, c, info, qstate, std::move(est), sink, opt, ex, [&](std::size_t i, const block&, bytes& out, coder_stats& st) {
    const batch_plane& p = planes[i];
    bytes side;
    side_of(i, side);
    const std::size_t k = stream_of[i];
    std::span<const std::uint8_t> stream;
    if (k != none) stream = std::span<const std::uint8_t>(coded).subspan(static_cast<std::size_t>(coded_first[k]), static_cast<std::size_t>(coded_first[k + 1] - coded_first[k]));
    re.batch_write(true, p.alphabet, p.rows, p.cols, k != none ? &models[i] : nullptr, stream, side, out, st);
  });
}

}  // namespace detail

/// Encodes the dense cache `kv` (in x's memory) with codec `c` through executor `x` (see the file
/// comment) and streams the container into `sink`. Usage error for codecs outside the scope.
template <class X, cpu::cpu_policy P>
encode_report encode_batch_to(X& x, const P& policy, codec& c, const const_kv_view& kv, byte_sink& sink, const encode_options& opt = {},
                                   const kv_extras& ex = {}) {
  kv.validate("encode input");
  if (kv.tokens <= 0) throw_bad_input("encode input", "tokens", "> 0", std::to_string(kv.tokens));
  if (opt.chunk_tokens < 1) throw_usage("encode: chunk_tokens must be >= 1, found " + std::to_string(opt.chunk_tokens));
  if (kv.dt != dtype::f32 && kv.dt != dtype::f16 && kv.dt != dtype::bf16)
    throw_usage("encode: the batch encoder reads f32, f16 or bf16 views, not " + std::string(dtype_name(kv.dt)));
  if (opt.read_rows) throw_usage("encode: the batch encoder reads the view's memory; encode_options::read_rows is for the CPU encoder");
  if (!ex.kept.empty()) throw_usage("encode: the batch encoder takes dense caches (the input has kept sets)");
  if (!c.drops().empty() || !c.transforms.empty())
    throw_usage("encode: codec '" + c.spec() + "': the batch encoder runs no drop stage or transform");
  const kv_shape s = detail::checked_shape(kv, ex);
  const cache_info info{s, ex.source_dtype.value_or(kv.dt), ex.metadata, {}};
  const std::string& qn = c.quant->spec().name;
  const auto gtype = ggml::parse_block_type(qn);
  auto* fq = dynamic_cast<cpu::fp8_quant*>(c.quant.get());
  auto* rq = dynamic_cast<cpu::raw_quant*>(c.quant.get());
  const auto* kq = dynamic_cast<const cpu::kivi_quant*>(c.quant.get());
  const auto* uq = dynamic_cast<const cpu::uniform_quant*>(c.quant.get());
  const auto* cq = qn == "cachegen-quant" ? dynamic_cast<const cpu::cachegen_quant*>(c.quant.get()) : nullptr;
  const auto* nq = dynamic_cast<const cpu::nf4_quant*>(c.quant.get());
  auto* mq = dynamic_cast<cpu::kmeans_quant*>(c.quant.get());
  if (!gtype && !fq && !rq && !kq && !uq && !cq && !nq && !mq)
    throw_usage("encode: quantizer '" + qn + "' has no CUDA encode; the quantizers with one: " + builtin_registry().cuda_stages(stage_kind::quant, true));
  if ((kq && kq->outliers() > 0.0) || (uq && uq->outliers() > 0.0))
    throw_usage("encode: " + qn + " with outliers > 0 has no CUDA encode yet; the quantizers with one: " + builtin_registry().cuda_stages(stage_kind::quant, true));
  const std::size_t nb = 2 * static_cast<std::size_t>((s.tokens + opt.chunk_tokens - 1) / opt.chunk_tokens) * static_cast<std::size_t>(s.layers);
  const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), H = static_cast<std::uint64_t>(s.kv_heads);
  const kv_batch_src src = x.src(kv);
  std::vector<std::uint64_t> first(nb + 1, 0);  // block i's bytes: [first[i], first[i + 1]) of `out`
  std::vector<std::uint8_t> out;
  std::uint8_t* buf = nullptr;  // every block's bytes, in x's memory
  bytes state;
  std::vector<std::vector<float>> side_scales(nb);  // fp8 head/token scales per block
  std::vector<affine_batch_block> ablocks;           // uniform / kivi
  std::vector<std::uint64_t> side_end(nb);           // uniform / kivi: where block i's side bytes end in `out`
  std::vector<cachegen_encode_block> cblocks;        // cachegen-quant
  std::vector<codebook_batch_block> nblocks;         // nf4
  std::vector<std::uint16_t> scale_bits;             // cachegen-quant: every block's stored scales
  if (cq) {
    state = c.quant->fit({}, info);
    cblocks.resize(nb);
    std::uint64_t scales = 0, max_scales = 0, max_items = 0;
    for (std::size_t i = 0; i < nb; ++i) {
      const auto sl = detail::batch_slot_of(s, opt.chunk_tokens, i);
      auto& g = cblocks[i];
      const int bins = cq->bins_for(sl.layer, sl.key);
      g.layer = sl.layer;
      g.key = sl.key ? 1u : 0u;
      g.tokens = static_cast<std::uint32_t>(sl.t1 - sl.t0);
      g.heads = static_cast<std::uint32_t>(H);
      g.max = bins / 2 - 1;
      g.by_token = cq->token_axis(sl.key) ? 1u : 0u;
      g.wide = cpu::cachegen_quant::alphabet_for(bins) > 256 ? 1u : 0u;
      g.t_first = sl.t0;
      g.slot = i;
      g.sym_first = first[i];
      g.scale_first = scales;
      const std::uint64_t n = g.tokens * H * D, ns = g.by_token != 0 ? g.tokens : H * D;
      first[i + 1] = first[i] + n * (g.wide != 0 ? 2 : 1);
      scales += ns;
      max_scales = std::max(max_scales, ns);
      max_items = std::max(max_items, n);
    }
    float* amax_d = x.floats(static_cast<std::size_t>(scales));
    std::uint8_t* bad_d = x.bytes(nb);
    x.run(cblocks, max_scales, cachegen_amax_op{src, amax_d, bad_d});
    std::vector<float> amax(static_cast<std::size_t>(scales)), inv(amax.size());
    std::vector<std::uint8_t> bad(nb);
    x.get(amax.data(), amax_d, amax.size() * sizeof(float));
    x.get(bad.data(), bad_d, nb);
    for (std::size_t i = 0; i < nb; ++i)
      if (bad[i]) throw_bad_input("cachegen-quant (layer " + std::to_string(cblocks[i].layer) + ")", "data", "finite values", "a NaN or infinity");
    scale_bits.resize(amax.size());
    const bool bf = cq->bf16_scales();
    for (const auto& g : cblocks)
      for (std::uint64_t j = g.scale_first; j < g.scale_first + (g.by_token != 0 ? g.tokens : H * D); ++j) {  // quantize_with's steps
        scale_bits[j] = cachegen_scale_bits(amax[j], bf);
        const float sv = cachegen_scale_value(scale_bits[j], bf);
        inv[j] = sv > 0 ? static_cast<float>(g.max) / sv : 0.0f;
      }
    float* inv_d = x.floats(inv.size());
    x.put(inv_d, inv.data(), inv.size() * sizeof(float));
    buf = x.bytes(static_cast<std::size_t>(first[nb]));
    x.run(cblocks, max_items, cachegen_code_op{src, inv_d, buf});
  } else if (mq || nq) {
    // nf4 / kmeans blocks: codes (a byte each) from first[i], then (nf4) the groups' absmax from side;
    // set(g) fills the quantizer's fields. Returns the largest block's values.
    const auto codebook_blocks = [&](std::uint64_t G, std::uint64_t pb, const auto& set) {
      nblocks.resize(nb);
      std::uint64_t max_items = 0;
      for (std::size_t i = 0; i < nb; ++i) {
        const auto sl = detail::batch_slot_of(s, opt.chunk_tokens, i);
        auto& g = nblocks[i];
        g.layer = sl.layer;
        g.key = sl.key ? 1u : 0u;
        g.tokens = static_cast<std::uint32_t>(sl.t1 - sl.t0);
        g.heads = static_cast<std::uint32_t>(H);
        g.t_first = sl.t0;
        set(g);
        const std::uint64_t n = H * g.tokens * D;
        g.sym_first = first[i];
        g.side = first[i] + n;
        first[i + 1] = g.side + (G > 0 ? n / G * pb : 0);
        max_items = std::max(max_items, n);
      }
      return max_items;
    };
    if (mq) {
      // The codebooks: each (layer, K/V)'s strided sample gathered on the device, the Lloyd fit on the host
      // (kmeans_quant::fit_samples, as its fit()), then the codes on the device.
      const std::uint64_t total = H * static_cast<std::uint64_t>(s.tokens) * D, stride = mq->sample_stride(static_cast<std::size_t>(total));
      const std::uint64_t per = (total + stride - 1) / stride;
      std::vector<kmeans_sample_block> sb(2 * static_cast<std::size_t>(s.layers));
      for (std::size_t i = 0; i < sb.size(); ++i)
        sb[i] = {i * per, per, stride, s.tokens, static_cast<std::uint32_t>(opt.chunk_tokens), static_cast<std::uint32_t>(H), static_cast<std::int32_t>(i / 2),
                 i % 2 == 0 ? 1u : 0u};
      float* sample_d = x.floats(static_cast<std::size_t>(per * sb.size()));
      x.run(sb, per, kmeans_sample_op{src, sample_d});
      std::vector<float> flat(static_cast<std::size_t>(per * sb.size()));
      x.get(flat.data(), sample_d, flat.size() * sizeof(float));
      std::vector<std::vector<float>> sample(sb.size());
      for (std::size_t i = 0; i < sb.size(); ++i)
        sample[i].assign(flat.begin() + static_cast<std::ptrdiff_t>(i * per), flat.begin() + static_cast<std::ptrdiff_t>((i + 1) * per));
      state = mq->fit_samples(sample);
      float* books_d = x.floats(mq->codebooks().size());
      x.put(books_d, mq->codebooks().data(), mq->codebooks().size() * sizeof(float));
      const std::uint64_t max_items = codebook_blocks(0, 0, [&](codebook_batch_block& g) {
        g.bits = static_cast<std::uint32_t>(mq->bits());
        g.nf4 = 0;
        g.book = (2 * static_cast<std::uint64_t>(g.layer) + (g.key != 0 ? 0u : 1u)) * mq->levels();
      });
      buf = x.bytes(static_cast<std::size_t>(first[nb]));
      x.run(nblocks, max_items, kmeans_code_op{src, books_d, buf});
    } else {
      state = c.quant->fit({}, info);  // checks the group against head_dim
      const std::uint64_t G = nq->group_of(s.head_dim), pb = affine::param_bytes(affine::mode::symmetric, nq->pd());
      const std::uint64_t max_items = codebook_blocks(G, pb, [&](codebook_batch_block& g) {
        g.group = static_cast<std::uint32_t>(G);
        g.param_dtype = static_cast<std::uint32_t>(nq->pd());
      });
      buf = x.bytes(static_cast<std::size_t>(first[nb]));
      x.run(nblocks, max_items / G, nf4_absmax_op{src, buf});
      x.run(nblocks, max_items, nf4_code_op{src, buf});
    }
  } else if (kq || uq) {
    state = c.quant->fit({}, info);  // checks the groups against head_dim
    ablocks.resize(nb);
    std::uint64_t max_groups = 0, max_q = 0, max_exact = 0;
    for (std::size_t i = 0; i < nb; ++i) {
      const auto sl = detail::batch_slot_of(s, opt.chunk_tokens, i);
      std::uint64_t pbytes = 0;
      auto& g = ablocks[i];
      g = detail::affine_block(kq, uq, s, sl.layer, sl.key, sl.t0, sl.t1, pbytes);
      g.t_first = sl.t0;
      g.slot = i;
      const std::uint64_t codes = H * g.q * D, exact = H * (g.tokens - g.q) * D;
      // block i in `out`: codes (a byte each), parameters, then (residual rows) the dtype tag and the
      // values, with room for f32
      g.sym_first = first[i];
      g.params = first[i] + codes;
      g.exact = g.params + pbytes + 1;
      first[i + 1] = g.exact + 4 * exact;
      max_groups = std::max(max_groups, g.q > 0 ? detail::affine_groups_of(g, D) : 0);
      max_q = std::max(max_q, codes);
      max_exact = std::max(max_exact, exact);
    }
    buf = x.bytes(static_cast<std::size_t>(first[nb]));
    x.run(ablocks, max_groups, affine_params_op{src, buf});
    x.run(ablocks, max_q, affine_code_op{src, buf});
    const auto exact_dt = static_cast<std::uint32_t>(info.source_dtype == dtype::f16 || info.source_dtype == dtype::bf16 ? info.source_dtype : dtype::f32);
    std::vector<std::uint8_t> flags(nb, 0);
    if (max_exact > 0 && exact_dt != 0) {
      std::uint8_t* fl = x.bytes(nb);
      x.run(ablocks, max_exact, affine_exact_check_op{src, fl, exact_dt});
      x.get(flags.data(), fl, nb);
    }
    for (std::size_t i = 0; i < nb; ++i) {
      auto& g = ablocks[i];
      g.exact_dtype = flags[i] ? 0u : exact_dt;
      const std::uint64_t exact = H * (g.tokens - g.q) * D;
      side_end[i] = exact == 0 ? g.exact - 1 : g.exact + exact * dtype_size(static_cast<dtype>(g.exact_dtype));
    }
    if (max_exact > 0) x.run(ablocks, max_exact, affine_exact_op{src, buf});
  } else if (gtype || rq) {
    state = c.quant->fit({}, info);  // ggml: checks kv_heads*head_dim; raw: resolves the stored dtype
    std::uint64_t max_items = 0;
    if (gtype) {
      std::vector<ggml_batch_block> blocks(nb);
      const std::uint64_t rb = ggml::row_bytes(*gtype, H * D);
      for (std::size_t i = 0; i < nb; ++i) {
        const auto sl = detail::batch_slot_of(s, opt.chunk_tokens, i);
        auto& g = blocks[i];
        g.first = first[i];
        g.tokens = static_cast<std::uint32_t>(sl.t1 - sl.t0);
        g.width = static_cast<std::uint32_t>(H * D);
        g.layer = sl.layer;
        g.key = sl.key ? 1u : 0u;
        g.type = static_cast<std::uint32_t>(*gtype);
        g.t_first = sl.t0;
        first[i + 1] = first[i] + g.tokens * rb;
        max_items = std::max<std::uint64_t>(max_items, g.tokens * (H * D / ggml::qk));
      }
      buf = x.bytes(static_cast<std::size_t>(first[nb]));
      x.run(blocks, max_items, ggml_encode_op{src, buf});
    } else {
      std::vector<raw_batch_block> blocks(nb);
      const std::uint64_t es = dtype_size(rq->stored());
      for (std::size_t i = 0; i < nb; ++i) {
        const auto sl = detail::batch_slot_of(s, opt.chunk_tokens, i);
        auto& g = blocks[i];
        g.first = first[i];
        g.tokens = static_cast<std::uint32_t>(sl.t1 - sl.t0);
        g.heads = static_cast<std::uint32_t>(H);
        g.layer = sl.layer;
        g.key = sl.key ? 1u : 0u;
        g.stored = static_cast<std::uint32_t>(rq->stored());
        g.t_first = sl.t0;
        first[i + 1] = first[i] + H * g.tokens * D * es;
        max_items = std::max<std::uint64_t>(max_items, H * g.tokens * D);
      }
      buf = x.bytes(static_cast<std::size_t>(first[nb]));
      x.run(blocks, max_items, raw_encode_op{src, buf});
    }
  } else {
    std::vector<fp8_batch_block> blocks(nb);
    std::uint64_t rows = 0, max_rows = 0;
    for (std::size_t i = 0; i < nb; ++i) {
      const auto sl = detail::batch_slot_of(s, opt.chunk_tokens, i);
      auto& g = blocks[i];
      g.tokens = static_cast<std::uint32_t>(sl.t1 - sl.t0);
      g.heads = static_cast<std::uint32_t>(H);
      g.layer = sl.layer;
      g.key = sl.key ? 1u : 0u;
      g.kind = static_cast<std::uint32_t>(fq->format_kind());
      g.t_first = sl.t0;
      g.row_first = rows;
      g.codes = first[i];
      rows += H * g.tokens;
      first[i + 1] = first[i] + H * g.tokens * D;
      max_rows = std::max<std::uint64_t>(max_rows, H * g.tokens);
    }
    float* amax_d = x.floats(static_cast<std::size_t>(rows));
    x.run(blocks, max_rows, fp8_amax_op{src, amax_d});
    std::vector<float> amax(static_cast<std::size_t>(rows)), scale(amax.size());
    x.get(amax.data(), amax_d, amax.size() * sizeof(float));
    const std::string& mode = fq->scale_mode();
    const fp8_kind kind = fq->format_kind();
    if (mode == "tensor") {
      std::vector<float> tensor(2 * static_cast<std::size_t>(s.layers), 0.0f);
      for (const auto& g : blocks) {
        float& a = tensor[2 * static_cast<std::size_t>(g.layer) + (g.key ? 0u : 1u)];
        for (std::uint64_t r = 0; r < H * g.tokens; ++r) a = std::max(a, amax[static_cast<std::size_t>(g.row_first + r)]);
      }
      state = fq->fit_amax(tensor);
      for (const auto& g : blocks)
        std::fill_n(scale.begin() + static_cast<std::ptrdiff_t>(g.row_first), H * g.tokens, fq->tensor_scale(g.layer, g.key != 0));
    } else {
      for (std::size_t i = 0; i < nb; ++i) {
        const auto& g = blocks[i];
        for (std::uint64_t h = 0; h < H; ++h) {
          const std::size_t r0 = static_cast<std::size_t>(g.row_first + h * g.tokens);
          if (mode == "head") {
            const float a = *std::max_element(amax.begin() + static_cast<std::ptrdiff_t>(r0), amax.begin() + static_cast<std::ptrdiff_t>(r0 + g.tokens));
            std::fill_n(scale.begin() + static_cast<std::ptrdiff_t>(r0), g.tokens, fp8_scale(a, kind));
            side_scales[i].push_back(scale[r0]);
          } else {
            for (std::size_t r = r0; r < r0 + g.tokens; ++r) side_scales[i].push_back(scale[r] = fp8_scale(amax[r], kind));
          }
        }
      }
    }
    float* scale_d = x.floats(scale.size());
    x.put(scale_d, scale.data(), scale.size() * sizeof(float));
    buf = x.bytes(static_cast<std::size_t>(first[nb]));
    x.run(blocks, max_rows * D, fp8_code_op{src, scale_d, buf});
  }
  // The rANS stage (without prediction) runs where the symbols are: they never come back to the host.
  if (auto* re = dynamic_cast<cpu::rans_entropy*>(c.entropy.get()); re != nullptr && re->batch_encodable() && (cq || kq || uq || fq || nq || mq)) {
    std::vector<detail::batch_plane> planes(nb);
    std::vector<std::uint8_t> aside;  // uniform / kivi: every block's side bytes, gathered
    std::vector<std::uint64_t> aside_first(nb + 1, 0);
    for (std::size_t i = 0; i < nb; ++i) {
      detail::batch_plane& pl = planes[i];
      if (cq) {
        const cachegen_encode_block& g = cblocks[i];
        pl = {first[i], cpu::cachegen_quant::alphabet_for(cq->bins_for(g.layer, g.key != 0)), g.tokens, static_cast<std::uint32_t>(H * D), g.wide};
      } else if (fq) {
        pl = {first[i], 256, static_cast<std::uint32_t>((first[i + 1] - first[i]) / D), static_cast<std::uint32_t>(D), 0};
      } else if (nq || mq) {
        const codebook_batch_block& g = nblocks[i];
        pl = {g.sym_first, nq ? 16u : 1u << g.bits, static_cast<std::uint32_t>(H * g.tokens), static_cast<std::uint32_t>(D), 0};
        aside_first[i + 1] = aside_first[i] + (first[i + 1] - g.side);
      } else {
        const affine_batch_block& g = ablocks[i];
        pl = {g.sym_first, 1u << g.bits, static_cast<std::uint32_t>(H * g.q), static_cast<std::uint32_t>(D), 0};
        aside_first[i + 1] = aside_first[i] + (side_end[i] - g.params);
      }
    }
    if (!ablocks.empty() || !nblocks.empty()) {
      std::vector<copy_block> cb(nb);
      std::uint64_t max_side = 0;
      for (std::size_t i = 0; i < nb; ++i) {
        cb[i] = {!nblocks.empty() ? nblocks[i].side : ablocks[i].params, aside_first[i], aside_first[i + 1] - aside_first[i]};
        max_side = std::max(max_side, cb[i].n);
      }
      std::uint8_t* side_d = x.bytes(static_cast<std::size_t>(aside_first[nb]));
      x.run(cb, max_side, byte_copy_op{buf, side_d});
      aside.resize(static_cast<std::size_t>(aside_first[nb]));
      x.get(aside.data(), side_d, aside.size());
      for (std::size_t i = 0; i < ablocks.size(); ++i)
        if (side_end[i] != ablocks[i].exact - 1) aside[static_cast<std::size_t>(aside_first[i] + (ablocks[i].exact - 1 - ablocks[i].params))] = static_cast<std::uint8_t>(ablocks[i].exact_dtype);  // the tag
    }
    return detail::encode_rans_batch_to(x, policy, c, *re, info, state, sink, opt, ex, buf, planes, [&](std::size_t i, bytes& side) {
      if (cq) {
        const cachegen_encode_block& g = cblocks[i];
        const std::size_t ns = static_cast<std::size_t>(g.by_token != 0 ? g.tokens : H * D);
        side.resize(2 * ns);
        for (std::size_t j = 0; j < ns; ++j) kvcodec::detail::store_le16(side.data() + 2 * j, scale_bits[static_cast<std::size_t>(g.scale_first) + j]);
      } else if (fq) {
        side.resize(side_scales[i].size() * 4);
        encode_floats(side_scales[i].data(), side_scales[i].size(), dtype::f32, side.data());
      } else {
        side.assign(aside.begin() + static_cast<std::ptrdiff_t>(aside_first[i]), aside.begin() + static_cast<std::ptrdiff_t>(aside_first[i + 1]));
      }
    });
  }
  out.resize(static_cast<std::size_t>(first[nb]));
  x.get(out.data(), buf, out.size());
  for (std::size_t i = 0; i < ablocks.size(); ++i)
    if (side_end[i] != ablocks[i].exact - 1) out[static_cast<std::size_t>(ablocks[i].exact - 1)] = static_cast<std::uint8_t>(ablocks[i].exact_dtype);  // the tag
  return encode_symbols_to(policy, c, info, state, sink, opt, ex, [&](std::size_t i, symbols& sy) {
    const std::uint8_t* p = out.data() + first[i];
    const std::size_t n = static_cast<std::size_t>(first[i + 1] - first[i]);
    sy.planes.clear();
    if (!cblocks.empty()) {
      const cachegen_encode_block& g = cblocks[i];
      symbol_plane& pl = sy.planes.emplace_back();
      pl.alphabet = cpu::cachegen_quant::alphabet_for(cq->bins_for(g.layer, g.key != 0));
      pl.rows = g.tokens;
      pl.cols = static_cast<std::uint32_t>(H * D);
      pl.sym.resize(static_cast<std::size_t>(pl.rows) * pl.cols);
      for (std::size_t k = 0; k < pl.sym.size(); ++k) pl.sym[k] = g.wide != 0 ? kvcodec::detail::load_le16(p + 2 * k) : p[k];
      const std::size_t ns = static_cast<std::size_t>(g.by_token != 0 ? g.tokens : H * D);
      sy.side.resize(2 * ns);
      for (std::size_t j = 0; j < ns; ++j) kvcodec::detail::store_le16(sy.side.data() + 2 * j, scale_bits[static_cast<std::size_t>(g.scale_first) + j]);
      return;
    }
    if (!nblocks.empty()) {
      const codebook_batch_block& g = nblocks[i];
      symbol_plane& pl = sy.planes.emplace_back();
      pl.alphabet = nq ? 16u : 1u << g.bits;
      pl.rows = static_cast<std::uint32_t>(H * g.tokens);
      pl.cols = static_cast<std::uint32_t>(D);
      pl.sym.assign(p, p + (g.side - g.sym_first));
      sy.side.assign(out.begin() + static_cast<std::ptrdiff_t>(g.side), out.begin() + static_cast<std::ptrdiff_t>(first[i + 1]));
      return;
    }
    if (!ablocks.empty()) {
      const affine_batch_block& g = ablocks[i];
      symbol_plane& pl = sy.planes.emplace_back();
      pl.alphabet = 1u << g.bits;
      pl.rows = static_cast<std::uint32_t>(H * g.q);
      pl.cols = static_cast<std::uint32_t>(D);
      pl.sym.assign(p, p + (g.params - g.sym_first));
      sy.side.assign(out.begin() + static_cast<std::ptrdiff_t>(g.params), out.begin() + static_cast<std::ptrdiff_t>(side_end[i]));
      return;
    }
    if (!fq) {
      sy.side.assign(p, p + n);
      return;
    }
    symbol_plane& pl = sy.planes.emplace_back();
    pl.alphabet = 256;
    pl.cols = static_cast<std::uint32_t>(D);
    pl.rows = static_cast<std::uint32_t>(n / D);
    pl.sym.assign(p, p + n);
    sy.side.resize(side_scales[i].size() * 4);
    encode_floats(side_scales[i].data(), side_scales[i].size(), dtype::f32, sy.side.data());
  });
}

/// The same into a container in memory.
template <class X, cpu::cpu_policy P>
encoded encode_batch(X& x, const P& policy, codec& c, const const_kv_view& kv, const encode_options& opt = {}, const kv_extras& ex = {}) {
  encoded e;
  memory_sink sink(e.data);
  e.report = encode_batch_to(x, policy, c, kv, sink, opt, ex);
  return e;
}

}  // namespace kvcodec
