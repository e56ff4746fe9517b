// kvcodec/cpu/rans_codec.hpp — CPU encode/decode of whole symbol arrays with N interleaved rANS lanes.
//
// Produces and consumes exactly the stream layout documented in core/rans.hpp (final lane states,
// then 16-bit words in decoder order), so the same bytes decode one lane per GPU thread. The context
// variants code symbol i with table table_of_col[i % cols] (one table per channel of a row-major
// [rows][cols] array); all tables of one call share prob_bits.
// Decoding never reads outside [data, data + size) and always terminates: the word supply is checked
// once per step of N symbols (a step consumes at most N words) and word by word only near the end;
// a stream that runs out of words, has a state outside [2^16, 2^32), leaves words unread or does not
// return every lane to the initial state 2^16 throws error_kind::corrupt.
// Vector decoders (runtime dispatch, no build flags needed; the scalar loop is the reference and
// every path produces identical output and errors, tested):
//  - AVX2, 8 lanes per vector, single or per-column tables, whenever the tables have compact 32-bit
//    entries (core/rans.hpp: prob_bits <= 12, alphabet <= 256). All tables of a model sit in one
//    array (rans_packed_decoder); lane j of a step reads column (c0 + j) % cols, so a vector's table
//    offsets are one unaligned load from a column-offset array extended by rans_max_lanes entries.
//    The lane-ordered word reads are a 16-byte load shuffled by a 256-entry LUT indexed by the
//    movemask of the lanes that need a word (the CPU form of ballot + popc).
//  - AVX-512 (F/BW/VL/VBMI2), 16 lanes per vector, single table with 64-bit entries otherwise.
#pragma once

#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/freq_table.hpp"
#include "kvcodec/core/rans.hpp"
#include "kvcodec/core/simd.hpp"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__CUDACC__)
#define KVCODEC_RANS_AVX512 1
#include <immintrin.h>
#else
#define KVCODEC_RANS_AVX512 0
#endif

namespace kvcodec {

/// Upper bound of the encoded size in bytes of n symbols over `lanes` lanes.
inline size_t rans_max_encoded_size(size_t n, int lanes) { return 4 * static_cast<size_t>(lanes) + 2 * n; }

namespace detail {

template <class Sym>
inline constexpr bool is_rans_symbol_v = std::is_same_v<Sym, uint8_t> || std::is_same_v<Sym, uint16_t>;

inline void check_lanes(const std::string& where, int lanes) {
  if (lanes < rans_lane_multiple || lanes > rans_max_lanes || lanes % rans_lane_multiple != 0)
    throw_bad_input(where, "lanes", "a multiple of 32 in 32..1024", std::to_string(lanes));
}


#if KVCODEC_RANS_AVX512
inline bool rans_avx2_available();

/// Shuffle that moves the words (16-bit, one per 32-bit lane, low half) of the lanes set in an
/// 8-bit mask to the TOP of a 16-byte vector, in ascending lane order (the encoder's word store).
struct rans_compress_lut {
  alignas(16) uint8_t b[256][16];
  constexpr rans_compress_lut() : b{} {
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int i = 0; i < 8; ++i) k += (m >> i) & 1;
      for (int i = 0; i < 16; ++i) b[m][i] = 0x80;
      int slot = 8 - k;
      for (int i = 0; i < 8; ++i)
        if ((m >> i) & 1) {
          b[m][2 * slot] = static_cast<uint8_t>(2 * i);
          b[m][2 * slot + 1] = static_cast<uint8_t>(2 * i + 1);
          ++slot;
        }
    }
  }
};
inline constexpr rans_compress_lut rans_compress{};

