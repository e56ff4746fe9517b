// kvcodec/core/rans_batch.hpp — decoding a batch of interleaved rANS streams with one thread per
// lane (core/rans.hpp's stream layout, CPU-encoded, bytes unchanged): the lane logic shared by the
// CUDA kernel (cuda/include/kvcodec/cuda/rans.cuh) and its host emulation here.
//
// A batch is many independent streams (one per (layer, K/V, segment, plane) of a container), each
// decoded by one group of `lanes` threads (a CUDA block). Per step t every active lane j decodes
// symbol t*N + j with the table of column (t*N + j) % cols, then the lanes whose state fell below
// 2^16 take one word each, in lane order: a warp ballot gives each lane its rank among the warp's
// needing lanes, and the warps' counts, summed in warp order, give each warp its first word. The
// checks are the CPU decoder's: lane states below 2^16, a word index past the stream, words left over
// and final states other than 2^16 are corrupt streams (rans_batch_status), and no read leaves the
// stream or the tables (table indices are x & (2^M - 1) under a checked column offset).
//
// Tables: every model's decode entries in one array (compact 32-bit or 64-bit entries, one form per
// batch) and, per stream, `cols` column offsets into it (rans_batch_builder lays both out).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "kvcodec/core/atomic.hpp"
#include "kvcodec/core/config.hpp"
#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/rans.hpp"
#include "kvcodec/core/warp.hpp"

