// kvcodec/core/range_coder.hpp — a byte-oriented arithmetic (range) coder over static cumulative
// frequency tables, as pure host/device functions on explicit state (no allocation, no exceptions).
//
// Semantics follow the coder CacheGen uses through torchac: every context owns a static CDF with
// 16-bit precision (cdf[0] = 0 < cdf[1] < ... < cdf[L-1] = 2^16, symbol s owns [cdf[s], cdf[s+1])),
// no adaptation. The arithmetic is the carry-propagating LZMA range coder (Martin 1979; Pavlov):
// 33-bit low with a pending 0xff run, 32-bit range renormalised a byte at a time below 2^24.
// Invariants: encoder range in [2^24, 2^32) between symbols (>= 2^8 * 2^16 so range >> 16 >= 256);
// decoder code < range. The stream is exactly 5 + (number of renormalisations) bytes, its first byte
// is 0; a decoder that ends with bytes left, reads past the end, or sees code >= range flags a
// corrupt stream. Bit-exact across platforms (integer arithmetic only).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/config.hpp"

namespace kvcodec {

inline constexpr int rc_prob_bits = 16;                 ///< CDF precision (torchac's 16 bits)
inline constexpr std::uint32_t rc_top = 1u << 24;      ///< renormalise while range < rc_top

struct rc_encoder {
  std::uint64_t low = 0;
  std::uint32_t range = 0xffffffffu;
  std::uint8_t cache = 0;
  std::uint64_t pending = 1;  ///< bytes held back: the cache byte and a run of 0xff
  std::uint8_t* out = nullptr;
  std::size_t pos = 0, cap = 0;
  bool overflow = false;  ///< set when `cap` was too small (output truncated, stream invalid)
};

struct rc_decoder {
  std::uint32_t range = 0xffffffffu;
  std::uint32_t code = 0;
  const std::uint8_t* in = nullptr;
  std::size_t pos = 0, size = 0;
  bool bad = false;  ///< read past the end or code outside the range
};

KVCODEC_HD inline void rc_put_byte(rc_encoder& e, std::uint8_t b) {
  if (e.pos < e.cap)
    e.out[e.pos] = b;
  else
    e.overflow = true;
  ++e.pos;
}

KVCODEC_HD inline void rc_shift_low(rc_encoder& e) {
  if (static_cast<std::uint32_t>(e.low) < 0xff000000u || (e.low >> 32) != 0) {
    const std::uint8_t carry = static_cast<std::uint8_t>(e.low >> 32);
    std::uint8_t b = e.cache;
    do {
      rc_put_byte(e, static_cast<std::uint8_t>(b + carry));
      b = 0xff;
    } while (--e.pending != 0);
    e.cache = static_cast<std::uint8_t>(e.low >> 24);
  }
  ++e.pending;
  e.low = (e.low & 0x00ffffffu) << 8;
}

KVCODEC_HD inline void rc_enc_init(rc_encoder& e, std::uint8_t* out, std::size_t cap) {
  e = rc_encoder{};
  e.out = out;
  e.cap = cap;
}

/// Codes the interval [start, start + freq) of 2^16 (freq >= 1, start + freq <= 2^16).
KVCODEC_HD inline void rc_encode(rc_encoder& e, std::uint32_t start, std::uint32_t freq) {
  const std::uint32_t r = e.range >> rc_prob_bits;
  e.low += static_cast<std::uint64_t>(r) * start;
  e.range = r * freq;
  while (e.range < rc_top) {
    e.range <<= 8;
    rc_shift_low(e);
  }
}

/// Flushes; returns the stream length (valid only when !overflow).
KVCODEC_HD inline std::size_t rc_enc_finish(rc_encoder& e) {
  for (int i = 0; i < 5; ++i) rc_shift_low(e);
  return e.pos;
}

KVCODEC_HD inline std::uint8_t rc_get_byte(rc_decoder& d) {
  if (d.pos < d.size) return d.in[d.pos++];
  d.bad = true;
  ++d.pos;
  return 0;
}

KVCODEC_HD inline void rc_dec_init(rc_decoder& d, const std::uint8_t* in, std::size_t size) {
  d = rc_decoder{};
  d.in = in;
  d.size = size;
  if (rc_get_byte(d) != 0) d.bad = true;
  for (int i = 0; i < 4; ++i) d.code = (d.code << 8) | rc_get_byte(d);
  if (d.code >= d.range) d.bad = true;
}

/// The cumulative target in [0, 2^16) of the next symbol; the caller maps it to a symbol s with
/// cdf[s] <= target < cdf[s+1] and then calls rc_decode_update.
KVCODEC_HD inline std::uint32_t rc_decode_target(rc_decoder& d, std::uint32_t& r) {
  r = d.range >> rc_prob_bits;
  std::uint32_t t = d.code / r;
  if (t >= (1u << rc_prob_bits)) {
    d.bad = true;
    t = (1u << rc_prob_bits) - 1;
  }
  return t;
}

KVCODEC_HD inline void rc_decode_update(rc_decoder& d, std::uint32_t r, std::uint32_t start, std::uint32_t freq) {
  d.code -= r * start;
  d.range = r * freq;
  while (d.range < rc_top) {
    d.range <<= 8;
    d.code = (d.code << 8) | rc_get_byte(d);
  }
  if (d.code >= d.range) d.bad = true;
}

/// Symbol of a 16-bit CDF with `symbols` + 1 entries holding `target` (binary search).
KVCODEC_HD inline std::uint32_t rc_cdf_find(const std::uint32_t* cdf, std::uint32_t symbols, std::uint32_t target) {
  std::uint32_t lo = 0, hi = symbols;  // cdf[lo] <= target < cdf[hi]
  while (hi - lo > 1) {
    const std::uint32_t mid = (lo + hi) >> 1;
    if (cdf[mid] <= target)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/// True when the decoder consumed its stream exactly and saw no inconsistency.
KVCODEC_HD inline bool rc_dec_ok(const rc_decoder& d) { return !d.bad && d.pos == d.size; }

}  // namespace kvcodec
