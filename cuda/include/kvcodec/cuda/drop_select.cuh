// kvcodec/cuda/drop_select.cuh — the kept sets of a token-dropping configuration chosen on the GPU: the
// CUDA side of cpu/drop_select.hpp, the drop stage of cuda::encode (cuda/encode.cuh).
//
//   kept_sets k = kvcodec::cuda::drop_select(cfg, device_view, &queries, metadata, positions, par);
//
// Dispatches to the method's selector under cuda/drop/ (random, streamingllm, knorm, keydiff, snapkv,
// pyramidkv, h2o, tova, lagkv, expected-attention, and the presses adakv, criticalkv, criticaladakv,
// chunkkv and block over any scorer: over the window scorers their window entry points, over the others
// the scorer's steps then the press over its coder); drop_stage_select runs a composed spec's stages in order (drop_chain), with the CPU
// stage's prefix, budget and checks (cpu/drop/select.hpp: budget_of, check_window; the same bad-input
// errors for missing queries or a prefix, budget or window larger than the cache). The selectors read
// the view's keys (and values, queries) in place; only the kept token indices come back to the host
// (4 bytes per kept row), as kept_sets, the tokens at or after the prefix appended as on the CPU.
// Kept sets equal the CPU's where scores are equal within float rounding (docs/CUDA.md: the tie rule;
// the window scorers may differ on near-ties). Other methods (a stage that is not built in) are a usage
// error naming these. Synchronous with respect to p.stream.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/cpu/drop/expected_attention.hpp"
#include "kvcodec/cpu/drop/select.hpp"
#include "kvcodec/cpu/drop/gather.hpp"
#include "kvcodec/cpu/drop_stages.hpp"
#include "kvcodec/cuda/drop/adakv.cuh"
#include "kvcodec/cuda/drop/block.cuh"
#include "kvcodec/cuda/drop/chunkkv.cuh"
#include "kvcodec/cuda/drop/criticalkv.cuh"
#include "kvcodec/cuda/drop/expected_attention.cuh"
#include "kvcodec/cuda/drop/gather.cuh"
#include "kvcodec/cuda/drop/h2o.cuh"
#include "kvcodec/cuda/drop/keydiff.cuh"
#include "kvcodec/cuda/drop/knorm.cuh"
#include "kvcodec/cuda/drop/lagkv.cuh"
#include "kvcodec/cuda/drop/pyramidkv.cuh"
#include "kvcodec/cuda/drop/random.cuh"
#include "kvcodec/cuda/drop/snapkv.cuh"
#include "kvcodec/cuda/drop/streamingllm.cuh"
#include "kvcodec/cuda/drop/tova.cuh"
#include "kvcodec/cuda/memory.cuh"
#include "kvcodec/cuda/policy.cuh"
#include "kvcodec/pipeline/codec.hpp"
#include "kvcodec/stage/drop_common.hpp"
#include "kvcodec/tensor/kv_view.hpp"

