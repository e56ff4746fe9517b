// kvcodec/core/drop_topk.hpp — the GPU token-dropping path's per-element logic, as host/device
// functions over flat descriptors, so the CUDA kernels (cuda/drop/knorm.cuh) and their host emulation
// (drop_knorm_select_emulated, run in CI) share every line that decides a kept set:
//   - drop_source: where row (layer, kv head, token) of the keys lives (strided or paged, f32/f16/bf16),
//     the read side of core/kv_address.hpp;
//   - drop_rank_code (core/drop_score.hpp): the order-preserving 64-bit code of a score (NaN ranks
//     last, -0 == +0), the one the CPU selector ranks by (cpu/drop/select.hpp);
//   - the scorers as coders, callables code(l, h, t) -> the token's code: drop_knorm_coder (the CPU knorm
//     score -sqrt(drop_sumsq16(row))), drop_random_coder (the CPU random scorer's hash of (seed, layer,
//     head, token)), drop_keydiff_coder (-cos(k, anchor) after three steps: inverse norms, the anchor
//     per channel, its norm), drop_streamingllm_coder (protected tokens only: drop_protected_code by priority).
// Selection: per (layer, head) the b largest codes, ties to the lower token (a stable sort by code,
// descending), then the kept tokens in increasing order: the CPU's rule, so kept sets are equal.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/half.hpp"
#include "kvcodec/core/kv_address.hpp"
#include "kvcodec/core/random.hpp"

