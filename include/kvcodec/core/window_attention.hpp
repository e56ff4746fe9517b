// kvcodec/core/window_attention.hpp — the GPU form of cpu/drop/window_attention.hpp: the attention a
// window of queries pays each key, summed over a GQA group, the score of snapkv, pyramidkv, h2o and
// tova. Its tile logic is written once, as host/device phases, so the CUDA kernels
// (cuda/drop/window_attention.cuh) and their host emulation (window_attention_emulated, run in CI)
// share every line that computes a score.
//
// The window's queries of kv head g are stacked: row r in [0, R), R = group x w, is query head
// g * group + r / w at position i = qb + r % w (w = n - qb). Row r attends to keys j <= i (causal).
// Two passes over Q K^T, in tiles of 64 stacked rows x 64 keys with 32 channels staged at a time,
// so memory is O(R) per (layer, head), never O(tokens^2):
//   1. stats (a CUDA block per 64 rows): each row's maximum m and sum z of exp((s - m) scale) over
//      its keys, online across key tiles (Milakov & Gimelshein 2018);
//   2. columns (a CUDA block per 64 keys): acc[j] = sum over rows r with i(r) >= j of
//      exp((s_rj - m_r) scale) / z_r.
// Each tile is 256 threads, thread (ty, tx) = (tid / 16, tid % 16) computing rows ty + 16a and keys
// tx + 16b (a, b < 4) of the 64 x 64 score tile as fma chains over the channels in increasing order.
// The CPU scorer computes the same sums in f32 in another order, so scores agree within float
// rounding; a row whose maximum is NaN or infinite, or whose z is not finite and positive, adds
// nothing, as on the CPU. -inf scores count as exp(-inf) = 0.
//
// Scores (drop_window_coder): snapkv / pyramidkv: acc average-pooled with `kernel` over [0, qb) (zero
// padding), / w / group, the window [qb, n) protected; h2o: acc_j / (n - max(j, qb)) / group, the
// newest round(recent x b) tokens protected; tova (w = 1): the sum over every kv head's acc / q_heads,
// the last token protected. Protected tokens are coded above every score (drop_protected_code) in
// the CPU's priority order, newest first, so the selection keeps them first as the CPU does.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/drop_topk.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/half.hpp"

