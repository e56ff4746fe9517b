// kvcodec/pipeline/encode.hpp — encode a kv_cache into a .kvc container and decode it back.
//
// encode: drop (kept sets) -> blocks per (layer, token chunk, K/V) -> transforms -> quantizer ->
// entropy coder -> container. Each segment holds one (layer, chunk): the kept-token masks when the
// cache is sparse, then the K and V streams; segments decode independently (random access by token
// range, parallel decode). bits_per_element counts every byte the codec produced (segments and
// stage state: scales, tables, masks), divided by the K+V elements of the original cache; the
// container header (spec, index, token ids) is reported separately as container_bytes.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/cpu/policy.hpp"
#include "kvcodec/format/container.hpp"
#include "kvcodec/pipeline/codec.hpp"
#include "kvcodec/registry/builtin.hpp"

namespace kvcodec {

struct encode_options {
  std::int64_t chunk_tokens = 256;  ///< tokens per segment (independently decodable unit)
  std::string layout;               ///< dump layout hint stored for decode's writer
  /// Called as segments finish (done, total), serialised; for progress bars.
  std::function<void(std::size_t, std::size_t)> progress;
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

inline block make_block(const kv_cache& kv, const kept_sets& kept, int layer, bool key, std::int64_t t0, std::int64_t t1) {
  block b;
  b.layer = layer;
  b.key = key;
  b.heads = kv.shape.kv_heads;
  b.head_dim = kv.shape.head_dim;
  b.t0 = t0;
  b.t1 = t1;
  b.count.resize(static_cast<std::size_t>(b.heads));
  const auto& src = key ? kv.keys[static_cast<std::size_t>(layer)] : kv.values[static_cast<std::size_t>(layer)];
  const std::size_t D = static_cast<std::size_t>(b.head_dim);
  const std::size_t T = static_cast<std::size_t>(kv.shape.tokens);
  if (kept.empty()) {  // dense: the exact size up front (growing by insert reallocates and copies)
    b.pos.reserve(static_cast<std::size_t>(b.heads) * static_cast<std::size_t>(t1 - t0));
    b.data.reserve(static_cast<std::size_t>(b.heads) * static_cast<std::size_t>(t1 - t0) * D);
  }
  for (int h = 0; h < b.heads; ++h) {
    const float* head = src.data() + static_cast<std::size_t>(h) * T * D;
    if (kept.empty()) {
      b.count[static_cast<std::size_t>(h)] = static_cast<std::uint32_t>(t1 - t0);
      for (std::int64_t t = t0; t < t1; ++t) b.pos.push_back(static_cast<std::int32_t>(t));
      b.data.insert(b.data.end(), head + static_cast<std::size_t>(t0) * D, head + static_cast<std::size_t>(t1) * D);
    } else {
      const auto& ks = kept[static_cast<std::size_t>(layer)][static_cast<std::size_t>(h)];
      auto lo = std::lower_bound(ks.begin(), ks.end(), static_cast<std::int32_t>(t0));
      auto hi = std::lower_bound(lo, ks.end(), static_cast<std::int32_t>(t1));
      b.count[static_cast<std::size_t>(h)] = static_cast<std::uint32_t>(hi - lo);
      for (auto it = lo; it != hi; ++it) {
        b.pos.push_back(*it);
        b.data.insert(b.data.end(), head + static_cast<std::size_t>(*it) * D, head + static_cast<std::size_t>(*it + 1) * D);
      }
    }
  }
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

inline cache_info info_of(const kv_cache& kv) { return cache_info{kv.shape, kv.source_dtype, kv.metadata}; }

}  // namespace detail

/// Encodes `kv` with codec `c` (which is fitted to this cache: use a fresh codec per cache).
template <cpu::cpu_policy P>
encoded encode(const P& policy, codec& c, const kv_cache& kv, const encode_options& opt = {}) {
  kv.validate("encode input");
  if (opt.chunk_tokens < 1) throw_usage("encode: chunk_tokens must be >= 1, found " + std::to_string(opt.chunk_tokens));
  const kv_shape& s = kv.shape;
  const std::int64_t chunks = (s.tokens + opt.chunk_tokens - 1) / opt.chunk_tokens;
  const std::size_t nseg = static_cast<std::size_t>(chunks) * static_cast<std::size_t>(s.layers);
  cache_info info = detail::info_of(kv);

  // 1. Token dropping: the kept sets become part of the data.
  kept_sets dropped;
  if (c.drop) {
    dropped = c.drop->select(kv);
    kv_cache check;  // validates the drop stage's output against the shape
    check.shape = kv.shape;
    check.kept = dropped;
    check.validate_kept("drop stage '" + std::string(c.drop->name()) + "' output");
  }
  const kept_sets& kept = c.drop ? dropped : kv.kept;
  const bool sparse = !kept.empty();

  // 2. Blocks, chunk-major: segment i = (chunk i / layers, layer i % layers); blocks 2i (K), 2i+1 (V).
  // Without transforms and with a quantizer whose fit ignores the data, each block is quantized as soon
  // as it is cut and its f32 copy released (no second copy of the whole cache).
  std::vector<block> blocks(2 * nseg);
  std::vector<symbols> syms(blocks.size());
  const bool streaming = c.transforms.empty() && !c.quant->fit_uses_blocks();
  cpu::parallel_for(policy, 2 * nseg, [&](std::size_t i) {
    const std::size_t seg = i / 2;
    const int layer = static_cast<int>(seg % static_cast<std::size_t>(s.layers));
    const std::int64_t t0 = static_cast<std::int64_t>(seg / static_cast<std::size_t>(s.layers)) * opt.chunk_tokens;
    blocks[i] = detail::make_block(kv, kept, layer, i % 2 == 0, t0, std::min(s.tokens, t0 + opt.chunk_tokens));
    if (streaming) {
      c.quant->encode(blocks[i], info, syms[i]);
      std::vector<float>().swap(blocks[i].data);
    }
  });

  // 3. Transforms and quantizer (each may fit state on the whole cache first).
  std::vector<bytes> states;
  kvc_header h;
  std::uint32_t stage_index = c.drop ? 1u : 0u;
  auto keep_state = [&](bytes st, std::uint32_t idx) {
    if (!st.empty()) {
      h.states.push_back(state_entry{idx, 0, 0, 0});
      states.push_back(std::move(st));
    }
  };
  for (auto& t : c.transforms) {
    keep_state(t->fit(blocks, info), stage_index++);
    cpu::parallel_for(policy, blocks.size(), [&](std::size_t i) { t->forward(blocks[i], info); });
  }
  keep_state(c.quant->fit(blocks, info), stage_index++);
  if (!streaming) cpu::parallel_for(policy, blocks.size(), [&](std::size_t i) { c.quant->encode(blocks[i], info, syms[i]); });
  {
    std::vector<const symbols*> ptrs;
    ptrs.reserve(syms.size());
    for (const auto& x : syms) ptrs.push_back(&x);
    keep_state(c.entropy->fit(ptrs, info), stage_index++);
  }

  // 4. Entropy coding into segments.
  std::vector<bytes> seg_bytes(nseg);
  std::vector<coder_stats> seg_stats(nseg);
  std::vector<std::size_t> seg_mask(nseg, 0);
  detail::progress_counter prog{&opt.progress, nseg};
  cpu::parallel_for(policy, nseg, [&](std::size_t i) {
    bytes& out = seg_bytes[i];
    const block& kb = blocks[2 * i];
    if (sparse) {
      const std::size_t span = static_cast<std::size_t>(kb.t1 - kb.t0);
      const std::size_t mbytes = (span + 7) / 8;
      std::size_t row = 0;
      for (int hh = 0; hh < kb.heads; ++hh) {
        std::vector<std::uint8_t> m(mbytes, 0);
        for (std::uint32_t r = 0; r < kb.count[static_cast<std::size_t>(hh)]; ++r, ++row) {
          const std::size_t t = static_cast<std::size_t>(kb.pos[row] - kb.t0);
          m[t / 8] = static_cast<std::uint8_t>(m[t / 8] | (1u << (t % 8)));
        }
        out.insert(out.end(), m.begin(), m.end());
      }
      seg_mask[i] = out.size();
    }
    byte_writer w(out);
    for (int kvi = 0; kvi < 2; ++kvi) {
      bytes stream;
      c.entropy->encode(syms[2 * i + static_cast<std::size_t>(kvi)], blocks[2 * i + static_cast<std::size_t>(kvi)], stream, seg_stats[i]);
      w.put_blob(stream);
    }
    syms[2 * i] = {};
    syms[2 * i + 1] = {};
    prog.tick();
  });

  h.codec = c.spec();
  h.shape = kv.shape;
  h.source_dtype = kv.source_dtype;
  h.metadata = kv.metadata;
  h.layout = opt.layout;
  h.sparse = sparse;
  h.chunk_tokens = opt.chunk_tokens;
  h.tokens = kv.tokens;
  h.positions = kv.positions;
  h.segments.resize(nseg);
  for (std::size_t i = 0; i < nseg; ++i) {
    h.segments[i].layer = blocks[2 * i].layer;
    h.segments[i].t0 = blocks[2 * i].t0;
    h.segments[i].t1 = blocks[2 * i].t1;
  }

  encoded e;
  e.data = write_kvc(h, states, seg_bytes);
  auto& rep = e.report;
  rep.spec = h.codec;
  rep.container_bytes = e.data.size();
  for (const auto& st : states) rep.state_bytes += st.size();
  rep.codec_bytes = rep.state_bytes;
  for (std::size_t i = 0; i < nseg; ++i) {
    rep.codec_bytes += seg_bytes[i].size();
    rep.mask_bytes += seg_mask[i];
    rep.stats += seg_stats[i];
  }
  rep.kv_elements = s.kv_elements();
  rep.bits_per_element = static_cast<double>(rep.codec_bytes) * 8.0 / static_cast<double>(rep.kv_elements);
  rep.segments = nseg;
  return e;
}

inline encoded encode(codec& c, const kv_cache& kv, const encode_options& opt = {}) { return encode(cpu::par, c, kv, opt); }
inline encoded encode(std::string_view spec, const kv_cache& kv, const encode_options& opt = {}) {
  codec c = make_codec(spec);
  return encode(cpu::par, c, kv, opt);
}

struct decode_options {
  std::int64_t token_begin = 0;
  std::int64_t token_end = -1;  ///< -1 = to the end
  std::string name = "<memory>";  ///< file name for error messages
  kvc_limits limits;
  std::function<void(std::size_t, std::size_t)> progress;  ///< (done, total) segments
};

/// Decodes a container (all of it, or the token range in `opt`), verifying every checksum it reads.
template <cpu::cpu_policy P>
kv_cache decode(const P& policy, std::span<const std::uint8_t> file, const decode_options& opt = {}, const registry& reg = builtin_registry()) {
  const kvc_view v = parse_kvc(file, opt.name, opt.limits);
  const kvc_header& h = v.header;
  codec c;
  try {
    c = make_codec(h.codec, reg);
  } catch (const error& e) {
    throw_corrupt(opt.name, std::string("codec spec in the header is not usable by this build: ") + e.what());
  }
  const kv_shape& s = h.shape;
  const std::int64_t tb = opt.token_begin, te = opt.token_end < 0 ? s.tokens : opt.token_end;
  if (tb < 0 || te > s.tokens || tb >= te)
    throw_usage("decode: token range " + std::to_string(tb) + ".." + std::to_string(te) + " is not within 0.." + std::to_string(s.tokens));
  cache_info info{s, h.source_dtype, h.metadata};
  auto stages = c.all();
  for (std::size_t i = 0; i < h.states.size(); ++i) {
    if (h.states[i].stage >= stages.size()) throw_corrupt(opt.name, "state for stage " + std::to_string(h.states[i].stage) + " of a " + std::to_string(stages.size()) + "-stage codec");
  }
  for (std::size_t si = 0; si < stages.size(); ++si) {
    std::span<const std::uint8_t> st;
    for (std::size_t i = 0; i < h.states.size(); ++i)
      if (h.states[i].stage == si) st = v.state_bytes(i);
    stages[si]->load_state(st, info);
  }

  kv_shape out_shape = s;
  out_shape.q_heads = 0;
  out_shape.tokens = te - tb;
  kv_cache out = kv_cache::zeros(out_shape, h.source_dtype);
  out.metadata = h.metadata;
  if (!h.tokens.empty()) out.tokens.assign(h.tokens.begin() + tb, h.tokens.begin() + te);
  if (!h.positions.empty()) out.positions.assign(h.positions.begin() + tb, h.positions.begin() + te);
  if (h.sparse) out.kept.assign(static_cast<std::size_t>(s.layers), std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(s.kv_heads)));

