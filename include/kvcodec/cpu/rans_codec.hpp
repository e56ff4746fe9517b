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
// Single-table decode runs 16 lanes per AVX-512 vector when the CPU has F/BW/VL/VBMI2 (runtime check,
// no build flags needed): gathers for the table, a masked word expand for the lane-ordered reads.
// The scalar loop is the reference; both produce identical output and errors (tested).
#pragma once

#include "kvcodec/core/error.hpp"
#include "kvcodec/core/freq_table.hpp"
#include "kvcodec/core/rans.hpp"

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
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

inline uint16_t load_le16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  if constexpr (std::endian::native == std::endian::big) v = static_cast<uint16_t>((v >> 8) | (v << 8));
  return v;
}
inline uint32_t load_le32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}
inline void store_le32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
  p[2] = static_cast<uint8_t>(v >> 16);
  p[3] = static_cast<uint8_t>(v >> 24);
}

/// Encode with table tabs[col_table[i % cols]]; symbols validated against each table's alphabet.
template <class Sym>
std::vector<uint8_t> rans_encode_impl(const Sym* sym, size_t n, size_t cols, const rans_enc_symbol* const* tabs,
                                      const size_t* alpha, int lanes, const char* where) {
  check_lanes(where, lanes);
  if (n > 0 && sym == nullptr) throw_bad_input(where, "sym", "non-null pointer", "nullptr");
  const size_t N = static_cast<size_t>(lanes);
  std::vector<uint32_t> x(N, rans_l);
  std::vector<uint16_t> words(n + 1);  // one scratch slot below the lowest emitted word
  uint16_t* wend = words.data() + words.size();
  uint16_t* w = wend;
  const size_t steps = (n + N - 1) / N;
  size_t col = cols ? (n == 0 ? 0 : (n - 1) % cols) : 0;
  for (size_t t = steps; t-- > 0;) {
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
  const size_t k = static_cast<size_t>(wend - w);
  std::vector<uint8_t> out(4 * N + 2 * k);
  for (size_t j = 0; j < N; ++j) store_le32(out.data() + 4 * j, x[j]);
  for (size_t i = 0; i < k; ++i) {
    out[4 * N + 2 * i] = static_cast<uint8_t>(w[i]);
    out[4 * N + 2 * i + 1] = static_cast<uint8_t>(w[i] >> 8);
  }
  return out;
}

#if KVCODEC_RANS_AVX512
/// True when this CPU runs the AVX-512 (F, BW, VL, VBMI2) decoder; checked once.
inline bool rans_avx512_available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi2");
  return ok;
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

/// Decode; table for symbol i is tabs[i % cols] (cols >= 1). allow_simd = false forces the scalar
/// reference loop (tests compare both).
template <class Sym, bool Ctx>
void rans_decode_impl(const uint8_t* data, size_t size, size_t cols, const uint64_t* const* tabs, int prob_bits,
                      int lanes, Sym* out, size_t n, const char* where, bool allow_simd = true) {
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
  if constexpr (!Ctx) {
    if (allow_simd && rans_avx512_available())
      t = rans_decode_steps_avx512(x, p, end, tab, M, N, out, t, full_steps);
  }
#else
  (void)allow_simd;
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

/// Decode n symbols; Sym = uint8_t requires an alphabet of at most 256.
template <class Sym, class = std::enable_if_t<detail::is_rans_symbol_v<Sym>>>
void rans_decode(const uint8_t* data, size_t size, const decode_table& t, int lanes, Sym* out, size_t n) {
  detail::check_decode_table("rans_decode", t, t.prob_bits);
  detail::check_output_alphabet<Sym>("rans_decode", t.alphabet);
  const uint64_t* tab = t.entry.data();
  detail::rans_decode_impl<Sym, false>(data, size, 1, &tab, t.prob_bits, lanes, out, n, "rans_decode");
}

// ---- one table per column: symbol i uses tables[table_of_col[i % cols]] ----

namespace detail {
inline void check_ctx(const char* where, size_t cols, size_t table_of_col_size, size_t tables) {
  if (cols == 0) throw_bad_input(where, "cols", ">= 1", "0");
  if (table_of_col_size != cols)
    throw_bad_input(where, "table_of_col", "size " + std::to_string(cols), "size " + std::to_string(table_of_col_size));
  if (tables == 0) throw_bad_input(where, "tables", "at least one table", "0");
}
}  // namespace detail

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
