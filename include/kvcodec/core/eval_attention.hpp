// kvcodec/core/eval_attention.hpp — the GPU form of eval/attention.hpp's compare_attention (attention
// output error, KL and dropped mass of a reconstructed cache against the original, model queries in the
// loop), as host/device tile phases shared by the CUDA kernels (cuda/eval/attention.cuh) and their host
// emulation (attention_rows_emulated, run in CI against the CPU's compare_attention).
//
// Work: a task is a (layer l, query head h) pair (kv head g = h / group), its rows the evaluated query
// positions k < per (attention_row_pos: every position of the window, or a deterministic strided
// sample with a per-task phase, as the CPU). A CUDA block of 256 threads takes 64 rows of a task:
//   pass 1 (stats): over the key tiles its rows see, the 64 x 64 score tiles s = q.k and sr = q.k^ (double
//     fma chains of f32 values: the CPU's dot_f32 sums the same exact products in another order), and
//     each row's four log-sum-exps online (drop_softmax_state): over all keys j <= i, over the kept ones, of the
//     reconstruction's scores over the kept ones, and over the dropped ones;
//   pass 2 (outputs), for each 32-channel chunk of the values: the tiles again, the probabilities
//     p = exp(s - lse) and p^ = exp(sr - lse_rec) (kept keys), each row's KL (first chunk), and the
//     chunk of o = P V and o^ = P^ V^ in double; each row's sum of (o - o^)^2 and o^2 over the chunks.
// Memory is O(rows + tile), never O(tokens^2). A thread per task then sums its rows in order
// (attention_sums_add, the CPU's per-row rule), and the host combines the tasks in order.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/drop_topk.hpp"

