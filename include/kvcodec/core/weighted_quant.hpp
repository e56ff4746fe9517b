// kvcodec/core/weighted_quant.hpp — the math of `weighted-quant` (stage/weighted_quant.hpp):
// relative key steps from query energies, with RoPE pairs sharing one weight, and the per-channel
// RoPE factors with which it rotates keys back before quantizing and forward after decoding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/config.hpp"

namespace kvcodec {

/// RoPE pairing of channels: none, (2i, 2i+1) (llama2.c, `interleaved-pairs`) or (i, i + D/2)
/// (Hugging Face Llama, `rotate-half`).
enum class rope_pairs : int { none = 0, interleaved = 1, half = 2 };

inline rope_pairs rope_pairs_of(const std::string& style, int head_dim) {
  if (head_dim % 2 != 0) return rope_pairs::none;
  if (style == "interleaved-pairs") return rope_pairs::interleaved;
  if (style == "rotate-half") return rope_pairs::half;
  return rope_pairs::none;
}

/// The channel that shares channel d's rotation (d itself without pairs).
KVCODEC_HD inline int rope_partner(int d, int D, rope_pairs p) {
  if (p == rope_pairs::interleaved) return d ^ 1;
  if (p == rope_pairs::half) return d < D / 2 ? d + D / 2 : d - D / 2;
  return d;
}

/// Relative key steps of one layer from its query energies w[h * D + d] (mean squared query over
/// the query heads of kv head h): rel = sqrt(G / w_pair), w_pair the mean of w over the channel's
/// RoPE pair and G their geometric mean over the layer's positive entries, clamped to
/// [1/16, 16]; a channel no query reads (w_pair = 0) gets 16. All 1 when no entry is positive or
/// finite. Writes H * D values.
inline void weighted_key_rel(const float* w, int H, int D, rope_pairs pairs, float* rel) {
  double log_sum = 0;
  int n = 0;
  for (int h = 0; h < H; ++h)
    for (int d = 0; d < D; ++d) {
      const double wp = 0.5 * (static_cast<double>(w[h * D + d]) + w[h * D + rope_partner(d, D, pairs)]);
      if (wp > 0 && std::isfinite(wp)) {
        log_sum += std::log(wp);
        ++n;
      }
    }
  if (n == 0) {
    std::fill(rel, rel + static_cast<std::ptrdiff_t>(H) * D, 1.0f);
    return;
  }
  const double g = log_sum / n;
  for (int h = 0; h < H; ++h)
    for (int d = 0; d < D; ++d) {
      const double wp = 0.5 * (static_cast<double>(w[h * D + d]) + w[h * D + rope_partner(d, D, pairs)]);
      double r = 16.0;
      if (wp > 0 && std::isfinite(wp)) r = std::clamp(std::exp(0.5 * (g - std::log(wp))), 1.0 / 16, 16.0);
      rel[h * D + d] = static_cast<float>(r);
    }
}

/// RoPE at position pos as per-channel factors, for rotating a whole row as
/// y[d] = x[d] * c[d] + x[rope_partner(d)] * s[d] (core/rope.hpp's rotation, in f32): c[d] = cos of
/// the channel's pair angle, s[d] = -sin on the pair's first channel and +sin on its second (dir = +1,
/// RoPE) or the opposite (dir = -1, RoPE undone). Writes D values to each of c and s.
inline void rope_factors(std::int64_t pos, std::size_t D, double theta, rope_pairs pairs, double dir, float* c, float* s) {
  const std::size_t half = D / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const double a = dir * static_cast<double>(pos) * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
    const float cv = static_cast<float>(std::cos(a)), sv = static_cast<float>(std::sin(a));
    const std::size_t i0 = pairs == rope_pairs::interleaved ? 2 * i : i;
    const std::size_t i1 = pairs == rope_pairs::interleaved ? 2 * i + 1 : i + half;
    c[i0] = c[i1] = cv;
    s[i0] = -sv;
    s[i1] = sv;
  }
}

/// rope_factors for the n positions p0 .. p0 + n - 1 into c, s (n x D values each): the angle of a
/// pair grows by the same step per position, so each is advanced by the angle-addition recurrence in
/// double and recomputed exactly every 64 positions (agrees with rope_factors to ~1e-15 before the
/// rounding to f32); one sin/cos per pair per 64 positions instead of one per position.
inline void rope_factors_run(std::int64_t p0, std::int64_t n, std::size_t D, double theta, rope_pairs pairs, double dir, float* c, float* s) {
  const std::size_t half = D / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const double f = dir * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
    const double cw = std::cos(f), sw = std::sin(f);
    const std::size_t i0 = pairs == rope_pairs::interleaved ? 2 * i : i;
    const std::size_t i1 = pairs == rope_pairs::interleaved ? 2 * i + 1 : i + half;
    double cv = 0, sv = 0;
    for (std::int64_t q = 0; q < n; ++q) {
      if (q % 64 == 0) {
        const double a = static_cast<double>(p0 + q) * f;
        cv = std::cos(a);
        sv = std::sin(a);
      } else {
        const double c2 = cv * cw - sv * sw;
        sv = sv * cw + cv * sw;
        cv = c2;
      }
      float* cr = c + static_cast<std::size_t>(q) * D;
      float* sr = s + static_cast<std::size_t>(q) * D;
      cr[i0] = cr[i1] = static_cast<float>(cv);
      sr[i0] = static_cast<float>(-sv);
      sr[i1] = static_cast<float>(sv);
    }
  }
}

/// Channel d of row x rotated by the factors of rope_factors (two products, one sum: the AVX2
/// kernel of cpu/x86/weighted_quant.hpp computes the same float operations).
KVCODEC_HD inline float rope_rotated(const float* x, int d, int D, rope_pairs pairs, const float* c, const float* s) {
  const float a = x[d] * c[d];
  const float b = x[rope_partner(d, D, pairs)] * s[d];
  return a + b;
}

}  // namespace kvcodec
