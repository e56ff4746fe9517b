// kvcodec/cpu/drop/lagkv.hpp — the `lagkv` stage (Liang et al. 2025, "LagKV: Lag-Relative Information
// of the KV Cache Tells Which Tokens Are Important"): no queries, no attention. After the first `sink`
// tokens the prefix is cut into partitions of `lag` tokens; partition p is judged against the next one
// (its lag reference): each channel of p's keys is min-max normalised by the reference's range in that
// channel, a token's key score is the standard deviation of its normalised channels, softmaxed over the
// partition; the same for values; the score is the sum. Tokens that vary more than their successors'
// range predicts carry information the later context does not. The sinks and the last partition (it
// has no reference yet) are protected, sinks first, then the newest tokens; the softmax gives every
// partition the same total score, so the budget spreads over the partitions as LagKV's per-partition
// ratio does.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

struct lagkv_scorer : scorer_base {
  using scorer_base::scorer_base;

  /// Adds softmax over [t0, t1) of the std of each row's channels, min-max normalised by the rows
  /// [r0, r1) of the same head (rows of D floats, `row(j)` the j-th), to s[t0 .. t1).
  template <class Row>
  static void add_partition(Row&& row, std::int64_t t0, std::int64_t t1, std::int64_t r0, std::int64_t r1, std::size_t D, double* s,
                            std::vector<double>& lo, std::vector<double>& inv, std::vector<double>& z) {
    lo.assign(D, HUGE_VAL);
    std::vector<double>& hi = inv;
    hi.assign(D, -HUGE_VAL);
    for (std::int64_t j = r0; j < r1; ++j) {
      const float* x = row(j);
      for (std::size_t d = 0; d < D; ++d) {
        lo[d] = std::min(lo[d], static_cast<double>(x[d]));
        hi[d] = std::max(hi[d], static_cast<double>(x[d]));
      }
    }
    for (std::size_t d = 0; d < D; ++d) inv[d] = 1.0 / (hi[d] - lo[d] + 1e-6);  // LagKV's epsilon: a flat channel scales by 1e6
    z.resize(static_cast<std::size_t>(t1 - t0));
    double zmax = -HUGE_VAL;
    for (std::int64_t j = t0; j < t1; ++j) {
      const float* x = row(j);
      double sum = 0, sum2 = 0;
      for (std::size_t d = 0; d < D; ++d) {
        const double u = (static_cast<double>(x[d]) - lo[d]) * inv[d];
        sum += u;
        sum2 += u * u;
      }
      const double mean = sum / static_cast<double>(D);
      const double sd = std::sqrt(std::max(0.0, sum2 / static_cast<double>(D) - mean * mean));
      z[static_cast<std::size_t>(j - t0)] = sd;
      zmax = std::max(zmax, sd);
    }
    double total = 0;
    for (auto& v : z) total += (v = std::exp(v - zmax));
    for (std::int64_t j = t0; j < t1; ++j) s[j] += z[static_cast<std::size_t>(j - t0)] / total;
  }

  void operator()(int l, std::int64_t, layer_scores& out) const {
    const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim), N = static_cast<std::size_t>(n), T = static_cast<std::size_t>(kv.shape.tokens);
    const std::int64_t sink = std::min(c.sink, n), L = c.lag;
    const std::int64_t parts = (n - sink) / L;            // whole partitions after the sinks
    const std::int64_t tail = parts >= 1 ? sink + (parts - 1) * L : sink;  // the last partition (and any remainder): no reference
    for (std::int64_t t = 0; t < sink; ++t) out.prot.push_back(static_cast<std::int32_t>(t));
    protect_recent(out.prot, n, n - tail, tail);
    std::vector<double> lo, inv, z;
    for (int g = 0; g < kv.shape.kv_heads; ++g) {
      double* s = out.s.data() + static_cast<std::size_t>(g) * N;
      for (const auto* side : {&kv.keys, &kv.values}) {
        const float* base = (*side)[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(g) * T * D;
        const auto row = [base, D](std::int64_t j) { return base + static_cast<std::size_t>(j) * D; };
        for (std::int64_t p = 0; p + 1 < parts; ++p) {
          const std::int64_t t0 = sink + p * L;
          add_partition(row, t0, t0 + L, t0 + L, t0 + 2 * L, D, s, lo, inv, z);
        }
      }
    }
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under a `lagkv` configuration (cpu/drop/select.hpp).
inline kept_sets select_lagkv(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_with<drop_detail::lagkv_scorer>(kv, c, threads);
}

}  // namespace kvcodec::cpu