/// Full steps t = t_end-1 .. 0 of the encoder with 8 lanes per AVX2 vector, lanes (and so words)
/// in exactly the scalar loop's order. Tables: 16-byte rans_enc_symbol entries of all columns in one
/// array, column c's at flat + 16 * col_off[c] (col_off extended by N entries), every symbol below
/// each table's padded alphabet (checked by the caller). Stores words below w (the 16-byte store
/// writes up to 8 words below the new w: the caller leaves that slack). Returns false when a symbol
/// has zero frequency (the caller then reruns the scalar encoder, which reports it).
template <class Sym>
__attribute__((target("avx2,popcnt"))) bool rans_encode_steps_avx2(const Sym* sym, size_t t_end, size_t N, size_t cols,
                                                                   const uint32_t* flat, const uint32_t* col_off, uint32_t* x,
                                                                   uint16_t*& w_io) {
  uint16_t* w = w_io;
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i lo16 = _mm256_set1_epi32(0xffff);
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i zero = _mm256_setzero_si256();
  const __m256i pack_lo = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13, -1, -1,
                                           -1, -1, -1, -1, -1, -1);
  __m256i bad = zero;
  for (size_t t = t_end; t-- > 0;) {
    const size_t base = t * N;
    const size_t c0 = base % cols;
    for (size_t j = N; j > 0;) {
      j -= 8;
      // Each lane's 16-byte entry is one load; a 4x4 transpose per 128-bit half gives the fields in
      // lane order (cheaper than four gathers on current x86 cores).
      const Sym* sp = sym + base + j;
      const uint32_t* op = col_off + c0 + j;
      const auto ld = [&](int l) {
        return _mm_loadu_si128(reinterpret_cast<const __m128i*>(flat + 4 * (static_cast<size_t>(op[l]) + sp[l])));
      };
      const __m256i r0 = _mm256_inserti128_si256(_mm256_castsi128_si256(ld(0)), ld(4), 1);
      const __m256i r1 = _mm256_inserti128_si256(_mm256_castsi128_si256(ld(1)), ld(5), 1);
      const __m256i r2 = _mm256_inserti128_si256(_mm256_castsi128_si256(ld(2)), ld(6), 1);
      const __m256i r3 = _mm256_inserti128_si256(_mm256_castsi128_si256(ld(3)), ld(7), 1);
      const __m256i u0 = _mm256_unpacklo_epi32(r0, r1), u1 = _mm256_unpacklo_epi32(r2, r3);
      const __m256i u2 = _mm256_unpackhi_epi32(r0, r1), u3 = _mm256_unpackhi_epi32(r2, r3);
      const __m256i xmax = _mm256_unpacklo_epi64(u0, u1);
      const __m256i rcp = _mm256_unpackhi_epi64(u0, u1);
      const __m256i bias = _mm256_unpacklo_epi64(u2, u3);
      const __m256i cs = _mm256_unpackhi_epi64(u2, u3);
      bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(xmax, zero));
      __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j));
      // renormalise: emit the low word of lanes with x > x_max_minus1 (unsigned compare)
      const __m256i emit = _mm256_cmpgt_epi32(_mm256_xor_si256(xv, sign), _mm256_xor_si256(xmax, sign));
      const unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(emit)));
      const __m256i wl = _mm256_shuffle_epi8(xv, pack_lo);
      const __m128i w8 = _mm_unpacklo_epi64(_mm256_castsi256_si128(wl), _mm256_extracti128_si256(wl, 1));
      const __m128i wc = _mm_shuffle_epi8(w8, _mm_load_si128(reinterpret_cast<const __m128i*>(rans_compress.b[m])));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(w - 8), wc);
      w -= __builtin_popcount(m);
      xv = _mm256_blendv_epi8(xv, _mm256_srli_epi32(xv, 16), emit);
      // x' = x + bias + q * cmpl_freq, q = floor((x + mulhi(x, rcp)) / 2^shift) without overflow:
      // (x + hi) >> s = (hi + ((x - hi) >> 1)) >> (s - 1) for s >= 1 (hi <= x); s = 0 only for
      // f = 1, where rcp = 0, hi = 0 and q = x.
      const __m256i pe = _mm256_srli_epi64(_mm256_mul_epu32(xv, rcp), 32);
      const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(xv, 32), _mm256_srli_epi64(rcp, 32));
      const __m256i hi = _mm256_blend_epi32(pe, po, 0xaa);
      const __m256i shift = _mm256_srli_epi32(cs, 16);
      const __m256i cmpl = _mm256_and_si256(cs, lo16);
      const __m256i half = _mm256_add_epi32(hi, _mm256_srli_epi32(_mm256_sub_epi32(xv, hi), 1));
      const __m256i s0 = _mm256_cmpeq_epi32(shift, zero);
      const __m256i q = _mm256_blendv_epi8(_mm256_srlv_epi32(half, _mm256_sub_epi32(shift, one)), xv, s0);
      xv = _mm256_add_epi32(_mm256_add_epi32(xv, bias), _mm256_mullo_epi32(q, cmpl));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(x + j), xv);
    }
  }
  w_io = w;
  return _mm256_testz_si256(bad, bad) != 0;
}
#endif