namespace kvcodec {

inline constexpr int wattn_tile = 64;      ///< stacked rows and keys per tile
inline constexpr int wattn_chunk = 32;     ///< channels staged per step
inline constexpr int wattn_threads = 256;  ///< threads per tile: 16 x 16, each 4 x 4 scores

/// One window-attention problem: keys and queries (q: per-layer query tensors, heads = q heads,
/// positions absolute), the window [qb, n), and the outputs (in the memory space of the code that runs).
struct wattn_args {
  drop_source k, q;
  int layers = 0, heads = 0, group = 1;
  std::int64_t n = 0, qb = 0;
  float scale = 1.0f;        ///< float(1 / sqrt(head_dim)), as the CPU's
  float* m = nullptr;        ///< [(l * heads + g) * R + r] row maximum
  float* z = nullptr;        ///< [(l * heads + g) * R + r] row sum
  float* acc = nullptr;      ///< [(l * heads + g) * n + j] column sum
};

/// Stacked rows per (layer, kv head).
KVCODEC_HD inline std::int64_t wattn_rows(const wattn_args& a) noexcept { return static_cast<std::int64_t>(a.group) * (a.n - a.qb); }
/// Position of stacked row r.
KVCODEC_HD inline std::int64_t wattn_pos(const wattn_args& a, std::int64_t r) noexcept { return a.qb + r % (a.n - a.qb); }

/// The tile's shared memory. The staged chunk is f32 (33 floats a row: conflict-free columns) for the
/// fma path, or the source's 16-bit values (40 a row: WMMA's leading dimension, 32-byte aligned
/// fragments) for the tensor-core path; the score tile's rows are 68 floats (WMMA stores need a
/// multiple of 4).
struct wattn_smem {
  union {
    struct {
      float q[wattn_tile][wattn_chunk + 1];
      float k[wattn_tile][wattn_chunk + 1];
    } f;
    struct {
      alignas(32) std::uint16_t q[wattn_tile][wattn_chunk + 8];
      alignas(32) std::uint16_t k[wattn_tile][wattn_chunk + 8];
    } h;
  } in;
  alignas(32) float s[wattn_tile][wattn_tile + 4];
  float rm[wattn_tile];         ///< columns pass: the tile's row maxima
  float rinv[wattn_tile];       ///< columns pass: 1 / z
  std::int64_t ri[wattn_tile];  ///< columns pass: row position, -1 for a row that adds nothing
};

/// A thread's 4 x 4 scores.
struct wattn_lane {
  float c[4][4] = {};
};

/// Items of the staging phase: the Q chunk then the K chunk, each wattn_tile x wattn_chunk.
inline constexpr int wattn_stage_items = 2 * wattn_tile * wattn_chunk;

/// Staging item `item`: stacked row r0 + x (or key j0 + x), channel d0 + d, widened to f32; 0 outside.
KVCODEC_HD inline void wattn_stage(const wattn_args& a, int l, int g, std::int64_t r0, std::int64_t j0, int d0, int item, wattn_smem& sm) noexcept {
  const int e = item % (wattn_tile * wattn_chunk), x = e / wattn_chunk, d = e % wattn_chunk;
  const bool in_d = d0 + d < a.k.head_dim;
  if (item < wattn_tile * wattn_chunk) {
    const std::int64_t r = r0 + x;
    float v = 0.0f;
    if (r < wattn_rows(a) && in_d) {
      const std::int64_t w = a.n - a.qb;
      v = kv_load(a.q.k[l], a.q.layout, a.q.dtype_code, static_cast<std::int64_t>(g) * a.group + r / w, a.qb + r % w, d0 + d);
    }
    sm.in.f.q[x][d] = v;
  } else {
    const std::int64_t j = j0 + x;
    sm.in.f.k[x][d] = j < a.n && in_d ? drop_load(a.k, l, g, j, d0 + d) : 0.0f;
  }
}

/// The 16-bit value of channel ch of row (h, t) of a layer based at `base` (f16 or bf16), as stored.
KVCODEC_HD inline std::uint16_t wattn_bits(const void* base, const kv_layout_desc& L, std::int64_t h, std::int64_t t, std::int64_t ch) noexcept {
  return static_cast<const std::uint16_t*>(base)[kv_row_offset(L, h, t) + ch * L.s_dim];
}

/// Staging item of the tensor-core path: the same elements as wattn_stage, as their 16-bit values.
KVCODEC_HD inline void wattn_stage_bits(const wattn_args& a, int l, int g, std::int64_t r0, std::int64_t j0, int d0, int item, wattn_smem& sm) noexcept {
  const int e = item % (wattn_tile * wattn_chunk), x = e / wattn_chunk, d = e % wattn_chunk;
  const bool in_d = d0 + d < a.k.head_dim;
  if (item < wattn_tile * wattn_chunk) {
    const std::int64_t r = r0 + x, w = a.n - a.qb;
    sm.in.h.q[x][d] = r < wattn_rows(a) && in_d ? wattn_bits(a.q.k[l], a.q.layout, static_cast<std::int64_t>(g) * a.group + r / w, a.qb + r % w, d0 + d) : 0;
  } else {
    const std::int64_t j = j0 + x;
    sm.in.h.k[x][d] = j < a.n && in_d ? wattn_bits(a.k.k[l], a.k.layout, g, j, d0 + d) : 0;
  }
}

/// Whether the tensor-core path computes a's scores: keys and queries both f16, or both bf16 (their
/// products are exact in f32, so only the summation order differs from the fma path and the CPU).
KVCODEC_HD inline bool wattn_tensor(const wattn_args& a) noexcept { return a.k.dtype_code != 0 && a.k.dtype_code == a.q.dtype_code; }

/// Thread tid's fma chains over the staged chunk.
KVCODEC_HD inline void wattn_fma(const wattn_smem& sm, int tid, wattn_lane& L) noexcept {
  const int ty = tid / 16, tx = tid % 16;
  for (int d = 0; d < wattn_chunk; ++d) {
    float qa[4], kb[4];
    for (int i = 0; i < 4; ++i) qa[i] = sm.in.f.q[ty + 16 * i][d], kb[i] = sm.in.f.k[tx + 16 * i][d];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) L.c[i][j] = std::fma(qa[i], kb[j], L.c[i][j]);
  }
}

