// kvcodec/cpu/drop_select.hpp — the kept sets of any token-dropping configuration: picks the method's
// own selector, one file each under cpu/drop/ (random, streamingllm, knorm, keydiff, h2o, snapkv, tova,
// expected_attention, pyramidkv, adakv, lagkv, chunkkv, criticalkv, block), which share the budget and the choice of cpu/drop/select.hpp.
#pragma once

#include "kvcodec/core/error.hpp"
#include "kvcodec/cpu/drop/adakv.hpp"
#include "kvcodec/cpu/drop/block.hpp"
#include "kvcodec/cpu/drop/chunkkv.hpp"
#include "kvcodec/cpu/drop/criticalkv.hpp"
#include "kvcodec/cpu/drop/expected_attention.hpp"
#include "kvcodec/cpu/drop/h2o.hpp"
#include "kvcodec/cpu/drop/keydiff.hpp"
#include "kvcodec/cpu/drop/knorm.hpp"
#include "kvcodec/cpu/drop/lagkv.hpp"
#include "kvcodec/cpu/drop/pyramidkv.hpp"
#include "kvcodec/cpu/drop/random.hpp"
#include "kvcodec/cpu/drop/select.hpp"
#include "kvcodec/cpu/drop/snapkv.hpp"
#include "kvcodec/cpu/drop/streamingllm.hpp"
#include "kvcodec/cpu/drop/tova.hpp"

namespace kvcodec::cpu {

/// Kept sets of `kv` under drop configuration `c` (cpu/drop/select.hpp), on `threads` threads (0 = the
/// default policy's). Throws bad_input for a cache without the queries a method needs, a prefix,
/// budget or window larger than the cache, or a cache that is already token-dropped.
inline kept_sets drop_select(const kv_cache& kv, const drop::config& c, int threads = 0) {
  using drop::method;
  switch (c.m) {
    case method::random: return select_random(kv, c, threads);
    case method::streamingllm: return select_streamingllm(kv, c, threads);
    case method::knorm: return select_knorm(kv, c, threads);
    case method::keydiff: return select_keydiff(kv, c, threads);
    case method::h2o: return select_h2o(kv, c, threads);
    case method::snapkv: return select_snapkv(kv, c, threads);
    case method::tova: return select_tova(kv, c, threads);
    case method::expected_attention: return select_expected_attention(kv, c, threads);
    case method::pyramidkv: return select_pyramidkv(kv, c, threads);
    case method::adakv: return select_adakv(kv, c, threads);
    case method::lagkv: return select_lagkv(kv, c, threads);
    case method::chunkkv: return select_chunkkv(kv, c, threads);
    case method::criticalkv: return select_criticalkv(kv, c, threads);
    case method::criticaladakv: return select_criticaladakv(kv, c, threads);
    case method::block: return select_block(kv, c, threads);
  }
  throw_usage(drop_detail::where_of(c) + ": unknown method");
}

}  // namespace kvcodec::cpu
