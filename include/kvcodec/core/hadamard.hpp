// kvcodec/core/hadamard.hpp — randomized Hadamard rotation of one head row (QuaRot / QuIP# style
// incoherence processing before quantization).
//
// forward(x) = H · D · x, inverse(y) = D · H · y, where D = diag(s_0..s_{n-1}) holds random signs and
// H is block diagonal: n is split into its binary digits, largest first (n = 2^k1 + 2^k2 + ..., k1 >
// k2 > ...; e.g. 96 = 64 + 32, 6 = 4 + 2, 3 = 2 + 1), and each block of size b gets the Walsh–Hadamard
// matrix (natural / Sylvester order) times 1/sqrt(b). Both H and D are orthogonal and symmetric, so
// inverse(forward(x)) = x up to float rounding and the norm is preserved. n = 1 is a sign flip only.
//
// Signs are counter-based: s_i = -1 iff the top bit of splitmix64_at(seed, i) is set, where
// splitmix64_at(seed, i) is the i-th output (from 0) of the splitmix64 generator whose state starts at
// `seed`, i.e. mix(seed + (i+1)·0x9E3779B97F4A7C15). Any lane can compute any sign on its own.
// Arithmetic is float additions/subtractions plus one multiply per element by 1/sqrt(b) rounded from
// double, so CPU and GPU give the same bits. Every function is KVCODEC_HD.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/random.hpp"

namespace kvcodec {

KVCODEC_HD inline float hadamard_sign(std::uint64_t seed, std::size_t i) noexcept {
  return (splitmix64_at(seed, i) >> 63) ? -1.0f : 1.0f;
}

/// Unnormalised in-place fast Walsh–Hadamard transform of x[0..n), n a power of two.
KVCODEC_HD inline void fwht(float* x, std::size_t n) noexcept {
  for (std::size_t h = 1; h < n; h <<= 1) {
    for (std::size_t i = 0; i < n; i += 2 * h) {
      for (std::size_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
}

namespace detail {

KVCODEC_HD inline float inv_sqrt_pow2(std::size_t b) noexcept {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(b)));
}

/// Applies the normalised block-diagonal Walsh–Hadamard matrix (see the header comment).
KVCODEC_HD inline void hadamard_blocks(float* x, std::size_t n) noexcept {
  std::size_t off = 0;
  for (int k = 63; k >= 0; --k) {
    const std::size_t b = std::size_t{1} << k;
    if (!(n & b)) continue;
    float* blk = x + off;
    fwht(blk, b);
    if (b > 1) {
      const float s = inv_sqrt_pow2(b);
      for (std::size_t j = 0; j < b; ++j) blk[j] *= s;
    }
    off += b;
  }
}

}  // namespace detail

/// y = H · D · x in place.
KVCODEC_HD inline void hadamard_forward(float* x, std::size_t n, std::uint64_t seed) noexcept {
  for (std::size_t i = 0; i < n; ++i) x[i] *= hadamard_sign(seed, i);
  detail::hadamard_blocks(x, n);
}

/// x = D · H · y in place (exact inverse of hadamard_forward up to float rounding).
KVCODEC_HD inline void hadamard_inverse(float* x, std::size_t n, std::uint64_t seed) noexcept {
  detail::hadamard_blocks(x, n);
  for (std::size_t i = 0; i < n; ++i) x[i] *= hadamard_sign(seed, i);
}

/// Applies hadamard_forward to `rows` consecutive rows of length n (same signs for every row).
KVCODEC_HD inline void hadamard_forward_rows(float* x, std::size_t rows, std::size_t n, std::uint64_t seed) noexcept {
  for (std::size_t r = 0; r < rows; ++r) hadamard_forward(x + r * n, n, seed);
}

KVCODEC_HD inline void hadamard_inverse_rows(float* x, std::size_t rows, std::size_t n, std::uint64_t seed) noexcept {
  for (std::size_t r = 0; r < rows; ++r) hadamard_inverse(x + r * n, n, seed);
}

}  // namespace kvcodec
