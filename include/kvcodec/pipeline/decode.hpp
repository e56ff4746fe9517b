// kvcodec/pipeline/decode.hpp — decode a .kvc container into a view of the caller's memory (any
// layout and dtype a view describes, paged included), from memory, from a file read piece by piece,
// or from a stream of segments as they arrive.
//
// Per segment: checksum, entropy decode, then the quantizer writes the rows straight into the
// destination in its dtype (quant_stage::decode_rows) when it can; otherwise it decodes to f32, the
// transforms are inverted and the rows converted. Dropped tokens (sparse containers) are written as
// zeros and reported as kept sets. Segments decode in parallel; the result is independent of the
// thread count. Stage parameters that a container's spec carries but the stages refuse are corrupt-
// file errors naming the file.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/cpu/policy.hpp"
#include "kvcodec/format/container.hpp"
#include "kvcodec/pipeline/codec.hpp"
#include "kvcodec/pipeline/encode.hpp"
#include "kvcodec/registry/builtin.hpp"
#include "kvcodec/tensor/kv_view.hpp"

namespace kvcodec {

struct decode_options {
  std::int64_t token_begin = 0;
  std::int64_t token_end = -1;    ///< -1 = to the end
  std::string name = "<memory>";  ///< file name for error messages
  kvc_limits limits;
  std::function<void(std::size_t, std::size_t)> progress;  ///< (done, total) segments
};

/// What decode_into found besides the values.
struct decode_result {
  std::int64_t token_begin = 0, token_end = 0;  ///< the decoded range; view token i = cache token token_begin + i
  kept_sets kept;                               ///< sparse containers: kept tokens per (layer, head), relative to token_begin
};

/// Memory a decoding thread reuses from one segment to the next (read buffer, symbol planes, row
/// pointers): one per thread keeps a decode free of per-segment allocation, zero-fill and page faults.
struct segment_scratch {
  bytes read;     ///< a segment's bytes, for callers that read segments from a file
  symbols sy;     ///< the entropy stage's output
  std::vector<std::byte*> rows;
};

/// A container's codec, built from its header and loaded with its stage state, ready to decode
/// segments into views (const and thread-safe).
class segment_decoder {
 public:
  /// `state(i)` returns the checked bytes of header.states[i].
  segment_decoder(const kvc_header& h, const std::function<std::span<const std::uint8_t>(std::size_t)>& state, std::string name,
                  const registry& reg = builtin_registry())
      : h_(h), name_(std::move(name)), info_{h.shape, h.source_dtype, h.metadata} {
    try {
      c_ = make_codec(h.codec, reg);
    } catch (const error& e) {
      throw_corrupt(name_, std::string("codec spec in the header is not usable by this build: ") + e.what());
    }
    auto stages = c_.all();
    for (const auto& st : h.states)
      if (st.stage >= stages.size())
        throw_corrupt(name_, "state for stage " + std::to_string(st.stage) + " of a " + std::to_string(stages.size()) + "-stage codec");
    try {
      for (std::size_t si = 0; si < stages.size(); ++si) {
        std::span<const std::uint8_t> st;
        for (std::size_t i = 0; i < h.states.size(); ++i)
          if (h.states[i].stage == si) st = state(i);
        stages[si]->load_state(st, info_);
      }
    } catch (const error& e) {
      if (e.kind() == error_kind::io) throw;
      throw_corrupt(name_, std::string("stage state or parameters refused: ") + e.what());
    }
  }

  const kvc_header& header() const noexcept { return h_; }
  const codec& stages() const noexcept { return c_; }
  const cache_info& info() const noexcept { return info_; }

  /// The skeleton of segment se's K or V block as the stages code it: rows from the kept tokens `kc`
  /// (null: every token of the segment), head_dim the width the transforms store (think: key rows of
  /// its kept channels only).
  block coded_skeleton(const segment_entry& se, bool key, const std::vector<std::vector<std::int32_t>>* kc) const {
    block b = detail::block_skeleton(h_.shape, se.layer, key, se.t0, se.t1, kc);
    for (const auto& t : c_.transforms) b.head_dim = t->coded_head_dim(b, info_);
    return b;
  }

