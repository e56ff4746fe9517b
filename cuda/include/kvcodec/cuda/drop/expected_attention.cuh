// kvcodec/cuda/drop/expected_attention.cuh — the `expected-attention` stage on the GPU, mirroring
// cpu/drop/expected_attention.hpp (kvpress ExpectedAttentionPress): core/expected_attention.hpp's four
// steps as kernels (a thread per query head for the window statistics and the softmax, a thread per
// (query head, key) for the logits, per (kv head, key) for the scores), then drop_expected_coder and the
// selection of cuda/drop/select.cuh. The steps are the CPU scorer's arithmetic in its order, so kept sets
// equal the CPU's bit for bit (the host emulation, drop_expected_select_emulated, is checked in CI).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/expected_attention.hpp"
#include "kvcodec/cuda/drop/select.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

/// Expected attention's four steps, then its coder handed to then(temp, temp_bytes, coder), a selection
/// over it with CUB's two-phase convention (the presses over a scorer take it this way). Two-phase itself.
template <class Then>
void expected_attention_run(void* temp, std::size_t& temp_bytes, expected_args a, const expected_prep& ep, const Then& then, const par_t& p) {
  if (a.k.head_dim < 1 || a.k.head_dim > drop_max_head_dim || a.q.head_dim != a.k.head_dim)
    throw_usage("cuda expected_attention_select: head_dim " + std::to_string(a.k.head_dim) + " outside 1.." + std::to_string(drop_max_head_dim) +
                " or unlike the queries'");
  if (a.layers < 1 || a.heads < 1 || a.group < 1 || a.n < 1) throw_usage("cuda expected_attention_select: need layers, heads, group and n >= 1");
  if (a.window < 1 || a.window > a.n) throw_usage("cuda expected_attention_select: window " + std::to_string(a.window) + " outside 1.." + std::to_string(a.n));
  if (a.rope && (a.k.head_dim % 2 != 0 || ep.qc.size() != static_cast<std::size_t>(a.window * (a.k.head_dim / 2))))
    throw_usage("cuda expected_attention_select: RoPE needs an even head_dim and the tables of this window (expected_tables)");
  const expected_sizes sz = expected_sizes_of(a);
  const std::size_t half = static_cast<std::size_t>(a.k.head_dim / 2);
  const std::size_t sizes[] = {detail::align256(half * sizeof(double)), detail::align256(half * sizeof(double)), detail::align256(ep.qc.size() * sizeof(double)),
                               detail::align256(ep.qs.size() * sizeof(double)), detail::align256(sz.mu * sizeof(double)), detail::align256(sz.mu * sizeof(float)),
                               detail::align256(sz.cov * sizeof(double)), detail::align256(sz.logit * sizeof(double)), detail::align256(sz.coef * sizeof(double)),
                               detail::align256(sz.score * sizeof(double))};
  std::size_t own = 0;
  for (const std::size_t s : sizes) own += s;
  const drop_expected_coder probe{nullptr, a.heads, a.n, expected_sinks(a)};
  std::size_t select_bytes = 0;
  then(nullptr, select_bytes, probe);
  if (detail::size_only(temp, temp_bytes, own + select_bytes, "cuda expected_attention_select")) return;
  auto* at = static_cast<std::uint8_t*>(temp);
  std::uint8_t* part[10];
  for (int i = 0; i < 10; ++i) part[i] = at, at += sizes[i];
  const auto copy = [&](std::uint8_t* dst, const std::vector<double>& src) {
    if (!src.empty()) check(cudaMemcpyAsync(dst, src.data(), src.size() * sizeof(double), cudaMemcpyHostToDevice, p.stream), "expected-attention tables");
  };
  copy(part[0], ep.cbar), copy(part[1], ep.sbar), copy(part[2], ep.qc), copy(part[3], ep.qs);
  a.cbar = reinterpret_cast<const double*>(part[0]), a.sbar = reinterpret_cast<const double*>(part[1]);
  a.qc = reinterpret_cast<const double*>(part[2]), a.qs = reinterpret_cast<const double*>(part[3]);
  a.mu = reinterpret_cast<double*>(part[4]), a.muf = reinterpret_cast<float*>(part[5]), a.covm = reinterpret_cast<double*>(part[6]);
  a.logit = reinterpret_cast<double*>(part[7]), a.coef = reinterpret_cast<double*>(part[8]), a.score = reinterpret_cast<double*>(part[9]);
  const std::int64_t lh = static_cast<std::int64_t>(sz.coef), m = expected_keys(a), scored = static_cast<std::int64_t>(a.layers) * a.heads * m;
  detail::launch_step<expected_args, expected_stats>(a, lh, 32, p, "expected-attention stats kernel launch");
  if (m > 0) {
    detail::launch_step<expected_args, expected_logit>(a, lh * m, 128, p, "expected-attention logit kernel launch");
    detail::launch_step<expected_args, expected_softmax>(a, lh, 32, p, "expected-attention softmax kernel launch");
    detail::launch_step<expected_args, expected_score>(a, scored, 128, p, "expected-attention score kernel launch");
  }
  std::size_t sb = select_bytes;
  then(at, sb, drop_expected_coder{a.score, a.heads, a.n, expected_sinks(a)});
}

/// kept[(l * heads + h) * b + i] (device): each (layer, kv head)'s b tokens of [0, a.n), increasing, under
/// expected attention. a.k, a.v and a.q hold device pointers (values in the keys' layout and dtype); `ep`
/// is expected_tables of a's parameters (host: copied into temp on p.stream, so it must live until the
/// work is done); a's arrays are ignored (they live in temp). Ranked by drop_expected_coder, or by
/// wrap(coder) (chunkkv). Two-phase: temp == nullptr sets temp_bytes.
template <class Wrap = drop_same_coder>
void expected_attention_select(void* temp, std::size_t& temp_bytes, const expected_args& a, const expected_prep& ep, std::int64_t b, std::int32_t* kept,
                               const par_t& p, const Wrap& wrap = {}) {
  expected_attention_run(
      temp, temp_bytes, a, ep,
      [&](void* t, std::size_t& tb, const drop_expected_coder& c) { select_by_codes(t, tb, wrap(c), a.layers, a.heads, a.n, b, kept, p); }, p);
}

}  // namespace kvcodec::cuda
