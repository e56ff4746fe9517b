// kvcodec/pipeline/encode.hpp — encode a KV cache (a view of the caller's memory, or an owning
// kv_cache) into a .kvc container, streaming segments into a sink as they are produced.
//
// drop (kept sets) -> blocks per (layer, token chunk, K/V) cut from the view -> transforms ->
// quantizer -> entropy coder -> segment records. Each segment holds one (layer, chunk): the
// kept-token masks when the cache is sparse, then the K and V streams; segments decode independently.
//
// Memory: blocks are cut from the view a window of segments at a time (a few per thread), coded and
// written, so the encoder holds no copy of the cache, with three documented exceptions: a drop stage
// scores an f32 copy of the cache (unless the caller passes one with queries); transforms and
// quantizers whose fit reads every block (kmeans/nf4 codebooks, hadamard, derope...) hold the f32
// blocks; an entropy stage that fits on every symbol (rans:tables=shared) is fitted in a first pass
// (block by block when it can, keeping the symbols only while they fit `symbol_budget`).
// Results are identical for any thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/cpu/policy.hpp"
#include "kvcodec/format/container.hpp"
#include "kvcodec/pipeline/codec.hpp"
#include "kvcodec/registry/builtin.hpp"
#include "kvcodec/tensor/kv_view.hpp"