/// Encode with table tabs[col_table[i % cols]]; symbols validated against each table's alphabet.
/// simd = false forces the scalar reference loop (tests compare both: identical bytes).
template <class Sym>
std::vector<uint8_t> rans_encode_impl(const Sym* sym, size_t n, size_t cols, const rans_enc_symbol* const* tabs,
                                      const size_t* alpha, int lanes, const char* where, bool simd = true) {
  check_lanes(where, lanes);
  if (n > 0 && sym == nullptr) throw_bad_input(where, "sym", "non-null pointer", "nullptr");
  const size_t N = static_cast<size_t>(lanes);
  std::vector<uint32_t> x(N, rans_l);
  constexpr size_t slack = 8;  // the vector path's 16-byte word store reaches 8 words below w
  // One scratch slot below the lowest emitted word; left uninitialised (every word read back was written).
  const std::unique_ptr<uint16_t[]> words(new uint16_t[n + 1 + slack]);
  uint16_t* wend = words.get() + n + 1 + slack;
  uint16_t* w = wend;
  const size_t steps = (n + N - 1) / N;
  size_t col = cols ? (n == 0 ? 0 : (n - 1) % cols) : 0;
  size_t t_vec = 0;  // steps [0, t_vec) run in the vector loop after the scalar ones
#if KVCODEC_RANS_AVX512
  std::vector<uint32_t> flat, col_off;
  if (simd && steps >= 4 && rans_avx2_available()) {
    // One flat table (each distinct table padded to the largest alphabet with zero-frequency
    // entries) and per-column offsets; symbols must lie below the padded alphabet.
    size_t amax = 0;
    for (size_t c = 0; c < cols; ++c) amax = std::max(amax, alpha[c]);
    Sym smax = 0;
    for (size_t i = 0; i < n; ++i) smax = sym[i] > smax ? sym[i] : smax;
    if (static_cast<size_t>(smax) < amax && cols * amax <= (size_t{1} << 24)) {
      std::vector<const rans_enc_symbol*> seen;
      col_off.resize(cols + N);
      for (size_t c = 0; c < cols; ++c) {
        size_t k = 0;
        while (k < seen.size() && seen[k] != tabs[c]) ++k;
        if (k == seen.size()) {
          seen.push_back(tabs[c]);
          const size_t at = flat.size();
          flat.resize(at + 4 * amax, 0);
          for (size_t a = 0; a < alpha[c]; ++a) {
            const rans_enc_symbol& e = tabs[c][a];
            flat[at + 4 * a] = e.x_max_minus1;
            flat[at + 4 * a + 1] = e.rcp_freq;
            flat[at + 4 * a + 2] = e.bias;
            flat[at + 4 * a + 3] = uint32_t{e.cmpl_freq} | uint32_t{e.rcp_shift} << 16;
          }
        }
        col_off[c] = static_cast<uint32_t>(k * amax);
      }
      for (size_t c = cols; c < col_off.size(); ++c) col_off[c] = col_off[c % cols];
      t_vec = n / N;  // every full step; a partial last step runs scalar first
    }
  }
#endif
  for (size_t t = steps; t-- > t_vec;) {
    const size_t base = t * N;
    const size_t active = std::min(N, n - base);
    for (size_t j = active; j-- > 0;) {
      const size_t i = base + j;
      const uint32_t s = sym[i];
      if (s >= alpha[col] || !rans_enc_symbol_codable(tabs[col][s]))
        throw_bad_input(where, "symbol[" + std::to_string(i) + "]",
                        "a symbol with nonzero frequency in table of column " + std::to_string(col),
                        std::to_string(s));
      const rans_enc_symbol& e = tabs[col][s];
      uint32_t xj = x[j];
      w -= rans_enc_renorm(xj, e, w - 1);
      x[j] = rans_enc_put(xj, e);
      col = col == 0 ? cols - 1 : col - 1;
    }
  }
#if KVCODEC_RANS_AVX512
  if (t_vec > 0 && !rans_encode_steps_avx2(sym, t_vec, N, cols, flat.data(), col_off.data(), x.data(), w))
    return rans_encode_impl(sym, n, cols, tabs, alpha, lanes, where, false);  // reports the bad symbol
#endif
  const size_t k = static_cast<size_t>(wend - w);
  std::vector<uint8_t> out(4 * N + 2 * k);
  for (size_t j = 0; j < N; ++j) store_le32(out.data() + 4 * j, x[j]);
  if constexpr (std::endian::native == std::endian::little) {
    if (k > 0) std::memcpy(out.data() + 4 * N, w, 2 * k);
  } else {
    for (size_t i = 0; i < k; ++i) {
      out[4 * N + 2 * i] = static_cast<uint8_t>(w[i]);
      out[4 * N + 2 * i + 1] = static_cast<uint8_t>(w[i] >> 8);
    }
  }
  return out;
}

#if KVCODEC_RANS_AVX512
/// True when this CPU runs the AVX-512 (F, BW, VL, VBMI2) decoder; checked once.
inline bool rans_avx512_available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi2");
  return ok && !simd::disabled();
}

/// Full steps with 16 lanes per vector: two 64-bit gathers from the table, one multiply, and the
/// lane-ordered word read as a masked expand of the next 16 words (the CPU form of ballot + popc).
/// Runs while at least N words remain (a vector reads 32 bytes at most 2(N - 16) bytes ahead).
/// Returns the next step; x and p are advanced. Bit-identical to the scalar loop.
template <class Sym>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2,popcnt"))) size_t rans_decode_steps_avx512(
    uint32_t* x, const uint8_t*& p_io, const uint8_t* end, const uint64_t* tab, uint32_t M, size_t N, Sym* out,
    size_t t, size_t full_steps) {
  const uint8_t* p = p_io;
  const __m512i maskv = _mm512_set1_epi32(static_cast<int>((1u << M) - 1));
  const __m512i lov = _mm512_set1_epi32(0xffff);
  const __m512i lv = _mm512_set1_epi32(static_cast<int>(rans_l));
  const __m128i shift = _mm_cvtsi32_si128(static_cast<int>(M));
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512i zero = _mm512_setzero_si512();
  constexpr __mmask16 all = 0xffff;
  for (; t < full_steps && static_cast<size_t>(end - p) >= 2 * N; ++t) {
    Sym* o = out + t * N;
    for (size_t j = 0; j < N; j += 16) {
      __m512i xv = _mm512_loadu_si512(x + j);
      const __m512i idx = _mm512_and_si512(xv, maskv);
      const __m512i e0 = _mm512_mask_i32gather_epi64(zero, 0xff, _mm512_maskz_extracti64x4_epi64(0xff, idx, 0), tab, 8);
      const __m512i e1 = _mm512_mask_i32gather_epi64(zero, 0xff, _mm512_maskz_extracti64x4_epi64(0xff, idx, 1), tab, 8);
      const __m512i fo = _mm512_permutex2var_epi32(e0, even, e1);
      const __m512i sy = _mm512_permutex2var_epi32(e0, odd, e1);
      xv = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_and_si512(fo, lov), _mm512_maskz_srl_epi32(all, xv, shift)),
                            _mm512_maskz_srli_epi32(all, fo, 16));
      const __mmask16 k = _mm512_cmplt_epu32_mask(xv, lv);
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const __m512i w = _mm512_maskz_cvtepu16_epi32(all, _mm256_maskz_expand_epi16(k, raw));
      xv = _mm512_mask_or_epi32(xv, k, _mm512_maskz_slli_epi32(all, xv, 16), w);
      p += 2 * static_cast<size_t>(__builtin_popcount(k));
      _mm512_storeu_si512(x + j, xv);
      if constexpr (std::is_same_v<Sym, uint8_t>)
        _mm512_mask_cvtepi32_storeu_epi8(o + j, all, sy);
      else
        _mm512_mask_cvtepi32_storeu_epi16(o + j, all, sy);
    }
  }
  p_io = p;
  return t;
}
#endif

