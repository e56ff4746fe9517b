// tests/support/scorer_coders.hpp — the GPU coder of a scorer that needs no window attention (knorm,
// keydiff, lagkv, expected-attention), its steps emulated on the host over an f32 test cache, handed to
// a callback as the presses over a scorer read it (drop_scored, core/adakv.hpp): the suites of the
// presses (adakv, criticalkv, criticaladakv, chunkkv) run their emulation through it.
#pragma once

#include <cstdint>
#include <vector>

#include "kvcodec/core/adakv.hpp"
#include "kvcodec/core/drop_topk.hpp"
#include "kvcodec/core/expected_attention.hpp"
#include "kvcodec/core/lagkv.hpp"
#include "kvcodec/stage/drop_common.hpp"
#include "kvcodec/tensor/kv_cache.hpp"
#include "typed_layers.hpp"
#include "window_cases.hpp"

namespace kvcodec::test {

/// The f32 layers a scorer's emulation reads (they must outlive the callback).
struct scorer_inputs {
  typed k, v, q;
  std::vector<std::int32_t> table;
  explicit scorer_inputs(const kv_cache& kv) : k(as_dtype(kv.keys, 0)), v(as_dtype(kv.values, 0)), q(as_dtype(kv.queries, 0)) {}
};

/// then(drop_scored<coder>) for c.scorer (knorm, keydiff, lagkv or expected-attention) over tokens
/// [0, n) of kv, the scorer's steps emulated as the GPU runs them; the coder is valid during the call.
template <class Then>
auto with_scorer_coder(const kv_cache& kv, const drop::config& c, std::int64_t n, const Then& then) {
  const scorer_inputs in(kv);
  const std::int64_t T = kv.shape.tokens;
  const int D = kv.shape.head_dim, L = kv.shape.layers, H = kv.shape.kv_heads;
  const drop_source ks = source_of(in.k, T, D, 0, false, in.table);
  if (c.scorer == drop::method::knorm) return then(drop_scored<drop_knorm_coder>{drop_knorm_coder{ks}, H, n, 0});
  if (c.scorer == drop::method::keydiff)
    return drop_keydiff_emulated_with(ks, L, H, n, [&](const drop_keydiff_coder& k) { return then(drop_scored<drop_keydiff_coder>{k, H, n, 0}); });
  if (c.scorer == drop::method::lagkv) {
    lagkv_args a;
    a.k = ks, a.v = in.v.ptr.data();
    a.layers = L, a.heads = H, a.n = n, a.sink = c.sink, a.lag = c.lag;
    return drop_lagkv_emulated_with(a, [&](const drop_lagkv_coder& k) { return then(drop_scored<drop_lagkv_coder>{k, H, n, lagkv_protected(a)}); });
  }
  expected_args a;
  a.k = ks, a.q = source_of(in.q, T, D, 0, false, in.table), a.v = in.v.ptr.data();
  a.layers = L, a.heads = H, a.group = kv.shape.q_heads / H;
  a.n = n, a.window = c.window, a.sink = c.sink, a.cov = c.cov, a.vnorm = c.vnorm, a.rope = true;
  const expected_prep ep = expected_tables(static_cast<std::size_t>(D), n, c.window, c.future, true, 10000.0, kv.positions);
  return drop_expected_emulated_with(a, ep, [&](const drop_expected_coder& k) { return then(drop_scored<drop_expected_coder>{k, H, n, expected_sinks(a)}); });
}

}  // namespace kvcodec::test
