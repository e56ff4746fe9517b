// kvcodec/core/weighted_quant.hpp — the step math of `weighted-quant` (stage/weighted_quant.hpp):
// relative key steps from query energies, with RoPE pairs sharing one weight.
#pragma once

#include <algorithm>
#include <cmath>
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

}  // namespace kvcodec