/// Compact tables for the AVX2 decoder: entry32[col_off[c] + slot] is column c's entry of `slot`,
/// col_off[c] = col_off[c % cols] for c < cols + rans_max_lanes.
struct rans_fast_tables {
  const uint32_t* entry32 = nullptr;
  const uint32_t* col_off = nullptr;
};

#if KVCODEC_RANS_AVX512
inline bool rans_avx2_available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  return ok && !simd::disabled();
}

/// Shuffle of 16 loaded bytes (both 128-bit halves) that gives lane i (bit i of the mask set) the
/// zero-extended word number popcount(mask & ((1 << i) - 1)), and 0 to the other lanes.
struct rans_expand_lut {
  alignas(32) uint8_t b[256][32];
  constexpr rans_expand_lut() : b{} {
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int i = 0; i < 8; ++i) {
        const bool on = (m >> i) & 1;
        b[m][4 * i] = on ? static_cast<uint8_t>(2 * k) : 0x80;
        b[m][4 * i + 1] = on ? static_cast<uint8_t>(2 * k + 1) : 0x80;
        b[m][4 * i + 2] = 0x80;
        b[m][4 * i + 3] = 0x80;
        k += on;
      }
    }
  }
};
inline constexpr rans_expand_lut rans_expand{};

/// One AVX2 vector (8 lanes) of a full decode step: decodes 8 symbols into o, renormalises from the
/// words at p (advanced by the words taken) and returns the new states. The 8 table entries are eight
/// scalar loads (as fast as a gather on current cores, and not slowed by gather microcode mitigations).
template <class Sym>
__attribute__((target("avx2,popcnt"), always_inline)) inline __m256i rans_decode_vec_avx2(__m256i xv, const uint32_t* off,
                                                                                      const int* tab, __m128i shift,
                                                                                      __m256i maskv, const uint8_t*& p, Sym* o) {
  const __m256i idx = _mm256_add_epi32(_mm256_and_si256(xv, maskv), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(off)));
  alignas(32) uint32_t ix[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(ix), idx);
  const __m256i e = _mm256_setr_epi32(tab[ix[0]], tab[ix[1]], tab[ix[2]], tab[ix[3]], tab[ix[4]], tab[ix[5]], tab[ix[6]], tab[ix[7]]);
  const __m256i sy = _mm256_and_si256(e, _mm256_set1_epi32(0xff));
  const __m256i bias = _mm256_and_si256(_mm256_srli_epi32(e, 8), _mm256_set1_epi32(0xfff));
  const __m256i f = _mm256_add_epi32(_mm256_srli_epi32(e, 20), _mm256_set1_epi32(1));
  xv = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srl_epi32(xv, shift)), bias);
  const __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(xv, 16), _mm256_setzero_si256());
  const unsigned k = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(need)));
  const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i w = _mm256_shuffle_epi8(raw, _mm256_load_si256(reinterpret_cast<const __m256i*>(rans_expand.b[k])));
  xv = _mm256_blendv_epi8(xv, _mm256_or_si256(_mm256_slli_epi32(xv, 16), w), need);
  p += 2 * static_cast<size_t>(__builtin_popcount(k));
  const __m256i s16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(sy, sy), 0x88);
  if constexpr (std::is_same_v<Sym, uint8_t>) {
    const __m128i s8 = _mm_packus_epi16(_mm256_castsi256_si128(s16), _mm256_castsi256_si128(s16));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(o), s8);
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm256_castsi256_si128(s16));
  }
  return xv;
}

/// Full steps with 8 lanes per AVX2 vector from the compact tables. Runs while at least N words remain
/// (vector k of a step reads 16 bytes at most 16k bytes ahead). c0 = (t * N) % cols on entry. Lane j of
/// a step reads column (c0 + j) % cols through col_off, extended by rans_max_lanes entries. Returns
/// the next step; x and p are advanced. Bit-identical to the scalar loop. V > 0: N = 8V lanes whose
/// states stay in registers across steps (the generic V = 0 form stores and reloads them, a
/// store-forward on every lane's dependency chain).
template <class Sym, int V>
__attribute__((target("avx2,popcnt"))) size_t rans_decode_steps_avx2(uint32_t* x, const uint8_t*& p_io, const uint8_t* end,
                                                                     rans_fast_tables ft, size_t cols, uint32_t M, size_t N,
                                                                     Sym* out, size_t t, size_t full_steps) {
  const uint8_t* p = p_io;
  const __m256i maskv = _mm256_set1_epi32(static_cast<int>((1u << M) - 1));
  const __m128i shift = _mm_cvtsi32_si128(static_cast<int>(M));
  const int* tab = reinterpret_cast<const int*>(ft.entry32);
  constexpr int R = V > 0 ? V : 1;
  __m256i xs[R];
  if constexpr (V > 0)
    for (int v = 0; v < V; ++v) xs[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 8 * v));
  size_t c0 = (t * N) % cols;
  const size_t adv = N % cols;
  for (; t < full_steps && static_cast<size_t>(end - p) >= 2 * N; ++t) {
    Sym* o = out + t * N;
    const uint32_t* off = ft.col_off + c0;
    if constexpr (V > 0) {
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) xs[v] = rans_decode_vec_avx2(xs[v], off + 8 * v, tab, shift, maskv, p, o + 8 * v);
    } else {
      for (size_t j = 0; j < N; j += 8) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(x + j), rans_decode_vec_avx2(xv, off + j, tab, shift, maskv, p, o + j));
      }
    }
    c0 += adv;
    if (c0 >= cols) c0 -= cols;
  }
  if constexpr (V > 0)
    for (int v = 0; v < V; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(x + 8 * v), xs[v]);
  p_io = p;
  return t;
}
#endif