/// Thread tid's scores into the tile, its accumulators reset.
KVCODEC_HD inline void wattn_store(wattn_smem& sm, int tid, wattn_lane& L) noexcept {
  const int ty = tid / 16, tx = tid % 16;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) sm.s[ty + 16 * i][tx + 16 * j] = L.c[i][j], L.c[i][j] = 0.0f;
}

/// Tensor-core path: warp w (of 8) computes the 16 x 32 block of scores rows 16 (w / 2), keys
/// 32 (w % 2) of the tile, as two 16 x 16 x 16 WMMA products per 16 channels (f32 accumulators).
inline constexpr int wattn_warps = wattn_threads / 32;

/// The host form of a warp's accumulators and its steps (the device form is in
/// cuda/drop/window_attention.cuh): acc[c][i * 16 + j] for key block c, fma chains over the channels.
struct wattn_warp_acc {
  float c[2][256] = {};
};

inline void wattn_mma_host(const wattn_smem& sm, std::uint32_t dtype_code, int w, wattn_warp_acc& acc) noexcept {
  const int fr = w / 2, fc = (w % 2) * 2;
  const auto widen = [&](std::uint16_t b) { return dtype_code == 2 ? bf16_bits_to_f32(b) : f16_bits_to_f32(b); };
  for (int c = 0; c < 2; ++c)
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j) {
        float x = acc.c[c][i * 16 + j];
        for (int d = 0; d < wattn_chunk; ++d) x = std::fma(widen(sm.in.h.q[fr * 16 + i][d]), widen(sm.in.h.k[(fc + c) * 16 + j][d]), x);
        acc.c[c][i * 16 + j] = x;
      }
}

inline void wattn_mma_store_host(wattn_smem& sm, int w, wattn_warp_acc& acc) noexcept {
  const int fr = w / 2, fc = (w % 2) * 2;
  for (int c = 0; c < 2; ++c)
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j) sm.s[fr * 16 + i][(fc + c) * 16 + j] = acc.c[c][i * 16 + j], acc.c[c][i * 16 + j] = 0.0f;
}

/// A quiet NaN (host and device).
KVCODEC_HD inline float wattn_nan() noexcept { return bit_cast_hd<float>(0x7fc00000u); }

/// Stats pass, lane rr (< wattn_tile) of the row tile r0 after key tile j0's scores: the online
/// update of row r0 + rr's maximum m and sum z (start: m = -inf, z = 0).
KVCODEC_HD inline void wattn_row_update(const wattn_args& a, const wattn_smem& sm, std::int64_t r0, std::int64_t j0, int rr, float& m, float& z) noexcept {
  if (r0 + rr >= wattn_rows(a)) return;
  const std::int64_t i = wattn_pos(a, r0 + rr), lim64 = i + 1 - j0;  // i < n
  const int lim = lim64 < wattn_tile ? static_cast<int>(lim64) : wattn_tile;
  if (lim <= 0) return;
  float tm = m;
  for (int j = 0; j < lim; ++j) tm = sm.s[rr][j] > tm ? sm.s[rr][j] : tm;
  float t = 0.0f;
  bool nan = false;
  for (int j = 0; j < lim; ++j) {
    const float s = sm.s[rr][j];
    nan |= s != s;
    if (s != -HUGE_VALF) t += std::exp((s - tm) * a.scale);
  }
  const float keep = m == -HUGE_VALF ? 0.0f : std::exp((m - tm) * a.scale);
  z = nan ? wattn_nan() : z * keep + t;
  m = tm;
}