namespace kvcodec {

/// The keys a GPU scorer reads: per-layer base pointers (in the reader's memory space) and the layout.
struct drop_source {
  const void* const* k = nullptr;
  kv_layout_desc layout;
  std::int32_t head_dim = 0;
  std::uint32_t dtype_code = 0;  ///< 0 f32, 1 f16, 2 bf16 (tensor/dtype.hpp's codes)
};

/// Channel c of key row (l, h, t) as f32 (f16/bf16 widened exactly).
KVCODEC_HD inline float drop_load(const drop_source& s, int l, std::int64_t h, std::int64_t t, std::int64_t c) noexcept {
  return kv_load(s.k[l], s.layout, s.dtype_code, h, t, c);
}

/// Largest head_dim the GPU scorers handle (a row is widened into registers/local memory).
inline constexpr int drop_max_head_dim = 512;

/// Key row (l, h, t) widened to f32 into row[0, D); returns D (head_dim, at most drop_max_head_dim).
KVCODEC_HD inline int drop_load_row(const drop_source& s, int l, std::int64_t h, std::int64_t t, float* row) noexcept {
  const int D = s.head_dim < drop_max_head_dim ? s.head_dim : drop_max_head_dim;
  for (int c = 0; c < D; ++c) row[c] = drop_load(s, l, h, t, c);
  return D;
}

/// The knorm score of key row (l, h, t): -sqrt of drop_sumsq16 of the f32 row, as the CPU scorer.
KVCODEC_HD inline double drop_knorm_value(const drop_source& s, int l, std::int64_t h, std::int64_t t) noexcept {
  float row[drop_max_head_dim];
  const int D = drop_load_row(s, l, h, t, row);
  return -std::sqrt(static_cast<double>(drop_sumsq16(row, static_cast<std::size_t>(D))));
}
/// Its code.
KVCODEC_HD inline std::uint64_t drop_knorm_code(const drop_source& s, int l, std::int64_t h, std::int64_t t) noexcept {
  return drop_rank_code(drop_knorm_value(s, l, h, t));
}

/// knorm as a coder: the code of key row (l, h, t).
struct drop_knorm_coder {
  drop_source src;
  /// No protected tokens; the CPU scorer's value (the presses over a scorer read these: core/chunkkv.hpp, core/adakv.hpp).
  KVCODEC_HD std::int64_t priority(std::int64_t) const noexcept { return -1; }
  KVCODEC_HD double raw(int l, std::int64_t h, std::int64_t t) const noexcept { return drop_knorm_value(src, l, h, t); }
  KVCODEC_HD std::uint64_t operator()(int l, std::int64_t h, std::int64_t t) const noexcept { return drop_knorm_code(src, l, h, t); }
};

/// The random scorer's value of (seed, layer, head, token): uniform in [0, 1), two splitmix64 steps.
KVCODEC_HD inline double drop_hash_uniform(std::uint64_t seed, std::uint64_t l, std::uint64_t h, std::uint64_t t) noexcept {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull ^ (l << 48) ^ (h << 32) ^ t;
  for (int r = 0; r < 2; ++r) x = splitmix64_next(x);
  return static_cast<double>(x >> 11) * 0x1.0p-53;
}

/// random as a coder.
struct drop_random_coder {
  std::uint64_t seed = 0;
  KVCODEC_HD std::uint64_t operator()(int l, std::int64_t h, std::int64_t t) const noexcept {
    return drop_rank_code(drop_hash_uniform(seed, static_cast<std::uint64_t>(l), static_cast<std::uint64_t>(h), static_cast<std::uint64_t>(t)));
  }
};

/// Code of a protected token of priority p (0 = kept first): above every score's code (the largest,
/// +inf's, is 0xFFF0...0), so protected tokens are kept first, in priority order, as the CPU keeps them.
KVCODEC_HD inline std::uint64_t drop_protected_code(std::uint64_t p) noexcept { return ~std::uint64_t{0} - p; }

/// streamingllm as a coder: every token of the prefix [0, n) is protected, the first `sink` ones in
/// order, then the most recent first (cpu/drop/streamingllm.hpp's priority).
struct drop_streamingllm_coder {
  std::int64_t sink = 4, n = 0;
  KVCODEC_HD std::uint64_t operator()(int, std::int64_t, std::int64_t t) const noexcept {
    const std::int64_t s = sink < n ? sink : n;
    return drop_protected_code(static_cast<std::uint64_t>(t < s ? t : s + (n - 1 - t)));
  }
};

/// keydiff, step 1: the inverse norm of key row (l, h, t) (0 for a zero row), as the CPU's
/// drop_inv_norm of drop_sumsq16.
KVCODEC_HD inline float drop_keydiff_inv(const drop_source& s, int l, std::int64_t h, std::int64_t t) noexcept {
  float row[drop_max_head_dim];
  const int D = drop_load_row(s, l, h, t, row);
  return drop_inv_norm(static_cast<double>(drop_sumsq16(row, static_cast<std::size_t>(D))));
}

/// keydiff, step 2: channel a of the head's anchor, the mean normalised key: per block of 8 rows an fma
/// chain of X[r][a] * inv[r] (rows with inv 0 skipped) added to the sum, then divided by n in float
/// (cpu/drop/rows.hpp norm_anchor_rows and drop_anchor_block, the CPU's order). `inv`: the head's n.
KVCODEC_HD inline float drop_keydiff_anchor(const drop_source& s, int l, std::int64_t h, std::int64_t n, std::int64_t a, const float* inv) noexcept {
  float acc = 0.0f;
  for (std::int64_t r0 = 0; r0 < n; r0 += 8) {
    float t = 0.0f;
    for (std::int64_t r = r0; r < r0 + 8 && r < n; ++r)
      if (inv[r] != 0.0f) t = std::fma(drop_load(s, l, h, r, a), inv[r], t);
    acc += t;
  }
  return acc / static_cast<float>(n);
}

/// keydiff, step 3: the anchor's squared norm in double, channels in order.
KVCODEC_HD inline double drop_keydiff_yy(const float* anchor, int D) noexcept {
  double yy = 0.0;
  for (int a = 0; a < D; ++a) yy += static_cast<double>(anchor[a]) * anchor[a];
  return yy;
}

/// keydiff as a coder: -cos(k, anchor) of the row (-0 for a zero row or anchor), the CPU scorer's
/// (cpu/drop/keydiff.hpp). anchor[(l * heads + h) * head_dim + a] and yy[l * heads + h] from steps 2-3.
struct drop_keydiff_coder {
  drop_source src;
  const float* anchor = nullptr;
  const double* yy = nullptr;
  int heads = 1;
  /// No protected tokens; the CPU scorer's value (the presses over a scorer read these).
  KVCODEC_HD std::int64_t priority(std::int64_t) const noexcept { return -1; }
  KVCODEC_HD double raw(int l, std::int64_t h, std::int64_t t) const noexcept {
    float row[drop_max_head_dim];
    const int D = drop_load_row(src, l, h, t, row);
    const std::int64_t seg = static_cast<std::int64_t>(l) * heads + h;
    const double y = yy[seg];
    if (!(y > 0.0)) return -0.0;
    const double ss = static_cast<double>(drop_sumsq16(row, static_cast<std::size_t>(D)));
    const double xy = static_cast<double>(drop_dot16(row, anchor + seg * D, static_cast<std::size_t>(D)));
    return ss > 0.0 ? -(xy / std::sqrt(ss * y)) : -0.0;
  }
  KVCODEC_HD std::uint64_t operator()(int l, std::int64_t h, std::int64_t t) const noexcept { return drop_rank_code(raw(l, h, t)); }
};

/// The identity on coders: the selections' default for a press that wraps a scorer's coder (chunkkv's
/// drop_chunk_coder is another).
struct drop_same_coder {
  template <class Coder>
  Coder operator()(const Coder& c) const {
    return c;
  }
};

/// Host emulation of the GPU selection: kept[(l * heads + h) * b + i], each head's b best of tokens
/// [0, n) by `coder`'s codes in increasing token order (the kernels' codes, a stable descending sort
/// per head, its first b sorted).
template <class Coder>
std::vector<std::int32_t> drop_select_emulated(const Coder& coder, int layers, int heads, std::int64_t n, std::int64_t b) {
  std::vector<std::int32_t> kept(static_cast<std::size_t>(layers) * static_cast<std::size_t>(heads) * static_cast<std::size_t>(b));
  std::vector<std::uint64_t> code(static_cast<std::size_t>(n));
  std::vector<std::int32_t> idx(static_cast<std::size_t>(n));
  for (int l = 0; l < layers; ++l)
    for (int h = 0; h < heads; ++h) {
      for (std::int64_t t = 0; t < n; ++t) code[static_cast<std::size_t>(t)] = coder(l, h, t);
      std::iota(idx.begin(), idx.end(), 0);
      std::stable_sort(idx.begin(), idx.end(), [&](std::int32_t a, std::int32_t c) { return code[static_cast<std::size_t>(a)] > code[static_cast<std::size_t>(c)]; });
      auto* out = kept.data() + (static_cast<std::size_t>(l) * static_cast<std::size_t>(heads) + static_cast<std::size_t>(h)) * static_cast<std::size_t>(b);
      std::copy_n(idx.begin(), b, out);
      std::sort(out, out + b);
    }
  return kept;
}

/// The GPU keydiff steps emulated on the host (the kernels' three steps); returns then(coder), the
/// coder valid during the call (its arrays live here).
template <class Then>
auto drop_keydiff_emulated_with(const drop_source& s, int layers, int heads, std::int64_t n, const Then& then) {
  const std::size_t segs = static_cast<std::size_t>(layers) * static_cast<std::size_t>(heads), D = static_cast<std::size_t>(s.head_dim);
  std::vector<float> inv(segs * static_cast<std::size_t>(n)), anchor(segs * D);
  std::vector<double> yy(segs);
  for (std::size_t g = 0; g < segs; ++g) {
    const int l = static_cast<int>(g / static_cast<std::size_t>(heads));
    const std::int64_t h = static_cast<std::int64_t>(g % static_cast<std::size_t>(heads));
    float* iv = inv.data() + g * static_cast<std::size_t>(n);
    for (std::int64_t t = 0; t < n; ++t) iv[t] = drop_keydiff_inv(s, l, h, t);
    for (std::size_t a = 0; a < D; ++a) anchor[g * D + a] = drop_keydiff_anchor(s, l, h, n, static_cast<std::int64_t>(a), iv);
    yy[g] = drop_keydiff_yy(anchor.data() + g * D, s.head_dim);
  }
  return then(drop_keydiff_coder{s, anchor.data(), yy.data(), heads});
}

/// The GPU keydiff selection, emulated on the host (the kernels' three steps, then the selection of
/// wrap(coder): chunkkv wraps it).
template <class Wrap = drop_same_coder>
std::vector<std::int32_t> drop_keydiff_select_emulated(const drop_source& s, int layers, int heads, std::int64_t n, std::int64_t b, const Wrap& wrap = {}) {
  return drop_keydiff_emulated_with(s, layers, heads, n, [&](const drop_keydiff_coder& c) { return drop_select_emulated(wrap(c), layers, heads, n, b); });
}

/// The GPU knorm selection, emulated on the host.
template <class Wrap = drop_same_coder>
std::vector<std::int32_t> drop_knorm_select_emulated(const drop_source& s, int layers, int heads, std::int64_t n, std::int64_t b, const Wrap& wrap = {}) {
  return drop_select_emulated(wrap(drop_knorm_coder{s}), layers, heads, n, b);
}

}  // namespace kvcodec