namespace kvcodec {

/// One stream of a batch. Offsets are into the batch's arrays.
struct rans_batch_stream {
  std::uint64_t data_offset = 0;  ///< first byte of the stream in the batch's data
  std::uint64_t size = 0;         ///< stream bytes (4 x lanes of states, then 16-bit words)
  std::uint64_t out_offset = 0;   ///< first output symbol
  std::uint64_t n = 0;            ///< symbols
  std::uint32_t lanes = 32;       ///< a multiple of 32 in 32..1024
  std::uint32_t cols = 1;         ///< symbol i uses column i % cols
  std::uint32_t col_base = 0;     ///< the column offsets of this stream: col_off[col_base .. col_base + cols)
  std::uint32_t prob_bits = 10;
};

/// The batch's arrays (device pointers for the kernel, host pointers for the emulation).
template <class Entry>
struct rans_batch_args {
  const rans_batch_stream* streams = nullptr;
  std::size_t count = 0;
  std::uint32_t max_lanes = 32;  ///< the largest `lanes` of the batch (the group size)
  const std::uint8_t* data = nullptr;
  const Entry* entries = nullptr;
  const std::uint32_t* col_off = nullptr;
  std::uint16_t* out = nullptr;
};

/// Per-stream result of a batch decode (the first failure a stream met).
enum class rans_batch_status : std::uint32_t {
  ok = 0,
  bad_size = 1,     ///< fewer bytes than the lane states, or an odd number of word bytes
  bad_state = 2,    ///< a lane's initial state below 2^16
  words_short = 3,  ///< the stream ends before every symbol is decoded
  words_left = 4,   ///< words remain after the last symbol
  bad_final = 5,    ///< a lane does not end in the initial state 2^16
  bad_symbol = 6,   ///< a decoded symbol the sink refused (a fused dequantizer: outside the quantizer's range)
};

inline const char* rans_batch_status_text(rans_batch_status s) noexcept {
  switch (s) {
    case rans_batch_status::ok: return "ok";
    case rans_batch_status::bad_size: return "expected 4 x lanes bytes of lane states plus a whole number of 16-bit words";
    case rans_batch_status::bad_state: return "a lane's initial state is below 2^16";
    case rans_batch_status::words_short: return "the stream ends before every symbol is decoded";
    case rans_batch_status::words_left: return "words left unread after the last symbol";
    case rans_batch_status::bad_final: return "a lane does not end in the initial state 65536";
    case rans_batch_status::bad_symbol: return "a decoded symbol outside the quantizer's range";
  }
  return "unknown status";
}

namespace detail {

/// Decodes one symbol from entry tab[x & mask] (compact or 64-bit form) and advances x.
template <class Entry>
KVCODEC_HD inline std::uint32_t rans_lane_get(std::uint32_t& x, const Entry* tab, std::uint32_t M) noexcept {
  const Entry e = tab[x & ((1u << M) - 1u)];
  if constexpr (std::is_same_v<Entry, std::uint32_t>) {
    x = rans_dec32_freq(e) * (x >> M) + rans_dec32_offset(e);
    return rans_dec32_symbol(e);
  } else {
    x = rans_dec_entry_freq(e) * (x >> M) + rans_dec_entry_offset(e);
    return rans_dec_entry_symbol(e);
  }
}

/// Phase 1 of a step for lane j: when active, decodes the lane's symbol into `sym` and returns 1 when
/// the lane then needs a word. The lane's column advances by N (mod cols) every step, active or not.
template <class Entry>
KVCODEC_HD inline std::uint32_t rans_lane_decode(std::uint32_t& x, std::uint32_t& col, bool active, const Entry* entries,
                                                 const std::uint32_t* col_off, std::uint32_t cols, std::uint32_t adv,
                                                 std::uint32_t M, std::uint16_t& sym) noexcept {
  std::uint32_t need = 0;
  if (active) {
    sym = static_cast<std::uint16_t>(rans_lane_get(x, entries + col_off[col], M));
    need = rans_dec_needs_word(x);
  }
  col += adv;
  if (col >= cols) col -= cols;
  return need;
}

/// Phase 2 of a step for a lane that needs a word: the word's index is `idx` (the words before this
/// step's plus the lane's rank among the step's needing lanes). False when the stream has no such word.
KVCODEC_HD inline bool rans_lane_renorm(std::uint32_t& x, std::uint64_t idx, std::uint64_t words, const std::uint8_t* wp) noexcept {
  if (idx >= words) return false;
  x = rans_dec_renorm(x, 1, load_le16(wp + 2 * idx));
  return true;
}

/// The stream-level checks before any lane runs.
KVCODEC_HD inline rans_batch_status rans_stream_check_size(const rans_batch_stream& s) noexcept {
  if (s.size < 4ull * s.lanes || (s.size - 4ull * s.lanes) % 2 != 0) return rans_batch_status::bad_size;
  return rans_batch_status::ok;
}

}  // namespace detail

/// Where the batch decoder puts symbol i of stream `stream` (s its descriptor): into a symbol array at
/// s.out_offset + i. A fused decoder passes a sink that dequantizes the symbol straight into a view
/// (core/cachegen.hpp's cachegen_rans_sink); a sink returns false to refuse a symbol (bad_symbol).
struct rans_symbol_sink {
  std::uint16_t* out = nullptr;
  KVCODEC_HD bool operator()(std::size_t, const rans_batch_stream& s, std::uint64_t i, std::uint16_t sym) const noexcept {
    out[s.out_offset + i] = sym;
    return true;
  }
};

/// Host emulation of the batch kernel: the same phases in the same order, each warp's ballot computed
/// from its 32 lanes (warp::ballot_host), the warps' word counts summed in warp order. status gets
/// one entry per stream; symbols go to `sink`. Output symbols of a failed stream are unspecified.
template <class Entry, class Sink>
inline void rans_decode_batch_emulated(const rans_batch_args<Entry>& a, rans_batch_status* status, const Sink& sink) {
  std::vector<std::uint32_t> x(a.max_lanes), col(a.max_lanes), need(a.max_lanes);
  std::vector<std::uint32_t> warp_count(a.max_lanes / warp::size + 1);
  for (std::size_t b = 0; b < a.count; ++b) {
    const rans_batch_stream s = a.streams[b];
    rans_batch_status st = detail::rans_stream_check_size(s);
    if (st != rans_batch_status::ok) {
      status[b] = st;
      continue;
    }
    const std::uint32_t N = s.lanes, groups = a.max_lanes;  // lanes >= N idle, as the kernel's extra threads
    const std::uint8_t* p = a.data + s.data_offset;
    const std::uint8_t* wp = p + 4ull * N;
    const std::uint64_t words = (s.size - 4ull * N) / 2;
    for (std::uint32_t j = 0; j < groups; ++j) {
      x[j] = j < N ? detail::load_le32(p + 4ull * j) : rans_l;
      col[j] = j < N ? j % s.cols : 0;
      if (x[j] < rans_l && st == rans_batch_status::ok) st = rans_batch_status::bad_state;
    }
    const std::uint32_t adv = N % s.cols;
    const std::uint64_t steps = (s.n + N - 1) / N;
    std::uint64_t base = 0;
    for (std::uint64_t t = 0; t < steps && st == rans_batch_status::ok; ++t) {
      for (std::uint32_t j = 0; j < groups; ++j) {
        const bool active = j < N && t * N + j < s.n;
        std::uint16_t sym = 0;
        need[j] = detail::rans_lane_decode(x[j], col[j], active, a.entries, a.col_off + s.col_base, s.cols, adv, s.prob_bits, sym);
        if (active && !sink(b, s, t * N + j, sym) && st == rans_batch_status::ok) st = rans_batch_status::bad_symbol;
      }
      const std::uint32_t nw = groups / warp::size;
      std::uint32_t total = 0;
      for (std::uint32_t w = 0; w < nw; ++w) total += (warp_count[w] = warp::popc(warp::ballot_host(need.data() + w * warp::size)));
      std::uint32_t before = 0;
      for (std::uint32_t w = 0; w < nw; ++w) {
        const std::uint32_t ballot = warp::ballot_host(need.data() + w * warp::size);
        for (std::uint32_t l = 0; l < warp::size; ++l) {
          const std::uint32_t j = w * warp::size + l;
          if (need[j] && !detail::rans_lane_renorm(x[j], base + before + warp::rank_below(ballot, l), words, wp)) st = rans_batch_status::words_short;
        }
        before += warp_count[w];
      }
      base += total;
    }
    if (st == rans_batch_status::ok && base != words) st = rans_batch_status::words_left;
    for (std::uint32_t j = 0; j < N && st == rans_batch_status::ok; ++j)
      if (x[j] != rans_l) st = rans_batch_status::bad_final;
    status[b] = st;
  }
}

/// The same, symbols into a.out.
template <class Entry>
inline void rans_decode_batch_emulated(const rans_batch_args<Entry>& a, rans_batch_status* status) {
  rans_decode_batch_emulated(a, status, rans_symbol_sink{a.out});
}

/// Host-side layout of a batch: models (tables + column map) and streams appended in any order;
/// the vectors are what the kernel reads (copy them to the device) or the emulation reads in place.
template <class Entry>
struct rans_batch_builder {
  std::vector<std::uint8_t> data;
  std::vector<Entry> entries;
  std::vector<std::uint32_t> col_off;
  std::vector<rans_batch_stream> streams;
  std::uint64_t out_symbols = 0;
  std::uint32_t max_lanes = 32;