namespace kvcodec {

/// Query position of row k of task `task` (per rows out of the window [qb, qb + nq)).
KVCODEC_HD inline std::int64_t attention_row_pos(std::int64_t task, std::int64_t k, std::int64_t qb, std::int64_t nq, std::int64_t per) noexcept {
  if (per >= nq) return qb + k;
  const std::int64_t phase = static_cast<std::int64_t>((static_cast<std::uint64_t>(task) * 0x9E3779B97F4A7C15ull) % static_cast<std::uint64_t>(nq));
  return qb + (k * nq + phase) / per;
}

/// A task's sums (eval/attention.hpp combines them into the metrics).
struct attention_sums {
  double out_sq = 0.0, err_sq = 0.0, kl = 0.0, dropped = 0.0;
  std::int64_t rows = 0, empty = 0;
};

/// Adds one row: its squared output error and norm, its KL on the kept support (clamped at 0 against
/// rounding; a row with no kept key is counted empty and left out of the KL) and its dropped mass.
KVCODEC_HD inline void attention_sums_add(attention_sums& acc, double err_sq, double out_sq, double kl, double lse, double lse_kept, double lse_drop) noexcept {
  acc.err_sq += err_sq;
  acc.out_sq += out_sq;
  if (lse_kept == -HUGE_VAL) ++acc.empty;
  else acc.kl += kl > 0.0 || kl != kl ? kl : 0.0;
  acc.dropped += lse_drop == -HUGE_VAL ? 0.0 : std::exp(lse_drop - lse);
  ++acc.rows;
}

inline constexpr int eattn_tile = 64;      ///< rows and keys per tile
inline constexpr int eattn_chunk = 32;     ///< channels staged per step
inline constexpr int eattn_threads = 256;  ///< 16 x 16 threads, each 4 x 4 scores or 4 rows x 2 channels

/// One row's results: the log-sum-exps of pass 1, then pass 2's sums.
struct eattn_row {
  double lse = -HUGE_VAL, lse_kept = -HUGE_VAL, lse_rec = -HUGE_VAL, lse_drop = -HUGE_VAL;
  double err_sq = 0.0, out_sq = 0.0, kl = 0.0;
};

/// One comparison: original and reconstructed K/V and the queries (drop_source: per-layer bases, the
/// layout, f32/f16/bf16; q over the query heads), the reconstruction's kept keys, the rows, the outputs.
struct eattn_args {
  drop_source k, v, kr, vr, q;
  const std::uint8_t* kept = nullptr;  ///< [(l * kv_heads + g) * tokens + t] != 0: kept; nullptr: dense
  int layers = 0, kv_heads = 0, q_heads = 0;
  std::int64_t tokens = 0, qb = 0, nq = 0, per = 0;
  double scale = 1.0;                  ///< 1 / sqrt(head_dim)
  eattn_row* rows = nullptr;           ///< [task * per + k]
};

KVCODEC_HD inline std::int64_t eattn_tasks(const eattn_args& a) noexcept { return static_cast<std::int64_t>(a.layers) * a.q_heads; }

/// The tile's shared memory (about 102 KB: the kernels ask for it as dynamic shared memory).
struct eattn_smem {
  float a[eattn_tile][eattn_chunk + 1];  ///< staged query chunk; in pass 2's products the V^ chunk
  float b[eattn_tile][eattn_chunk + 1];  ///< staged key chunk; in pass 2's products the V chunk
  double s[eattn_tile][eattn_tile + 1];  ///< q.k, then p
  double sr[eattn_tile][eattn_tile + 1]; ///< q.k^, then p^
  double red[2][eattn_tile][17];         ///< pass 2: per-thread partial sums of a row, before the row adds them
  std::int64_t pos[eattn_tile];          ///< row positions (-1 past the task's rows)
  double lse[eattn_tile], lse_kept[eattn_tile], lse_rec[eattn_tile];
};

/// A thread's 4 x 4 double accumulators (score tiles), or 4 rows x 2 channels of o and o^ (pass 2).
struct eattn_lane {
  double c[4][4] = {};
  double o[4][2] = {}, orec[4][2] = {};
};

/// Whether key t of (l, g) is kept by the reconstruction.
KVCODEC_HD inline bool eattn_kept(const eattn_args& a, int l, int g, std::int64_t t) noexcept {
  return a.kept == nullptr || a.kept[(static_cast<std::int64_t>(l) * a.kv_heads + g) * a.tokens + t] != 0;
}

/// Row staging, item rr (< eattn_tile): the row's position, and in pass 2 (stats) its log-sum-exps.
KVCODEC_HD inline void eattn_stage_row(const eattn_args& a, std::int64_t task, std::int64_t k0, int rr, bool stats, eattn_smem& sm) noexcept {
  const std::int64_t k = k0 + rr;
  sm.pos[rr] = k < a.per ? attention_row_pos(task, k, a.qb, a.nq, a.per) : -1;
  if (stats && k < a.per) {
    const eattn_row& r = a.rows[task * a.per + k];
    sm.lse[rr] = r.lse, sm.lse_kept[rr] = r.lse_kept, sm.lse_rec[rr] = r.lse_rec;
  }
}

/// Last key any row of the staged tile sees (+1), for the key loop's bound (rows are increasing).
KVCODEC_HD inline std::int64_t eattn_key_end(const eattn_smem& sm) noexcept {
  std::int64_t e = 0;
  for (int rr = 0; rr < eattn_tile; ++rr) e = sm.pos[rr] + 1 > e ? sm.pos[rr] + 1 : e;
  return e;
}

inline constexpr int eattn_stage_items = 2 * eattn_tile * eattn_chunk;

/// Score staging item: the query chunk of the tile's rows (into a) and the chunk of keys j0.. of `keys`
/// (the original's or the reconstruction's, into b); 0 outside.
KVCODEC_HD inline void eattn_stage_qk(const eattn_args& a, const drop_source& keys, int l, int h, std::int64_t j0, int d0, int item, eattn_smem& sm) noexcept {
  const int e = item % (eattn_tile * eattn_chunk), x = e / eattn_chunk, d = e % eattn_chunk;
  const bool in_d = d0 + d < a.k.head_dim;
  if (item < eattn_tile * eattn_chunk) {
    const std::int64_t i = sm.pos[x];
    sm.a[x][d] = i >= 0 && in_d ? kv_load(a.q.k[l], a.q.layout, a.q.dtype_code, h, i, d0 + d) : 0.0f;
  } else {
    const std::int64_t j = j0 + x;
    sm.b[x][d] = j < a.tokens && in_d ? kv_load(keys.k[l], keys.layout, keys.dtype_code, h / (a.q_heads / a.kv_heads), j, d0 + d) : 0.0f;
  }
}

/// Thread tid's double fma chains over the staged chunk (rows ty + 16i, keys tx + 16j).
KVCODEC_HD inline void eattn_fma(const eattn_smem& sm, int tid, eattn_lane& L) noexcept {
  const int ty = tid / 16, tx = tid % 16;
  for (int d = 0; d < eattn_chunk; ++d)
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) L.c[i][j] = std::fma(static_cast<double>(sm.a[ty + 16 * i][d]), static_cast<double>(sm.b[tx + 16 * j][d]), L.c[i][j]);
}

/// Thread tid's scores (times scale) into `out`, its accumulators reset.
KVCODEC_HD inline void eattn_store(const eattn_args& a, double (*out)[eattn_tile + 1], int tid, eattn_lane& L) noexcept {
  const int ty = tid / 16, tx = tid % 16;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) out[ty + 16 * i][tx + 16 * j] = L.c[i][j] * a.scale, L.c[i][j] = 0.0;
}

