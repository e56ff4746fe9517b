// kvcodec/pipeline/batch_encode.hpp — encode with the quantizer run block-parallel elsewhere: the CUDA
// backend's encoder (cuda/encode.cuh) and its host emulation (host_batch_executor, what CI runs).
//
// Scope: dense caches quantized by cachegen-quant (the kvc levels), the llama.cpp block formats (q8_0
// .. iq4_nl), fp8 (tensor, head or token scales), raw, uniform or kivi (with outliers: selected by the
// executor, detail::take_batch_outliers), nf4, kmeans, with any entropy
// stage (it runs on the host); the transforms hadamard and derope, and think as a codec's only
// transform (its masks from the executor's think_masks, the key rows compacted to the kept channels
// and the key blocks' steps run with that width: run_sides). Token-dropped caches (drop stages, whose kept sets
// the executor chooses, or kept sets in the input) with raw, fp8, uniform, kivi or nf4: the kept rows
// are gathered into a compact buffer first (kv_gather_op) and each block is coded as one part per head
// (a head's kept rows are a dense range there), laid out as the CPU codes a block with ragged heads. The element steps of core/
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
#include <type_traits>
#include <vector>

#include "kvcodec/core/affine.hpp"
#include "kvcodec/core/cachegen.hpp"
#include "kvcodec/core/codebook.hpp"
#include "kvcodec/core/fp8.hpp"
#include "kvcodec/core/ggml_blocks.hpp"
#include "kvcodec/core/raw.hpp"
#include "kvcodec/core/rans_batch.hpp"
#include "kvcodec/core/think.hpp"
#include "kvcodec/core/transform_rows.hpp"
#include "kvcodec/cpu/cachegen.hpp"
#include "kvcodec/cpu/codebook.hpp"
#include "kvcodec/cpu/derope.hpp"
#include "kvcodec/cpu/fp8.hpp"
#include "kvcodec/cpu/hadamard.hpp"
#include "kvcodec/cpu/kivi.hpp"
#include "kvcodec/cpu/pack.hpp"
#include "kvcodec/cpu/rans.hpp"
#include "kvcodec/cpu/think.hpp"
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
///   select(c, kv, ex, s, dt)  the kept sets of codec c's drop stages over the view (here: the CPU stages)
///   outlier_select(key, pos, seg, take, sel)  the outliers' selection (core/affine.hpp) over arrays in its
///                        memory, segment offsets seg and take (host vectors, segments + 1 each)
///   think_masks(kv, ex, kept, width)  think's kept channels (core/think.hpp) over the view's keys and the
///                        queries (here: ex.cache's; on a GPU: the queries view)
struct host_batch_executor {
  kept_sets select(const codec& c, const const_kv_view& kv, const kv_extras& ex, const kv_shape& s, dtype source_dtype) {
    return detail::run_drops(c, kv, ex, s, source_dtype);
  }
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
  void outlier_select(const std::uint64_t* key, const std::uint32_t* pos, const std::vector<std::int64_t>& seg, const std::vector<std::int64_t>& take,
                      std::uint32_t* sel) {
    affine_outlier_select_emulated(key, pos, seg, take, sel);
  }
  /// think's masks ([layer][kv head][channel], `width` kept per head) over the view's keys (the rows in
  /// `kept` when not empty) and the queries of ex.cache, by core/think.hpp's steps.
  std::vector<std::uint8_t> think_masks(const const_kv_view& kv, const kv_extras& ex, const kept_sets& kept, std::int64_t width) {
    if (ex.cache == nullptr || !ex.cache->has_queries() || ex.cache->shape.q_heads % kv.kv_heads != 0)
      throw_bad_input("think stage input", "queries", "the cache's queries (kv_extras::cache with q_heads > 0): ThinK weighs key channels by the queries' energy", "none");
    const kv_cache& qc = *ex.cache;
    think_source s;
    s.keys.k = ptrs_.emplace_back(kv.k.begin(), kv.k.end()).data();
    s.keys.layout = kv.layout();
    s.keys.head_dim = kv.head_dim;
    s.keys.dtype_code = static_cast<std::uint32_t>(kv.dt);
    std::vector<const void*>& q = ptrs_.emplace_back();
    for (const auto& l : qc.queries) q.push_back(l.data());
    s.queries.k = q.data();
    s.queries.layout.s_head = qc.shape.tokens * qc.shape.head_dim;
    s.queries.layout.s_token = qc.shape.head_dim;
    s.queries.head_dim = qc.shape.head_dim;
    s.queries.dtype_code = 0;
    s.kv_heads = kv.kv_heads;
    s.group = qc.shape.q_heads / kv.kv_heads;
    s.head_dim = kv.head_dim;
    s.tokens = kv.tokens;
    const think_rows rows = think_rows_of(kept);
    if (!kept.empty()) {
      s.kept_first = rows.first.data();
      s.kept_tokens = rows.tokens.data();
    }
    return think_fit_emulated(s, kv.layers, width);
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
                                   const Side& side_of, const std::vector<bytes>& transform_states = {}) {
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
    const block b = kvcodec::detail::kept_skeleton(s, ex.kept, sl.layer, sl.key, sl.t0, sl.t1);
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
  }, transform_states);
}

}  // namespace detail