#if KVCODEC_RANS_AVX512
/// True when this CPU runs the AVX-512F compact-table decoder; checked once.
inline bool rans_avx512f_available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("popcnt");
  return ok && !simd::disabled();
}

/// Compact-table steps with 16 lanes per AVX-512F vector and N = 16V lanes whose states stay in
/// registers: one 32-bit gather per vector, the lane-ordered word read as a masked 32-bit expand of
/// the next 16 zero-extended words. Same contract and output as rans_decode_steps_avx2.
template <class Sym, int V>
__attribute__((target("avx512f,popcnt"))) size_t rans_decode_steps_avx512c(uint32_t* x, const uint8_t*& p_io,
                                                                           const uint8_t* end, rans_fast_tables ft,
                                                                           size_t cols, uint32_t M, Sym* out, size_t t,
                                                                           size_t full_steps) {
  constexpr size_t N = 16 * V;
  const uint8_t* p = p_io;
  const __m512i maskv = _mm512_set1_epi32(static_cast<int>((1u << M) - 1));
  const __m512i b8 = _mm512_set1_epi32(0xff);
  const __m512i b12 = _mm512_set1_epi32(0xfff);
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i lv = _mm512_set1_epi32(static_cast<int>(rans_l));
  const __m128i shift = _mm_cvtsi32_si128(static_cast<int>(M));
  const __m512i zero = _mm512_setzero_si512();
  constexpr __mmask16 all = 0xffff;  // masked forms throughout: GCC 12 warns on the unmasked ones
  const int* tab = reinterpret_cast<const int*>(ft.entry32);
  __m512i xs[V];
  for (int v = 0; v < V; ++v) xs[v] = _mm512_loadu_si512(x + 16 * v);
  size_t c0 = (t * N) % cols;
  const size_t adv = N % cols;
  for (; t < full_steps && static_cast<size_t>(end - p) >= 2 * N; ++t) {
    Sym* o = out + t * N;
    const uint32_t* off = ft.col_off + c0;
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      __m512i xv = xs[v];
      const __m512i idx = _mm512_add_epi32(_mm512_and_si512(xv, maskv), _mm512_loadu_si512(off + 16 * v));
      const __m512i e = _mm512_mask_i32gather_epi32(zero, all, idx, tab, 4);
      const __m512i sy = _mm512_and_si512(e, b8);
      const __m512i bias = _mm512_and_si512(_mm512_maskz_srli_epi32(all, e, 8), b12);
      const __m512i f = _mm512_add_epi32(_mm512_maskz_srli_epi32(all, e, 20), one);
      xv = _mm512_add_epi32(_mm512_mullo_epi32(f, _mm512_maskz_srl_epi32(all, xv, shift)), bias);
      const __mmask16 k = _mm512_cmplt_epu32_mask(xv, lv);
      const __m512i w = _mm512_maskz_expand_epi32(k, _mm512_maskz_cvtepu16_epi32(all, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
      xs[v] = _mm512_mask_or_epi32(xv, k, _mm512_maskz_slli_epi32(all, xv, 16), w);
      p += 2 * static_cast<size_t>(__builtin_popcount(static_cast<unsigned>(k)));
      if constexpr (std::is_same_v<Sym, uint8_t>)
        _mm512_mask_cvtepi32_storeu_epi8(o + 16 * v, all, sy);
      else
        _mm512_mask_cvtepi32_storeu_epi16(o + 16 * v, all, sy);
    }
    c0 += adv;
    if (c0 >= cols) c0 -= cols;
  }
  for (int v = 0; v < V; ++v) _mm512_storeu_si512(x + 16 * v, xs[v]);
  p_io = p;
  return t;
}
#endif

/// Which decoder rans_decode_impl may use: the scalar reference, one vector path, or the best one
/// this CPU has (a requested path the CPU or the tables cannot run falls back to scalar).
enum class rans_simd { scalar, avx2, avx512, best };

/// Decode; table for symbol i is tabs[i % cols] (cols >= 1). ft (optional) holds the same tables in
/// compact form for the AVX2 path. simd = scalar forces the reference loop (tests compare all).
template <class Sym, bool Ctx>
void rans_decode_impl(const uint8_t* data, size_t size, size_t cols, const uint64_t* const* tabs, int prob_bits,
                      int lanes, Sym* out, size_t n, const char* where, rans_simd simd = rans_simd::best,
                      const rans_fast_tables* ft = nullptr) {
  check_lanes(where, lanes);
  const size_t N = static_cast<size_t>(lanes);
  if (n > 0 && out == nullptr) throw_bad_input(where, "out", "non-null pointer", "nullptr");
  if (data == nullptr && size > 0) throw_bad_input(where, "data", "non-null pointer", "nullptr");
  if (size < 4 * N || (size - 4 * N) % 2 != 0)
    throw_corrupt(where, "stream of " + std::to_string(size) + " bytes: expected " + std::to_string(4 * N) +
                             " bytes of lane states plus a whole number of 16-bit words");
  uint32_t x[rans_max_lanes];
  for (size_t j = 0; j < N; ++j) {
    x[j] = load_le32(data + 4 * j);
    if (x[j] < rans_l) throw_corrupt(where, "state of lane " + std::to_string(j) + " below 2^16");
  }
  const uint8_t* p = data + 4 * N;
  const uint8_t* const end = data + size;
  const uint32_t M = static_cast<uint32_t>(prob_bits);
  const uint32_t mask = (1u << M) - 1;
  const uint64_t* tab = tabs[0];
  size_t col = 0;
  const size_t full_steps = n / N;
  size_t t = 0;
#if KVCODEC_RANS_AVX512
  const bool any = simd == rans_simd::best;
  // 64 lanes: four 16-lane AVX-512 vectors beat eight AVX2 ones (0.61 vs 0.83 ns/symbol on the
  // build machine's Zen 4); at 32 lanes the two are equal and AVX2 runs on more CPUs.
  if (ft != nullptr && (any || simd == rans_simd::avx512) && N == 64 && rans_avx512f_available()) {
    t = rans_decode_steps_avx512c<Sym, 4>(x, p, end, *ft, cols, M, out, t, full_steps);
    if constexpr (Ctx) col = (t * N) % cols;
  } else if (ft != nullptr && (any || simd == rans_simd::avx2) && rans_avx2_available()) {
    t = N == 32   ? rans_decode_steps_avx2<Sym, 4>(x, p, end, *ft, cols, M, N, out, t, full_steps)
        : N == 64 ? rans_decode_steps_avx2<Sym, 8>(x, p, end, *ft, cols, M, N, out, t, full_steps)
                  : rans_decode_steps_avx2<Sym, 0>(x, p, end, *ft, cols, M, N, out, t, full_steps);
    if constexpr (Ctx) col = (t * N) % cols;
  } else if (!Ctx && (any || simd == rans_simd::avx512) && rans_avx512_available()) {
    t = rans_decode_steps_avx512(x, p, end, tab, M, N, out, t, full_steps);
  }
#else
  (void)simd;
  (void)ft;
#endif
  // Fast steps: at least N words remain, so no lane can run out; no per-word checks.
  for (; t < full_steps && static_cast<size_t>(end - p) >= 2 * N; ++t) {
    Sym* o = out + t * N;
    for (size_t j = 0; j < N; ++j) {
      if constexpr (Ctx) {
        tab = tabs[col];
        col = col + 1 == cols ? 0 : col + 1;
      }
      uint32_t s = x[j];
      const uint64_t e = tab[s & mask];
      o[j] = static_cast<Sym>(rans_dec_entry_symbol(e));
      s = rans_dec_entry_freq(e) * (s >> M) + rans_dec_entry_offset(e);
      const uint32_t need = rans_dec_needs_word(s);
      x[j] = rans_dec_renorm(s, need, load_le16(p));
      p += 2 * need;
    }
  }
  // Remaining steps (near the end of the words or the partial last step): checked word by word.
  for (; t * N < n; ++t) {
    Sym* o = out + t * N;
    const size_t active = std::min(N, n - t * N);
    for (size_t j = 0; j < active; ++j) {
      if constexpr (Ctx) {
        tab = tabs[col];
        col = col + 1 == cols ? 0 : col + 1;
      }
      uint32_t s = x[j];
      o[j] = static_cast<Sym>(rans_dec_get(s, tab, prob_bits));
      if (rans_dec_needs_word(s)) {
        if (p == end) throw_corrupt(where, "stream ends before symbol " + std::to_string(t * N + j) + " is decoded");
        s = rans_dec_renorm(s, 1, load_le16(p));
        p += 2;
      }
      x[j] = s;
    }
  }
  if (p != end)
    throw_corrupt(where, std::to_string((end - p) / 2) + " words left unread after " + std::to_string(n) + " symbols");
  for (size_t j = 0; j < N; ++j)
    if (x[j] != rans_l)
      throw_corrupt(where, "lane " + std::to_string(j) + " ends in state " + std::to_string(x[j]) +
                               ", expected the initial state 65536");
}

inline void check_decode_table(const char* where, const decode_table& d, int prob_bits) {
  check_prob_bits(where, d.prob_bits);
  if (d.entry.size() != (size_t{1} << d.prob_bits))
    throw_bad_input(where, "decode_table.entry", "size " + std::to_string(size_t{1} << d.prob_bits),
                    "size " + std::to_string(d.entry.size()));
  if (d.prob_bits != prob_bits)
    throw_bad_input(where, "decode_table.prob_bits", std::to_string(prob_bits) + " (as the first table)",
                    std::to_string(d.prob_bits));
}

template <class Sym>
void check_output_alphabet(const char* where, size_t alphabet) {
  if constexpr (std::is_same_v<Sym, uint8_t>)
    if (alphabet > 256)
      throw_bad_input(where, "alphabet", "<= 256 for uint8_t output", std::to_string(alphabet));
}

}  // namespace detail