/// Pass 1, lane rr after key tile j0's two score tiles: its row's four states (all, kept, rec, drop).
KVCODEC_HD inline void eattn_row_stats(const eattn_args& a, const eattn_smem& sm, int l, int g, std::int64_t j0, int rr, drop_softmax_state* st) noexcept {
  const std::int64_t i = sm.pos[rr];
  for (int jj = 0; jj < eattn_tile && j0 + jj <= i; ++jj) {
    const double s = sm.s[rr][jj];
    drop_softmax_push(st[0], s);
    if (eattn_kept(a, l, g, j0 + jj)) {
      drop_softmax_push(st[1], s);
      drop_softmax_push(st[2], sm.sr[rr][jj]);
    } else {
      drop_softmax_push(st[3], s);
    }
  }
}

/// Pass 2, lane rr after key tile j0's score tiles: the probabilities in place (0 where the key is
/// unseen or, for p^, dropped) and, when `kl_too`, the row's KL terms over the kept keys.
KVCODEC_HD inline void eattn_row_probs(const eattn_args& a, eattn_smem& sm, int l, int g, std::int64_t j0, int rr, bool kl_too, double& kl) noexcept {
  const std::int64_t i = sm.pos[rr];
  for (int jj = 0; jj < eattn_tile; ++jj) {
    const bool seen = j0 + jj <= i, kept = seen && eattn_kept(a, l, g, j0 + jj);
    const double s = sm.s[rr][jj], sr = sm.sr[rr][jj];
    sm.s[rr][jj] = seen ? std::exp(s - sm.lse[rr]) : 0.0;
    sm.sr[rr][jj] = kept ? std::exp(sr - sm.lse_rec[rr]) : 0.0;
    if (kl_too && kept) {
      const double lp = s - sm.lse_kept[rr], lq = sr - sm.lse_rec[rr];
      kl += std::exp(lp) * (lp - lq);
    }
  }
}

/// Pass 2 value staging item: channels c0.. of keys j0..'s V (into b) and V^ (into a); 0 outside.
KVCODEC_HD inline void eattn_stage_v(const eattn_args& a, int l, int h, std::int64_t j0, int c0, int item, eattn_smem& sm) noexcept {
  const int e = item % (eattn_tile * eattn_chunk), x = e / eattn_chunk, d = e % eattn_chunk;
  const std::int64_t j = j0 + x;
  const bool in = j < a.tokens && c0 + d < a.k.head_dim;
  const int g = h / (a.q_heads / a.kv_heads);
  const drop_source& src = item < eattn_tile * eattn_chunk ? a.v : a.vr;
  const float x_ = in ? kv_load(src.k[l], src.layout, src.dtype_code, g, j, c0 + d) : 0.0f;
  if (item < eattn_tile * eattn_chunk) sm.b[x][d] = x_;
  else sm.a[x][d] = x_;
}

/// Pass 2, thread tid: o += P V and o^ += P^ V^ for its rows ty + 16i and channels tx + 16j of the chunk.
KVCODEC_HD inline void eattn_pv(const eattn_smem& sm, int tid, eattn_lane& L) noexcept {
  const int ty = tid / 16, tx = tid % 16;
  for (int jj = 0; jj < eattn_tile; ++jj)
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 2; ++j) {
        L.o[i][j] = std::fma(sm.s[ty + 16 * i][jj], static_cast<double>(sm.b[jj][tx + 16 * j]), L.o[i][j]);
        L.orec[i][j] = std::fma(sm.sr[ty + 16 * i][jj], static_cast<double>(sm.a[jj][tx + 16 * j]), L.orec[i][j]);
      }
}

/// Pass 2, thread tid after a chunk: its rows' partial sums of (o - o^)^2 and o^2 into red; o, o^ reset.
KVCODEC_HD inline void eattn_partials(eattn_smem& sm, int tid, eattn_lane& L) noexcept {
  const int ty = tid / 16, tx = tid % 16;
  for (int i = 0; i < 4; ++i) {
    double e = 0.0, o2 = 0.0;
    for (int j = 0; j < 2; ++j) {
      const double d = L.o[i][j] - L.orec[i][j];
      e += d * d;
      o2 += L.o[i][j] * L.o[i][j];
      L.o[i][j] = L.orec[i][j] = 0.0;
    }
    sm.red[0][ty + 16 * i][tx] = e;
    sm.red[1][ty + 16 * i][tx] = o2;
  }
}

/// Pass 2, lane rr after a chunk's partials: its row's sums, in thread order.
KVCODEC_HD inline void eattn_row_sums(const eattn_smem& sm, int rr, double& err_sq, double& out_sq) noexcept {
  for (int t = 0; t < 16; ++t) err_sq += sm.red[0][rr][t], out_sq += sm.red[1][rr][t];
}