  /// Adds a model: `tables` holds whole tables of 2^prob_bits entries each; column c uses the table
  /// starting at entry table_off[c] of `tables`. Returns the model's first column offset (col_base
  /// for its streams). Throws bad_input on an offset outside `tables`.
  std::uint32_t add_model(std::span<const Entry> tables, std::span<const std::uint32_t> table_off, int prob_bits) {
    const std::size_t S = std::size_t{1} << prob_bits;
    if (prob_bits < rans_min_prob_bits || prob_bits > rans_max_prob_bits)
      throw_bad_input("rans_batch_builder", "prob_bits", "10..15", std::to_string(prob_bits));
    if (tables.empty() || tables.size() % S != 0)
      throw_bad_input("rans_batch_builder", "tables", "whole tables of " + std::to_string(S) + " entries", std::to_string(tables.size()) + " entries");
    const std::size_t first = entries.size();
    entries.insert(entries.end(), tables.begin(), tables.end());
    const std::uint32_t base = static_cast<std::uint32_t>(col_off.size());
    for (std::size_t c = 0; c < table_off.size(); ++c) {
      if (table_off[c] > tables.size() - S)
        throw_bad_input("rans_batch_builder", "table_off[" + std::to_string(c) + "]", "<= " + std::to_string(tables.size() - S), std::to_string(table_off[c]));
      col_off.push_back(static_cast<std::uint32_t>(first + table_off[c]));
    }
    return base;
  }

