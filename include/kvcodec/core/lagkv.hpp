// kvcodec/core/lagkv.hpp — LagKV's scores (cpu/drop/lagkv.hpp) as host/device steps, shared by the CUDA
// selection (cuda/drop/lagkv.cuh) and its host emulation (drop_lagkv_select_emulated, run in CI). For
// each (layer, kv head, side K or V) and partition p of `lag` tokens after the sinks that has a successor:
//   1. lagkv_range: per channel, the minimum and 1 / (range + 1e-6) over the successor's rows;
//   2. lagkv_sd: per token, the standard deviation of its channels normalised by that range (channels
//      summed in order);
//   3. lagkv_softmax: per partition, exp(sd - max) and their sum, in token order;
//   4. drop_lagkv_coder: score = z_K / sum_K + z_V / sum_V; the sinks, then the newest tokens from the
//      last partition on, protected.
// Every step does the CPU's arithmetic in the CPU's order (max and min are exact), so the scores, and the
// kept sets, equal the CPU's bit for bit.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/drop_score.hpp"
#include "kvcodec/core/drop_topk.hpp"
#include "kvcodec/core/kv_address.hpp"

namespace kvcodec {

/// One LagKV selection: keys and values (v: the same layout and dtype as k), the prefix, the sinks and
/// the partition length; the steps' arrays (in the memory space of the code that runs).
struct lagkv_args {
  drop_source k;
  const void* const* v = nullptr;  ///< per-layer value bases
  int layers = 0, heads = 0;
  std::int64_t n = 0, sink = 0, lag = 2;
  double* lo = nullptr;     ///< [(seg * 2 + side) * parts + p] * D + d
  double* inv = nullptr;    ///< the same shape
  double* z = nullptr;      ///< [(seg * 2 + side) * n + t]: sd, then exp(sd - max)
  double* total = nullptr;  ///< [(seg * 2 + side) * parts + p]
};

/// Whole partitions after the sinks (those scored have a successor: parts - 1 of them).
KVCODEC_HD inline std::int64_t lagkv_parts(const lagkv_args& a) noexcept {
  const std::int64_t s = a.sink < a.n ? a.sink : a.n;
  return (a.n - s) / a.lag;
}
KVCODEC_HD inline std::int64_t lagkv_sinks(const lagkv_args& a) noexcept { return a.sink < a.n ? a.sink : a.n; }
/// First token of the last partition (and any remainder): protected, no reference yet.
KVCODEC_HD inline std::int64_t lagkv_tail(const lagkv_args& a) noexcept {
  const std::int64_t parts = lagkv_parts(a);
  return parts >= 1 ? lagkv_sinks(a) + (parts - 1) * a.lag : lagkv_sinks(a);
}
/// Scored partitions per (segment, side).
KVCODEC_HD inline std::int64_t lagkv_scored(const lagkv_args& a) noexcept {
  const std::int64_t p = lagkv_parts(a) - 1;
  return p > 0 ? p : 0;
}

KVCODEC_HD inline float lagkv_load(const lagkv_args& a, int side, int l, std::int64_t h, std::int64_t t, std::int64_t d) noexcept {
  return kv_load(side == 0 ? a.k.k[l] : a.v[l], a.k.layout, a.k.dtype_code, h, t, d);
}

/// Step 1, item i of segs x 2 x scored x D: channel d's minimum and inverse range over partition p + 1.
KVCODEC_HD inline void lagkv_range(const lagkv_args& a, std::int64_t i) noexcept {
  const std::int64_t D = a.k.head_dim, P = lagkv_scored(a);
  const std::int64_t d = i % D, p = i / D % P, side = i / D / P % 2, seg = i / D / P / 2;
  const int l = static_cast<int>(seg / a.heads);
  const std::int64_t h = seg % a.heads, r0 = lagkv_sinks(a) + (p + 1) * a.lag;
  double lo = HUGE_VAL, hi = -HUGE_VAL;
  for (std::int64_t j = r0; j < r0 + a.lag; ++j) {
    const double x = lagkv_load(a, static_cast<int>(side), l, h, j, d);
    lo = x < lo ? x : lo;  // std::min / std::max of the CPU: the first of equal values, NaN never taken
    hi = hi < x ? x : hi;
  }
  a.lo[i] = lo;
  a.inv[i] = 1.0 / (hi - lo + 1e-6);
}

/// Step 2, item i of segs x 2 x (tail - sinks): token t's standard deviation of its normalised channels.
KVCODEC_HD inline void lagkv_sd(const lagkv_args& a, std::int64_t i) noexcept {
  const std::int64_t D = a.k.head_dim, P = lagkv_scored(a), span = P * a.lag, s0 = lagkv_sinks(a);
  const std::int64_t t = s0 + i % span, side = i / span % 2, seg = i / span / 2, p = (t - s0) / a.lag;
  const int l = static_cast<int>(seg / a.heads);
  const std::int64_t h = seg % a.heads;
  const double* lo = a.lo + ((seg * 2 + side) * P + p) * D;
  const double* inv = a.inv + ((seg * 2 + side) * P + p) * D;
  double sum = 0, sum2 = 0;
  for (std::int64_t d = 0; d < D; ++d) {
    const double u = (static_cast<double>(lagkv_load(a, static_cast<int>(side), l, h, t, d)) - lo[d]) * inv[d];
    sum += u;
    sum2 += u * u;
  }
  const double mean = sum / static_cast<double>(D), var = sum2 / static_cast<double>(D) - mean * mean;
  a.z[(seg * 2 + side) * a.n + t] = std::sqrt(var > 0.0 ? var : 0.0);
}

/// Step 3, item i of segs x 2 x scored: the partition's exp(sd - max), in place, and their sum.
KVCODEC_HD inline void lagkv_softmax(const lagkv_args& a, std::int64_t i) noexcept {
  const std::int64_t P = lagkv_scored(a), p = i % P, ss = i / P;
  double* z = a.z + ss * a.n + lagkv_sinks(a) + p * a.lag;
  double zmax = -HUGE_VAL;
  for (std::int64_t j = 0; j < a.lag; ++j) zmax = zmax < z[j] ? z[j] : zmax;
  double total = 0;
  for (std::int64_t j = 0; j < a.lag; ++j) total += (z[j] = std::exp(z[j] - zmax));
  a.total[i] = total;
}

/// The scores as a coder: the sinks first, then the newest tokens from the tail on, then the scores.
struct drop_lagkv_coder {
  lagkv_args a;
  /// Priority of a protected token (0 kept first), -1 for a scored one.
  KVCODEC_HD std::int64_t priority(std::int64_t t) const noexcept {
    const std::int64_t s0 = lagkv_sinks(a);
    return t < s0 ? t : t >= lagkv_tail(a) ? s0 + (a.n - 1 - t) : -1;
  }
  /// The CPU scorer's value of token t (0 for the protected ones).
  KVCODEC_HD double raw(int l, std::int64_t h, std::int64_t t) const noexcept {
    if (priority(t) >= 0) return 0.0;
    const std::int64_t P = lagkv_scored(a), p = (t - lagkv_sinks(a)) / a.lag, seg = static_cast<std::int64_t>(l) * a.heads + h;
    double s = 0.0;
    for (int side = 0; side < 2; ++side) s += a.z[(seg * 2 + side) * a.n + t] / a.total[(seg * 2 + side) * P + p];
    return s;
  }
  KVCODEC_HD std::uint64_t operator()(int l, std::int64_t h, std::int64_t t) const noexcept {
    const std::int64_t p = priority(t);
    return p >= 0 ? drop_protected_code(static_cast<std::uint64_t>(p)) : drop_rank_code(raw(l, h, t));
  }
};

/// Items of the three steps.
struct lagkv_items {
  std::int64_t range = 0, sd = 0, softmax = 0;
};

KVCODEC_HD inline lagkv_items lagkv_counts(const lagkv_args& a) noexcept {
  const std::int64_t segs = static_cast<std::int64_t>(a.layers) * a.heads, P = lagkv_scored(a);
  return {segs * 2 * P * a.k.head_dim, segs * 2 * P * a.lag, segs * 2 * P};
}

/// Array sizes (elements) of lo/inv, z and total.
struct lagkv_sizes {
  std::size_t range = 0, z = 0, total = 0;
};

inline lagkv_sizes lagkv_sizes_of(const lagkv_args& a) {
  const std::size_t segs = static_cast<std::size_t>(a.layers) * static_cast<std::size_t>(a.heads), P = static_cast<std::size_t>(lagkv_scored(a));
  return {segs * 2 * P * static_cast<std::size_t>(a.k.head_dim), segs * 2 * static_cast<std::size_t>(a.n), segs * 2 * P};
}

/// How many tokens lagkv protects: the sinks and the newest from the tail on.
KVCODEC_HD inline std::int64_t lagkv_protected(const lagkv_args& a) noexcept { return lagkv_sinks(a) + (a.n - lagkv_tail(a)); }

/// The GPU lagkv steps emulated on the host, item by item; returns then(coder), the coder valid during
/// the call (its arrays live here).
template <class Then>
auto drop_lagkv_emulated_with(lagkv_args a, const Then& then) {
  const lagkv_sizes sz = lagkv_sizes_of(a);
  std::vector<double> lo(sz.range), inv(sz.range), z(sz.z, 0.0), total(sz.total);
  a.lo = lo.data(), a.inv = inv.data(), a.z = z.data(), a.total = total.data();
  const lagkv_items c = lagkv_counts(a);
  for (std::int64_t i = 0; i < c.range; ++i) lagkv_range(a, i);
  for (std::int64_t i = 0; i < c.sd; ++i) lagkv_sd(a, i);
  for (std::int64_t i = 0; i < c.softmax; ++i) lagkv_softmax(a, i);
  return then(drop_lagkv_coder{a});
}

/// The GPU lagkv selection emulated on the host: the three steps, then each head's b best by
/// drop_lagkv_coder (or by wrap(coder)).
template <class Wrap = drop_same_coder>
std::vector<std::int32_t> drop_lagkv_select_emulated(const lagkv_args& a, std::int64_t b, const Wrap& wrap = {}) {
  return drop_lagkv_emulated_with(a, [&](const drop_lagkv_coder& c) { return drop_select_emulated(wrap(c), a.layers, a.heads, a.n, b); });
}

}  // namespace kvcodec
