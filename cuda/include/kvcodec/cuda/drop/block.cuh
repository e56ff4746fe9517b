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

#include "kvcodec/cpu/drop/block.hpp"
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
  return cpu::drop_detail::block_steps(c, kv.tokens, static_cast<std::size_t>(kv.layers), static_cast<std::size_t>(kv.kv_heads),
                                       [&](const kept_sets& idx, const drop::config& ci) {
                                         const device_subcache sub = gather_tokens(kv, q, idx, positions, where, p);
                                         const const_kv_view sv(sub.view), sq(sub.qview);
                                         return drop_select(ci, sv, sub.has_queries ? &sq : nullptr, metadata, sub.positions, p);
                                       });
}

}  // namespace kvcodec::cuda