// ---- single table ----

template <class Sym, class = std::enable_if_t<detail::is_rans_symbol_v<Sym>>>
std::vector<uint8_t> rans_encode(const Sym* sym, size_t n, const encode_table& t, int lanes) {
  detail::check_prob_bits("rans_encode", t.prob_bits);
  const rans_enc_symbol* tab = t.sym.data();
  const size_t alpha = t.alphabet();
  return detail::rans_encode_impl(sym, n, 1, &tab, &alpha, lanes, "rans_encode");
}

template <class Sym, class = std::enable_if_t<detail::is_rans_symbol_v<Sym>>>
std::vector<uint8_t> rans_encode(const Sym* sym, size_t n, const freq_table& t, int lanes) {
  return rans_encode(sym, n, make_encode_table(t), lanes);
}

/// The tables of one context model laid out for the decoders, built once per model: column c
/// decodes with entry64[col_off[c] + slot] (entry32 the same in compact form when every table
/// fits it, else empty); col_off has cols + rans_max_lanes entries, col_off[c] = col_off[c % cols].
struct rans_ctx_decoder {
  int prob_bits = rans_min_prob_bits;
  size_t cols = 0;
  size_t alphabet = 0;  ///< the largest alphabet of the tables
  std::vector<uint64_t> entry64;
  std::vector<uint32_t> entry32;
  std::vector<uint32_t> col_off;
};

