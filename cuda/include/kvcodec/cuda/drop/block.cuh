// kvcodec/cuda/drop/block.cuh — the `block` stage's selection on the GPU, mirroring cpu/drop/block.hpp
// (kvpress BlockPress): from the first `budget` tokens of the compressed prefix, each step gathers the
// kept tokens and the next `block` tokens into a device sub-cache (cuda/drop/gather.cuh), scores it
// with the configured scorer's GPU selection (cuda/drop_select.cuh's drop_select, its window clipped to
// the step's tokens) and keeps the budget, until the prefix ends; tokens at or after obs_end are
// kept. Only each step's kept token indices come back to the host. The kept sets are the CPU's where
// the scorer's are (bit for bit for knorm, keydiff, lagkv, expected-attention; the window scorers but
// for near-ties).
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "kvcodec/cpu/drop/gather.hpp"
#include "kvcodec/cpu/drop/select.hpp"
#include "kvcodec/cuda/drop/gather.cuh"
#include "kvcodec/cuda/policy.cuh"
#include "kvcodec/stage/drop_common.hpp"
#include "kvcodec/tensor/kv_view.hpp"

namespace kvcodec::cuda {

/// The selection of one drop configuration on the GPU (cuda/drop_select.cuh).
inline kept_sets drop_select(const drop::config& c, const const_kv_view& kv, const const_kv_view* q, const std::map<std::string, std::string>& metadata,
                             const std::vector<std::int32_t>& positions, const par_t& p);

/// Kept sets of the device cache `kv` (queries `q` or nullptr) under a `block` configuration.
inline kept_sets block_select(const drop::config& c, const const_kv_view& kv, const const_kv_view* q, const std::map<std::string, std::string>& metadata,
                              const std::vector<std::int32_t>& positions, const par_t& p) {
  const std::string where = cpu::drop_detail::where_of(c);
  const std::int64_t T = kv.tokens;
  if (c.obs_end > T) throw_bad_input(where, "obs_end", "a prefix end <= the cache's " + std::to_string(T) + " tokens", std::to_string(c.obs_end));
  const std::int64_t n = c.obs_end < 0 ? T : c.obs_end;
  const std::int64_t b = cpu::drop_detail::budget_of(c, n);
  const std::size_t L = static_cast<std::size_t>(kv.layers), H = static_cast<std::size_t>(kv.kv_heads);
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
    const device_subcache sub = gather_tokens(kv, q, idx, positions, where, p);
    ci.window = std::min(c.window, sub.view.tokens);
    const const_kv_view sv(sub.view), sq(sub.qview);
    kept = cpu::drop_detail::ungather(drop_select(ci, sv, sub.has_queries ? &sq : nullptr, metadata, sub.positions, p), idx);
  }
  for (auto& layer : kept)
    for (auto& h : layer)
      for (std::int64_t t = n; t < T; ++t) h.push_back(static_cast<std::int32_t>(t));
  return kept;
}

}  // namespace kvcodec::cuda