namespace detail {

/// The rows of one block the element steps code together: `heads` heads of `tokens` rows each, head
/// h's row r read at source token t_first + r of head h (dense: the view; token-dropped: the compact
/// buffer, one part per head), of which the first `q` per head are quantized (kivi keeps the rest exact).
struct batch_part {
  std::uint32_t heads = 0, tokens = 0, q = 0;
  std::int64_t t_first = 0;
};
/// Every block's parts: block i's are parts[first[i] .. first[i + 1]).
struct batch_parts {
  std::vector<batch_part> parts;
  std::vector<std::size_t> first;
  std::span<const batch_part> of(std::size_t i) const { return std::span<const batch_part>(parts).subspan(first[i], first[i + 1] - first[i]); }
};

/// One part per block of a dense cache; returns `src`.
inline kv_batch_src dense_parts(const kv_batch_src& src, const kv_shape& s, std::int64_t chunk_tokens, std::int64_t first_residual, batch_parts& out) {
  const std::size_t nb = 2 * static_cast<std::size_t>((s.tokens + chunk_tokens - 1) / chunk_tokens) * static_cast<std::size_t>(s.layers);
  out.first.assign(1, 0);
  for (std::size_t i = 0; i < nb; ++i) {
    const auto sl = batch_slot_of(s, chunk_tokens, i);
    const auto tokens = static_cast<std::uint32_t>(sl.t1 - sl.t0);
    out.parts.push_back({static_cast<std::uint32_t>(s.kv_heads), tokens, static_cast<std::uint32_t>(std::clamp<std::int64_t>(first_residual - sl.t0, 0, tokens)), sl.t0});
    out.first.push_back(out.parts.size());
  }
  return src;
}

/// Gathers the kept rows of `kv` (kept sets `kept`) into a compact buffer in x's memory, in the view's
/// dtype, bit for bit: per (layer, K or V) the kept rows of head 0, then head 1, ... each in token
/// order (f32 instead with transforms, or when f32 is set); fills one part per (block, head); returns the
/// buffer as a source (head always 0).
template <class X>
kv_batch_src gather_kept(X& x, const const_kv_view& kv, const kept_sets& kept, const kv_shape& s, std::int64_t chunk_tokens, std::int64_t first_residual,
                         batch_parts& out, const row_transforms& rts, bool f32 = false) {
  const std::size_t L = static_cast<std::size_t>(s.layers), H = static_cast<std::size_t>(s.kv_heads);
  const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), es = dtype_size(kv.dt);
  std::vector<std::int32_t> head, token;
  std::vector<std::uint64_t> layer_first(L + 1, 0), head_first(L * H);  // head_first: the head's first row within its layer
  for (std::size_t l = 0; l < L; ++l) {
    for (std::size_t h = 0; h < H; ++h) {
      head_first[l * H + h] = head.size() - layer_first[l];
      head.insert(head.end(), kept[l][h].size(), static_cast<std::int32_t>(h));
      token.insert(token.end(), kept[l][h].begin(), kept[l][h].end());
    }
    layer_first[l + 1] = head.size();
  }
  const std::uint64_t E = head.size();
  std::vector<kv_gather_block> gb;
  std::uint64_t max_rows = 0;
  for (std::size_t l = 0; l < L; ++l)
    for (std::uint32_t key = 0; key < 2; ++key) {
      const std::uint64_t rows = layer_first[l + 1] - layer_first[l];
      gb.push_back({layer_first[l], rows, (key != 0 ? 0 : E) + layer_first[l], static_cast<std::int32_t>(l), key});
      max_rows = std::max(max_rows, rows);
    }
  const bool wide = rts.any() || f32;  // transformed rows (and, with f32, every row) are f32
  const std::uint64_t cs = wide ? 4 : es;
  std::uint8_t* compact = x.bytes(static_cast<std::size_t>(2 * E * D * cs));
  if (wide) x.run(gb, max_rows, kv_prepare_op{x.src(kv), upload(x, head), upload(x, token), 0, rts, reinterpret_cast<float*>(compact)});
  else x.run(gb, max_rows * D, kv_gather_op{x.src(kv), upload(x, head), upload(x, token), compact});
  std::vector<const void*> kp(L), vp(L);
  for (std::size_t l = 0; l < L; ++l) {
    kp[l] = compact + layer_first[l] * D * cs;
    vp[l] = compact + (E + layer_first[l]) * D * cs;
  }
  kv_batch_src src;
  src.k = upload(x, kp);
  src.v = upload(x, vp);
  src.layout.s_head = 0;
  src.layout.s_token = static_cast<std::int64_t>(D);
  src.layout.s_dim = 1;
  src.head_dim = s.head_dim;
  src.dtype_code = wide ? 0u : static_cast<std::uint32_t>(kv.dt);
  const std::size_t nb = 2 * static_cast<std::size_t>((s.tokens + chunk_tokens - 1) / chunk_tokens) * L;
  out.first.assign(1, 0);
  for (std::size_t i = 0; i < nb; ++i) {
    const auto sl = batch_slot_of(s, chunk_tokens, i);
    const std::size_t l = static_cast<std::size_t>(sl.layer);
    for (std::size_t h = 0; h < H; ++h) {
      const auto& ks = kept[l][h];
      const auto lo = std::lower_bound(ks.begin(), ks.end(), static_cast<std::int32_t>(sl.t0));
      const auto hi = std::lower_bound(lo, ks.end(), static_cast<std::int32_t>(sl.t1));
      const auto qe = std::lower_bound(lo, hi, static_cast<std::int32_t>(std::clamp<std::int64_t>(first_residual, sl.t0, sl.t1)));
      out.parts.push_back({1u, static_cast<std::uint32_t>(hi - lo), static_cast<std::uint32_t>(qe - lo),
                           static_cast<std::int64_t>(head_first[l * H + h]) + (lo - ks.begin())});
    }
    out.first.push_back(out.parts.size());
  }
  return src;
}

/// The codec's transforms as row steps (batch_row_transforms, tables in x's memory), each fitted on the
/// host as the CPU encoder fits it (their states, empty for these, go to `states`).
template <class X>
row_transforms row_transforms_of(X& x, codec& c, const cache_info& info, std::vector<bytes>& states) {
  const row_transforms out = batch_row_transforms(c, info, false, [&](const std::vector<double>& v) { return static_cast<const double*>(upload(x, v)); });
  for (auto& t : c.transforms)  // validates as the CPU encoder does (derope: the RoPE metadata); think is fitted later, on the kept rows
    states.push_back(dynamic_cast<const cpu::think_transform*>(t.get()) != nullptr ? bytes{} : t->fit({}, info));
  return out;
}