namespace kvcodec::cuda {

/// The methods drop_select runs on the GPU.
inline constexpr const char* gpu_drop_methods =
    "random, streamingllm, knorm, keydiff, snapkv, pyramidkv, h2o, tova, lagkv, expected-attention, and adakv, criticalkv, criticaladakv, chunkkv and block "
    "over any of the scorers snapkv, h2o, tova, knorm, keydiff, lagkv and expected-attention";

/// Whether drop_select runs configuration c on the GPU.
inline bool gpu_drop_method(const drop::config& c) {
  using drop::method;
  switch (c.m) {
    case method::random: case method::streamingllm: case method::knorm: case method::keydiff: case method::snapkv: case method::pyramidkv:
    case method::h2o: case method::tova: case method::lagkv: case method::expected_attention:
      return true;
    case method::adakv: case method::criticalkv: case method::criticaladakv: case method::chunkkv:
      return c.scorer == method::snapkv || c.scorer == method::h2o || c.scorer == method::tova || c.scorer == method::knorm || c.scorer == method::keydiff ||
             c.scorer == method::lagkv || c.scorer == method::expected_attention;
    case method::block: return true;  // every scorer has a GPU selection
    default: return false;
  }
}

namespace detail {

/// Per-layer K (or V) bases of a device view, and its layout, in device memory.
struct device_side {
  device_buffer<const void*> ptrs;
  device_buffer<std::int32_t> table;
  drop_source src;
};
inline void side_of(const const_kv_view& kv, bool key, device_side& out) {
  const auto& base = key ? kv.k : kv.v;
  std::vector<const void*> p(base.begin(), base.end());
  out.ptrs = device_buffer<const void*>{std::span<const void* const>(p)};
  out.src.k = out.ptrs.data();
  out.src.layout = kv.layout();
  if (kv.paged()) {
    out.table = device_buffer<std::int32_t>{std::span<const std::int32_t>(kv.block_table)};
    out.src.layout.block_table = out.table.data();
  }
  out.src.head_dim = kv.head_dim;
  out.src.dtype_code = static_cast<std::uint32_t>(kv.dt);
}

}  // namespace detail

/// The kept sets of configuration `c` over the cache in device view `kv`: queries (for the query-aware
/// methods) in the K side of view `q` (q_heads heads, a multiple of kv's; its V side is not read), or
/// nullptr; metadata (rope, rope_theta) and positions as the cache's, for expected-attention. See the
/// file comment.
inline kept_sets drop_select(const drop::config& c, const const_kv_view& kv, const const_kv_view* q, const std::map<std::string, std::string>& metadata,
                             const std::vector<std::int32_t>& positions, const par_t& p) {
  using drop::method;
  const std::string where = cpu::drop_detail::where_of(c);
  if (kv.space != memory_space::device) throw_usage(where + " on the GPU: the view is in host memory");
  if (c.m == method::block) return block_select(c, kv, q, metadata, positions, p);  // its scorer's selection, step by step
  if (!gpu_drop_method(c)) throw_usage(where + " has no GPU selection; the methods with one: " + std::string(gpu_drop_methods) + " (select on the CPU: kvcodec::encode)");
  if (kv.dt != dtype::f32 && kv.dt != dtype::f16 && kv.dt != dtype::bf16) throw_usage(where + " on the GPU reads f32, f16 or bf16 views");
  const int L = kv.layers, H = kv.kv_heads;
  const std::int64_t T = kv.tokens;
  if (c.obs_end > T) throw_bad_input(where, "obs_end", "a prefix end <= the cache's " + std::to_string(T) + " tokens", std::to_string(c.obs_end));
  const std::int64_t n = c.obs_end < 0 ? T : c.obs_end;
  const std::int64_t b = cpu::drop_detail::budget_of(c, n);
  const method scorer = c.m == method::adakv || c.m == method::criticalkv || c.m == method::criticaladakv || c.m == method::chunkkv ? c.scorer : c.m;
  const bool needs_q = scorer == method::snapkv || scorer == method::pyramidkv || scorer == method::h2o || scorer == method::tova ||
                       scorer == method::expected_attention;
  if (needs_q && q == nullptr)
    throw_bad_input(where, "queries", "query tensors in device memory (cuda::encode's queries view); " + c.name + " needs them; methods that work without queries: random, streamingllm, knorm, keydiff, lagkv", "none");
  if (needs_q) {
    if (q->space != memory_space::device) throw_usage(where + " on the GPU: the queries view is in host memory");
    if (q->layers != L || q->tokens != T || q->head_dim != kv.head_dim || q->dt != kv.dt || q->kv_heads < H || q->kv_heads % H != 0)
      throw_bad_input(where, "queries", std::to_string(L) + " layers of a multiple of " + std::to_string(H) + " heads x " + std::to_string(T) + " tokens x " +
                                            std::to_string(kv.head_dim) + " in " + std::string(dtype_name(kv.dt)),
                      std::to_string(q->layers) + " layers of " + std::to_string(q->kv_heads) + " heads x " + std::to_string(q->tokens) + " x " +
                          std::to_string(q->head_dim) + " in " + std::string(dtype_name(q->dt)));
  }
  if (scorer == method::snapkv || scorer == method::pyramidkv || scorer == method::expected_attention || (scorer == method::h2o && c.window > 0))
    cpu::drop_detail::check_window(c, c.window, n);
  detail::device_side ks, vs, qs;
  detail::side_of(kv, true, ks);
  const bool needs_v = scorer == method::lagkv || scorer == method::expected_attention || c.m == method::criticalkv || c.m == method::criticaladakv;
  if (needs_v) detail::side_of(kv, false, vs);
  if (needs_q) detail::side_of(*q, true, qs);
  drop_window_source ws;
  std::optional<drop_window_plan> plan;
  if (scorer == method::snapkv || scorer == method::pyramidkv || scorer == method::h2o || scorer == method::tova) {
    ws.k = ks.src, ws.q = qs.src;
    ws.layers = L, ws.heads = H, ws.group = q->kv_heads / H, ws.n = n;
    drop_window_params wp;
    wp.kind = scorer == method::h2o ? wattn_score::h2o : scorer == method::tova ? wattn_score::tova : wattn_score::snapkv;
    wp.b = b, wp.window = c.window, wp.kernel = c.kernel, wp.recent = c.recent, wp.pyramid = scorer == method::pyramidkv, wp.beta = c.beta;
    plan = plan_drop_window(ws, wp);
  }
  lagkv_args lag;
  expected_args ea;
  expected_prep ep;
  if (scorer == method::lagkv) {
    lag.k = ks.src, lag.v = vs.src.k, lag.layers = L, lag.heads = H, lag.n = n, lag.sink = c.sink, lag.lag = c.lag;
  } else if (scorer == method::expected_attention) {
    kv_cache meta;  // rope_of reads the metadata only
    meta.metadata = metadata;
    const auto rope = cpu::drop_detail::rope_of(meta, where);
    ea.k = ks.src, ea.q = qs.src, ea.v = vs.src.k, ea.layers = L, ea.heads = H, ea.group = q->kv_heads / H, ea.n = n;
    ea.window = c.window, ea.sink = c.sink, ea.cov = c.cov, ea.vnorm = c.vnorm, ea.rope = rope.has_value();
    if (rope) ea.style = rope->style;
    ep = expected_tables(static_cast<std::size_t>(kv.head_dim), n, c.window, c.future, rope.has_value(), rope ? rope->theta : 10000.0, positions);
  }
  // Every method but adakv: b_l tokens per (layer, head), layer after layer (pyramidkv: b_l per layer).
  // criticalkv: its plan's budgets are uniform.
  const std::vector<std::int64_t> budgets = plan ? plan->budgets : std::vector<std::int64_t>(static_cast<std::size_t>(L), b);
  std::size_t kept_n = 0;
  for (auto bl : budgets) kept_n += static_cast<std::size_t>(bl) * static_cast<std::size_t>(H);
  const bool ada = c.m == method::adakv || c.m == method::criticaladakv;  // kept sets as a mask
  // adakv, criticalkv and criticaladakv over a scorer without window attention (knorm, keydiff, lagkv,
  // expected-attention): the scorer's steps, then the press's steps over its coder (drop_scored: its
  // values, and its protected tokens by priority: lagkv's sinks and newest, expected-attention's sinks).
  const bool pressed = (c.m == method::adakv || c.m == method::criticalkv || c.m == method::criticaladakv) && !plan;
  const std::int64_t prot = scorer == method::lagkv ? lagkv_protected(lag) : scorer == method::expected_attention ? expected_sinks(ea) : 0;
  const auto press = [&](std::int32_t* kept, std::uint8_t* mask) {
    return [&, kept, mask](void* t, std::size_t& tb, const auto& coder) {
      const drop_scored<std::decay_t<decltype(coder)>> sc{coder, H, n, prot};
      if (c.m == method::adakv) adakv_over(t, tb, sc, L, b, c.alpha, mask, p);
      else if (c.m == method::criticalkv) criticalkv_over(t, tb, sc, L, b, c.first, c.epsilon, vs.src, kept, p);
      else criticaladakv_over(t, tb, sc, L, b, c.alpha, c.first, c.epsilon, vs.src, mask, p);
    };
  };
  const auto run = [&](void* temp, std::size_t& bytes, std::int32_t* kept, std::uint8_t* mask) {
    if (pressed) {
      switch (scorer) {
        case method::knorm: knorm_run(temp, bytes, ks.src, press(kept, mask)); break;
        case method::keydiff: keydiff_run(temp, bytes, ks.src, L, H, n, press(kept, mask), p); break;
        case method::lagkv: lagkv_run(temp, bytes, lag, press(kept, mask), p); break;
        default: expected_attention_run(temp, bytes, ea, ep, press(kept, mask), p); break;
      }
      return;
    }
    switch (c.m) {
      case method::random: random_select(temp, bytes, static_cast<std::uint64_t>(c.seed), L, H, n, b, kept, p); break;
      case method::streamingllm: streamingllm_select(temp, bytes, c.sink, L, H, n, b, kept, p); break;
      case method::knorm: knorm_select(temp, bytes, ks.src, L, H, n, b, kept, p); break;
      case method::keydiff: keydiff_select(temp, bytes, ks.src, L, H, n, b, kept, p); break;
      case method::lagkv: lagkv_select(temp, bytes, lag, b, kept, p); break;
      case method::expected_attention: expected_attention_select(temp, bytes, ea, ep, b, kept, p); break;
      case method::adakv: adakv_select(temp, bytes, *plan, c.alpha, mask, p); break;
      case method::criticalkv: criticalkv_select(temp, bytes, *plan, c.first, c.epsilon, vs.src, kept, p); break;
      case method::criticaladakv: criticaladakv_select(temp, bytes, *plan, c.alpha, c.first, c.epsilon, vs.src, mask, p); break;
      case method::chunkkv:
        if (scorer == method::lagkv) chunkkv_select(temp, bytes, lag, b, c.chunk, kept, p);
        else if (scorer == method::expected_attention) chunkkv_select(temp, bytes, ea, ep, b, c.chunk, kept, p);
        else if (scorer == method::knorm || scorer == method::keydiff) chunkkv_select(temp, bytes, scorer == method::keydiff, ks.src, L, H, n, b, c.chunk, kept, p);
        else chunkkv_select(temp, bytes, *plan, c.chunk, kept, p);
        break;
      default: window_select(temp, bytes, *plan, kept, p); break;  // snapkv, pyramidkv, h2o, tova
    }
  };
  std::size_t bytes = 0;
  run(nullptr, bytes, nullptr, nullptr);
  device_buffer<std::uint8_t> temp(bytes);
  kept_sets out(static_cast<std::size_t>(L), std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(H)));
  if (ada) {
    device_buffer<std::uint8_t> mask(static_cast<std::size_t>(L) * static_cast<std::size_t>(H) * static_cast<std::size_t>(n));
    run(temp.data(), bytes, nullptr, mask.data());
    check(cudaStreamSynchronize(p.stream), "cuda::drop_select");
    const std::vector<std::uint8_t> m = mask.download();
    for (std::size_t seg = 0; seg < static_cast<std::size_t>(L) * static_cast<std::size_t>(H); ++seg)
      for (std::int64_t t = 0; t < n; ++t)
        if (m[seg * static_cast<std::size_t>(n) + static_cast<std::size_t>(t)] != 0) out[seg / static_cast<std::size_t>(H)][seg % static_cast<std::size_t>(H)].push_back(static_cast<std::int32_t>(t));
  } else {
    device_buffer<std::int32_t> kept(kept_n);
    run(temp.data(), bytes, kept.data(), nullptr);
    check(cudaStreamSynchronize(p.stream), "cuda::drop_select");
    const std::vector<std::int32_t> flat = kept.download();
    std::size_t at = 0;
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h) {
        const auto bl = static_cast<std::size_t>(budgets[static_cast<std::size_t>(l)]);
        out[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)].assign(flat.begin() + static_cast<std::ptrdiff_t>(at), flat.begin() + static_cast<std::ptrdiff_t>(at + bl));
        at += bl;
      }
  }
  for (auto& layer : out)
    for (auto& kh : layer)
      for (std::int64_t t = n; t < T; ++t) kh.push_back(static_cast<std::int32_t>(t));
  return out;
}