  /// Adds a stream of `n` symbols over `lanes` lanes decoded with the model at col_base (cols
  /// columns). Returns the stream's first output symbol.
  std::uint64_t add_stream(std::span<const std::uint8_t> bytes, std::uint64_t n, int lanes, std::uint32_t col_base, std::uint32_t cols, int prob_bits) {
    if (lanes < rans_lane_multiple || lanes > rans_max_lanes || lanes % rans_lane_multiple != 0)
      throw_bad_input("rans_batch_builder", "lanes", "a multiple of 32 in 32..1024", std::to_string(lanes));
    if (cols == 0 || static_cast<std::uint64_t>(col_base) + cols > col_off.size())
      throw_bad_input("rans_batch_builder", "cols", "1.." + std::to_string(col_off.size() - std::min<std::size_t>(col_base, col_off.size())) + " columns of an added model",
                      std::to_string(cols));
    rans_batch_stream s;
    s.data_offset = data.size();
    s.size = bytes.size();
    s.out_offset = out_symbols;
    s.n = n;
    s.lanes = static_cast<std::uint32_t>(lanes);
    s.cols = cols;
    s.col_base = col_base;
    s.prob_bits = static_cast<std::uint32_t>(prob_bits);
    data.insert(data.end(), bytes.begin(), bytes.end());
    streams.push_back(s);
    out_symbols += n;
    max_lanes = std::max<std::uint32_t>(max_lanes, s.lanes);
    return s.out_offset;
  }

