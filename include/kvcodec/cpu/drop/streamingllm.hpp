// kvcodec/cpu/drop/streamingllm.hpp — the `streamingllm` stage (Xiao et al. 2023): the first `sink` tokens,
// then the most recent ones, as protected tokens in that priority; no scores.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

struct streamingllm_scorer : scorer_base {
  using scorer_base::scorer_base;
  void operator()(int, std::int64_t, layer_scores& out) const {
    for (std::int64_t t = 0; t < std::min(c.sink, n); ++t) out.prot.push_back(static_cast<std::int32_t>(t));
    protect_recent(out.prot, n, n, std::min(c.sink, n));
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under a `streamingllm` configuration (cpu/drop/select.hpp).
inline kept_sets select_streamingllm(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_with<drop_detail::streamingllm_scorer>(kv, c, threads);
}

}  // namespace kvcodec::cpu