/// The kept sets of drop stage `d` on the GPU: one configured stage (drop_select), or a composed spec's
/// stages in order (pipeline/codec.hpp's drop_chain): the first selects on the cache; each later one
/// on the survivors of the compressed prefix, gathered into a device sub-cache per head
/// (cuda/drop/gather.cuh), its kept sets mapped back; tokens at or after the first stage's obs_end are
/// kept throughout. As drop_chain::select, on the GPU.
inline kept_sets drop_stage_select(const drop_stage& d, const const_kv_view& kv, const const_kv_view* q, const std::map<std::string, std::string>& metadata,
                                   const std::vector<std::int32_t>& positions, const par_t& p) {
  if (const auto* chain = dynamic_cast<const drop_chain*>(&d)) {
    const auto& parts = chain->parts();
    kept_sets kept = drop_stage_select(*parts.front(), kv, q, metadata, positions, p);
    std::int64_t obs_end = -1;
    for (const auto& [k, v] : parts.front()->spec().params)
      if (k == "obs_end") obs_end = std::stoll(v);
    const std::int64_t T = kv.tokens, n = obs_end < 0 ? T : obs_end;
    for (std::size_t i = 1; i < parts.size(); ++i) {
      kept_sets prefix = kept;  // the survivors before n, the only ones a later stage may drop
      for (auto& layer : prefix)
        for (auto& h : layer) h.erase(std::lower_bound(h.begin(), h.end(), static_cast<std::int32_t>(n)), h.end());
      const std::string where = "drop stage '" + std::string(parts[i]->name()) + "' after '" + std::string(parts[i - 1]->name()) + "'";
      const device_subcache sub = gather_tokens(kv, q, prefix, positions, where, p);
      const const_kv_view sv(sub.view), sq(sub.qview);
      kept = cpu::drop_detail::ungather(drop_stage_select(*parts[i], sv, sub.has_queries ? &sq : nullptr, metadata, sub.positions, p), prefix);
      for (auto& layer : kept)
        for (auto& h : layer)
          for (std::int64_t t = n; t < T; ++t) h.push_back(static_cast<std::int32_t>(t));
    }
    return kept;
  }
  const auto* cd = dynamic_cast<const cpu::configured_drop*>(&d);
  if (cd == nullptr) throw_usage("drop stage '" + std::string(d.name()) + "' has no GPU selection (it is not a built-in stage)");
  return drop_select(cd->cfg(), kv, q, metadata, positions, p);
}

}  // namespace kvcodec::cuda