namespace kvcodec {

struct encode_options {
  std::int64_t chunk_tokens = 256;  ///< tokens per segment (independently decodable unit)
  std::string layout;               ///< dump layout hint stored for decode's writer
  /// Called as segments finish (done, total), serialised; for progress bars.
  std::function<void(std::size_t, std::size_t)> progress;
  /// Called (in token order, from the calling thread) when the encoder will not read tokens [t0, t1)
  /// of the view again in this pass: a caller reading from a mapped file can release those pages.
  std::function<void(std::int64_t, std::int64_t)> tokens_done;
  /// Symbols kept between the fit pass and the coding pass, in bytes; above it an entropy stage that
  /// fits block by block is fitted in a pass of its own (the quantizer runs twice, memory stays bounded).
  std::size_t symbol_budget = std::size_t{64} << 20;
  /// When set, the rows [t0, t1) of (layer, K/V, head) are read through this call as f32 instead of
  /// from the view's memory (the view gives shape, dtype and addresses, which are not dereferenced):
  /// for inputs read from a file with pread, whose memory a mapping would not bound.
  std::function<void(int layer, bool key, int head, std::int64_t t0, std::int64_t t1, float* out)> read_rows;
};

/// What a view does not carry about the cache.
struct kv_extras {
  std::optional<dtype> source_dtype;  ///< the dtype the cache came in (default: the view's)
  std::int32_t q_heads = 0;           ///< informational (queries are not stored)
  std::vector<std::int32_t> tokens, positions;
  std::map<std::string, std::string> metadata;
  kept_sets kept;                     ///< already token-dropped input (empty = dense)
  /// The same cache as an owning kv_cache with its queries, for drop stages (else they score a copy).
  const kv_cache* cache = nullptr;
  /// Mean squared queries ([layers][kv_heads][head_dim], see query_energy()) for quantizers whose
  /// steps follow them (weighted-quant); when empty they come from `cache`'s queries, if any.
  std::vector<float> query_energy;
};

namespace detail {
/// Serialises progress callbacks from worker threads.
struct progress_counter {
  progress_counter(const std::function<void(std::size_t, std::size_t)>* f, std::size_t n) : fn(f), total(n) {}
  const std::function<void(std::size_t, std::size_t)>* fn;
  std::size_t total;
  std::size_t done = 0;
  std::mutex m;
  void tick() {
    if (!fn || !*fn) return;
    std::lock_guard<std::mutex> lock(m);
    (*fn)(++done, total);
  }
};
}  // namespace detail

struct encode_report {
  std::string spec;                  ///< canonical spec, as stored
  std::size_t container_bytes = 0;   ///< whole file
  std::size_t codec_bytes = 0;       ///< segments + stage state (what bits_per_element counts)
  std::size_t state_bytes = 0;
  std::size_t mask_bytes = 0;        ///< kept-token masks (token dropping)
  std::size_t kv_elements = 0;
  double bits_per_element = 0;
  coder_stats stats;
  std::size_t segments = 0;
};

struct encoded {
  bytes data;
  encode_report report;
};

namespace detail {

/// make_block into `b`, reusing its vectors' memory (every element is written): the encoder's workers
/// cut block after block into the same scratch instead of allocating and zero-filling each one.
inline void make_block_into(block& b, const const_kv_view& kv, const kept_sets& kept, int layer, bool key, std::int64_t t0, std::int64_t t1,
                            const encode_options* opt = nullptr) {
  const auto* reader = opt && opt->read_rows ? &opt->read_rows : nullptr;
  b.layer = layer;
  b.key = key;
  b.heads = kv.kv_heads;
  b.head_dim = kv.head_dim;
  b.t0 = t0;
  b.t1 = t1;
  b.count.resize(static_cast<std::size_t>(b.heads));
  const std::size_t D = static_cast<std::size_t>(b.head_dim);
  std::size_t rows = 0;
  for (int h = 0; h < b.heads; ++h) {
    if (kept.empty()) {
      b.count[static_cast<std::size_t>(h)] = static_cast<std::uint32_t>(t1 - t0);
    } else {
      const auto& ks = kept[static_cast<std::size_t>(layer)][static_cast<std::size_t>(h)];
      auto lo = std::lower_bound(ks.begin(), ks.end(), static_cast<std::int32_t>(t0));
      auto hi = std::lower_bound(lo, ks.end(), static_cast<std::int32_t>(t1));
      b.count[static_cast<std::size_t>(h)] = static_cast<std::uint32_t>(hi - lo);
    }
    rows += b.count[static_cast<std::size_t>(h)];
  }
  b.pos.resize(rows);
  b.data.resize(rows * D);
  // A head's rows [t0, t1) are one run when tokens are adjacent and channels contiguous.
  const bool runs = !kv.paged() && kv.s_dim == 1 && kv.s_token == kv.head_dim;
  std::size_t row = 0;
  for (int h = 0; h < b.heads; ++h) {
    if (kept.empty()) {
      for (std::int64_t t = t0; t < t1; ++t) b.pos[row + static_cast<std::size_t>(t - t0)] = static_cast<std::int32_t>(t);
      if (reader) {
        (*reader)(layer, key, h, t0, t1, b.data.data() + row * D);
      } else if (runs) {
        decode_floats(reinterpret_cast<const std::uint8_t*>(kv.row(layer, key, h, t0)), static_cast<std::size_t>(t1 - t0) * D, kv.dt, b.data.data() + row * D);
      } else {
        for (std::int64_t t = t0; t < t1; ++t)
          load_row(kv.row(layer, key, h, t), kv.dt, kv.s_dim, D, b.data.data() + (row + static_cast<std::size_t>(t - t0)) * D);
      }
      row += static_cast<std::size_t>(t1 - t0);
    } else {
      const auto& ks = kept[static_cast<std::size_t>(layer)][static_cast<std::size_t>(h)];
      auto lo = std::lower_bound(ks.begin(), ks.end(), static_cast<std::int32_t>(t0));
      for (std::uint32_t r = 0; r < b.count[static_cast<std::size_t>(h)]; ++r, ++row) {
        b.pos[row] = lo[r];
        if (reader) (*reader)(layer, key, h, lo[r], lo[r] + 1, b.data.data() + row * D);
        else load_row(kv.row(layer, key, h, lo[r]), kv.dt, kv.s_dim, D, b.data.data() + row * D);
      }
    }
  }
}

/// Cuts one (layer, K or V, tokens [t0, t1)) block out of a view, as f32 rows (kept rows only when
/// `kept` is not empty).
inline block make_block(const const_kv_view& kv, const kept_sets& kept, int layer, bool key, std::int64_t t0, std::int64_t t1,
                        const encode_options* opt = nullptr) {
  block b;
  make_block_into(b, kv, kept, layer, key, t0, t1, opt);
  return b;
}

/// Skeleton of a block for decoding: counts/positions from the masks (or dense), no data.
inline block block_skeleton(const kv_shape& s, int layer, bool key, std::int64_t t0, std::int64_t t1,
                            const std::vector<std::vector<std::int32_t>>* kept_in_chunk) {
  block b;
  b.layer = layer;
  b.key = key;
  b.heads = s.kv_heads;
  b.head_dim = s.head_dim;
  b.t0 = t0;
  b.t1 = t1;
  b.count.resize(static_cast<std::size_t>(s.kv_heads));
  for (int h = 0; h < s.kv_heads; ++h) {
    if (kept_in_chunk) {
      const auto& ks = (*kept_in_chunk)[static_cast<std::size_t>(h)];
      b.count[static_cast<std::size_t>(h)] = static_cast<std::uint32_t>(ks.size());
      b.pos.insert(b.pos.end(), ks.begin(), ks.end());
    } else {
      b.count[static_cast<std::size_t>(h)] = static_cast<std::uint32_t>(t1 - t0);
      for (std::int64_t t = t0; t < t1; ++t) b.pos.push_back(static_cast<std::int32_t>(t));
    }
  }
  return b;
}

/// The skeleton of block (layer, K or V, tokens [t0, t1)) holding the rows of `kept` (all rows when
/// it is empty).
inline block kept_skeleton(const kv_shape& s, const kept_sets& kept, int layer, bool key, std::int64_t t0, std::int64_t t1) {
  if (kept.empty()) return block_skeleton(s, layer, key, t0, t1, nullptr);
  std::vector<std::vector<std::int32_t>> in(static_cast<std::size_t>(s.kv_heads));
  for (int h = 0; h < s.kv_heads; ++h) {
    const auto& ks = kept[static_cast<std::size_t>(layer)][static_cast<std::size_t>(h)];
    const auto lo = std::lower_bound(ks.begin(), ks.end(), static_cast<std::int32_t>(t0));
    in[static_cast<std::size_t>(h)].assign(lo, std::lower_bound(lo, ks.end(), static_cast<std::int32_t>(t1)));
  }
  return block_skeleton(s, layer, key, t0, t1, &in);
}

/// The kept-token masks of a segment: per head, ceil((t1-t0)/8) bytes, bit t-t0 LSB first.
inline void put_masks(const block& kb, bytes& out) {
  const std::size_t span = static_cast<std::size_t>(kb.t1 - kb.t0);
  const std::size_t mbytes = (span + 7) / 8;
  std::size_t row = 0;
  for (int hh = 0; hh < kb.heads; ++hh) {
    const std::size_t at = out.size();
    out.resize(at + mbytes, 0);
    for (std::uint32_t r = 0; r < kb.count[static_cast<std::size_t>(hh)]; ++r, ++row) {
      const std::size_t t = static_cast<std::size_t>(kb.pos[row] - kb.t0);
      out[at + t / 8] = static_cast<std::uint8_t>(out[at + t / 8] | (1u << (t % 8)));
    }
  }
}

}  // namespace detail

namespace detail {
/// The shape an encoder stores for view `kv` with extras `ex` (q_heads from them), after checking the
/// extras' ids, positions and kept sets against it.
inline kv_shape checked_shape(const const_kv_view& kv, const kv_extras& ex) {
  kv_shape s = kv.shape();
  s.q_heads = ex.cache ? ex.cache->shape.q_heads : ex.q_heads;
  kv_cache check;  // validates the side fields and kept sets against the shape
  check.shape = s;
  check.tokens = ex.tokens;
  check.positions = ex.positions;
  check.kept = ex.kept;
  if (!ex.tokens.empty() && ex.tokens.size() != static_cast<std::size_t>(s.tokens))
    throw_bad_input("encode input", "tokens", std::to_string(s.tokens) + " ids", std::to_string(ex.tokens.size()));
  if (!ex.positions.empty() && ex.positions.size() != static_cast<std::size_t>(s.tokens))
    throw_bad_input("encode input", "positions", std::to_string(s.tokens) + " positions", std::to_string(ex.positions.size()));
  check.validate_kept("encode input");
  return s;
}

/// The header fields every encoder writes the same way (the states are added by the caller).
inline void fill_header(kvc_header& h, const codec& c, const cache_info& info, const kv_extras& ex, const encode_options& opt, bool sparse) {
  h.codec = c.spec();
  h.shape = info.shape;
  h.source_dtype = info.source_dtype;
  h.metadata = ex.metadata;
  h.layout = opt.layout;
  h.sparse = sparse;
  h.chunk_tokens = opt.chunk_tokens;
  h.tokens = ex.tokens;
  h.positions = ex.positions;
}
/// Closes the container and completes the report's sizes.
inline void finish_report(encode_report& rep, kvc_writer& w, const std::vector<bytes>& states, const kv_shape& s, std::size_t nseg) {
  rep.container_bytes = static_cast<std::size_t>(w.finish());
  rep.spec = w.header().codec;
  for (const auto& st : states) rep.state_bytes += st.size();
  rep.codec_bytes += rep.state_bytes;
  rep.kv_elements = s.kv_elements();
  rep.bits_per_element = static_cast<double>(rep.codec_bytes) * 8.0 / static_cast<double>(rep.kv_elements);
  rep.segments = nseg;
}
}  // namespace detail

namespace detail {
/// The kept sets of codec c's drop stages (c.drop must be set) over the cache a view describes, on
/// the CPU: they score ex.cache when given (with its queries), else an f32 copy of the view; checked
/// against shape `s`.
inline kept_sets run_drops(const codec& c, const const_kv_view& kv, const kv_extras& ex, const kv_shape& s, dtype source_dtype) {
  kv_cache copy;
  const kv_cache* full = ex.cache;
  if (!full) {
    copy = to_cache(kv);
    copy.source_dtype = source_dtype;
    copy.positions = ex.positions;
    copy.tokens = ex.tokens;
    copy.metadata = ex.metadata;
    full = &copy;
  }
  kept_sets dropped = c.drop->select(*full);
  kv_cache check;
  check.shape = s;
  check.kept = dropped;
  check.validate_kept("drop stage '" + std::string(c.drop->name()) + "' output");
  return dropped;
}
}  // namespace detail

/// Encodes the cache a view describes with codec `c` (fitted to this cache: use a fresh codec per
/// cache) and streams the container into `sink`. Returns the report (sizes, bits per element).
template <cpu::cpu_policy P>
encode_report encode_to(const P& policy, codec& c, const const_kv_view& kv, byte_sink& sink, const encode_options& opt = {},
                        const kv_extras& ex = {}) {
  kv.validate("encode input");
  if (kv.space != memory_space::host) throw_usage("encode: the CPU backend reads host memory; this view is in device memory (use the CUDA backend)");
  if (kv.tokens <= 0) throw_bad_input("encode input", "tokens", "> 0", std::to_string(kv.tokens));
  if (opt.chunk_tokens < 1) throw_usage("encode: chunk_tokens must be >= 1, found " + std::to_string(opt.chunk_tokens));
  const kv_shape s = detail::checked_shape(kv, ex);
  const std::int64_t chunks = (s.tokens + opt.chunk_tokens - 1) / opt.chunk_tokens;
  const std::size_t L = static_cast<std::size_t>(s.layers);
  const std::size_t nseg = static_cast<std::size_t>(chunks) * L;
  cache_info info{s, ex.source_dtype.value_or(kv.dt), ex.metadata, {}};
  if (c.wants_query_energy()) {
    info.query_energy = !ex.query_energy.empty() ? ex.query_energy : ex.cache ? query_energy(*ex.cache) : std::vector<float>{};
    const std::size_t want = static_cast<std::size_t>(s.layers) * static_cast<std::size_t>(s.kv_heads) * static_cast<std::size_t>(s.head_dim);
    if (!info.query_energy.empty() && info.query_energy.size() != want)
      throw_bad_input("encode input", "query_energy", std::to_string(want) + " values (layers x kv_heads x head_dim)",
                      std::to_string(info.query_energy.size()));
  }

  // 1. Token dropping: the kept sets become part of the data.
  const kept_sets dropped = c.drop ? detail::run_drops(c, kv, ex, s, info.source_dtype) : kept_sets{};
  const kept_sets& kept = c.drop ? dropped : ex.kept;
  const bool sparse = !kept.empty();
  auto seg_range = [&](std::size_t seg) {
    const std::int64_t t0 = static_cast<std::int64_t>(seg / L) * opt.chunk_tokens;
    return std::pair<std::int64_t, std::int64_t>{t0, std::min(s.tokens, t0 + opt.chunk_tokens)};
  };
  // Block i = segment i / 2, K (even) or V (odd); segment = (chunk seg / L, layer seg % L).
  auto cut = [&](std::size_t i) {
    const std::size_t seg = i / 2;
    const auto [t0, t1] = seg_range(seg);
    return detail::make_block(kv, kept, static_cast<int>(seg % L), i % 2 == 0, t0, t1, &opt);
  };
  auto cut_into = [&](std::size_t i, block& b) {
    const std::size_t seg = i / 2;
    const auto [t0, t1] = seg_range(seg);
    detail::make_block_into(b, kv, kept, static_cast<int>(seg % L), i % 2 == 0, t0, t1, &opt);
  };
  // Per worker: a block and its symbols, reused block after block (no allocation, no zero-fill).
  struct worker_scratch {
    block b[2];
    symbols sy;
  };
  std::vector<worker_scratch> scratch(static_cast<std::size_t>(cpu::workers(policy.threads(), 2 * nseg)));
  // Tokens released so far (tokens_done is called in order, once per range).
  std::int64_t released = 0;
  auto release_upto = [&](std::size_t segs_done) {
    const std::int64_t t = std::min(s.tokens, static_cast<std::int64_t>(segs_done / L) * opt.chunk_tokens);
    if (t > released && opt.tokens_done) opt.tokens_done(released, t);
    released = std::max(released, t);
  };
  const std::size_t window = static_cast<std::size_t>(std::max(4, 4 * policy.threads()));

  // 2. Fit: transforms and quantizer (on every block when they need to), then the entropy stage.
  std::vector<bytes> states;
  kvc_header h;
  std::uint32_t stage_index = static_cast<std::uint32_t>(c.drops().size());
  auto keep_state = [&](bytes st, std::uint32_t idx) {
    if (!st.empty()) {
      h.states.push_back(state_entry{idx, 0, 0, 0});
      states.push_back(std::move(st));
    }
  };
  const bool hold_blocks = !c.transforms.empty() || c.quant->fit_uses_blocks();
  std::vector<block> blocks;  // hold_blocks: every block, f32
  std::vector<symbols> syms;  // symbols kept between the passes (empty: quantize again while coding)
  if (hold_blocks) {
    blocks.resize(2 * nseg);
    cpu::parallel_for(policy, blocks.size(), [&](std::size_t i) { blocks[i] = cut(i); });
    release_upto(nseg);
    for (auto& t : c.transforms) {
      keep_state(t->fit(blocks, info), stage_index++);
      cpu::parallel_for(policy, blocks.size(), [&](std::size_t i) { t->forward(blocks[i], info); });
    }
    keep_state(c.quant->fit(blocks, info), stage_index++);
    syms.resize(blocks.size());
    cpu::parallel_for(policy, blocks.size(), [&](std::size_t i) {
      c.quant->encode(blocks[i], info, syms[i]);
      std::vector<float>().swap(blocks[i].data);
    });
  } else {
    keep_state(c.quant->fit({}, info), stage_index++);
  }
  if (!c.entropy->fit_uses_symbols()) {
    keep_state(c.entropy->fit({}, info), stage_index++);
  } else if (hold_blocks || !c.entropy->fit_streaming() || s.kv_elements() * sizeof(std::uint16_t) <= opt.symbol_budget) {
    if (syms.empty()) {  // quantize everything once and keep the symbols for the coding pass
      syms.resize(2 * nseg);
      for (std::size_t w0 = 0; w0 < nseg; w0 += window) {
        const std::size_t n = std::min(window, nseg - w0);
        cpu::parallel_for_worker(policy, 2 * n, [&](std::size_t k, int wk) {
          block& b = scratch[static_cast<std::size_t>(wk)].b[0];
          cut_into(2 * w0 + k, b);
          c.quant->encode(b, info, syms[2 * w0 + k]);
        });
        release_upto(w0 + n);
      }
    }
    std::vector<const symbols*> ptrs;
    ptrs.reserve(syms.size());
    for (const auto& x : syms) ptrs.push_back(&x);
    keep_state(c.entropy->fit(ptrs, info), stage_index++);
  } else {  // block-by-block fit: a pass of its own, nothing kept
    c.entropy->fit_begin(info);
    for (std::size_t w0 = 0; w0 < nseg; w0 += window) {
      const std::size_t n = std::min(window, nseg - w0);
      cpu::parallel_for_worker(policy, 2 * n, [&](std::size_t k, int wk) {
        worker_scratch& ws = scratch[static_cast<std::size_t>(wk)];
        cut_into(2 * w0 + k, ws.b[0]);
        c.quant->encode(ws.b[0], info, ws.sy);
        c.entropy->fit_add(2 * w0 + k, ws.sy);
      });
      release_upto(w0 + n);
    }
    keep_state(c.entropy->fit_end(info), stage_index++);
  }
  released = 0;  // the coding pass reads the view again (unless every symbol is kept)

  // 3. Header, then segments a window at a time, written in order as they are ready.
  detail::fill_header(h, c, info, ex, opt, sparse);
  kvc_writer w(sink, std::move(h), states);
  encode_report rep;
  detail::progress_counter prog{&opt.progress, nseg};
  std::vector<bytes> seg_bytes(std::min(window, nseg));
  std::vector<coder_stats> seg_stats(seg_bytes.size());
  std::vector<std::size_t> seg_mask(seg_bytes.size());
  for (std::size_t w0 = 0; w0 < nseg; w0 += window) {
    const std::size_t n = std::min(window, nseg - w0);
    cpu::parallel_for_worker(policy, n, [&](std::size_t k, int wk) {
      const std::size_t seg = w0 + k;
      bytes& out = seg_bytes[k];
      out.clear();
      seg_stats[k] = {};
      worker_scratch& ws = scratch[static_cast<std::size_t>(wk)];
      block* const kv_blocks = ws.b;
      for (int kvi = 0; kvi < 2; ++kvi) {
        const std::size_t i = 2 * seg + static_cast<std::size_t>(kvi);
        if (hold_blocks)
          kv_blocks[kvi] = std::move(blocks[i]);
        else if (syms.empty() || sparse)  // sparse: the kept rows are needed for the masks
          cut_into(i, kv_blocks[kvi]);
        else
          kv_blocks[kvi] = detail::block_skeleton(s, static_cast<int>(seg % L), kvi == 0, seg_range(seg).first, seg_range(seg).second, nullptr);
      }
      if (sparse) detail::put_masks(kv_blocks[0], out);
      seg_mask[k] = out.size();
      byte_writer bw(out);
      for (int kvi = 0; kvi < 2; ++kvi) {
        const std::size_t i = 2 * seg + static_cast<std::size_t>(kvi);
        if (syms.empty()) c.quant->encode(kv_blocks[kvi], info, ws.sy);
        const symbols& sy = syms.empty() ? ws.sy : syms[i];
        bytes stream;
        c.entropy->encode(sy, kv_blocks[kvi], stream, seg_stats[k]);
        bw.put_blob(stream);
        if (!syms.empty()) syms[i] = {};
      }
      prog.tick();
    });
    for (std::size_t k = 0; k < n; ++k) {
      const auto [t0, t1] = seg_range(w0 + k);
      w.add_segment(static_cast<std::int32_t>((w0 + k) % L), t0, t1, seg_bytes[k]);
      rep.codec_bytes += seg_bytes[k].size();
      rep.mask_bytes += seg_mask[k];
      rep.stats += seg_stats[k];
    }
    if (syms.empty()) release_upto(w0 + n);
  }
  detail::finish_report(rep, w, states, s, nseg);
  return rep;
}

namespace detail {
/// encode_blocks_to's scope: transforms without state (the caller ran them); drop stages only with
/// their kept sets in ex.kept.
inline void check_blocks_codec(const codec& c, const kv_extras& ex) {
  if (!c.drops().empty() && ex.kept.empty())
    throw_usage("encode: codec '" + c.spec() + "' has drop stages, and their kept sets were not given (kv_extras::kept)");
}
}  // namespace detail

/// Writes a container whose blocks' entropy-stage bytes another encoder made: `quant_state` and
/// `entropy_state` are the stages' fitted states (empty when a stage has none), and
/// block_bytes(i, b, out, stats) appends block i's bytes to `out` (segment i / 2 in chunk-major order,
/// (chunk, layer) = (i / 2 / layers, i / 2 % layers); K when i is even; b its block skeleton; called
/// from several threads). The container is sparse when ex.kept is not empty: b then holds the kept
/// rows only, and each segment starts with their masks. A codec's drop stages must have run already
/// (their kept sets in ex.kept), and its transforms too (the caller's): transform_states[t] is transform
/// t's fitted state (none when empty or missing); b's head_dim is the rows' coded width (think's
/// narrower key rows).
template <cpu::cpu_policy P, class F>
encode_report encode_blocks_to(const P& policy, codec& c, const cache_info& info, const bytes& quant_state, bytes entropy_state, byte_sink& sink,
                               const encode_options& opt, const kv_extras& ex, F&& block_bytes, const std::vector<bytes>& transform_states = {}) {
  detail::check_blocks_codec(c, ex);
  if (opt.chunk_tokens < 1) throw_usage("encode: chunk_tokens must be >= 1, found " + std::to_string(opt.chunk_tokens));
  const kv_shape& s = info.shape;
  if (s.tokens <= 0) throw_bad_input("encode input", "tokens", "> 0", std::to_string(s.tokens));
  const std::size_t L = static_cast<std::size_t>(s.layers);
  const std::size_t nseg = static_cast<std::size_t>((s.tokens + opt.chunk_tokens - 1) / opt.chunk_tokens) * L;
  const bool sparse = !ex.kept.empty();
  kvc_header h;
  std::vector<bytes> states;
  const auto first_state = static_cast<std::uint32_t>(c.drops().size() + c.transforms.size());  // the drop stages keep none
  for (std::size_t t = 0; t < transform_states.size() && t < c.transforms.size(); ++t)
    if (!transform_states[t].empty()) {
      h.states.push_back(state_entry{static_cast<std::uint32_t>(c.drops().size() + t), 0, 0, 0});
      states.push_back(transform_states[t]);
    }
  if (!quant_state.empty()) {
    h.states.push_back(state_entry{first_state, 0, 0, 0});
    states.push_back(quant_state);
  }
  if (!entropy_state.empty()) {
    h.states.push_back(state_entry{first_state + 1, 0, 0, 0});
    states.push_back(std::move(entropy_state));
  }
  detail::fill_header(h, c, info, ex, opt, sparse);
  kvc_writer w(sink, std::move(h), states);
  encode_report rep;
  detail::progress_counter prog{&opt.progress, nseg};
  const std::size_t window = static_cast<std::size_t>(std::max(4, 4 * policy.threads()));
  std::vector<bytes> seg_bytes(std::min(window, nseg));
  std::vector<coder_stats> seg_stats(seg_bytes.size());
  std::vector<std::size_t> seg_mask(seg_bytes.size());
  for (std::size_t w0 = 0; w0 < nseg; w0 += window) {
    const std::size_t n = std::min(window, nseg - w0);
    cpu::parallel_for(policy, n, [&](std::size_t k) {
      const std::size_t seg = w0 + k;
      const std::int64_t t0 = static_cast<std::int64_t>(seg / L) * opt.chunk_tokens;
      bytes& out = seg_bytes[k];
      out.clear();
      seg_stats[k] = {};
      // K and V share the kept rows (and so a skeleton, but for the K/V flag)
      block b = detail::kept_skeleton(s, ex.kept, static_cast<int>(seg % L), true, t0, std::min(s.tokens, t0 + opt.chunk_tokens));
      if (sparse) detail::put_masks(b, out);
      seg_mask[k] = out.size();
      byte_writer bw(out);
      for (int kvi = 0; kvi < 2; ++kvi) {
        b.key = kvi == 0;
        b.head_dim = s.head_dim;
        for (const auto& t : c.transforms) b.head_dim = t->coded_head_dim(b, info);  // rows a transform stores narrower
        bytes stream;
        block_bytes(2 * seg + static_cast<std::size_t>(kvi), b, stream, seg_stats[k]);
        bw.put_blob(stream);
      }
      prog.tick();
    });
    for (std::size_t k = 0; k < n; ++k) {
      const std::int64_t t0 = static_cast<std::int64_t>((w0 + k) / L) * opt.chunk_tokens;
      w.add_segment(static_cast<std::int32_t>((w0 + k) % L), t0, std::min(s.tokens, t0 + opt.chunk_tokens), seg_bytes[k]);
      rep.codec_bytes += seg_bytes[k].size();
      rep.mask_bytes += seg_mask[k];
      rep.stats += seg_stats[k];
    }
  }
  detail::finish_report(rep, w, states, s, nseg);
  return rep;
}

/// Writes a container whose blocks' symbols another encoder made (the CUDA backend quantizes on the
/// GPU): `quant_state` is the quantizer's fitted state (empty when it has none), and symbols_of(i, sy)
/// fills the symbols of block i (numbered as in encode_blocks_to; it may be called more than once for
/// a block, from several threads). The entropy stage is fitted (on the symbols when it fits on them:
/// block by block where it can, else holding every block's symbols) and codes them here; for the same
/// symbols the container is encode_to's, byte for byte. Sparse when ex.kept is not empty, as
/// encode_blocks_to (transform_states as there).
template <cpu::cpu_policy P, class F>
encode_report encode_symbols_to(const P& policy, codec& c, const cache_info& info, const bytes& quant_state, byte_sink& sink, const encode_options& opt,
                                const kv_extras& ex, F&& symbols_of, const std::vector<bytes>& transform_states = {}) {
  detail::check_blocks_codec(c, ex);
  if (opt.chunk_tokens < 1) throw_usage("encode: chunk_tokens must be >= 1, found " + std::to_string(opt.chunk_tokens));
  const kv_shape& s = info.shape;
  if (s.tokens <= 0) throw_bad_input("encode input", "tokens", "> 0", std::to_string(s.tokens));
  const std::size_t nseg = static_cast<std::size_t>((s.tokens + opt.chunk_tokens - 1) / opt.chunk_tokens) * static_cast<std::size_t>(s.layers);
  bytes est;
  if (!c.entropy->fit_uses_symbols()) {
    est = c.entropy->fit({}, info);
  } else if (c.entropy->fit_streaming()) {
    c.entropy->fit_begin(info);
    cpu::parallel_for(policy, 2 * nseg, [&](std::size_t i) {
      symbols sy;
      symbols_of(i, sy);
      c.entropy->fit_add(i, sy);
    });
    est = c.entropy->fit_end(info);
  } else {
    std::vector<symbols> all(2 * nseg);
    cpu::parallel_for(policy, all.size(), [&](std::size_t i) { symbols_of(i, all[i]); });
    std::vector<const symbols*> ptrs;
    for (const auto& x : all) ptrs.push_back(&x);
    est = c.entropy->fit(ptrs, info);
  }
  return encode_blocks_to(
      policy, c, info, quant_state, std::move(est), sink, opt, ex,
      [&](std::size_t i, const block& b, bytes& out, coder_stats& st) {
        symbols sy;
        symbols_of(i, sy);
        c.entropy->encode(sy, b, out, st);
      },
      transform_states);
}

/// Encodes a view into a container in memory.
template <cpu::cpu_policy P>
encoded encode(const P& policy, codec& c, const const_kv_view& kv, const encode_options& opt = {}, const kv_extras& ex = {}) {
  encoded e;
  memory_sink sink(e.data);
  e.report = encode_to(policy, c, kv, sink, opt, ex);
  return e;
}

/// The extras of an owning cache (its dtype, ids, positions, metadata, kept sets and itself).
inline kv_extras extras_of(const kv_cache& kv) {
  kv_extras ex;
  ex.source_dtype = kv.source_dtype;
  ex.q_heads = kv.shape.q_heads;
  ex.tokens = kv.tokens;
  ex.positions = kv.positions;
  ex.metadata = kv.metadata;
  ex.kept = kv.kept;
  ex.cache = &kv;
  return ex;
}

/// Encodes an owning cache `kv` with codec `c`.
template <cpu::cpu_policy P>
encoded encode(const P& policy, codec& c, const kv_cache& kv, const encode_options& opt = {}) {
  kv.validate("encode input");
  return encode(policy, c, view_of(kv), opt, extras_of(kv));
}

inline encoded encode(codec& c, const kv_cache& kv, const encode_options& opt = {}) { return encode(cpu::par, c, kv, opt); }
inline encoded encode(std::string_view spec, const kv_cache& kv, const encode_options& opt = {}) {
  codec c = make_codec(spec);
  return encode(cpu::par, c, kv, opt);
}

}  // namespace kvcodec

#include "kvcodec/pipeline/decode.hpp"