  /// A sparse container's segment starts with the kept-token masks: reads them from `r` and returns
  /// the kept tokens (absolute) per kv head.
  std::vector<std::vector<std::int32_t>> read_kept(byte_reader& r, const segment_entry& se) const {
    const kv_shape& s = h_.shape;
    const std::size_t span = static_cast<std::size_t>(se.t1 - se.t0), mb = (span + 7) / 8;
    const auto masks = r.get_bytes(static_cast<std::size_t>(s.kv_heads) * mb, "kept-token masks");
    std::vector<std::vector<std::int32_t>> kc(static_cast<std::size_t>(s.kv_heads));
    for (int hh = 0; hh < s.kv_heads; ++hh)
      for (std::size_t t = 0; t < span; ++t)
        if (masks[static_cast<std::size_t>(hh) * mb + t / 8] & (1u << (t % 8)))
          kc[static_cast<std::size_t>(hh)].push_back(static_cast<std::int32_t>(se.t0 + static_cast<std::int64_t>(t)));
    return kc;
  }

  /// Decodes one checked segment into `dst`, whose token i is cache token `base + i`, writing only the
  /// tokens in [tb, te) (which must lie within dst). Appends the segment's kept tokens in range
  /// (absolute) per head to `kept_out` when the container is sparse and kept_out is not null.
  /// `scratch` (one per thread) lets consecutive calls reuse their working memory.
  void decode_segment(const segment_entry& se, std::span<const std::uint8_t> seg, const kv_view& dst, std::int64_t base, std::int64_t tb,
                      std::int64_t te, std::vector<std::vector<std::int32_t>>* kept_out = nullptr, segment_scratch* scratch = nullptr) const {
    const std::string where = name_ + " segment (layer " + std::to_string(se.layer) + ", tokens " + std::to_string(se.t0) + ".." + std::to_string(se.t1) + ")";
    try {
      segment_scratch local;
      decode_segment_impl(se, seg, dst, base, tb, te, kept_out, where, scratch ? *scratch : local);
    } catch (const error& e) {
      if (e.kind() == error_kind::io) throw;
      // A stage that refuses what the container's spec asks of it: the file is at fault. Stage errors
      // name the stream, not the file: the segment (file, layer, tokens) goes in front.
      const std::string m = e.what();
      if (e.kind() == error_kind::corrupt && m.rfind(name_, 0) == 0) throw;
      throw_corrupt(where, m);
    }
  }

 private:
  void decode_segment_impl(const segment_entry& se, std::span<const std::uint8_t> seg, const kv_view& dst, std::int64_t base, std::int64_t tb,
                           std::int64_t te, std::vector<std::vector<std::int32_t>>* kept_out, const std::string& where,
                           segment_scratch& scratch) const {
    const kv_shape& s = h_.shape;
    byte_reader r(seg, where);
    std::vector<std::vector<std::int32_t>> kc;
    const std::int64_t lo = std::max(tb, se.t0), hi = std::min(te, se.t1);
    const std::size_t D = static_cast<std::size_t>(s.head_dim);
    const std::size_t row_bytes = D * dtype_size(dst.dt);
    if (h_.sparse) {
      kc = read_kept(r, se);
      // Dropped tokens decode as zeros.
      for (int kvi = 0; kvi < 2; ++kvi)
        for (int hh = 0; hh < s.kv_heads; ++hh) {
          const auto& ks = kc[static_cast<std::size_t>(hh)];
          std::size_t at = 0;
          for (std::int64_t t = lo; t < hi; ++t) {
            while (at < ks.size() && ks[at] < t) ++at;
            if (at < ks.size() && ks[at] == t) continue;
            std::byte* p = dst.row(se.layer, kvi == 0, hh, t - base);
            if (dst.s_dim == 1) {
              std::memset(p, 0, row_bytes);
            } else {
              for (std::size_t d = 0; d < D; ++d) std::memset(p + static_cast<std::int64_t>(d) * dst.s_dim * static_cast<std::int64_t>(dtype_size(dst.dt)), 0, dtype_size(dst.dt));
            }
          }
        }
      if (kept_out)
        for (int hh = 0; hh < s.kv_heads; ++hh)
          for (auto t : kc[static_cast<std::size_t>(hh)])
            if (t >= lo && t < hi) (*kept_out)[static_cast<std::size_t>(hh)].push_back(t);
    }
    std::vector<std::byte*>& rows = scratch.rows;
    for (int kvi = 0; kvi < 2; ++kvi) {
      block b = coded_skeleton(se, kvi == 0, h_.sparse ? &kc : nullptr);
      const std::size_t W = static_cast<std::size_t>(b.head_dim);
      const auto stream = r.get_blob(kvi == 0 ? "K stream" : "V stream");
      symbols& sy = scratch.sy;
      c_.entropy->decode_reusing(stream, b, sy);
      const bool whole = lo == se.t0 && hi == se.t1;
      if (whole && c_.transforms.empty() && dst.s_dim == 1) {
        rows.resize(b.rows());
        std::size_t row = 0;
        for (int hh = 0; hh < s.kv_heads; ++hh)
          for (std::uint32_t k = 0; k < b.count[static_cast<std::size_t>(hh)]; ++k, ++row)
            rows[row] = dst.row(se.layer, kvi == 0, hh, b.pos[row] - base);
        if (c_.quant->decode_rows(sy, info_, b, dst.dt, rows.data())) continue;
      }
      c_.quant->decode(sy, info_, b);
      if (b.data.size() != b.rows() * W) throw_corrupt(where, "quantizer returned the wrong number of values");
      for (auto it = c_.transforms.rbegin(); it != c_.transforms.rend(); ++it) (*it)->inverse(b, info_);
      if (b.data.size() != b.rows() * D) throw_corrupt(where, "transforms returned the wrong number of values");
      std::size_t row = 0;
      for (int hh = 0; hh < s.kv_heads; ++hh)
        for (std::uint32_t k = 0; k < b.count[static_cast<std::size_t>(hh)]; ++k, ++row) {
          const std::int64_t t = b.pos[row];
          if (t < lo || t >= hi) continue;
          store_row(b.data.data() + row * D, D, dst.dt, dst.s_dim, dst.row(se.layer, kvi == 0, hh, t - base));
        }
    }
    r.expect_end();
  }