  std::vector<std::size_t> todo;
  for (std::size_t i = 0; i < h.segments.size(); ++i)
    if (h.segments[i].t1 > tb && h.segments[i].t0 < te) todo.push_back(i);
  std::vector<std::vector<std::vector<std::int32_t>>> seg_kept(h.sparse ? todo.size() : 0);
  detail::progress_counter prog{&opt.progress, todo.size()};

  cpu::parallel_for(policy, todo.size(), [&](std::size_t j) {
    const auto& se = h.segments[todo[j]];
    const auto seg = v.segment_bytes(todo[j]);
    byte_reader r(seg, opt.name + " segment " + std::to_string(todo[j]));
    std::vector<std::vector<std::int32_t>>* kept_chunk = nullptr;
    if (h.sparse) {
      const std::size_t span = static_cast<std::size_t>(se.t1 - se.t0);
      const auto masks = r.get_bytes(static_cast<std::size_t>(s.kv_heads) * ((span + 7) / 8), "kept-token masks");
      auto& kc = seg_kept[j];
      kc.resize(static_cast<std::size_t>(s.kv_heads));
      for (int hh = 0; hh < s.kv_heads; ++hh)
        for (std::size_t t = 0; t < span; ++t)
          if (masks[static_cast<std::size_t>(hh) * ((span + 7) / 8) + t / 8] & (1u << (t % 8)))
            kc[static_cast<std::size_t>(hh)].push_back(static_cast<std::int32_t>(se.t0 + static_cast<std::int64_t>(t)));
      kept_chunk = &kc;
    }
    for (int kvi = 0; kvi < 2; ++kvi) {
      block b = detail::block_skeleton(s, se.layer, kvi == 0, se.t0, se.t1, kept_chunk);
      const auto stream = r.get_blob(kvi == 0 ? "K stream" : "V stream");
      const symbols sy = c.entropy->decode(stream, b);
      c.quant->decode(sy, info, b);
      if (b.data.size() != b.rows() * static_cast<std::size_t>(s.head_dim))
        throw_corrupt(opt.name, "segment " + std::to_string(todo[j]) + ": quantizer returned the wrong number of values");
      for (auto it = c.transforms.rbegin(); it != c.transforms.rend(); ++it) (*it)->inverse(b, info);
      auto& dst = kvi == 0 ? out.keys[static_cast<std::size_t>(se.layer)] : out.values[static_cast<std::size_t>(se.layer)];
      const std::size_t D = static_cast<std::size_t>(s.head_dim), T = static_cast<std::size_t>(out_shape.tokens);
      std::size_t row = 0;
      for (int hh = 0; hh < s.kv_heads; ++hh)
        for (std::uint32_t rr = 0; rr < b.count[static_cast<std::size_t>(hh)]; ++rr, ++row) {
          const std::int64_t t = b.pos[row];
          if (t < tb || t >= te) continue;
          std::copy_n(b.data.data() + row * D, D, dst.data() + (static_cast<std::size_t>(hh) * T + static_cast<std::size_t>(t - tb)) * D);
        }
    }
    r.expect_end();
    prog.tick();
  });
  if (h.sparse) {
    for (std::size_t j = 0; j < todo.size(); ++j) {
      const auto& se = h.segments[todo[j]];
      for (int hh = 0; hh < s.kv_heads; ++hh)
        for (auto t : seg_kept[j][static_cast<std::size_t>(hh)])
          if (t >= tb && t < te) out.kept[static_cast<std::size_t>(se.layer)][static_cast<std::size_t>(hh)].push_back(static_cast<std::int32_t>(t - tb));
    }
    for (auto& layer : out.kept)
      for (auto& ks : layer) std::sort(ks.begin(), ks.end());
  }
  return out;
}

inline kv_cache decode(std::span<const std::uint8_t> file, const decode_options& opt = {}) { return decode(cpu::par, file, opt); }

}  // namespace kvcodec