/// Whether a row with maximum m and sum z adds to the columns (the CPU's rule).
KVCODEC_HD inline bool wattn_row_counts(float m, float z) noexcept { return m != HUGE_VALF && m != -HUGE_VALF && m == m && z == z && z > 0.0f && z != HUGE_VALF; }

/// Columns pass, staging item rr (< wattn_tile) of row tile r0: the row's maximum, 1 / z and position.
KVCODEC_HD inline void wattn_row_stage(const wattn_args& a, int l, int g, std::int64_t r0, int rr, wattn_smem& sm) noexcept {
  const std::int64_t r = r0 + rr, R = wattn_rows(a);
  sm.ri[rr] = -1;
  if (r >= R) return;
  const std::int64_t at = (static_cast<std::int64_t>(l) * a.heads + g) * R + r;
  const float m = a.m[at], z = a.z[at];
  if (!wattn_row_counts(m, z)) return;
  sm.rm[rr] = m;
  sm.rinv[rr] = 1.0f / z;
  sm.ri[rr] = wattn_pos(a, r);
}

/// Columns pass, lane jj (< wattn_tile): key j0 + jj's share of the staged row tile added to col.
KVCODEC_HD inline void wattn_col_add(const wattn_args& a, const wattn_smem& sm, std::int64_t j0, int jj, float& col) noexcept {
  const std::int64_t j = j0 + jj;
  if (j >= a.n) return;
  for (int rr = 0; rr < wattn_tile; ++rr)
    if (sm.ri[rr] >= j) col += std::exp((sm.s[rr][jj] - sm.rm[rr]) * a.scale) * sm.rinv[rr];
}

/// Whether any row of tile r0 sees key j0 or later (the columns pass skips the others).
KVCODEC_HD inline bool wattn_tile_sees(const wattn_args& a, std::int64_t r0, std::int64_t j0) noexcept {
  const std::int64_t R = wattn_rows(a);
  for (std::int64_t r = r0; r < r0 + wattn_tile && r < R; ++r)
    if (wattn_pos(a, r) >= j0) return true;
  return false;
}

namespace detail {

/// One score tile (rows r0.., keys j0..) through the staging, fma and store phases, every thread in turn.
inline void wattn_tile_emulated(const wattn_args& a, int l, int g, std::int64_t r0, std::int64_t j0, wattn_smem& sm, std::vector<wattn_lane>& lanes) {
  if (wattn_tensor(a)) {
    wattn_warp_acc acc[wattn_warps];
    for (int d0 = 0; d0 < a.k.head_dim; d0 += wattn_chunk) {
      for (int item = 0; item < wattn_stage_items; ++item) wattn_stage_bits(a, l, g, r0, j0, d0, item, sm);
      for (int w = 0; w < wattn_warps; ++w) wattn_mma_host(sm, a.k.dtype_code, w, acc[w]);
    }
    for (int w = 0; w < wattn_warps; ++w) wattn_mma_store_host(sm, w, acc[w]);
    return;
  }
  for (int d0 = 0; d0 < a.k.head_dim; d0 += wattn_chunk) {
    for (int item = 0; item < wattn_stage_items; ++item) wattn_stage(a, l, g, r0, j0, d0, item, sm);
    for (int tid = 0; tid < wattn_threads; ++tid) wattn_fma(sm, tid, lanes[static_cast<std::size_t>(tid)]);
  }
  for (int tid = 0; tid < wattn_threads; ++tid) wattn_store(sm, tid, lanes[static_cast<std::size_t>(tid)]);
}

}  // namespace detail