  kvc_header h_;
  std::string name_;
  cache_info info_;
  codec c_;
};

namespace detail {
inline std::pair<std::int64_t, std::int64_t> decode_range(const kvc_header& h, const decode_options& opt) {
  const std::int64_t tb = opt.token_begin, te = opt.token_end < 0 ? h.shape.tokens : opt.token_end;
  if (tb < 0 || te > h.shape.tokens || tb >= te)
    throw_usage("decode: token range " + std::to_string(tb) + ".." + std::to_string(te) + " is not within 0.." + std::to_string(h.shape.tokens));
  return {tb, te};
}
inline void check_destination(const kvc_header& h, const kv_view& dst, std::int64_t tb, std::int64_t te, const std::string& name) {
  dst.validate("decode destination");
  if (dst.space != memory_space::host) throw_usage("decode: the CPU backend writes host memory; the destination view is in device memory");
  if (dst.layers != h.shape.layers || dst.kv_heads != h.shape.kv_heads || dst.head_dim != h.shape.head_dim || dst.tokens != te - tb)
    throw_bad_input("decode destination for " + name, "shape",
                    std::to_string(h.shape.layers) + " layers x " + std::to_string(h.shape.kv_heads) + " kv heads x " + std::to_string(te - tb) +
                        " tokens x head_dim " + std::to_string(h.shape.head_dim),
                    std::to_string(dst.layers) + " x " + std::to_string(dst.kv_heads) + " x " + std::to_string(dst.tokens) + " x " +
                        std::to_string(dst.head_dim));
}
/// Segments overlapping [tb, te), in chunk-major order.
inline std::vector<std::size_t> segments_in(const kvc_header& h, std::int64_t tb, std::int64_t te) {
  std::vector<std::size_t> todo;
  for (std::size_t i = 0; i < h.segments.size(); ++i)
    if (h.segments[i].t1 > tb && h.segments[i].t0 < te) todo.push_back(i);
  return todo;
}
/// Decodes `todo` into dst in parallel; `get(i, scratch)` returns segment i's checked bytes.
template <cpu::cpu_policy P, class Get>
decode_result decode_segments(const P& policy, const segment_decoder& dec, const std::vector<std::size_t>& todo, Get&& get, const kv_view& dst,
                              std::int64_t tb, std::int64_t te, const decode_options& opt) {
  const kvc_header& h = dec.header();
  const kv_shape& s = h.shape;
  std::vector<std::vector<std::vector<std::int32_t>>> seg_kept(h.sparse ? todo.size() : 0);
  progress_counter prog{&opt.progress, todo.size()};
  std::vector<segment_scratch> scratch(static_cast<std::size_t>(cpu::workers(policy.threads(), todo.size())));
  cpu::parallel_for_worker(policy, todo.size(), [&](std::size_t j, int w) {
    segment_scratch& sc = scratch[static_cast<std::size_t>(w)];
    const auto& se = h.segments[todo[j]];
    const std::span<const std::uint8_t> seg = get(todo[j], sc.read);
    if (h.sparse) seg_kept[j].resize(static_cast<std::size_t>(s.kv_heads));
    dec.decode_segment(se, seg, dst, tb, tb, te, h.sparse ? &seg_kept[j] : nullptr, &sc);
    prog.tick();
  });
  decode_result res;
  res.token_begin = tb;
  res.token_end = te;
  if (h.sparse) {
    res.kept.assign(static_cast<std::size_t>(s.layers), std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(s.kv_heads)));
    for (std::size_t j = 0; j < todo.size(); ++j) {  // chunk-major order: each head's tokens come out sorted
      const auto& se = h.segments[todo[j]];
      for (int hh = 0; hh < s.kv_heads; ++hh)
        for (auto t : seg_kept[j][static_cast<std::size_t>(hh)])
          res.kept[static_cast<std::size_t>(se.layer)][static_cast<std::size_t>(hh)].push_back(static_cast<std::int32_t>(t - tb));
    }
  }
  return res;
}
/// An owning cache for the range of a header (f32, zeros) with its side fields.
inline kv_cache cache_for(const kvc_header& h, std::int64_t tb, std::int64_t te) {
  kv_shape out_shape = h.shape;
  out_shape.q_heads = 0;
  out_shape.tokens = te - tb;
  kv_cache out = kv_cache::zeros(out_shape, h.source_dtype);
  out.metadata = h.metadata;
  if (!h.tokens.empty()) out.tokens.assign(h.tokens.begin() + tb, h.tokens.begin() + te);
  if (!h.positions.empty()) out.positions.assign(h.positions.begin() + tb, h.positions.begin() + te);
  return out;
}
}  // namespace detail

