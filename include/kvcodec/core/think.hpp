// kvcodec/core/think.hpp — ThinK's channel choice (stage/think.hpp) as host/device steps, so the CPU
// stage's fit (cpu/think.hpp), the GPU's (cuda/think.cuh) and its host emulation (think_fit_emulated,
// run in CI) share every line that decides a mask:
//   - think_query_energy: the mean squared query of (layer, kv head, channel) over the head's group of
//     query heads and every token, non-finite queries skipped, summed in double in (query head, token)
//     order: tensor/kv_cache.hpp's query_energy, from a device view of the queries;
//   - think_key_energy: the sum of k^2 in double over a head's rows in token order (the CPU fit's order
//     over its blocks: chunk after chunk, a head's rows in token order);
//   - think_score: that sum's mean times the query energy (kvpress ThinKPress), NaN ranked last;
//   - think_keeps: whether a channel is among the head's W best (ties: the lower channel), the place a
//     stable descending sort gives it.
#pragma once

#include <cstdint>
#include <vector>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/drop_topk.hpp"
#include "kvcodec/core/floats.hpp"

namespace kvcodec {

/// What the ThinK steps read: the keys and the queries (q_heads heads, `group` per kv head) of
/// `tokens` tokens, and optionally each (layer, kv head)'s rows: tokens kept_tokens[kept_first[i] ..
/// kept_first[i + 1]) for i = layer x kv_heads + head, increasing (null: every token).
struct think_source {
  drop_source keys, queries;
  std::int32_t kv_heads = 0, group = 1, head_dim = 0;
  std::int64_t tokens = 0;
  const std::int64_t* kept_first = nullptr;
  const std::int32_t* kept_tokens = nullptr;
};

/// Kept sets ([layer][kv head] -> increasing tokens) as think_source's row lists: first (one more entry
/// than there are heads, layer-major) and tokens.
struct think_rows {
  std::vector<std::int64_t> first{0};
  std::vector<std::int32_t> tokens;
};
inline think_rows think_rows_of(const std::vector<std::vector<std::vector<std::int32_t>>>& kept) {
  think_rows r;
  for (const auto& layer : kept)
    for (const auto& head : layer) {
      r.tokens.insert(r.tokens.end(), head.begin(), head.end());
      r.first.push_back(static_cast<std::int64_t>(r.tokens.size()));
    }
  return r;
}

/// Mean squared query of (layer l, kv head h, channel c), as f32 (0 without a finite query).
KVCODEC_HD inline float think_query_energy(const think_source& s, int l, std::int64_t h, std::int64_t c) noexcept {
  double acc = 0.0;
  std::int64_t n = 0;
  for (std::int64_t qh = h * s.group; qh < (h + 1) * s.group; ++qh)
    for (std::int64_t t = 0; t < s.tokens; ++t) {
      const float q = drop_load(s.queries, l, qh, t, c);
      if (kvcodec::detail::is_finite_f32(q)) {
        acc += static_cast<double>(q) * static_cast<double>(q);
        ++n;
      }
    }
  return n != 0 ? static_cast<float>(acc / static_cast<double>(n)) : 0.0f;
}

/// Rows of (l, h): their count, and the sum of k[c]^2 over them in token order.
struct think_key_sum {
  double sum = 0.0;
  std::int64_t rows = 0;
};
KVCODEC_HD inline think_key_sum think_key_energy(const think_source& s, int l, std::int64_t h, std::int64_t c) noexcept {
  think_key_sum out;
  if (s.kept_first == nullptr) {
    for (std::int64_t t = 0; t < s.tokens; ++t) {
      const double x = drop_load(s.keys, l, h, t, c);
      out.sum += x * x;
    }
    out.rows = s.tokens;
    return out;
  }
  const std::int64_t i = static_cast<std::int64_t>(l) * s.kv_heads + h;
  for (std::int64_t j = s.kept_first[i]; j < s.kept_first[i + 1]; ++j) {
    const double x = drop_load(s.keys, l, h, s.kept_tokens[j], c);
    out.sum += x * x;
  }
  out.rows = s.kept_first[i + 1] - s.kept_first[i];
  return out;
}

/// A channel's score: mean k^2 over the head's rows (0 without rows) times the query energy; NaN as -1.
KVCODEC_HD inline double think_score(const think_key_sum& k, float query_energy) noexcept {
  const double v = (k.rows > 0 ? k.sum / static_cast<double>(k.rows) : 0.0) * static_cast<double>(query_energy);
  return v == v ? v : -1.0;
}

/// Whether channel c is among the W best of score[0..D): fewer than W channels rank before it (a
/// higher score, or an equal one on a lower channel).
KVCODEC_HD inline bool think_keeps(const double* score, std::int64_t D, std::int64_t W, std::int64_t c) noexcept {
  std::int64_t before = 0;
  for (std::int64_t o = 0; o < D; ++o) before += score[o] > score[c] || (score[o] == score[c] && o < c);
  return before < W;
}

/// Step 1 of the fit: score[i x D + c] for (layer, kv head) i = l x kv_heads + h, channel c.
struct think_score_op {
  think_source s;
  double* score = nullptr;
  KVCODEC_HD void operator()(std::int64_t item) const noexcept {
    const std::int64_t D = s.head_dim, i = item / D, c = item % D, l = i / s.kv_heads, h = i % s.kv_heads;
    score[item] = think_score(think_key_energy(s, static_cast<int>(l), h, c), think_query_energy(s, static_cast<int>(l), h, c));
  }
};

/// Step 2: mask[i x D + c] = 1 for the W kept channels of (layer, kv head) i.
struct think_mask_op {
  const double* score = nullptr;
  std::uint8_t* mask = nullptr;
  std::int64_t head_dim = 0, kept = 0;
  KVCODEC_HD void operator()(std::int64_t item) const noexcept {
    const std::int64_t i = item / head_dim, c = item % head_dim;
    mask[item] = think_keeps(score + i * head_dim, head_dim, kept, c) ? 1 : 0;
  }
};

/// The fit on the host, the steps of cuda::think_fit in order: the masks ([layers][kv heads][head_dim],
/// 1 = kept) of W kept channels.
inline std::vector<std::uint8_t> think_fit_emulated(const think_source& s, int layers, std::int64_t kept) {
  const std::int64_t n = static_cast<std::int64_t>(layers) * s.kv_heads * s.head_dim;
  std::vector<double> score(static_cast<std::size_t>(n));
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n));
  const think_score_op a{s, score.data()};
  for (std::int64_t i = 0; i < n; ++i) a(i);
  const think_mask_op b{score.data(), mask.data(), s.head_dim, kept};
  for (std::int64_t i = 0; i < n; ++i) b(i);
  return mask;
}

}  // namespace kvcodec
