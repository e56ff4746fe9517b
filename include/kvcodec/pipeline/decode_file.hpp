// kvcodec/pipeline/decode_file.hpp — decode from a .kvc file by random access: the header, the
// index and only the segments a token range needs are read (pread), never the whole file.
#pragma once

#include "kvcodec/io/stream_file.hpp"
#include "kvcodec/pipeline/decode.hpp"

namespace kvcodec {

/// Decodes the token range of `opt` from `f` into `dst` (a view of te - tb tokens).
template <cpu::cpu_policy P>
decode_result decode_into(const P& policy, const io::kvc_file& f, const kv_view& dst, decode_options opt = {},
                          const registry& reg = builtin_registry()) {
  if (opt.name == "<memory>") opt.name = f.path();
  const kvc_header& h = f.header();
  const auto [tb, te] = detail::decode_range(h, opt);
  detail::check_destination(h, dst, tb, te, opt.name);
  const segment_decoder dec(h, [&](std::size_t i) { return f.state_bytes(i); }, opt.name, reg);
  const auto todo = detail::segments_in(h, tb, te);
  return detail::decode_segments(policy, dec, todo, [&](std::size_t i, bytes& buf) { return f.read_segment(i, buf); }, dst, tb, te, opt);
}

/// Decodes the token range of `opt` from `f` into a new owning f32 cache.
template <cpu::cpu_policy P>
kv_cache decode(const P& policy, const io::kvc_file& f, decode_options opt = {}, const registry& reg = builtin_registry()) {
  const auto [tb, te] = detail::decode_range(f.header(), opt);
  kv_cache out = detail::cache_for(f.header(), tb, te);
  decode_result r = decode_into(policy, f, view_of(out), opt, reg);
  out.kept = std::move(r.kept);
  return out;
}

}  // namespace kvcodec
