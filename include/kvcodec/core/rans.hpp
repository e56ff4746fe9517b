// kvcodec/core/rans.hpp — one step of 32-bit rANS with 16-bit renormalisation, as pure host/device
// functions on an explicit state (the shape of ryg_rans's Rans32 API; the lane layout of DietGPU).
//
// Invariants. A coder state x always lies in [rans_l, 2^32), rans_l = 2^16. Probabilities have
// prob_bits = M in [10, 15] bits: symbol s owns the slots [start_s, start_s + freq_s) of [0, 2^M).
// Because M <= 16, one encode step emits at most one 16-bit word and one decode step consumes at most
// one, so a lane's renormalisation is a single predicated word move.
//
// Encode step (symbol with start c, frequency f):  if x >= f << (32 - M) emit x & 0xffff, x >>= 16;
//   then x = (x / f) << M | (x % f) + c, computed without division as
//   q = (x + mulhi32(x, rcp_freq)) >> rcp_shift;  x += bias + q * cmpl_freq,
//   with rcp_shift = ceil(log2 f), rcp_freq = ceil(2^(32 + rcp_shift) / f) - 2^32 (fits 32 bits),
//   bias = c, cmpl_freq = 2^M - f. The quotient is exact for every x < 2^32 (Granlund-Montgomery
//   with the implicit 33rd reciprocal bit), so f = 1 and f = 2^M need no special case.
// Decode step: slot = x & (2^M - 1); entry = table[slot] = (symbol, f, slot - c) packed in 64 bits;
//   x = f * (x >> M) + (slot - c); if x < rans_l: x = x << 16 | next word.
//
// Stream layout of N interleaved lanes (N a multiple of 32; symbol i belongs to lane i % N and to
// "step" i / N), all integers little-endian:
//   [ N x uint32 : final encoder state of lane 0 .. N-1 ]
//   [ K x uint16 : renormalisation words in the order the decoder consumes them ]
// The decoder initialises lane j from the j-th state, then for step t = 0, 1, ... decodes symbol
// t*N + j in every active lane j (the last step has only n - t*N active lanes: 0 .. n-t*N-1); the
// lanes whose state fell below rans_l then read one word each, lane j reading the word at
// ptr + (number of lower lanes that also need one), and ptr advances by the number of such lanes.
// On a GPU this is a warp ballot + popc (lanes 32k..32k+31 of one step use the word range after that
// of lanes 0..32k-1); on the CPU it is the sequential loop over lanes. After the last step every
// lane's state equals rans_l and all K words have been consumed; anything else is a corrupt stream.
// The encoder produces exactly this by coding steps from last to first, lanes from high to low,
// and writing words backwards.
// Compact decode entries (a decoder-side layout only, the stream is unchanged): when prob_bits <= 12
// and the alphabet has at most 256 symbols, (symbol, f - 1, slot - c) fit one 32-bit word, so a SIMD
// decoder fetches a lane's whole table entry with one 32-bit gather.
#pragma once

#include "kvcodec/core/config.hpp"

#include <cstdint>