/// Host emulation of both passes (the kernels' phases, tile by tile): fills a.m, a.z and a.acc.
inline void window_attention_emulated(const wattn_args& a) {
  const std::int64_t R = wattn_rows(a);
  std::vector<wattn_smem> smv(1);
  wattn_smem& sm = smv[0];
  std::vector<wattn_lane> lanes(wattn_threads);
  for (int l = 0; l < a.layers; ++l)
    for (int g = 0; g < a.heads; ++g) {
      const std::int64_t seg = static_cast<std::int64_t>(l) * a.heads + g;
      for (std::int64_t r0 = 0; r0 < R; r0 += wattn_tile) {
        float m[wattn_tile], z[wattn_tile];
        for (int rr = 0; rr < wattn_tile; ++rr) m[rr] = -HUGE_VALF, z[rr] = 0.0f;
        for (std::int64_t j0 = 0; j0 < a.n && wattn_tile_sees(a, r0, j0); j0 += wattn_tile) {
          detail::wattn_tile_emulated(a, l, g, r0, j0, sm, lanes);
          for (int rr = 0; rr < wattn_tile; ++rr) wattn_row_update(a, sm, r0, j0, rr, m[rr], z[rr]);
        }
        for (int rr = 0; rr < wattn_tile && r0 + rr < R; ++rr) a.m[seg * R + r0 + rr] = m[rr], a.z[seg * R + r0 + rr] = z[rr];
      }
      for (std::int64_t j0 = 0; j0 < a.n; j0 += wattn_tile) {
        float col[wattn_tile] = {};
        for (std::int64_t r0 = 0; r0 < R; r0 += wattn_tile) {
          if (!wattn_tile_sees(a, r0, j0)) continue;
          for (int rr = 0; rr < wattn_tile; ++rr) wattn_row_stage(a, l, g, r0, rr, sm);
          detail::wattn_tile_emulated(a, l, g, r0, j0, sm, lanes);
          for (int jj = 0; jj < wattn_tile; ++jj) wattn_col_add(a, sm, j0, jj, col[jj]);
        }
        for (int jj = 0; jj < wattn_tile && j0 + jj < a.n; ++jj) a.acc[seg * a.n + j0 + jj] = col[jj];
      }
    }
}

/// Which score drop_window_coder computes from the column sums.
enum class wattn_score : std::uint32_t { snapkv = 0, h2o = 1, tova = 2 };

/// The window scorers as a coder over the column sums (see the header comment). `protect_from`: tokens
/// at or after it are protected, newest first.
struct drop_window_coder {
  const float* acc = nullptr;
  int heads = 1, group = 1;
  std::int64_t n = 0, qb = 0, kernel = 1, protect_from = 0;
  wattn_score kind = wattn_score::snapkv;

  KVCODEC_HD double score(int l, std::int64_t h, std::int64_t t) const noexcept {
    const std::int64_t w = n - qb, seg = static_cast<std::int64_t>(l) * heads + h;
    const float* col = acc + seg * n;
    if (kind == wattn_score::tova) {
      double s = 0.0;
      for (int g = 0; g < heads; ++g) s += static_cast<double>(acc[(static_cast<std::int64_t>(l) * heads + g) * n + t]);
      return s / (static_cast<double>(heads) * group);
    }
    if (kind == wattn_score::h2o) return static_cast<double>(col[t]) / static_cast<double>(n - (t > qb ? t : qb)) / group;
    const std::int64_t r = kernel / 2;
    double s = 0.0;
    for (std::int64_t u = t - r; u <= t + r; ++u)
      if (u >= 0 && u < qb) s += static_cast<double>(col[u]);
    return s / static_cast<double>(kernel) / static_cast<double>(w) / group;
  }
  /// The CPU scorer's value of token t (0 where it writes none: snapkv's window).
  KVCODEC_HD double raw(int l, std::int64_t h, std::int64_t t) const noexcept { return kind == wattn_score::snapkv && t >= qb ? 0.0 : score(l, h, t); }
  /// Priority of a protected token (0 kept first), -1 for a scored one.
  KVCODEC_HD std::int64_t priority(std::int64_t t) const noexcept { return t >= protect_from ? n - 1 - t : -1; }
  /// How many tokens are protected (the newest from protect_from on).
  KVCODEC_HD std::int64_t protected_count() const noexcept { return n - protect_from; }
  KVCODEC_HD std::uint64_t operator()(int l, std::int64_t h, std::int64_t t) const noexcept {
    const std::int64_t p = priority(t);
    return p >= 0 ? drop_protected_code(static_cast<std::uint64_t>(p)) : drop_rank_code(score(l, h, t));
  }
};

