// kvcodec/cpu/drop/scorers.hpp — runs a press that wraps a scorer (adakv, chunkkv, criticalkv,
// criticaladakv) with the scorer its configuration names (drop::config::scorer): select_scored<W>
// selects with W<S>, S the scorer of snapkv, h2o, tova, expected-attention, knorm, keydiff or lagkv.
#pragma once

#include <string>

#include "kvcodec/core/error.hpp"
#include "kvcodec/cpu/drop/expected_attention.hpp"
#include "kvcodec/cpu/drop/h2o.hpp"
#include "kvcodec/cpu/drop/keydiff.hpp"
#include "kvcodec/cpu/drop/knorm.hpp"
#include "kvcodec/cpu/drop/lagkv.hpp"
#include "kvcodec/cpu/drop/select.hpp"
#include "kvcodec/cpu/drop/snapkv.hpp"
#include "kvcodec/cpu/drop/tova.hpp"

namespace kvcodec::cpu::drop_detail {

/// Kept sets of `kv` under `c`, selected by W<scorer of c.scorer> (select_with).
template <template <class> class W>
kept_sets select_scored(const kv_cache& kv, const drop::config& c, int threads) {
  switch (c.scorer) {
    case method::knorm: return select_with<W<knorm_scorer>>(kv, c, threads);
    case method::keydiff: return select_with<W<keydiff_scorer>>(kv, c, threads);
    case method::h2o: return select_with<W<h2o_scorer>>(kv, c, threads);
    case method::snapkv: return select_with<W<snapkv_scorer>>(kv, c, threads);
    case method::tova: return select_with<W<tova_scorer>>(kv, c, threads);
    case method::expected_attention: return select_with<W<expected_attention_scorer>>(kv, c, threads);
    case method::lagkv: return select_with<W<lagkv_scorer>>(kv, c, threads);
    default: break;
  }
  throw_usage(where_of(c) + ": scorer must be one of " + std::string(drop::scorer_names));
}

}  // namespace kvcodec::cpu::drop_detail
