// kvcodec/cpu/drop/random.hpp — the `random` stage (kvpress RandomPress; a baseline): every token of the
// prefix scored by a deterministic uniform hash of (seed, layer, kv head, token), so the choice depends
// on those alone.
#pragma once

#include <cstdint>
#include <vector>

#include "kvcodec/core/random.hpp"
#include "kvcodec/cpu/drop/select.hpp"

namespace kvcodec::cpu {

namespace drop_detail {

/// Deterministic uniform value in [0, 1) of (seed, layer, head, token) (splitmix64 finaliser).
inline double hash_uniform(std::uint64_t seed, std::uint64_t l, std::uint64_t h, std::uint64_t t) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull ^ (l << 48) ^ (h << 32) ^ t;
  for (int r = 0; r < 2; ++r) x = splitmix64_next(x);
  return static_cast<double>(x >> 11) * 0x1.0p-53;
}

struct random_scorer : scorer_base {
  using scorer_base::scorer_base;
  void operator()(int l, std::int64_t, layer_scores& out) const {
    const std::size_t N = static_cast<std::size_t>(n);
    for (int g = 0; g < kv.shape.kv_heads; ++g)
      for (std::int64_t j = 0; j < n; ++j)
        out.s[static_cast<std::size_t>(g) * N + static_cast<std::size_t>(j)] =
            hash_uniform(static_cast<std::uint64_t>(c.seed), static_cast<std::uint64_t>(l), static_cast<std::uint64_t>(g), static_cast<std::uint64_t>(j));
  }
};

}  // namespace drop_detail

/// Kept sets of `kv` under a `random` configuration (cpu/drop/select.hpp).
inline kept_sets select_random(const kv_cache& kv, const drop::config& c, int threads = 0) {
  return drop_detail::select_with<drop_detail::random_scorer>(kv, c, threads);
}

}  // namespace kvcodec::cpu