/// A task's rows summed in order (the reduction kernel's step, one thread per task).
KVCODEC_HD inline attention_sums eattn_task_sums(const eattn_args& a, std::int64_t task) noexcept {
  attention_sums acc;
  for (std::int64_t k = 0; k < a.per; ++k) {
    const eattn_row& r = a.rows[task * a.per + k];
    attention_sums_add(acc, r.err_sq, r.out_sq, r.kl, r.lse, r.lse_kept, r.lse_drop);
  }
  return acc;
}

namespace detail {

/// One score tile pair (rows of the staged tile, keys j0..) into sm.s and sm.sr, every thread in turn.
inline void eattn_scores_emulated(const eattn_args& a, int l, int h, std::int64_t j0, eattn_smem& sm, std::vector<eattn_lane>& lanes) {
  for (int which = 0; which < 2; ++which) {
    for (int d0 = 0; d0 < a.k.head_dim; d0 += eattn_chunk) {
      for (int item = 0; item < eattn_stage_items; ++item) eattn_stage_qk(a, which == 0 ? a.k : a.kr, l, h, j0, d0, item, sm);
      for (int tid = 0; tid < eattn_threads; ++tid) eattn_fma(sm, tid, lanes[static_cast<std::size_t>(tid)]);
    }
    for (int tid = 0; tid < eattn_threads; ++tid) eattn_store(a, which == 0 ? sm.s : sm.sr, tid, lanes[static_cast<std::size_t>(tid)]);
  }
}

}  // namespace detail

/// Host emulation of both passes over every task (the kernels' phases, tile by tile): fills a.rows.
inline void attention_rows_emulated(const eattn_args& a) {
  std::vector<eattn_smem> smv(1);
  eattn_smem& sm = smv[0];
  std::vector<eattn_lane> lanes(eattn_threads);
  const int group = a.q_heads / a.kv_heads;
  for (std::int64_t task = 0; task < eattn_tasks(a); ++task) {
    const int l = static_cast<int>(task / a.q_heads), h = static_cast<int>(task % a.q_heads), g = h / group;
    for (std::int64_t k0 = 0; k0 < a.per; k0 += eattn_tile) {
      for (int rr = 0; rr < eattn_tile; ++rr) eattn_stage_row(a, task, k0, rr, false, sm);
      const std::int64_t end = eattn_key_end(sm);
      drop_softmax_state st[eattn_tile][4];
      for (std::int64_t j0 = 0; j0 < end; j0 += eattn_tile) {
        detail::eattn_scores_emulated(a, l, h, j0, sm, lanes);
        for (int rr = 0; rr < eattn_tile; ++rr) eattn_row_stats(a, sm, l, g, j0, rr, st[rr]);
      }
      for (int rr = 0; rr < eattn_tile && k0 + rr < a.per; ++rr) {
        eattn_row& r = a.rows[task * a.per + k0 + rr];
        r.lse = drop_softmax_lse(st[rr][0]), r.lse_kept = drop_softmax_lse(st[rr][1]), r.lse_rec = drop_softmax_lse(st[rr][2]), r.lse_drop = drop_softmax_lse(st[rr][3]);
      }
      for (int rr = 0; rr < eattn_tile; ++rr) eattn_stage_row(a, task, k0, rr, true, sm);
      double kl[eattn_tile] = {}, err[eattn_tile] = {}, out[eattn_tile] = {};
      for (int c0 = 0; c0 < a.k.head_dim; c0 += eattn_chunk) {
        for (std::int64_t j0 = 0; j0 < end; j0 += eattn_tile) {
          detail::eattn_scores_emulated(a, l, h, j0, sm, lanes);
          for (int rr = 0; rr < eattn_tile; ++rr) eattn_row_probs(a, sm, l, g, j0, rr, c0 == 0, kl[rr]);
          for (int item = 0; item < eattn_stage_items; ++item) eattn_stage_v(a, l, h, j0, c0, item, sm);
          for (int tid = 0; tid < eattn_threads; ++tid) eattn_pv(sm, tid, lanes[static_cast<std::size_t>(tid)]);
        }
        for (int tid = 0; tid < eattn_threads; ++tid) eattn_partials(sm, tid, lanes[static_cast<std::size_t>(tid)]);
        for (int rr = 0; rr < eattn_tile; ++rr) eattn_row_sums(sm, rr, err[rr], out[rr]);
      }
      for (int rr = 0; rr < eattn_tile && k0 + rr < a.per; ++rr) {
        eattn_row& r = a.rows[task * a.per + k0 + rr];
        r.err_sq = err[rr], r.out_sq = out[rr], r.kl = kl[rr];
      }
    }
  }
}

}  // namespace kvcodec
