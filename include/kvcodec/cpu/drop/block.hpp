// kvcodec/cpu/drop/block.hpp — the `block` stage (kvpress BlockPress, after KeyDiff's block-wise
// prefill, Park et al. 2025): a serving engine that prefills a long prompt block by block must drop
// tokens before it has seen the whole prompt. Starting from the first `budget` tokens of the
// compressed prefix, each step scores the kept tokens together with the next `block` tokens with the
// scorer (a sub-cache gathered per head: cpu/drop/gather.hpp) and keeps the budget of them, until the
// prefix ends. The scorer's window (snapkv, h2o, expected-attention) is clipped to the tokens of a
// step, so it observes the last queries of the block just read. Tokens at or after obs_end are kept.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <string>

#include "kvcodec/core/error.hpp"
#include "kvcodec/cpu/drop/gather.hpp"
#include "kvcodec/cpu/drop/scorers.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

/// A scorer used as it is.
template <class S>
struct as_is : S {
  using S::S;
};

}  // namespace drop_detail

namespace drop_detail {

/// The `block` press's steps over a cache of T tokens and L x H heads (see the header comment), shared
/// by the CPU and GPU (cuda/drop/block.cuh) selections: step(idx, ci) scores the sub-cache of tokens
/// idx with configuration ci (the scorer's, budget b, window clipped to the step) and returns its kept
/// sets in sub-cache indices.
template <class Step>
kept_sets block_steps(const drop::config& c, std::int64_t T, std::size_t L, std::size_t H, Step&& step) {
  const std::string where = where_of(c);
  if (c.obs_end > T)
    throw_bad_input(where, "obs_end", "a prefix end <= the cache's " + std::to_string(T) + " tokens", std::to_string(c.obs_end));
  const std::int64_t n = c.obs_end < 0 ? T : c.obs_end;
  const std::int64_t b = budget_of(c, n);
  std::vector<std::int32_t> start(static_cast<std::size_t>(b));
  std::iota(start.begin(), start.end(), 0);
  kept_sets kept(L, std::vector<std::vector<std::int32_t>>(H, start));
  drop::config ci = c;
  ci.m = c.scorer;
  ci.tokens = b;
  ci.obs_end = -1;
  for (std::int64_t i = b; i < n; i += c.block) {
    const std::int64_t end = std::min(n, i + c.block);
    kept_sets idx = kept;
    for (auto& layer : idx)
      for (auto& h : layer)
        for (std::int64_t t = i; t < end; ++t) h.push_back(static_cast<std::int32_t>(t));
    ci.window = std::min<std::int64_t>(c.window, static_cast<std::int64_t>(idx[0][0].size()));
    kept = ungather(step(static_cast<const kept_sets&>(idx), static_cast<const drop::config&>(ci)), idx);
  }
  for (auto& layer : kept)
    for (auto& h : layer)
      for (std::int64_t t = n; t < T; ++t) h.push_back(static_cast<std::int32_t>(t));
  return kept;
}

}  // namespace drop_detail

/// Kept sets of `kv` under a `block` configuration (see the header comment), scored by c.scorer.
inline kept_sets select_block(const kv_cache& kv, const drop::config& c, int threads = 0) {
  using namespace drop_detail;
  const std::string where = where_of(c);
  kv.validate(where + " input");
  if (!kv.kept.empty()) throw_bad_input(where, "kept", "a dense cache (no kept sets)", "a cache that is already token-dropped");
  return block_steps(c, kv.shape.tokens, static_cast<std::size_t>(kv.shape.layers), static_cast<std::size_t>(kv.shape.kv_heads),
                     [&](const kept_sets& idx, const drop::config& ci) { return select_scored<as_is>(gather_tokens(kv, idx, where), ci, threads); });
}

}  // namespace kvcodec::cpu