/// Every row of the dense view `kv`, transformed (rts) into an f32 buffer in x's memory: per (layer,
/// K or V) head after head, each head's tokens in order; returns it as a source (the view's shape).
template <class X>
kv_batch_src prepare_rows(X& x, const const_kv_view& kv, const kv_shape& s, const row_transforms& rts) {
  const std::size_t L = static_cast<std::size_t>(s.layers);
  const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), rows = static_cast<std::uint64_t>(s.kv_heads) * static_cast<std::uint64_t>(s.tokens);
  float* buf = x.floats(static_cast<std::size_t>(2 * L * rows * D));
  std::vector<kv_gather_block> gb;
  std::vector<const void*> kp(L), vp(L);
  for (std::size_t l = 0; l < L; ++l)
    for (std::uint32_t key = 0; key < 2; ++key) {
      const std::uint64_t at = ((key != 0 ? 0 : L) + l) * rows;
      gb.push_back({0, rows, at, static_cast<std::int32_t>(l), key});
      (key != 0 ? kp : vp)[l] = buf + at * D;
    }
  x.run(gb, rows, kv_prepare_op{x.src(kv), nullptr, nullptr, s.tokens, rts, buf});
  kv_batch_src src;
  src.k = upload(x, kp);
  src.v = upload(x, vp);
  src.layout.s_head = static_cast<std::int64_t>(s.tokens * s.head_dim);
  src.layout.s_token = s.head_dim;
  src.layout.s_dim = 1;
  src.head_dim = s.head_dim;
  src.dtype_code = 0;
  return src;
}

/// Runs make_op(src) over every item of `items` on x, where src is src_k for key items and src_v for
/// value items (think: narrower key rows); one launch when both read rows of the same width.
template <class X, class Items, class MakeOp>
void run_by_side(X& x, const Items& items, std::uint64_t max_items, const kv_batch_src& src_k, const kv_batch_src& src_v, const MakeOp& make_op) {
  if (src_k.head_dim == src_v.head_dim) return x.run(items, max_items, make_op(src_v));
  Items kb, vb;
  for (const auto& b : items) (b.key != 0 ? kb : vb).push_back(b);
  x.run(kb, max_items, make_op(src_k));
  x.run(vb, max_items, make_op(src_v));
}

/// Values per selection batch of take_batch_outliers: its key and position arrays take 12 bytes a value,
/// the sort as much again.
inline constexpr std::uint64_t outlier_batch_values = std::uint64_t{1} << 26;

/// The outliers of every block of a uniform or kivi codec with outliers > 0 (cpu/quant_common.hpp's
/// take_outliers, over each block's quantized values in the CPU's order): blocks[i] are block i's parts,
/// src_k and src_v the encoder's own f32 copy of the rows, as key and value parts read them. Selected by x over batches of whole blocks of at most
/// batch_values values (or one block) (core/affine.hpp's steps); each selected value is read and a NaN is
/// left in its place in src. Returns each block's outlier list as the CPU writes it.
template <class X>
std::vector<bytes> take_batch_outliers(X& x, const kv_batch_src& src_k, const kv_batch_src& src_v, const std::vector<std::vector<affine_outlier_part>>& blocks,
                                       double percent, dtype source, std::uint64_t batch_values = outlier_batch_values) {
  const std::size_t nb = blocks.size();
  const auto width = [&](std::uint32_t key) { return static_cast<std::uint64_t>((key != 0 ? src_k : src_v).head_dim); };
  // the steps over key parts read src_k, over value parts src_v (think: narrower key rows)
  const auto run_sides = [&](const auto& items, std::uint64_t max_items, const auto& make_op) { run_by_side(x, items, max_items, src_k, src_v, make_op); };
  std::vector<std::uint64_t> n(nb, 0);  // block i's quantized values
  std::uint64_t widest = 0;
  for (std::size_t i = 0; i < nb; ++i) {
    for (const affine_outlier_part& g : blocks[i]) n[i] += static_cast<std::uint64_t>(g.heads) * g.q * width(g.key);
    if (n[i] > std::uint64_t{INT32_MAX})
      throw_usage("encode: a block of " + std::to_string(n[i]) + " quantized values: the batch encoder selects outliers in blocks under 2^31 values; lower chunk_tokens");
    widest = std::max(widest, n[i]);
  }
  const std::uint64_t cap = std::max(widest, batch_values);
  std::uint64_t room = 0;
  for (std::uint64_t i = 0, used = 0; i < nb; ++i) {  // the largest batch, for one pair of arrays
    used = used + n[i] > cap ? n[i] : used + n[i];
    room = std::max<std::uint64_t>(room, used);
  }
  auto* key = reinterpret_cast<std::uint64_t*>(x.bytes(static_cast<std::size_t>(8 * room)));
  auto* pos = reinterpret_cast<std::uint32_t*>(x.bytes(static_cast<std::size_t>(4 * room)));
  auto* nonfinite = reinterpret_cast<std::uint32_t*>(x.bytes(4 * nb));
  std::vector<bytes> lists(nb);
  for (std::size_t b0 = 0; b0 < nb;) {
    std::size_t b1 = b0;
    std::uint64_t values = 0;
    while (b1 < nb && (b1 == b0 || values + n[b1] <= cap)) values += n[b1++];
    std::vector<affine_outlier_part> parts;
    std::vector<std::int64_t> seg(1, 0);
    std::uint64_t max_items = 0;
    for (std::size_t i = b0; i < b1; ++i) {
      std::uint64_t at = 0;
      for (affine_outlier_part g : blocks[i]) {
        g.at = at;
        g.seg_first = static_cast<std::uint64_t>(seg.back());
        g.slot = i;
        const std::uint64_t k = static_cast<std::uint64_t>(g.heads) * g.q * width(g.key);
        at += k;
        max_items = std::max(max_items, k);
        parts.push_back(g);
      }
      seg.push_back(seg.back() + static_cast<std::int64_t>(n[i]));
    }
    run_sides(parts, max_items, [&](const kv_batch_src& sr) { return affine_outlier_key_op{sr, key, pos, nonfinite}; });
    std::vector<std::uint32_t> nf(b1 - b0);
    x.get(nf.data(), nonfinite + b0, nf.size() * 4);
    std::vector<std::int64_t> take(1, 0);
    std::vector<affine_outlier_block> ob;
    std::uint64_t max_take = 0;
    for (std::size_t i = b0, p0 = 0; i < b1; p0 += blocks[i].size(), ++i) {
      const std::uint64_t k = cpu::qc::outlier_budget(static_cast<std::size_t>(n[i]), nf[i - b0], percent);
      ob.push_back({static_cast<std::uint64_t>(take.back()), k, p0, blocks[i].size(), blocks[i].empty() ? 1u : blocks[i][0].key});
      take.push_back(take.back() + static_cast<std::int64_t>(k));
      max_take = std::max(max_take, k);
    }
    const auto taken = static_cast<std::size_t>(take.back());
    auto* sel = reinterpret_cast<std::uint32_t*>(x.bytes(4 * taken));
    float* vals = x.floats(taken);
    x.outlier_select(key, pos, seg, take, sel);
    const affine_outlier_part* parts_d = upload(x, parts);
    run_sides(ob, max_take, [&](const kv_batch_src& sr) { return affine_outlier_take_op{sr, parts_d, sel, vals}; });
    std::vector<std::uint32_t> hsel(taken);
    std::vector<float> hvals(taken);
    x.get(hsel.data(), sel, 4 * taken);
    x.get(hvals.data(), vals, 4 * taken);
    for (std::size_t i = b0; i < b1; ++i) {
      const affine_outlier_block& g = ob[i - b0];
      cpu::qc::put_outliers(hsel.data() + g.sel_first, hvals.data() + g.sel_first, static_cast<std::size_t>(g.count), source, lists[i]);
    }
    b0 = b1;
  }
  return lists;
}

}  // namespace detail