namespace detail {
inline void check_ctx(const char* where, size_t cols, size_t table_of_col_size, size_t tables) {
  if (cols == 0) throw_bad_input(where, "cols", ">= 1", "0");
  if (table_of_col_size != cols)
    throw_bad_input(where, "table_of_col", "size " + std::to_string(cols), "size " + std::to_string(table_of_col_size));
  if (tables == 0) throw_bad_input(where, "tables", "at least one table", "0");
}

/// Compact form of a 64-bit entry, or 0 with ok = false when it does not fit (a valid compact
/// entry has freq >= 1, so ok is the only signal).
inline uint32_t compact_entry(uint64_t e, int prob_bits, bool& ok) {
  const uint32_t f = rans_dec_entry_freq(e), o = rans_dec_entry_offset(e), sy = rans_dec_entry_symbol(e);
  if (prob_bits > rans_dec32_max_prob_bits || sy >= rans_dec32_max_alphabet || f == 0 || f > (1u << prob_bits) || o >= f) {
    ok = false;
    return 0;
  }
  return rans_dec32_from_entry(e);
}
}  // namespace detail

/// Builds the decoder layout of tables[table_of_col[c]] for columns c = 0 .. cols-1 (cols =
/// table_of_col.size()); every table must share prob_bits. Throws bad_input like rans_decode_ctx.
inline rans_ctx_decoder make_rans_ctx_decoder(std::span<const decode_table> tables, std::span<const uint32_t> table_of_col,
                                              const char* where = "make_rans_ctx_decoder") {
  const size_t cols = table_of_col.size();
  detail::check_ctx(where, cols, cols, tables.size());
  rans_ctx_decoder d;
  d.cols = cols;
  for (size_t c = 0; c < cols; ++c)
    if (table_of_col[c] >= tables.size())
      throw_bad_input(where, "table_of_col[" + std::to_string(c) + "]", "< " + std::to_string(tables.size()),
                      std::to_string(table_of_col[c]));
  d.prob_bits = tables[table_of_col[0]].prob_bits;
  const size_t S = size_t{1} << d.prob_bits;
  constexpr uint32_t unused = ~0u;
  std::vector<uint32_t> slot_of(tables.size(), unused);
  std::vector<uint32_t> base(cols);
  for (size_t c = 0; c < cols; ++c) {
    const uint32_t k = table_of_col[c];
    if (slot_of[k] == unused) {
      const decode_table& t = tables[k];
      detail::check_decode_table(where, t, d.prob_bits);
      if (d.entry64.size() + S > (size_t{1} << 31))
        throw_bad_input(where, "tables", "at most 2^31 decode entries in all", "more");
      d.alphabet = std::max(d.alphabet, t.alphabet);
      slot_of[k] = static_cast<uint32_t>(d.entry64.size());
      d.entry64.insert(d.entry64.end(), t.entry.begin(), t.entry.end());
    }
    base[c] = slot_of[k];
  }
  bool ok = true;
  d.entry32.resize(d.entry64.size());
  for (size_t i = 0; i < d.entry64.size() && ok; ++i) d.entry32[i] = detail::compact_entry(d.entry64[i], d.prob_bits, ok);
  if (!ok) d.entry32.clear();
  d.col_off.resize(cols + rans_max_lanes);
  for (size_t c = 0; c < d.col_off.size(); ++c) d.col_off[c] = base[c % cols];
  return d;
}

