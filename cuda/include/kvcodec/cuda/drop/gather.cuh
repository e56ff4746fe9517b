// kvcodec/cuda/drop/gather.cuh — the GPU side of cpu/drop/gather.hpp: a dense sub-cache of some tokens
// of a device cache, chosen per (layer, kv head), for the drop stages that score the survivors of
// another (the `block` press, a composed spec's later stages). Every (layer, kv head) must choose the
// same number m of tokens, in increasing order; sub-cache token i of head h in layer l is token
// idx[l][h][i]; query head q follows its kv head's tokens (q / (q_heads / kv_heads)); the positions
// are kv head 0's tokens' (their RoPE positions where the cache has some), as on the CPU. The rows are
// copied bit for bit (core/kv_address.hpp's kv_gather_op, run by cuda/batch.cuh) into device buffers
// in the Hugging Face layout, in the source's dtype. Queued on p.stream.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/core/kv_address.hpp"
#include "kvcodec/cpu/drop/gather.hpp"
#include "kvcodec/cuda/batch.cuh"
#include "kvcodec/cuda/memory.cuh"
#include "kvcodec/cuda/policy.cuh"
#include "kvcodec/tensor/kept.hpp"
#include "kvcodec/tensor/kv_view.hpp"

namespace kvcodec::cuda {

namespace detail {

/// A device view's per-layer bases and block table in device memory, as a kv_batch_src.
struct device_src {
  device_buffer<const void*> k, v;
  device_buffer<std::int32_t> table;
  kv_batch_src s;
  explicit device_src(const const_kv_view& kv) {
    const std::vector<const void*> hk(kv.k.begin(), kv.k.end()), hv(kv.v.begin(), kv.v.end());
    k = device_buffer<const void*>(std::span<const void* const>(hk));
    v = device_buffer<const void*>(std::span<const void* const>(hv));
    s.k = k.data();
    s.v = v.data();
    s.layout = kv.layout();
    if (kv.paged()) {
      table = device_buffer<std::int32_t>(std::span<const std::int32_t>(kv.block_table));
      s.layout.block_table = table.data();
    }
    s.head_dim = kv.head_dim;
    s.dtype_code = static_cast<std::uint32_t>(kv.dt);
  }
};

}  // namespace detail

/// A sub-cache in device memory: K and V (and the queries, when a queries view was given) in the
/// Hugging Face layout, its views, and its tokens' positions.
struct device_subcache {
  device_buffer<std::byte> kv_bytes, q_bytes;
  kv_view view, qview;
  bool has_queries = false;
  std::vector<std::int32_t> positions;
};

/// The sub-cache of device view `kv` (and queries `q`, the K side of a device view, or nullptr)
/// holding tokens idx[l][h] (see the file comment); positions: the cache's token positions (empty:
/// token t is at position t). Usage error, naming `where`, when the counts differ between (layer,
/// head) pairs.
inline device_subcache gather_tokens(const const_kv_view& kv, const const_kv_view* q, const kept_sets& idx, const std::vector<std::int32_t>& positions,
                                     const std::string& where, const par_t& p) {
  const std::size_t L = static_cast<std::size_t>(kv.layers), H = static_cast<std::size_t>(kv.kv_heads), D = static_cast<std::size_t>(kv.head_dim);
  const std::size_t m = cpu::drop_detail::gather_count(idx, L, H, where);
  device_subcache out;
  out.positions = cpu::drop_detail::gather_positions(idx, positions);
  const std::size_t es = dtype_size(kv.dt);
  // one gather over (layer, K/V) blocks of H x m rows each, K of every layer first, then V
  const auto gather = [&](const const_kv_view& src, std::size_t heads, std::size_t group, std::vector<kv_gather_block>& blocks, bool both,
                          device_buffer<std::byte>& bytes) {
    std::vector<std::int32_t> head, token;
    for (std::size_t l = 0; l < L; ++l)
      for (std::size_t h = 0; h < heads; ++h) {
        const auto& ix = idx[l][h / group];
        head.insert(head.end(), m, static_cast<std::int32_t>(h));
        token.insert(token.end(), ix.begin(), ix.end());
      }
    const std::uint64_t per = static_cast<std::uint64_t>(heads) * m, E = per * L;
    for (std::size_t l = 0; l < L; ++l)
      for (std::uint32_t key = 1;; key = 0) {
        blocks.push_back({l * per, per, (key != 0 ? 0 : E) + l * per, static_cast<std::int32_t>(l), key});
        if (key == 0 || !both) break;
      }
    bytes = device_buffer<std::byte>(static_cast<std::size_t>((both ? 2 : 1) * E * D * es));
    const detail::device_src s(src);
    device_buffer<std::int32_t> dh{std::span<const std::int32_t>(head)}, dt{std::span<const std::int32_t>(token)};
    device_buffer<kv_gather_block> db{std::span<const kv_gather_block>(blocks)};
    device_buffer<std::uint32_t> bad(blocks.size() + 1);
    run_batch(db.data(), blocks.size(), per * D, kv_gather_op{s.s, dh.data(), dt.data(), bytes.data()}, bad.data(), p);
    check(cudaStreamSynchronize(p.stream), "cuda::gather_tokens");  // the lists die here
    std::vector<std::byte*> kp, vp;
    for (std::size_t l = 0; l < L; ++l) {
      kp.push_back(bytes.data() + l * per * D * es);
      vp.push_back(bytes.data() + ((both ? E : 0) + l * per) * D * es);
    }
    kv_view v = kv_view::hf(kp, vp, kv.dt, static_cast<std::int32_t>(heads), static_cast<std::int64_t>(m), kv.head_dim);
    v.space = memory_space::device;
    return v;
  };
  std::vector<kv_gather_block> kvb, qb;
  out.view = gather(kv, H, 1, kvb, true, out.kv_bytes);
  if (q != nullptr) {
    const std::size_t HQ = static_cast<std::size_t>(q->kv_heads);
    if (HQ < H || HQ % H != 0 || q->layers != kv.layers || q->tokens != kv.tokens || q->head_dim != kv.head_dim || q->dt != kv.dt)
      throw_bad_input(where, "queries", "a multiple of the kv heads, the cache's layers, tokens, head_dim and dtype", "another shape");
    out.qview = gather(*q, HQ, HQ / H, qb, false, out.q_bytes);
    out.has_queries = true;
  }
  return out;
}

}  // namespace kvcodec::cuda