/// Per-layer budgets of PyramidKV: arithmetic from 2b - b/beta (layer 0) down to b/beta (last),
/// the top clipped at n (the bottom then rises to keep the mean), summing to layers x b exactly.
inline std::vector<std::int64_t> pyramid_budgets(std::int64_t b, std::int64_t n, int layers, double beta) {
  std::vector<std::int64_t> out(static_cast<std::size_t>(layers), b);
  if (layers <= 1) return out;
  double mn = static_cast<double>(b) / beta, mx = 2.0 * static_cast<double>(b) - mn;
  if (mx > static_cast<double>(n)) {
    mx = static_cast<double>(n);
    mn = 2.0 * static_cast<double>(b) - mx;
  }
  const double step = (mx - mn) / static_cast<double>(layers - 1);
  std::int64_t sum = 0;
  for (int l = 0; l < layers; ++l) {
    out[static_cast<std::size_t>(l)] = std::clamp<std::int64_t>(std::llround(mx - l * step), 1, n);
    sum += out[static_cast<std::size_t>(l)];
  }
  std::int64_t diff = static_cast<std::int64_t>(layers) * b - sum;
  for (int pass = 0; diff != 0 && pass < 2 * layers + 2; ++pass)
    for (int l = 0; l < layers && diff != 0; ++l) {
      auto& x = out[static_cast<std::size_t>(diff > 0 ? l : layers - 1 - l)];
      if (diff > 0 && x < n) ++x, --diff;
      else if (diff < 0 && x > 1) --x, ++diff;
    }
  return out;
}

/// A coder seen from layer l0 on (the per-layer selections of pyramidkv).
template <class Coder>
struct drop_layer_shift {
  Coder c;
  int l0 = 0;
  KVCODEC_HD std::uint64_t operator()(int l, std::int64_t h, std::int64_t t) const noexcept { return c(l + l0, h, t); }
};

/// The keys and queries a window scorer reads, and the prefix [0, n) it selects from.
struct drop_window_source {
  drop_source k, q;
  int layers = 0, heads = 0, group = 1;
  std::int64_t n = 0;
};

/// A window scorer's parameters (the CPU stage's: stage/drop_attention.hpp) and the budget b.
struct drop_window_params {
  wattn_score kind = wattn_score::snapkv;
  std::int64_t b = 1;
  std::int64_t window = 64;  ///< snapkv, pyramidkv, h2o (0 = every query); tova uses 1
  std::int64_t kernel = 5;   ///< snapkv, pyramidkv: odd
  double recent = 0.5;       ///< h2o
  bool pyramid = false;      ///< pyramidkv's per-layer budgets
  double beta = 20.0;        ///< pyramidkv
};

/// Everything the kernels and the selection need: the passes' arguments (outputs unset), the coder
/// (column sums unset) and each layer's budget.
struct drop_window_plan {
  wattn_args a;
  drop_window_coder coder;
  std::vector<std::int64_t> budgets;
};