/// Decode n symbols, symbol i with column i % d.cols's table. Sym = uint8_t requires alphabets of at
/// most 256. simd picks the decoder (tests); every choice gives the same output and errors.
template <class Sym, class = std::enable_if_t<detail::is_rans_symbol_v<Sym>>>
void rans_decode_ctx(const uint8_t* data, size_t size, const rans_ctx_decoder& d, int lanes, Sym* out, size_t n,
                     detail::rans_simd simd = detail::rans_simd::best) {
  const char* where = "rans_decode_ctx";
  if (d.cols == 0 || d.col_off.size() != d.cols + rans_max_lanes ||
      d.entry64.size() % (size_t{1} << d.prob_bits) != 0 || (!d.entry32.empty() && d.entry32.size() != d.entry64.size()))
    throw_bad_input(where, "decoder", "a layout built by make_rans_ctx_decoder", "an inconsistent one");
  detail::check_output_alphabet<Sym>(where, d.alphabet);
  const detail::rans_fast_tables ft{d.entry32.data(), d.col_off.data()};
  const detail::rans_fast_tables* pft = d.entry32.empty() ? nullptr : &ft;
  if (d.cols == 1) {
    const uint64_t* tab = d.entry64.data() + d.col_off[0];
    detail::rans_decode_impl<Sym, false>(data, size, 1, &tab, d.prob_bits, lanes, out, n, where, simd, pft);
    return;
  }
  std::vector<const uint64_t*> tabs(d.cols);
  for (size_t c = 0; c < d.cols; ++c) tabs[c] = d.entry64.data() + d.col_off[c];
  detail::rans_decode_impl<Sym, true>(data, size, d.cols, tabs.data(), d.prob_bits, lanes, out, n, where, simd, pft);
}

/// Decode n symbols; Sym = uint8_t requires an alphabet of at most 256.
template <class Sym, class = std::enable_if_t<detail::is_rans_symbol_v<Sym>>>
void rans_decode(const uint8_t* data, size_t size, const decode_table& t, int lanes, Sym* out, size_t n) {
  detail::check_decode_table("rans_decode", t, t.prob_bits);
  detail::check_output_alphabet<Sym>("rans_decode", t.alphabet);
  if (n >= (size_t{1} << t.prob_bits)) {
    const uint32_t zero = 0;
    const rans_ctx_decoder d = make_rans_ctx_decoder(std::span<const decode_table>(&t, 1), std::span<const uint32_t>(&zero, 1), "rans_decode");
    rans_decode_ctx(data, size, d, lanes, out, n);
    return;
  }
  const uint64_t* tab = t.entry.data();
  detail::rans_decode_impl<Sym, false>(data, size, 1, &tab, t.prob_bits, lanes, out, n, "rans_decode");
}

// ---- one table per column: symbol i uses tables[table_of_col[i % cols]] ----

template <class Sym, class = std::enable_if_t<detail::is_rans_symbol_v<Sym>>>
std::vector<uint8_t> rans_encode_ctx(const Sym* sym, size_t n, size_t cols, std::span<const encode_table> tables,
                                     std::span<const uint32_t> table_of_col, int lanes) {
  const char* where = "rans_encode_ctx";
  detail::check_ctx(where, cols, table_of_col.size(), tables.size());
  std::vector<const rans_enc_symbol*> tabs(cols);
  std::vector<size_t> alpha(cols);
  for (size_t c = 0; c < cols; ++c) {
    const uint32_t k = table_of_col[c];
    if (k >= tables.size())
      throw_bad_input(where, "table_of_col[" + std::to_string(c) + "]", "< " + std::to_string(tables.size()),
                      std::to_string(k));
    detail::check_prob_bits(where, tables[k].prob_bits);
    if (tables[k].prob_bits != tables[table_of_col[0]].prob_bits)
      throw_bad_input(where, "tables[" + std::to_string(k) + "].prob_bits",
                      std::to_string(tables[table_of_col[0]].prob_bits), std::to_string(tables[k].prob_bits));
    tabs[c] = tables[k].sym.data();
    alpha[c] = tables[k].alphabet();
  }
  return detail::rans_encode_impl(sym, n, cols, tabs.data(), alpha.data(), lanes, where);
}

template <class Sym, class = std::enable_if_t<detail::is_rans_symbol_v<Sym>>>
std::vector<uint8_t> rans_encode_ctx(const Sym* sym, size_t n, size_t cols, std::span<const freq_table> tables,
                                     std::span<const uint32_t> table_of_col, int lanes) {
  std::vector<encode_table> enc;
  enc.reserve(tables.size());
  for (const freq_table& t : tables) enc.push_back(make_encode_table(t));
  return rans_encode_ctx(sym, n, cols, std::span<const encode_table>(enc), table_of_col, lanes);
}

template <class Sym, class = std::enable_if_t<detail::is_rans_symbol_v<Sym>>>
void rans_decode_ctx(const uint8_t* data, size_t size, size_t cols, std::span<const decode_table> tables,
                     std::span<const uint32_t> table_of_col, int lanes, Sym* out, size_t n) {
  const char* where = "rans_decode_ctx";
  detail::check_ctx(where, cols, table_of_col.size(), tables.size());
  if (n >= (size_t{1} << rans_max_prob_bits)) {
    rans_decode_ctx(data, size, make_rans_ctx_decoder(tables, table_of_col, where), lanes, out, n);
    return;
  }
  std::vector<const uint64_t*> tabs(cols);
  int prob_bits = 0;
  for (size_t c = 0; c < cols; ++c) {
    const uint32_t k = table_of_col[c];
    if (k >= tables.size())
      throw_bad_input(where, "table_of_col[" + std::to_string(c) + "]", "< " + std::to_string(tables.size()),
                      std::to_string(k));
    if (c == 0) prob_bits = tables[k].prob_bits;
    detail::check_decode_table(where, tables[k], prob_bits);
    detail::check_output_alphabet<Sym>(where, tables[k].alphabet);
    tabs[c] = tables[k].entry.data();
  }
  detail::rans_decode_impl<Sym, true>(data, size, cols, tabs.data(), prob_bits, lanes, out, n, where);
}

}  // namespace kvcodec
