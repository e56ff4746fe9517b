// kvcodec/core/random.hpp — splitmix64 (Steele, Lea, Flood 2014), the counter-based generator
// behind seeded rotations, synthetic caches and random token dropping: pure KVCODEC_HD functions, so
// the same seed gives the same bits on CPU and GPU and for any thread count.
#pragma once

#include <cstdint>

#include "kvcodec/core/config.hpp"

namespace kvcodec {

/// splitmix64's output mixing function.
KVCODEC_HD inline std::uint64_t splitmix64_mix(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// The i-th output of splitmix64 seeded with `seed`.
KVCODEC_HD inline std::uint64_t splitmix64_at(std::uint64_t seed, std::uint64_t i) noexcept {
  return splitmix64_mix(seed + (i + 1u) * 0x9E3779B97F4A7C15ull);
}

/// One splitmix64 step: advances the state and returns 64 mixed bits.
KVCODEC_HD inline std::uint64_t splitmix64_next(std::uint64_t& state) noexcept {
  return splitmix64_mix(state += 0x9E3779B97F4A7C15ull);
}

}  // namespace kvcodec