/// decode_into for a container already parsed (parse_kvc): what the overload below does after parsing.
/// `segments_checked`: the caller has verified the checksum of every segment in the range
/// (kvc_view::segment_bytes), so they are not hashed again (the store checks a chunk whole first).
template <cpu::cpu_policy P>
decode_result decode_into(const P& policy, const kvc_view& v, const kv_view& dst, const decode_options& opt = {},
                          const registry& reg = builtin_registry(), bool segments_checked = false) {
  const auto [tb, te] = detail::decode_range(v.header, opt);
  detail::check_destination(v.header, dst, tb, te, opt.name);
  const segment_decoder dec(v.header, [&](std::size_t i) { return v.state_bytes(i); }, opt.name, reg);
  const auto todo = detail::segments_in(v.header, tb, te);
  return detail::decode_segments(
      policy, dec, todo,
      [&](std::size_t i, bytes&) {
        if (!segments_checked) return v.segment_bytes(i);
        const auto& se = v.header.segments[i];
        return v.payload.subspan(static_cast<std::size_t>(se.offset), static_cast<std::size_t>(se.size));
      },
      dst, tb, te, opt);
}

/// Decodes a container held in memory (all of it, or the token range in `opt`) into `dst`, a view
/// of te - tb tokens. Every checksum read is verified. On an exception, which tokens of dst hold
/// decoded data is unspecified: decode again or use stream_decoder, which reports them.
template <cpu::cpu_policy P>
decode_result decode_into(const P& policy, std::span<const std::uint8_t> file, const kv_view& dst, const decode_options& opt = {},
                          const registry& reg = builtin_registry()) {
  return decode_into(policy, parse_kvc(file, opt.name, opt.limits), dst, opt, reg);
}

