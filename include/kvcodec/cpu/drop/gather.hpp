// kvcodec/cpu/drop/gather.hpp — a dense cache of some tokens of another, chosen per (layer, kv head):
// what a drop stage that runs on the survivors of another (block, a composed spec's later stages)
// scores. Every (layer, kv head) must choose the same number m of tokens, in increasing order;
// sub-cache token i of head h in layer l is token idx[l][h][i]. Query head q follows its kv head's
// tokens (q / (q_heads / kv_heads)); the token ids and positions (a scorer's RoPE positions) are
// those of kv head 0's tokens, the original index where the cache has none; metadata and the source
// dtype are copied.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::cpu::drop_detail {

/// The number m of tokens every (layer, head) of idx chooses (L layers x H heads). Throws usage when the
/// counts differ between (layer, head) pairs (`where` names the caller).
inline std::size_t gather_count(const kept_sets& idx, std::size_t L, std::size_t H, const std::string& where) {
  if (idx.size() != L || idx[0].size() != H) throw_usage(where + ": token lists for " + std::to_string(L) + " layers x " + std::to_string(H) + " heads");
  const std::size_t m = idx[0][0].size();
  for (const auto& layer : idx)
    for (const auto& h : layer)
      if (h.size() != m)
        throw_usage(where + ": every (layer, kv head) must keep the same number of tokens to be scored again (" + std::to_string(m) + " and " +
                    std::to_string(h.size()) + " found); put a stage with per-head or per-layer budgets (adakv, criticaladakv, pyramidkv) last");
  return m;
}

/// The sub-cache's token positions: kv head 0's tokens', through the cache's positions when it has some.
inline std::vector<std::int32_t> gather_positions(const kept_sets& idx, const std::vector<std::int32_t>& positions) {
  const auto& first = idx[0][0];
  std::vector<std::int32_t> out(first.size());
  for (std::size_t i = 0; i < first.size(); ++i) out[i] = positions.empty() ? first[i] : positions[static_cast<std::size_t>(first[i])];
  return out;
}

/// The sub-cache of `kv` holding tokens idx[l][h] (see the header comment). Throws usage when the
/// counts differ between (layer, head) pairs (`where` names the caller).
inline kv_cache gather_tokens(const kv_cache& kv, const kept_sets& idx, const std::string& where) {
  const kv_shape& s = kv.shape;
  const std::size_t L = static_cast<std::size_t>(s.layers), H = static_cast<std::size_t>(s.kv_heads), D = static_cast<std::size_t>(s.head_dim),
                    T = static_cast<std::size_t>(s.tokens);
  const std::size_t m = gather_count(idx, L, H, where);
  kv_cache out;
  out.shape = s;
  out.shape.tokens = static_cast<std::int64_t>(m);
  out.source_dtype = kv.source_dtype;
  out.metadata = kv.metadata;
  const auto& first = idx[0][0];
  out.positions = gather_positions(idx, kv.positions);
  if (!kv.tokens.empty()) {
    out.tokens.resize(m);
    for (std::size_t i = 0; i < m; ++i) out.tokens[i] = kv.tokens[static_cast<std::size_t>(first[i])];
  }
  auto rows = [&](const std::vector<float>& src, std::size_t heads, std::size_t group, std::size_t l) {
    std::vector<float> dst(heads * m * D);
    for (std::size_t h = 0; h < heads; ++h) {
      const auto& ix = idx[l][h / group];
      for (std::size_t i = 0; i < m; ++i)
        std::copy_n(src.data() + (h * T + static_cast<std::size_t>(ix[i])) * D, D, dst.data() + (h * m + i) * D);
    }
    return dst;
  };
  out.keys.resize(L);
  out.values.resize(L);
  for (std::size_t l = 0; l < L; ++l) {
    out.keys[l] = rows(kv.keys[l], H, 1, l);
    out.values[l] = rows(kv.values[l], H, 1, l);
  }
  if (kv.has_queries() && s.q_heads > 0) {
    out.queries.resize(L);
    for (std::size_t l = 0; l < L; ++l) out.queries[l] = rows(kv.queries[l], static_cast<std::size_t>(s.q_heads), static_cast<std::size_t>(s.q_heads) / H, l);
  }
  return out;
}

/// Kept sets of a sub-cache mapped back to the tokens of the cache it was gathered from.
inline kept_sets ungather(const kept_sets& sub, const kept_sets& idx) {
  kept_sets out(sub.size());
  for (std::size_t l = 0; l < sub.size(); ++l) {
    out[l].resize(sub[l].size());
    for (std::size_t h = 0; h < sub[l].size(); ++h)
      for (auto t : sub[l][h]) out[l][h].push_back(idx[l][h][static_cast<std::size_t>(t)]);
  }
  return out;
}

}  // namespace kvcodec::cpu::drop_detail