namespace kvcodec {

inline constexpr uint32_t rans_l = 1u << 16;       ///< lower bound of the state interval
inline constexpr int rans_word_bits = 16;          ///< bits moved per renormalisation
inline constexpr int rans_min_prob_bits = 10;
inline constexpr int rans_max_prob_bits = 15;
inline constexpr uint32_t rans_max_alphabet = 4096;  ///< symbols are uint16_t below this bound
inline constexpr int rans_lane_multiple = 32;      ///< lane counts are multiples of a warp
inline constexpr int rans_max_lanes = 1024;        ///< one CUDA block of one thread per lane

/// Precomputed division-free encoder data of one symbol (16 bytes).
struct rans_enc_symbol {
  uint32_t x_max_minus1;  ///< renormalise while x > this, i.e. x >= f << (32 - M); 0 when f == 0
  uint32_t rcp_freq;      ///< low 32 bits of ceil(2^(32 + rcp_shift) / f)
  uint32_t bias;          ///< start c
  uint16_t cmpl_freq;     ///< 2^M - f
  uint16_t rcp_shift;     ///< ceil(log2 f)
};

/// Encoder data for a symbol with frequency `freq` in [1, 2^prob_bits] starting at `start`.
/// A zero frequency yields a symbol with x_max_minus1 == 0, which rans_enc_symbol_codable rejects.
KVCODEC_HD inline rans_enc_symbol rans_enc_symbol_init(uint32_t start, uint32_t freq, int prob_bits) {
  rans_enc_symbol s{};
  if (freq == 0) return s;
  uint32_t shift = 0;
  while ((1u << shift) < freq) ++shift;
  const uint64_t rcp = (((uint64_t{1} << (32 + shift)) + freq - 1) / freq);
  s.x_max_minus1 = static_cast<uint32_t>((uint64_t{freq} << (32 - prob_bits)) - 1);
  s.rcp_freq = static_cast<uint32_t>(rcp - (uint64_t{1} << 32));
  s.bias = start;
  s.cmpl_freq = static_cast<uint16_t>((1u << prob_bits) - freq);
  s.rcp_shift = static_cast<uint16_t>(shift);
  return s;
}

KVCODEC_HD inline bool rans_enc_symbol_codable(const rans_enc_symbol& s) { return s.x_max_minus1 != 0; }

/// Renormalise before encoding: always stores the low word of x in *word, and returns 1 (shifting
/// it out of x) when that word is emitted, 0 otherwise. Branch-free.
KVCODEC_HD inline uint32_t rans_enc_renorm(uint32_t& x, const rans_enc_symbol& s, uint16_t* word) {
  const uint32_t emit = x > s.x_max_minus1 ? 1u : 0u;
  *word = static_cast<uint16_t>(x);
  x >>= emit * rans_word_bits;
  return emit;
}

/// Code the symbol into a renormalised state (x <= s.x_max_minus1).
KVCODEC_HD inline uint32_t rans_enc_put(uint32_t x, const rans_enc_symbol& s) {
  const uint64_t hi = (uint64_t{x} * s.rcp_freq) >> 32;
  const uint32_t q = static_cast<uint32_t>((uint64_t{x} + hi) >> s.rcp_shift);
  return x + s.bias + q * s.cmpl_freq;
}

/// Decode-table entry: bits 0..15 frequency, 16..31 slot - start, 32..47 symbol.
KVCODEC_HD inline uint64_t rans_dec_entry_pack(uint32_t symbol, uint32_t freq, uint32_t offset) {
  return (uint64_t{symbol} << 32) | (uint64_t{offset} << 16) | uint64_t{freq};
}
KVCODEC_HD inline uint32_t rans_dec_entry_symbol(uint64_t e) { return static_cast<uint32_t>(e >> 32) & 0xffffu; }
KVCODEC_HD inline uint32_t rans_dec_entry_freq(uint64_t e) { return static_cast<uint32_t>(e) & 0xffffu; }
KVCODEC_HD inline uint32_t rans_dec_entry_offset(uint64_t e) { return static_cast<uint32_t>(e >> 16) & 0xffffu; }

/// Compact entry: bits 0..7 symbol, 8..19 slot - start, 20..31 freq - 1 (prob_bits <= 12, symbol < 256).
inline constexpr int rans_dec32_max_prob_bits = 12;
inline constexpr uint32_t rans_dec32_max_alphabet = 256;
KVCODEC_HD inline uint32_t rans_dec32_pack(uint32_t symbol, uint32_t freq, uint32_t offset) {
  return symbol | (offset << 8) | ((freq - 1) << 20);
}
KVCODEC_HD inline uint32_t rans_dec32_from_entry(uint64_t e) {
  return rans_dec32_pack(rans_dec_entry_symbol(e), rans_dec_entry_freq(e), rans_dec_entry_offset(e));
}
KVCODEC_HD inline uint32_t rans_dec32_symbol(uint32_t e) { return e & 0xffu; }
KVCODEC_HD inline uint32_t rans_dec32_offset(uint32_t e) { return (e >> 8) & 0xfffu; }
KVCODEC_HD inline uint32_t rans_dec32_freq(uint32_t e) { return (e >> 20) + 1; }

/// One decode step without renormalisation: returns the symbol and advances x (state stays >= 1).
KVCODEC_HD inline uint32_t rans_dec_get(uint32_t& x, const uint64_t* table, int prob_bits) {
  const uint64_t e = table[x & ((1u << prob_bits) - 1)];
  x = rans_dec_entry_freq(e) * (x >> prob_bits) + rans_dec_entry_offset(e);
  return rans_dec_entry_symbol(e);
}

/// 1 when the state needs a word after a decode step.
KVCODEC_HD inline uint32_t rans_dec_needs_word(uint32_t x) { return x < rans_l ? 1u : 0u; }

/// Pull `word` into the state when need == 1, leave it when need == 0 (arithmetic, so compilers
/// cannot turn the data-dependent choice into a mispredicted branch).
KVCODEC_HD inline uint32_t rans_dec_renorm(uint32_t x, uint32_t need, uint16_t word) {
  return (x << (need * rans_word_bits)) | (word & (0u - need));
}

}  // namespace kvcodec