  /// The arrays as host pointers (for the emulation), writing into `out` (out_symbols entries).
  rans_batch_args<Entry> host_args(std::uint16_t* out) const {
    return {streams.data(), streams.size(), max_lanes, data.data(), entries.data(), col_off.data(), out};
  }
};

// ---- encode ---------------------------------------------------------------------------------------
//
// The mirror image of the decoder: one group of `lanes` threads per stream codes its steps from last to
// first. In each step every active lane renormalises against its symbol's entry (emitting its state's
// low word when the state is too large for the symbol) and codes the symbol; the emitting lanes' words
// go below the words of the later steps, in lane order (a warp ballot ranks a lane among its warp's
// emitting lanes, the warps' counts summed in warp order give each warp its first word). That is the
// order the decoder reads them in, and the CPU encoder's (cpu/rans_codec.hpp), so the bytes are equal.
// Words go to a scratch array (n per stream: a step emits at most one word per symbol), the lanes' final
// states to a state array; rans_stream_gather_op then lays each stream out as core/rans.hpp's
// [states][words] once the word counts are known.

/// One stream of an encode batch. Offsets are into the batch's arrays.
struct rans_encode_stream {
  std::uint64_t sym_first = 0;     ///< the stream's first symbol byte in the batch's symbol bytes
  std::uint64_t n = 0;             ///< symbols
  std::uint64_t word_offset = 0;   ///< the stream's n scratch words start here
  std::uint64_t state_offset = 0;  ///< the stream's `lanes` final states start here
  std::uint32_t lanes = 32;        ///< a multiple of 32 in 32..1024
  std::uint32_t cols = 1;          ///< symbol i uses column i % cols
  std::uint32_t col_base = 0;      ///< this stream's columns: col_tab / col_alpha[col_base .. col_base + cols)
  std::uint32_t wide = 0;          ///< 1: 16-bit little-endian symbols, 0: a byte each
};

/// The encode batch's arrays (device pointers for the kernel, host pointers for the emulation).
struct rans_encode_args {
  const rans_encode_stream* streams = nullptr;
  std::size_t count = 0;
  std::uint32_t max_lanes = 32;       ///< the largest `lanes` of the batch (the group size)
  const std::uint8_t* sym = nullptr;  ///< symbols (a byte each or 16-bit, per stream)
  const rans_enc_symbol* tables = nullptr;
  const std::uint32_t* col_tab = nullptr;    ///< column c's table: tables + col_tab[c]
  const std::uint32_t* col_alpha = nullptr;  ///< column c's alphabet
  std::uint16_t* words = nullptr;            ///< scratch: stream s's words end at word_offset + n
  std::uint32_t* states = nullptr;           ///< final lane states
  std::uint64_t* word_count = nullptr;       ///< per stream: its words (the last word_count of its scratch)
  std::uint32_t* bad = nullptr;              ///< per stream: 1 when one of its symbols has no code in its column's table
};

namespace detail {

/// Symbol i of a stream (a byte, or 16 bits little-endian when wide).
KVCODEC_HD inline std::uint32_t rans_enc_symbol_at(const std::uint8_t* sym, const rans_encode_stream& s, std::uint64_t i) noexcept {
  return s.wide != 0 ? load_le16(sym + s.sym_first + 2 * i) : sym[s.sym_first + i];
}

/// Phase 1 of an encode step for one lane (steps run last to first): when active, renormalises
/// against its symbol's entry and codes it. Returns 1 (with the word in `word`) when the lane emits a
/// word; sets `bad` when the symbol has no code in its column's table. The lane's column moves back by
/// `back` (= lanes mod cols) every step, active or not.
KVCODEC_HD inline std::uint32_t rans_lane_encode(std::uint32_t& x, std::uint32_t& col, bool active, const rans_encode_args& a,
                                                 const rans_encode_stream& s, std::uint64_t i, std::uint32_t back,
                                                 std::uint16_t& word, bool& bad) noexcept {
  std::uint32_t emit = 0;
  if (active) {
    const std::uint32_t c = s.col_base + col;
    const std::uint32_t v = rans_enc_symbol_at(a.sym, s, i);
    if (v >= a.col_alpha[c] || !rans_enc_symbol_codable(a.tables[a.col_tab[c] + v])) {
      bad = true;
    } else {
      const rans_enc_symbol e = a.tables[a.col_tab[c] + v];
      emit = rans_enc_renorm(x, e, &word);
      x = rans_enc_put(x, e);
    }
  }
  col = col >= back ? col - back : col + s.cols - back;
  return emit;
}

/// The column of lane j in the last step of a stream (the steps then move back by lanes mod cols).
KVCODEC_HD inline std::uint32_t rans_lane_last_col(const rans_encode_stream& s, std::uint64_t steps, std::uint32_t j) noexcept {
  return static_cast<std::uint32_t>(((steps == 0 ? 0 : steps - 1) * s.lanes + j) % s.cols);
}

}  // namespace detail

/// Host emulation of the encode kernel: the same phases in the same order, each warp's ballot computed
/// from its 32 lanes (warp::ballot_host), the warps' counts summed in warp order.
inline void rans_encode_batch_emulated(const rans_encode_args& a) {
  std::vector<std::uint32_t> x(a.max_lanes), col(a.max_lanes), emit(a.max_lanes);
  std::vector<std::uint16_t> word(a.max_lanes);
  for (std::size_t b = 0; b < a.count; ++b) {
    const rans_encode_stream s = a.streams[b];
    const std::uint32_t N = s.lanes, groups = a.max_lanes;
    const std::uint64_t steps = (s.n + N - 1) / N;
    const std::uint32_t back = N % s.cols;
    for (std::uint32_t j = 0; j < groups; ++j) x[j] = rans_l, col[j] = j < N ? detail::rans_lane_last_col(s, steps, j) : 0;
    std::uint64_t w = s.word_offset + s.n;  // the words written so far start here
    bool bad = false;
    for (std::uint64_t t = steps; t-- > 0 && !bad;) {
      for (std::uint32_t j = 0; j < groups; ++j) {
        const bool active = j < N && t * N + j < s.n;
        emit[j] = detail::rans_lane_encode(x[j], col[j], active, a, s, t * N + j, back, word[j], bad);
      }
      const std::uint32_t nw = groups / warp::size;
      std::uint32_t total = 0;
      for (std::uint32_t k = 0; k < nw; ++k) total += warp::popc(warp::ballot_host(emit.data() + k * warp::size));
      w -= total;
      std::uint32_t before = 0;
      for (std::uint32_t k = 0; k < nw; ++k) {
        const std::uint32_t ballot = warp::ballot_host(emit.data() + k * warp::size);
        for (std::uint32_t l = 0; l < warp::size; ++l) {
          const std::uint32_t j = k * warp::size + l;
          if (emit[j]) a.words[w + before + warp::rank_below(ballot, l)] = word[j];
        }
        before += warp::popc(ballot);
      }
    }
    for (std::uint32_t j = 0; j < N; ++j) a.states[s.state_offset + j] = x[j];
    a.word_count[b] = s.word_offset + s.n - w;
    a.bad[b] = bad ? 1u : 0u;
  }
}

/// One encoded stream's layout step: block = a stream whose word count is known.
struct rans_gather_block {
  std::uint64_t state_offset = 0;  ///< its final states in the state array
  std::uint64_t words_first = 0;   ///< its first word in the scratch array
  std::uint64_t words = 0;         ///< its word count
  std::uint64_t out_first = 0;     ///< its first byte in the output
  std::uint32_t lanes = 32;
};

/// Element step: byte i of a stream in core/rans.hpp's layout (4 x lanes bytes of final states, then
/// the words), little-endian, from the encode kernel's state and scratch arrays.
struct rans_stream_gather_op {
  const std::uint32_t* states = nullptr;
  const std::uint16_t* words = nullptr;
  std::uint8_t* out = nullptr;
  KVCODEC_HD std::uint64_t count(const rans_gather_block& b) const noexcept { return 4ull * b.lanes + 2ull * b.words; }
  KVCODEC_HD bool operator()(const rans_gather_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t sb = 4ull * b.lanes;
    std::uint32_t v;
    if (i < sb)
      v = states[b.state_offset + i / 4] >> (8 * (i % 4));
    else
      v = static_cast<std::uint32_t>(words[b.words_first + (i - sb) / 2]) >> (8 * ((i - sb) % 2));
    out[b.out_first + i] = static_cast<std::uint8_t>(v);
    return true;
  }
};

/// One block of symbols to count: n symbols (a byte each, or 16-bit when wide) from byte sym_first,
/// symbol i in column i % cols, counted into hist[hist_first + column x alphabet + symbol].
struct rans_hist_block {
  std::uint64_t sym_first = 0;
  std::uint64_t n = 0;
  std::uint64_t hist_first = 0;
  std::uint32_t cols = 1;
  std::uint32_t alphabet = 1;
  std::uint32_t wide = 0;
};

/// Element step: counts symbol i of a block into its column's histogram (an atomic add; the order of
/// the adds does not change the counts). False for a symbol outside the alphabet (not counted).
struct rans_hist_op {
  const std::uint8_t* sym = nullptr;
  std::uint32_t* hist = nullptr;
  KVCODEC_HD std::uint64_t count(const rans_hist_block& b) const noexcept { return b.n; }
  KVCODEC_HD bool operator()(const rans_hist_block& b, std::uint64_t i) const noexcept {
    const std::uint32_t v = b.wide != 0 ? detail::load_le16(sym + b.sym_first + 2 * i) : sym[b.sym_first + i];
    if (v >= b.alphabet) return false;
    atomic_add(hist + b.hist_first + (i % b.cols) * b.alphabet + v, 1u);
    return true;
  }
};

/// Throws error_kind::corrupt naming the first failed stream (and what it is, via `name`), if any.
template <class Name>
inline void rans_batch_throw_failed(std::span<const rans_batch_status> status, const Name& name) {
  for (std::size_t i = 0; i < status.size(); ++i)
    if (status[i] != rans_batch_status::ok) throw_corrupt(name(i), rans_batch_status_text(status[i]));
}

}  // namespace kvcodec