/// Checks the parameters against the source as the CPU stage does and plans the selection.
inline drop_window_plan plan_drop_window(const drop_window_source& s, const drop_window_params& p) {
  const std::string where = "GPU window scorer";
  if (s.layers < 1 || s.heads < 1 || s.group < 1 || s.n < 1) throw_usage(where + ": need layers, heads, group and n >= 1");
  if (s.k.head_dim < 1 || s.k.head_dim != s.q.head_dim) throw_usage(where + ": keys and queries need one head_dim >= 1");
  if (p.b < 1 || p.b > s.n) throw_usage(where + ": need 1 <= budget <= n (budget " + std::to_string(p.b) + ", n " + std::to_string(s.n) + ")");
  const std::int64_t w = p.kind == wattn_score::tova ? 1 : p.window == 0 && p.kind == wattn_score::h2o ? s.n : p.window;
  if (w < 1 || w > s.n) throw_usage(where + ": window " + std::to_string(p.window) + " outside 1.." + std::to_string(s.n));
  if (p.kind == wattn_score::snapkv && (p.kernel < 1 || p.kernel % 2 == 0)) throw_usage(where + ": kernel must be odd and >= 1, got " + std::to_string(p.kernel));
  if (p.kind == wattn_score::h2o && !(p.recent >= 0.0 && p.recent <= 1.0)) throw_usage(where + ": recent must be in [0, 1]");
  drop_window_plan out;
  wattn_args& a = out.a;
  a.k = s.k, a.q = s.q, a.layers = s.layers, a.heads = s.heads, a.group = s.group, a.n = s.n, a.qb = s.n - w;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.k.head_dim)));
  drop_window_coder& c = out.coder;
  c.heads = s.heads, c.group = s.group, c.n = s.n, c.qb = a.qb, c.kernel = p.kernel, c.kind = p.kind;
  c.protect_from = p.kind == wattn_score::h2o ? s.n - std::llround(p.recent * static_cast<double>(p.b)) : p.kind == wattn_score::tova ? s.n - 1 : a.qb;
  out.budgets = p.pyramid ? pyramid_budgets(p.b, s.n, s.layers, p.beta) : std::vector<std::int64_t>(static_cast<std::size_t>(s.layers), p.b);
  return out;
}

/// Kept tokens of a planned window scorer: per layer l, H x b_l tokens (head after head, each
/// increasing), the layers one after another.
inline std::size_t drop_window_kept_size(const drop_window_plan& p) {
  std::size_t k = 0;
  for (auto b : p.budgets) k += static_cast<std::size_t>(b) * static_cast<std::size_t>(p.a.heads);
  return k;
}

/// A window scorer's column sums computed on the host as the GPU computes them (the two passes), and
/// its coder reading them: what every emulated selection over a window scorer starts from. Not
/// copyable (the coder points into acc).
struct window_scores_emulated {
  std::vector<float> m, z, acc;
  drop_window_coder coder;
  explicit window_scores_emulated(drop_window_plan p) {
    const std::size_t segs = static_cast<std::size_t>(p.a.layers) * static_cast<std::size_t>(p.a.heads);
    m.resize(segs * static_cast<std::size_t>(wattn_rows(p.a)));
    z.resize(m.size());
    acc.resize(segs * static_cast<std::size_t>(p.a.n));
    p.a.m = m.data(), p.a.z = z.data(), p.a.acc = acc.data();
    window_attention_emulated(p.a);
    coder = p.coder;
    coder.acc = acc.data();
  }
  window_scores_emulated(const window_scores_emulated&) = delete;
  window_scores_emulated& operator=(const window_scores_emulated&) = delete;
};

/// A window scorer's GPU selection emulated on the host: the two passes, then per layer the b_l best of
/// every head by drop_window_coder (or by wrap(coder): chunkkv's chunk means), concatenated layer after
/// layer (drop_window_kept_size tokens).
template <class Wrap = drop_same_coder>
std::vector<std::int32_t> drop_window_select_emulated(const drop_window_plan& p, const Wrap& wrap = {}) {
  const window_scores_emulated ws(p);
  std::vector<std::int32_t> kept;
  for (int l = 0; l < p.a.layers; ++l) {
    const auto one = drop_select_emulated(drop_layer_shift<decltype(wrap(ws.coder))>{wrap(ws.coder), l}, 1, p.a.heads, p.a.n, p.budgets[static_cast<std::size_t>(l)]);
    kept.insert(kept.end(), one.begin(), one.end());
  }
  return kept;
}

}  // namespace kvcodec