/// Decodes a container held in memory into a new owning f32 cache. Every segment needed is checked
/// before the cache is allocated.
template <cpu::cpu_policy P>
kv_cache decode(const P& policy, std::span<const std::uint8_t> file, const decode_options& opt = {}, const registry& reg = builtin_registry()) {
  const kvc_view v = parse_kvc(file, opt.name, opt.limits);
  const auto [tb, te] = detail::decode_range(v.header, opt);
  const segment_decoder dec(v.header, [&](std::size_t i) { return v.state_bytes(i); }, opt.name, reg);
  const auto todo = detail::segments_in(v.header, tb, te);
  for (const auto i : todo) v.segment_bytes(i);  // checksums first: no output memory for a damaged file
  kv_cache out = detail::cache_for(v.header, tb, te);
  const kv_view dst = view_of(out);
  decode_result res = detail::decode_segments(
      policy, dec, todo,
      [&](std::size_t i, bytes&) {
        const auto& se = v.header.segments[i];
        return v.payload.subspan(static_cast<std::size_t>(se.offset), static_cast<std::size_t>(se.size));
      },
      dst, tb, te, opt);
  out.kept = std::move(res.kept);
  return out;
}

inline kv_cache decode(std::span<const std::uint8_t> file, const decode_options& opt = {}) { return decode(cpu::par, file, opt); }

/// Decodes a container that arrives in pieces (a socket, a store, a pipe) into `dst` segment by
/// segment as each is complete: memory holds the header, the stage state and one incomplete record.
/// The destination is given up front, or made from the header by a callback when it arrives.
class stream_decoder {
 public:
  using make_view = std::function<kv_view(const kvc_header&)>;
  stream_decoder(kv_view dst, decode_options opt = {}, const registry& reg = builtin_registry())
      : fixed_(std::move(dst)), opt_(std::move(opt)), reg_(&reg), reader_(opt_.name, opt_.limits) {}
  stream_decoder(make_view make, decode_options opt = {}, const registry& reg = builtin_registry())
      : make_(std::move(make)), opt_(std::move(opt)), reg_(&reg), reader_(opt_.name, opt_.limits) {}

  /// Feeds the next bytes; every segment they complete is checked and decoded into the view.
  void push(std::span<const std::uint8_t> in) {
    reader_.push(in, [&](const segment_entry& se, std::span<const std::uint8_t> seg) {
      if (!dec_) start();
      if (se.t1 > tb_ && se.t0 < te_) {
        std::vector<std::vector<std::int32_t>> kc(reader_.header().sparse ? static_cast<std::size_t>(reader_.header().shape.kv_heads) : 0);
        dec_->decode_segment(se, seg, dst_, tb_, tb_, te_, kc.empty() ? nullptr : &kc, &scratch_);
        for (std::size_t hh = 0; hh < kc.size(); ++hh)
          for (auto t : kc[hh]) kept_[static_cast<std::size_t>(se.layer)][hh].push_back(static_cast<std::int32_t>(t - tb_));
      }
      ++decoded_;
      if (opt_.progress) opt_.progress(decoded_, reader_.header().segment_count());
    });
    if (!dec_ && reader_.header_ready()) start();
  }
  /// Declares the end of the input: throws a corrupt error when the container is incomplete (its
  /// message and valid_tokens() say which tokens of the view hold decoded data).
  decode_result finish() {
    reader_.finish();
    decode_result r;
    r.token_begin = tb_;
    r.token_end = te_;
    r.kept = kept_;
    return r;
  }
  bool header_ready() const noexcept { return reader_.header_ready(); }
  const kvc_header& header() const noexcept { return reader_.header(); }
  /// View tokens [0, n) hold decoded data for every layer (what a consumer may use so far).
  std::int64_t valid_tokens() const noexcept {
    if (!dec_) return 0;
    return std::clamp<std::int64_t>(reader_.complete_tokens() - tb_, 0, te_ - tb_);
  }
  const kv_view& view() const noexcept { return dst_; }

 private:
  void start() {
    const kvc_header& h = reader_.header();
    std::tie(tb_, te_) = detail::decode_range(h, opt_);
    dst_ = make_ ? make_(h) : fixed_;
    detail::check_destination(h, dst_, tb_, te_, opt_.name);
    dec_.emplace(h, [&](std::size_t i) { return reader_.state_bytes(i); }, opt_.name, *reg_);
    if (h.sparse) kept_.assign(static_cast<std::size_t>(h.shape.layers), std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(h.shape.kv_heads)));
  }
  kv_view fixed_, dst_;
  make_view make_;
  decode_options opt_;
  const registry* reg_;
  kvc_stream_reader reader_;
  std::optional<segment_decoder> dec_;
  segment_scratch scratch_;
  std::int64_t tb_ = 0, te_ = 0;
  std::size_t decoded_ = 0;
  kept_sets kept_;
};

}  // namespace kvcodec