/// Encodes the dense cache `kv` (in x's memory) with codec `c` through executor `x` (see the file
/// comment) and streams the container into `sink`. Usage error for codecs outside the scope.
template <class X, cpu::cpu_policy P>
encode_report encode_batch_to(X& x, const P& policy, codec& c, const const_kv_view& kv, byte_sink& sink, const encode_options& opt = {},
                                   const kv_extras& ex_in = {}) {
  kv.validate("encode input");
  if (kv.tokens <= 0) throw_bad_input("encode input", "tokens", "> 0", std::to_string(kv.tokens));
  if (opt.chunk_tokens < 1) throw_usage("encode: chunk_tokens must be >= 1, found " + std::to_string(opt.chunk_tokens));
  if (kv.dt != dtype::f32 && kv.dt != dtype::f16 && kv.dt != dtype::bf16)
    throw_usage("encode: the batch encoder reads f32, f16 or bf16 views, not " + std::string(dtype_name(kv.dt)));
  if (opt.read_rows) throw_usage("encode: the batch encoder reads the view's memory; encode_options::read_rows is for the CPU encoder");
  const kv_shape s = detail::checked_shape(kv, ex_in);
  const cache_info info{s, ex_in.source_dtype.value_or(kv.dt), ex_in.metadata, {}};
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
  if ((c.drop || !ex_in.kept.empty()) && !fq && !rq && !kq && !uq && !nq)
    throw_usage("encode: " + qn + " on a token-dropped cache has no CUDA encode (its rows span the heads, whose kept tokens differ); with token dropping the "
                "batch encoder quantizes with raw, fp8, uniform, kivi or nf4; encode this codec on the CPU");
  const std::size_t nb = 2 * static_cast<std::size_t>((s.tokens + opt.chunk_tokens - 1) / opt.chunk_tokens) * static_cast<std::size_t>(s.layers);
  const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), H = static_cast<std::uint64_t>(s.kv_heads);
  // The element steps read `src`; a token-dropped cache's kept rows are gathered first into a compact
  // buffer (detail::gather_kept), and each block is cut into one part per head.
  const std::int64_t first_residual = kq ? s.tokens - kq->residual() : s.tokens;
  // Transforms (hadamard, derope) run on every row first, into an f32 buffer (detail::prepare_rows).
  std::vector<bytes> transform_states;
  row_transforms rts = detail::row_transforms_of(x, c, info, transform_states);
  for (const bytes& st : transform_states)
    if (!st.empty()) throw_usage("encode: codec '" + c.spec() + "': a transform with fitted state has no batch encode");
  // think (the codec's only transform here): its masks fitted by the executor on the kept rows, the key
  // rows compacted to the kept channels (W of D) as the quantizer's steps read them
  cpu::think_transform* th = c.transforms.empty() ? nullptr : dynamic_cast<cpu::think_transform*>(c.transforms[0].get());
  if (th && (gtype || mq))
    throw_usage("encode: think before " + qn + " has no batch encode (the quantizers that take think's narrower key rows here: cachegen-quant, raw, fp8, uniform, "
                "kivi, nf4); encode this codec on the CPU");
  const std::uint64_t W = th ? th->kept_width(static_cast<std::size_t>(D)) : D;
  // Token dropping: the drop stages' kept sets (chosen by the executor), or the input's.
  kv_extras ex_kept;
  if (c.drop) {
    ex_kept = ex_in;
    ex_kept.kept = x.select(c, kv, ex_in, s, info.source_dtype);
  }
  const kv_extras& ex = c.drop ? ex_kept : ex_in;
  const bool sparse = !ex.kept.empty();
  if (th) {
    const std::vector<std::uint8_t> masks = x.think_masks(kv, ex_in, ex.kept, static_cast<std::int64_t>(W));
    transform_states[0] = cpu::think_transform::state_of(masks, static_cast<std::size_t>(D), static_cast<std::size_t>(W));
    th->load_state(transform_states[0], info);
    add_think_channels(rts, c, s, [&](const std::vector<std::int32_t>& ch) { return detail::upload(x, ch); });
  }
  detail::batch_parts parts;
  // uniform / kivi with outliers leave NaN marks in their source: an f32 copy of their own
  const double outliers = kq ? kq->outliers() : uq ? uq->outliers() : 0.0;
  const kv_batch_src src = sparse ? detail::gather_kept(x, kv, ex.kept, s, opt.chunk_tokens, first_residual, parts, rts, outliers > 0.0)
                           : rts.any() || outliers > 0.0 ? detail::dense_parts(detail::prepare_rows(x, kv, s, rts), s, opt.chunk_tokens, first_residual, parts)
                                                         : detail::dense_parts(x.src(kv), s, opt.chunk_tokens, first_residual, parts);
  // With think, a key row is W wide (the first W values of its stride): the steps over key blocks read
  // src_k. Dw(key): a block's row width.
  kv_batch_src src_k = src;
  src_k.head_dim = static_cast<std::int32_t>(W);
  const auto Dw = [&](bool key) -> std::uint64_t { return key ? W : D; };
  const auto run_sides = [&](const auto& blocks, std::uint64_t max_items, const auto& make_op) { detail::run_by_side(x, blocks, max_items, src_k, src, make_op); };
  std::vector<std::uint64_t> first(nb + 1, 0);  // block i's bytes: [first[i], first[i + 1]) of `out`
  std::vector<std::uint8_t> out;
  std::uint8_t* buf = nullptr;  // every block's bytes, in x's memory
  bytes state;
  std::vector<std::vector<float>> side_scales(nb);  // fp8 head/token scales per block
  // uniform / kivi: every block's parts, and per block where its codes, parameters and exact rows are
  struct affine_region {
    std::uint64_t sym_first = 0, params = 0, exact = 0, q_rows = 0, exact_rows = 0;
    std::uint32_t bits = 0, exact_dtype = 0;
  };
  std::vector<affine_batch_block> ablocks;
  std::vector<affine_region> aregions;
  std::vector<std::uint64_t> side_end(nb);           // uniform / kivi: where block i's side bytes end in `out`
  std::vector<cachegen_encode_block> cblocks;        // cachegen-quant
  // nf4 / kmeans: every block's parts, and per block where its codes and side bytes are
  struct codebook_region {
    std::uint64_t sym_first = 0, side = 0, rows = 0;
    std::uint32_t bits = 0;
  };
  std::vector<codebook_batch_block> nblocks;
  std::vector<codebook_region> nregions;
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
      const std::uint64_t n = g.tokens * H * Dw(sl.key), ns = g.by_token != 0 ? g.tokens : H * Dw(sl.key);
      first[i + 1] = first[i] + n * (g.wide != 0 ? 2 : 1);
      scales += ns;
      max_scales = std::max(max_scales, ns);
      max_items = std::max(max_items, n);
    }
    float* amax_d = x.floats(static_cast<std::size_t>(scales));
    std::uint8_t* bad_d = x.bytes(nb);
    run_sides(cblocks, max_scales, [&](const kv_batch_src& sr) { return cachegen_amax_op{sr, amax_d, bad_d}; });
    std::vector<float> amax(static_cast<std::size_t>(scales)), inv(amax.size());
    std::vector<std::uint8_t> bad(nb);
    x.get(amax.data(), amax_d, amax.size() * sizeof(float));
    x.get(bad.data(), bad_d, nb);
    for (std::size_t i = 0; i < nb; ++i)
      if (bad[i]) throw_bad_input("cachegen-quant (layer " + std::to_string(cblocks[i].layer) + ")", "data", "finite values", "a NaN or infinity");
    scale_bits.resize(amax.size());
    const bool bf = cq->bf16_scales();
    for (const auto& g : cblocks)
      for (std::uint64_t j = g.scale_first; j < g.scale_first + (g.by_token != 0 ? g.tokens : H * Dw(g.key != 0)); ++j) {  // quantize_with's steps
        scale_bits[j] = cachegen_scale_bits(amax[j], bf);
        const float sv = cachegen_scale_value(scale_bits[j], bf);
        inv[j] = sv > 0 ? static_cast<float>(g.max) / sv : 0.0f;
      }
    float* inv_d = x.floats(inv.size());
    x.put(inv_d, inv.data(), inv.size() * sizeof(float));
    buf = x.bytes(static_cast<std::size_t>(first[nb]));
    run_sides(cblocks, max_items, [&](const kv_batch_src& sr) { return cachegen_code_op{sr, inv_d, buf}; });
  } else if (mq || nq) {
    // nf4 / kmeans blocks: codes (a byte each) from first[i], then (nf4) the groups' absmax from side;
    // set(g) fills the quantizer's fields. Returns the largest block's values.
    const auto codebook_blocks = [&](const auto& G_of, std::uint64_t pb, const auto& set) {
      nregions.resize(nb);
      std::uint64_t max_items = 0;
      for (std::size_t i = 0; i < nb; ++i) {
        const auto sl = detail::batch_slot_of(s, opt.chunk_tokens, i);
        const std::uint64_t D = Dw(sl.key), G = G_of(sl.key);
        codebook_region& rg = nregions[i];
        for (const detail::batch_part& pt : parts.of(i)) rg.rows += static_cast<std::uint64_t>(pt.heads) * pt.tokens;
        rg.sym_first = first[i];
        rg.side = first[i] + rg.rows * D;
        first[i + 1] = rg.side + (G > 0 ? rg.rows * D / G * pb : 0);
        std::uint64_t rows_at = 0;
        for (const detail::batch_part& pt : parts.of(i)) {
          auto& g = nblocks.emplace_back();
          g.layer = sl.layer;
          g.key = sl.key ? 1u : 0u;
          g.tokens = pt.tokens;
          g.heads = pt.heads;
          g.t_first = pt.t_first;
          set(g);
          rg.bits = g.bits;
          const std::uint64_t n = static_cast<std::uint64_t>(pt.heads) * pt.tokens * D;
          g.sym_first = rg.sym_first + rows_at * D;
          g.side = rg.side + (G > 0 ? rows_at * D / G * pb : 0);
          rows_at += static_cast<std::uint64_t>(pt.heads) * pt.tokens;
          max_items = std::max(max_items, n);
        }
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
      const std::uint64_t max_items = codebook_blocks([](bool) { return std::uint64_t{0}; }, 0, [&](codebook_batch_block& g) {
        g.bits = static_cast<std::uint32_t>(mq->bits());
        g.nf4 = 0;
        g.book = (2 * static_cast<std::uint64_t>(g.layer) + (g.key != 0 ? 0u : 1u)) * mq->levels();
      });
      buf = x.bytes(static_cast<std::size_t>(first[nb]));
      x.run(nblocks, max_items, kmeans_code_op{src, books_d, buf});
    } else {
      state = c.quant->fit({}, info);  // checks the group against head_dim
      const auto G_of = [&](bool key) { return static_cast<std::uint64_t>(nq->group_of(static_cast<int>(Dw(key)))); };
      const std::uint64_t pb = affine::param_bytes(affine::mode::symmetric, nq->pd());
      const std::uint64_t max_items = codebook_blocks(G_of, pb, [&](codebook_batch_block& g) {
        g.group = static_cast<std::uint32_t>(G_of(g.key != 0));
        g.param_dtype = static_cast<std::uint32_t>(nq->pd());
      });
      buf = x.bytes(static_cast<std::size_t>(first[nb]));
      run_sides(nblocks, max_items / std::min(G_of(true), G_of(false)), [&](const kv_batch_src& sr) { return nf4_absmax_op{sr, buf}; });
      run_sides(nblocks, max_items, [&](const kv_batch_src& sr) { return nf4_code_op{sr, buf}; });
    }
  } else if (kq || uq) {
    state = c.quant->fit({}, info);  // checks the groups against head_dim
    aregions.resize(nb);
    // outliers first: each block's list is written after its parameters, and its NaN marks keep the
    // outliers out of the parameters
    std::vector<bytes> lists(nb);
    std::vector<copy_block> list_at(nb);  // where each list goes in `buf`
    if (outliers > 0.0) {
      std::vector<std::vector<affine_outlier_part>> oparts(nb);
      for (std::size_t i = 0; i < nb; ++i) {
        const auto sl = detail::batch_slot_of(s, opt.chunk_tokens, i);
        for (const detail::batch_part& pt : parts.of(i)) oparts[i].push_back({sl.layer, sl.key ? 1u : 0u, pt.heads, pt.q, pt.t_first});
      }
      lists = detail::take_batch_outliers(x, src_k, src, oparts, outliers, info.source_dtype);
    }
    std::vector<std::uint64_t> exact_before;  // per part: the exact rows of its block's earlier parts
    std::uint64_t max_groups = 0, max_q = 0, max_exact = 0;
    for (std::size_t i = 0; i < nb; ++i) {
      const auto sl = detail::batch_slot_of(s, opt.chunk_tokens, i);
      const std::uint64_t D = Dw(sl.key);  // the block's row width
      kv_shape sw = s;
      sw.head_dim = static_cast<std::int32_t>(D);
      std::uint64_t pbytes = 0;
      affine_batch_block proto = detail::affine_block(kq, uq, sw, sl.layer, sl.key, sl.t0, sl.t1, pbytes);
      proto.slot = i;
      const std::uint64_t pb = affine::param_bytes(static_cast<affine::mode>(proto.mode), static_cast<affine::param_dtype>(proto.param_dtype));
      const auto part_of = [&](const detail::batch_part& pt) {
        affine_batch_block g = proto;
        g.heads = pt.heads;
        g.tokens = pt.tokens;
        g.q = pt.q;
        g.t_first = pt.t_first;
        return g;
      };
      // block i in `out`: codes (a byte each), parameters, then (residual rows) the dtype tag and the
      // values, with room for f32; each part's share of each, in order
      affine_region& rg = aregions[i];
      rg.bits = proto.bits;
      std::uint64_t groups = 0;
      for (const detail::batch_part& pt : parts.of(i)) {
        const affine_batch_block g = part_of(pt);
        rg.q_rows += static_cast<std::uint64_t>(g.heads) * g.q;
        rg.exact_rows += static_cast<std::uint64_t>(g.heads) * (g.tokens - g.q);
        groups += g.q > 0 ? detail::affine_groups_of(g, D) : 0;
      }
      rg.sym_first = first[i];
      rg.params = first[i] + rg.q_rows * D;
      list_at[i] = {i == 0 ? 0 : list_at[i - 1].src_first + list_at[i - 1].n, rg.params + groups * pb, lists[i].size()};
      rg.exact = rg.params + groups * pb + lists[i].size() + 1;
      first[i + 1] = rg.exact + 4 * rg.exact_rows * D;
      std::uint64_t q_at = 0, exact_at = 0, groups_at = 0;
      for (const detail::batch_part& pt : parts.of(i)) {
        affine_batch_block& g = ablocks.emplace_back(part_of(pt));
        g.sym_first = rg.sym_first + q_at * D;
        g.params = rg.params + groups_at * pb;
        exact_before.push_back(exact_at);
        const std::uint64_t nq = static_cast<std::uint64_t>(g.heads) * g.q, nx = static_cast<std::uint64_t>(g.heads) * (g.tokens - g.q);
        const std::uint64_t ng = g.q > 0 ? detail::affine_groups_of(g, D) : 0;
        q_at += nq;
        exact_at += nx;
        groups_at += ng;
        max_groups = std::max(max_groups, ng);
        max_q = std::max(max_q, nq * D);
        max_exact = std::max(max_exact, nx * D);
      }
    }
    buf = x.bytes(static_cast<std::size_t>(first[nb]));
    if (outliers > 0.0) {
      std::vector<std::uint8_t> all;
      std::uint64_t max_list = 0;
      for (const bytes& l : lists) {
        all.insert(all.end(), l.begin(), l.end());
        max_list = std::max<std::uint64_t>(max_list, l.size());
      }
      x.run(list_at, max_list, byte_copy_op{detail::upload(x, all), buf});
    }
    run_sides(ablocks, max_groups, [&](const kv_batch_src& sr) { return affine_params_op{sr, buf}; });
    run_sides(ablocks, max_q, [&](const kv_batch_src& sr) { return affine_code_op{sr, buf}; });
    const auto exact_dt = static_cast<std::uint32_t>(info.source_dtype == dtype::f16 || info.source_dtype == dtype::bf16 ? info.source_dtype : dtype::f32);
    std::vector<std::uint8_t> flags(nb, 0);
    if (max_exact > 0 && exact_dt != 0) {
      std::uint8_t* fl = x.bytes(nb);
      run_sides(ablocks, max_exact, [&](const kv_batch_src& sr) { return affine_exact_check_op{sr, fl, exact_dt}; });  // flags per block (slot)
      x.get(flags.data(), fl, nb);
    }
    for (std::size_t i = 0; i < nb; ++i) {
      affine_region& rg = aregions[i];
      rg.exact_dtype = flags[i] ? 0u : exact_dt;
      side_end[i] = rg.exact_rows == 0 ? rg.exact - 1 : rg.exact + rg.exact_rows * Dw(i % 2 == 0) * dtype_size(static_cast<dtype>(rg.exact_dtype));
    }
    for (std::size_t j = 0; j < ablocks.size(); ++j) {
      affine_batch_block& g = ablocks[j];
      const affine_region& rg = aregions[static_cast<std::size_t>(g.slot)];
      g.exact_dtype = rg.exact_dtype;
      g.exact = rg.exact + exact_before[j] * Dw(g.key != 0) * dtype_size(static_cast<dtype>(rg.exact_dtype));
    }
    if (max_exact > 0) run_sides(ablocks, max_exact, [&](const kv_batch_src& sr) { return affine_exact_op{sr, buf}; });
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
      std::vector<raw_batch_block> blocks;
      const std::uint64_t es = dtype_size(rq->stored());
      for (std::size_t i = 0; i < nb; ++i) {
        const auto sl = detail::batch_slot_of(s, opt.chunk_tokens, i);
        first[i + 1] = first[i];
        for (const detail::batch_part& pt : parts.of(i)) {
          auto& g = blocks.emplace_back();
          g.first = first[i + 1];
          g.tokens = pt.tokens;
          g.heads = pt.heads;
          g.layer = sl.layer;
          g.key = sl.key ? 1u : 0u;
          g.stored = static_cast<std::uint32_t>(rq->stored());
          g.t_first = pt.t_first;
          first[i + 1] += static_cast<std::uint64_t>(pt.heads) * pt.tokens * Dw(sl.key) * es;
          max_items = std::max<std::uint64_t>(max_items, static_cast<std::uint64_t>(pt.heads) * pt.tokens * Dw(sl.key));
        }
      }
      buf = x.bytes(static_cast<std::size_t>(first[nb]));
      run_sides(blocks, max_items, [&](const kv_batch_src& sr) { return raw_encode_op{sr, buf}; });
    }
  } else {
    std::vector<fp8_batch_block> blocks;  // the parts of every block, in order
    std::uint64_t rows = 0, max_rows = 0;
    for (std::size_t i = 0; i < nb; ++i) {
      const auto sl = detail::batch_slot_of(s, opt.chunk_tokens, i);
      first[i + 1] = first[i];
      for (const detail::batch_part& pt : parts.of(i)) {
        auto& g = blocks.emplace_back();
        g.tokens = pt.tokens;
        g.heads = pt.heads;
        g.layer = sl.layer;
        g.key = sl.key ? 1u : 0u;
        g.kind = static_cast<std::uint32_t>(fq->format_kind());
        g.t_first = pt.t_first;
        g.row_first = rows;
        g.codes = first[i + 1];
        const std::uint64_t n = static_cast<std::uint64_t>(pt.heads) * pt.tokens;
        rows += n;
        first[i + 1] += n * Dw(sl.key);
        max_rows = std::max<std::uint64_t>(max_rows, n);
      }
    }
    float* amax_d = x.floats(static_cast<std::size_t>(rows));
    run_sides(blocks, max_rows, [&](const kv_batch_src& sr) { return fp8_amax_op{sr, amax_d}; });
    std::vector<float> amax(static_cast<std::size_t>(rows)), scale(amax.size());
    x.get(amax.data(), amax_d, amax.size() * sizeof(float));
    const std::string& mode = fq->scale_mode();
    const fp8_kind kind = fq->format_kind();
    if (mode == "tensor") {
      std::vector<float> tensor(2 * static_cast<std::size_t>(s.layers), 0.0f);
      for (const auto& g : blocks) {
        float& a = tensor[2 * static_cast<std::size_t>(g.layer) + (g.key ? 0u : 1u)];
        for (std::uint64_t r = 0; r < static_cast<std::uint64_t>(g.heads) * g.tokens; ++r) a = std::max(a, amax[static_cast<std::size_t>(g.row_first + r)]);
      }
      state = fq->fit_amax(tensor);
      for (const auto& g : blocks)
        std::fill_n(scale.begin() + static_cast<std::ptrdiff_t>(g.row_first), static_cast<std::uint64_t>(g.heads) * g.tokens, fq->tensor_scale(g.layer, g.key != 0));
    } else {
      for (std::size_t i = 0; i < nb; ++i)
        for (std::size_t j = parts.first[i]; j < parts.first[i + 1]; ++j) {
          const auto& g = blocks[j];
          for (std::uint64_t h = 0; h < g.heads; ++h) {
            const std::size_t r0 = static_cast<std::size_t>(g.row_first + h * g.tokens);
            if (mode == "head") {  // a head without rows (token dropping) has amax 0, as on the CPU
              const float a = g.tokens == 0 ? 0.0f : *std::max_element(amax.begin() + static_cast<std::ptrdiff_t>(r0), amax.begin() + static_cast<std::ptrdiff_t>(r0 + g.tokens));
              std::fill_n(scale.begin() + static_cast<std::ptrdiff_t>(r0), g.tokens, fp8_scale(a, kind));
              side_scales[i].push_back(fp8_scale(a, kind));
            } else {
              for (std::size_t r = r0; r < r0 + g.tokens; ++r) side_scales[i].push_back(scale[r] = fp8_scale(amax[r], kind));
            }
          }
        }
    }
    float* scale_d = x.floats(scale.size());
    x.put(scale_d, scale.data(), scale.size() * sizeof(float));
    buf = x.bytes(static_cast<std::size_t>(first[nb]));
    run_sides(blocks, max_rows * D, [&](const kv_batch_src& sr) { return fp8_code_op{sr, scale_d, buf}; });
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
        pl = {first[i], cpu::cachegen_quant::alphabet_for(cq->bins_for(g.layer, g.key != 0)), g.tokens, static_cast<std::uint32_t>(H * Dw(g.key != 0)), g.wide};
      } else if (fq) {
        pl = {first[i], 256, static_cast<std::uint32_t>((first[i + 1] - first[i]) / Dw(i % 2 == 0)), static_cast<std::uint32_t>(Dw(i % 2 == 0)), 0};
      } else if (nq || mq) {
        const codebook_region& g = nregions[i];
        pl = {g.sym_first, nq ? 16u : 1u << g.bits, static_cast<std::uint32_t>(g.rows), static_cast<std::uint32_t>(Dw(i % 2 == 0)), 0};
        aside_first[i + 1] = aside_first[i] + (first[i + 1] - g.side);
      } else {
        const affine_region& g = aregions[i];
        pl = {g.sym_first, 1u << g.bits, static_cast<std::uint32_t>(g.q_rows), static_cast<std::uint32_t>(Dw(i % 2 == 0)), 0};
        aside_first[i + 1] = aside_first[i] + (side_end[i] - g.params);
      }
    }
    if (!aregions.empty() || !nregions.empty()) {
      std::vector<copy_block> cb(nb);
      std::uint64_t max_side = 0;
      for (std::size_t i = 0; i < nb; ++i) {
        cb[i] = {!nregions.empty() ? nregions[i].side : aregions[i].params, aside_first[i], aside_first[i + 1] - aside_first[i]};
        max_side = std::max(max_side, cb[i].n);
      }
      std::uint8_t* side_d = x.bytes(static_cast<std::size_t>(aside_first[nb]));
      x.run(cb, max_side, byte_copy_op{buf, side_d});
      aside.resize(static_cast<std::size_t>(aside_first[nb]));
      x.get(aside.data(), side_d, aside.size());
      for (std::size_t i = 0; i < aregions.size(); ++i)
        if (side_end[i] != aregions[i].exact - 1) aside[static_cast<std::size_t>(aside_first[i] + (aregions[i].exact - 1 - aregions[i].params))] = static_cast<std::uint8_t>(aregions[i].exact_dtype);  // the tag
    }
    return detail::encode_rans_batch_to(x, policy, c, *re, info, state, sink, opt, ex, buf, planes, [&](std::size_t i, bytes& side) {
      if (cq) {
        const cachegen_encode_block& g = cblocks[i];
        const std::size_t ns = static_cast<std::size_t>(g.by_token != 0 ? g.tokens : H * Dw(g.key != 0));
        side.resize(2 * ns);
        for (std::size_t j = 0; j < ns; ++j) kvcodec::detail::store_le16(side.data() + 2 * j, scale_bits[static_cast<std::size_t>(g.scale_first) + j]);
      } else if (fq) {
        side.resize(side_scales[i].size() * 4);
        encode_floats(side_scales[i].data(), side_scales[i].size(), dtype::f32, side.data());
      } else {
        side.assign(aside.begin() + static_cast<std::ptrdiff_t>(aside_first[i]), aside.begin() + static_cast<std::ptrdiff_t>(aside_first[i + 1]));
      }
    }, transform_states);
  }
  out.resize(static_cast<std::size_t>(first[nb]));
  x.get(out.data(), buf, out.size());
  for (std::size_t i = 0; i < aregions.size(); ++i)
    if (side_end[i] != aregions[i].exact - 1) out[static_cast<std::size_t>(aregions[i].exact - 1)] = static_cast<std::uint8_t>(aregions[i].exact_dtype);  // the tag
  return encode_symbols_to(policy, c, info, state, sink, opt, ex, [&](std::size_t i, symbols& sy) {
    const std::uint8_t* p = out.data() + first[i];
    const std::size_t n = static_cast<std::size_t>(first[i + 1] - first[i]);
    sy.planes.clear();
    if (!cblocks.empty()) {
      const cachegen_encode_block& g = cblocks[i];
      symbol_plane& pl = sy.planes.emplace_back();
      pl.alphabet = cpu::cachegen_quant::alphabet_for(cq->bins_for(g.layer, g.key != 0));
      pl.rows = g.tokens;
      pl.cols = static_cast<std::uint32_t>(H * Dw(g.key != 0));
      pl.sym.resize(static_cast<std::size_t>(pl.rows) * pl.cols);
      for (std::size_t k = 0; k < pl.sym.size(); ++k) pl.sym[k] = g.wide != 0 ? kvcodec::detail::load_le16(p + 2 * k) : p[k];
      const std::size_t ns = static_cast<std::size_t>(g.by_token != 0 ? g.tokens : H * Dw(g.key != 0));
      sy.side.resize(2 * ns);
      for (std::size_t j = 0; j < ns; ++j) kvcodec::detail::store_le16(sy.side.data() + 2 * j, scale_bits[static_cast<std::size_t>(g.scale_first) + j]);
      return;
    }
    if (!nregions.empty()) {
      const codebook_region& g = nregions[i];
      symbol_plane& pl = sy.planes.emplace_back();
      pl.alphabet = nq ? 16u : 1u << g.bits;
      pl.rows = static_cast<std::uint32_t>(g.rows);
      pl.cols = static_cast<std::uint32_t>(Dw(i % 2 == 0));
      pl.sym.assign(p, p + (g.side - g.sym_first));
      sy.side.assign(out.begin() + static_cast<std::ptrdiff_t>(g.side), out.begin() + static_cast<std::ptrdiff_t>(first[i + 1]));
      return;
    }
    if (!aregions.empty()) {
      const affine_region& g = aregions[i];
      symbol_plane& pl = sy.planes.emplace_back();
      pl.alphabet = 1u << g.bits;
      pl.rows = static_cast<std::uint32_t>(g.q_rows);
      pl.cols = static_cast<std::uint32_t>(Dw(i % 2 == 0));
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
    pl.cols = static_cast<std::uint32_t>(Dw(i % 2 == 0));
    pl.rows = static_cast<std::uint32_t>(n / Dw(i % 2 == 0));
    pl.sym.assign(p, p + n);
    sy.side.resize(side_scales[i].size() * 4);
    encode_floats(side_scales[i].data(), side_scales[i].size(), dtype::f32, sy.side.data());
  }, transform_states);
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
