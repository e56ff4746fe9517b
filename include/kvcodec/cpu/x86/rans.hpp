// kvcodec/cpu/x86/rans.hpp — AVX2 and AVX-512 kernels of the interleaved rANS codec
// (cpu/rans_codec.hpp), and the CPU checks that choose them.
//
//  - AVX2, 8 lanes per vector, single or per-column tables, whenever the tables have compact 32-bit
//    entries (core/rans.hpp: prob_bits <= 12, alphabet <= 256). All tables of a model sit in one
//    array (rans_fast_tables); lane j of a step reads column (c0 + j) % cols, so a vector's table
//    offsets are one unaligned load from a column-offset array extended by rans_max_lanes entries.
//    The lane-ordered word reads are a 16-byte load shuffled by a 256-entry LUT indexed by the
//    movemask of the lanes that need a word (the CPU form of ballot + popc). The encoder's full steps
//    run 8 lanes per vector the same way.
//  - AVX-512 (F/BW/VL/VBMI2), 16 lanes per vector, single table with 64-bit entries; AVX-512F with
//    the compact tables at 64 lanes.
// Each is bit-identical to the scalar loops of cpu/rans_codec.hpp (same bytes, same errors: tested).
// The AVX2 checks honour KVCODEC_NO_SIMD (core/simd.hpp); the AVX-512 ones are this codec's own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/rans.hpp"
#include "kvcodec/core/simd.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__CUDACC__)
#define KVCODEC_RANS_AVX512 1
#include <immintrin.h>
#else
#define KVCODEC_RANS_AVX512 0
#endif

namespace kvcodec::detail {

/// Compact tables for the AVX2 decoder: entry32[col_off[c] + slot] is column c's entry of `slot`,
/// col_off[c] = col_off[c % cols] for c < cols + rans_max_lanes.
struct rans_fast_tables {
  const uint32_t* entry32 = nullptr;
  const uint32_t* col_off = nullptr;
};

#if KVCODEC_RANS_AVX512
/// True when the AVX2 encoder and decoder may run: core/simd.hpp's probe.
inline bool rans_avx2_available() { return simd::avx2(); }

/// True when this CPU runs the AVX-512 (F, BW, VL, VBMI2) decoder; checked once (core/simd.hpp has no
/// AVX-512 probe yet).
inline bool rans_avx512_available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi2");
  return ok && !simd::disabled();
}

/// True when this CPU runs the AVX-512F compact-table decoder; checked once.
inline bool rans_avx512f_available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("popcnt");
  return ok && !simd::disabled();
}

// ---- encoder ---------------------------------------------------------------------------------------

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

// ---- decoders --------------------------------------------------------------------------------------

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

}  // namespace kvcodec::detail
