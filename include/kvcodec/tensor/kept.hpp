// kvcodec/tensor/kept.hpp — kept sets (ascending token indices per layer and kv head, kv_cache::kept)
// to and from masks: one byte per token (1 = kept), or one bit per token, LSB first, as a container
// segment stores them. A dense cache (no kept sets) keeps every token.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec {

/// mask[t] = 1 for the tokens t < n that (layer l, kv head h) of `c` keeps, 0 for the others.
inline void kept_mask(const kv_cache& c, int l, int h, std::uint8_t* mask, std::size_t n) {
  if (c.kept.empty()) {
    std::fill_n(mask, n, std::uint8_t{1});
    return;
  }
  std::fill_n(mask, n, std::uint8_t{0});
  for (const std::int32_t t : c.kept[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)])
    if (static_cast<std::size_t>(t) < n) mask[t] = 1;
}

/// The byte mask of all the cache's tokens for (layer l, kv head h).
inline void kept_mask(const kv_cache& c, int l, int h, std::vector<std::uint8_t>& mask) {
  mask.resize(static_cast<std::size_t>(c.shape.tokens));
  kept_mask(c, l, h, mask.data(), mask.size());
}

/// Appends first + t to `out` for every t < n with mask[t] != 0, in increasing order.
inline void mask_to_kept(const std::uint8_t* mask, std::size_t n, std::vector<std::int32_t>& out, std::int64_t first = 0) {
  for (std::size_t t = 0; t < n; ++t)
    if (mask[t]) out.push_back(static_cast<std::int32_t>(first + static_cast<std::int64_t>(t)));
}

/// Sets bit t - t0 (LSB first) of `bits` for each kept token t (t0 <= t, bits zeroed by the caller).
inline void kept_to_bits(const std::int32_t* kept, std::size_t count, std::int64_t t0, std::uint8_t* bits) {
  for (std::size_t r = 0; r < count; ++r) {
    const std::size_t t = static_cast<std::size_t>(kept[r] - t0);
    bits[t / 8] = static_cast<std::uint8_t>(bits[t / 8] | (1u << (t % 8)));
  }
}

/// Appends t0 + t to `out` for every bit t < span that is set in `bits` (LSB first).
inline void bits_to_kept(const std::uint8_t* bits, std::size_t span, std::int64_t t0, std::vector<std::int32_t>& out) {
  for (std::size_t t = 0; t < span; ++t)
    if (bits[t / 8] & (1u << (t % 8))) out.push_back(static_cast<std::int32_t>(t0 + static_cast<std::int64_t>(t)));
}

}  // namespace kvcodec
