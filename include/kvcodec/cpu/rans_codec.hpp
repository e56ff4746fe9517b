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
// Vector paths (runtime dispatch, no build flags needed; the scalar loop is the reference and every path
// produces identical output and errors, tested): the AVX2 encoder and the AVX2 / AVX-512 decoders of
// cpu/x86/rans.hpp.
#pragma once

#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/freq_table.hpp"
#include "kvcodec/core/rans.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/cpu/x86/rans.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

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
#else
  (void)simd;
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

/// Which decoder rans_decode_impl may use: the scalar reference, one vector path, or the best one
/// this CPU has (a requested path the CPU or the tables cannot run falls back to scalar).
enum class rans_simd { scalar, avx2, avx512, best };

/// Decode; table for symbol i is tabs[i % cols] (cols >= 1). ft (optional) holds the same tables in
/// compact form for the AVX2 path. simd = scalar forces the reference loop (tests compare all).
/// Fields of a decode-table entry, 64-bit or compact (core/rans.hpp); the scalar loops read either.
inline uint32_t dec_entry_symbol(uint64_t e) { return rans_dec_entry_symbol(e); }
inline uint32_t dec_entry_freq(uint64_t e) { return rans_dec_entry_freq(e); }
inline uint32_t dec_entry_offset(uint64_t e) { return rans_dec_entry_offset(e); }
inline uint32_t dec_entry_symbol(uint32_t e) { return rans_dec32_symbol(e); }
inline uint32_t dec_entry_freq(uint32_t e) { return rans_dec32_freq(e); }
inline uint32_t dec_entry_offset(uint32_t e) { return rans_dec32_offset(e); }

template <class Sym, bool Ctx, class Entry = uint64_t>
void rans_decode_impl(const uint8_t* data, size_t size, size_t cols, const Entry* const* tabs, int prob_bits,
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
  const Entry* tab = tabs[0];
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
  } else if constexpr (!Ctx && std::is_same_v<Entry, uint64_t>) {
    if ((any || simd == rans_simd::avx512) && rans_avx512_available()) t = rans_decode_steps_avx512(x, p, end, tab, M, N, out, t, full_steps);
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
      const Entry e = tab[s & mask];
      o[j] = static_cast<Sym>(dec_entry_symbol(e));
      s = dec_entry_freq(e) * (s >> M) + dec_entry_offset(e);
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
      const Entry e = tab[s & mask];
      o[j] = static_cast<Sym>(dec_entry_symbol(e));
      s = dec_entry_freq(e) * (s >> M) + dec_entry_offset(e);
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

namespace detail {
/// Chunks that table arenas released, kept (up to `limit` bytes) for the next arena: a process that
/// decodes container after container (a store get decodes one per 256-token chunk, each with its own
/// tables) reuses memory that is already mapped and faulted in instead of having the kernel map and
/// zero fresh pages for every container. Never destroyed (an arena may be released during exit).
class table_chunk_pool {
 public:
  static constexpr std::size_t limit = std::size_t{32} << 20;
  static table_chunk_pool& instance() {
    static table_chunk_pool* const p = new table_chunk_pool;  // leaked on purpose: see above
    return *p;
  }
  /// A kept chunk of exactly `size` bytes, or nullptr.
  void* take(std::size_t size) {
    std::lock_guard<std::mutex> lock(m_);
    for (std::size_t i = free_.size(); i-- > 0;)
      if (free_[i].second == size) {
        void* p = free_[i].first;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        kept_ -= size;
        return p;
      }
    return nullptr;
  }
  /// Keeps the chunk when it fits under the limit (true); else the caller frees it.
  bool give(void* p, std::size_t size) noexcept {
    std::lock_guard<std::mutex> lock(m_);
    if (kept_ + size > limit) return false;
    try {
      free_.emplace_back(p, size);
    } catch (...) {
      return false;
    }
    kept_ += size;
    return true;
  }
  std::size_t kept_bytes() {
    std::lock_guard<std::mutex> lock(m_);
    return kept_;
  }

 private:
  std::mutex m_;
  std::vector<std::pair<void*, std::size_t>> free_;
  std::size_t kept_ = 0;
};
}  // namespace detail

/// A bump arena for decode tables, released all at once: chunks of at least 2 MiB, 2 MiB-aligned and
/// advised as transparent huge pages on Linux. A container's tables are megabytes built in pieces of
/// tens of kilobytes; on 4 KiB pages their first touch cost ~1,100 page faults per container, about
/// 15% of a full decode and a quarter of a range decode. Released chunks go to
/// detail::table_chunk_pool for the next arena. Thread-safe.
class table_arena {
 public:
  static constexpr std::size_t chunk = std::size_t{2} << 20;
  table_arena() = default;
  table_arena(const table_arena&) = delete;
  table_arena& operator=(const table_arena&) = delete;
  ~table_arena() { release_all(); }

  /// n bytes, 64-byte aligned, uninitialised; valid until release_all() or destruction.
  void* allocate(std::size_t n) {
    n = (n + 63) & ~std::size_t{63};
    std::lock_guard<std::mutex> lock(m_);
    if (chunks_.empty() || chunks_.back().size - used_ < n) {
      const std::size_t size = (std::max(n, chunk) + chunk - 1) / chunk * chunk;
      chunks_.push_back({map(size), size});
      used_ = 0;
    }
    void* p = static_cast<std::byte*>(chunks_.back().p) + used_;
    used_ += n;
    return p;
  }
  /// Frees every chunk: only once nothing allocated from the arena is in use.
  void release_all() noexcept {
    std::lock_guard<std::mutex> lock(m_);
    for (const auto& c : chunks_) unmap(c.p, c.size);
    chunks_.clear();
    used_ = 0;
  }

 private:
  struct block {
    void* p;
    std::size_t size;
  };
  static void* map(std::size_t size) {
    if (void* p = detail::table_chunk_pool::instance().take(size)) return p;
#if defined(__linux__)
    // Over-map by one chunk and keep the aligned part, so that the kernel can back it with huge pages.
    void* raw = ::mmap(nullptr, size + chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    const auto a = reinterpret_cast<std::uintptr_t>(raw), aligned = (a + chunk - 1) & ~(std::uintptr_t{chunk} - 1);
    if (aligned > a) ::munmap(raw, aligned - a);
    if (aligned + size < a + size + chunk) ::munmap(reinterpret_cast<void*>(aligned + size), a + size + chunk - aligned - size);
    void* p = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
    ::madvise(p, size, MADV_HUGEPAGE);  // advice only: without THP the chunk is ordinary pages
#endif
    return p;
#else
    return ::operator new(size, std::align_val_t{chunk});
#endif
  }
  static void unmap(void* p, std::size_t size) noexcept {
    if (detail::table_chunk_pool::instance().give(p, size)) return;
#if defined(__linux__)
    ::munmap(p, size);
#else
    (void)size;
    ::operator delete(p, std::align_val_t{chunk});
#endif
  }
  std::mutex m_;
  std::vector<block> chunks_;
  std::size_t used_ = 0;
};

/// The decode tables' allocator: from a table_arena when it has one (deallocate is then a no-op),
/// else from the heap. resize() leaves new elements uninitialised: every entry is written right after
/// the tables are sized. A copied container gets the heap (it may outlive the arena).
template <class T>
struct table_allocator {
  using value_type = T;
  using propagate_on_container_move_assignment = std::true_type;
  using propagate_on_container_swap = std::true_type;
  table_arena* arena = nullptr;
  table_allocator() noexcept = default;
  explicit table_allocator(table_arena* a) noexcept : arena(a) {}
  template <class U>
  table_allocator(const table_allocator<U>& o) noexcept : arena(o.arena) {}
  T* allocate(std::size_t n) { return arena ? static_cast<T*>(arena->allocate(n * sizeof(T))) : std::allocator<T>().allocate(n); }
  void deallocate(T* p, std::size_t n) noexcept {
    if (!arena) std::allocator<T>().deallocate(p, n);
  }
  table_allocator select_on_container_copy_construction() const noexcept { return {}; }
  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
  template <class U>
  bool operator==(const table_allocator<U>& o) const noexcept {
    return arena == o.arena;
  }
};

/// The tables of one context model laid out for the decoders, built once per model: column c
/// decodes with entry64[col_off[c] + slot] (entry32 the same in compact form when every table
/// fits it, else empty); col_off has cols + rans_max_lanes entries, col_off[c] = col_off[c % cols].
struct rans_ctx_decoder {
  int prob_bits = rans_min_prob_bits;
  size_t cols = 0;
  size_t alphabet = 0;  ///< the largest alphabet of the tables
  uint32_t sym_bound = 0;  ///< every decoded symbol is below it (one past the highest with a nonzero frequency)
  std::vector<uint64_t, table_allocator<uint64_t>> entry64;
  std::vector<uint32_t, table_allocator<uint32_t>> entry32;
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
  {  // one allocation for the tables in use (growing by insert copied them log2(n) times)
    std::vector<char> used(tables.size(), 0);
    size_t distinct = 0;
    for (size_t c = 0; c < cols; ++c) distinct += used[table_of_col[c]] ? 0 : (used[table_of_col[c]] = 1);
    if (distinct * S <= (size_t{1} << 31)) d.entry64.reserve(distinct * S);
  }
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
  d.sym_bound = static_cast<uint32_t>(d.alphabet);  // decode tables keep no frequencies: the alphabet bounds them
  d.col_off.resize(cols + rans_max_lanes);
  for (size_t c = 0; c < d.col_off.size(); ++c) d.col_off[c] = base[c % cols];
  return d;
}

/// The same layout built straight from frequency tables (what a loaded model holds): compact entries
/// only when every table fits them (prob_bits <= 12, alphabet <= 256), which is 4x less memory to fill
/// than a decode_table per table plus its 64-bit copy — the decoder set-up of a container with many
/// contexts, the fixed cost of a range decode, was building those. Same checks as the form above.
/// The tables come from `arena` when one is given (it must outlive the decoder).
inline rans_ctx_decoder make_rans_ctx_decoder(std::span<const freq_table> tables, std::span<const uint32_t> table_of_col,
                                              const char* where = "make_rans_ctx_decoder", table_arena* arena = nullptr) {
  const size_t cols = table_of_col.size();
  detail::check_ctx(where, cols, cols, tables.size());
  for (size_t c = 0; c < cols; ++c)
    if (table_of_col[c] >= tables.size())
      throw_bad_input(where, "table_of_col[" + std::to_string(c) + "]", "< " + std::to_string(tables.size()),
                      std::to_string(table_of_col[c]));
  rans_ctx_decoder d;
  d.entry64 = decltype(d.entry64)(table_allocator<uint64_t>(arena));
  d.entry32 = decltype(d.entry32)(table_allocator<uint32_t>(arena));
  d.cols = cols;
  d.prob_bits = tables[table_of_col[0]].prob_bits;
  detail::check_prob_bits(where, d.prob_bits);
  const size_t S = size_t{1} << d.prob_bits;
  constexpr uint32_t unused = ~0u;
  std::vector<uint32_t> slot_of(tables.size(), unused);
  std::vector<uint32_t> order;  // distinct tables in first use
  for (size_t c = 0; c < cols; ++c) {
    const uint32_t k = table_of_col[c];
    if (slot_of[k] != unused) continue;
    const freq_table& t = tables[k];
    validate(t, where);
    if (t.prob_bits != d.prob_bits)
      throw_bad_input(where, "tables[" + std::to_string(k) + "].prob_bits", std::to_string(d.prob_bits) + " (as the first table)",
                      std::to_string(t.prob_bits));
    if ((order.size() + 1) * S > (size_t{1} << 31)) throw_bad_input(where, "tables", "at most 2^31 decode entries in all", "more");
    slot_of[k] = static_cast<uint32_t>(order.size() * S);
    order.push_back(k);
    d.alphabet = std::max(d.alphabet, t.alphabet());
    for (size_t s = t.alphabet(); s > d.sym_bound; --s)
      if (t.freq[s - 1] != 0) {
        d.sym_bound = static_cast<uint32_t>(s);
        break;
      }
  }
  const bool compact = d.prob_bits <= rans_dec32_max_prob_bits && d.alphabet <= rans_dec32_max_alphabet;
  const size_t total = order.size() * S;
  if (compact) {
    d.entry32.resize(total);  // no 64-bit table: the scalar loops read the compact one
    for (size_t i = 0; i < order.size(); ++i) {
      const freq_table& t = tables[order[i]];
      uint32_t* e = d.entry32.data() + i * S;
      for (size_t s = 0; s < t.alphabet(); ++s)
        for (uint32_t k = 0; k < t.freq[s]; ++k) e[t.start[s] + k] = rans_dec32_pack(static_cast<uint32_t>(s), t.freq[s], k);
    }
  } else {
    d.entry64.resize(total);
    for (size_t i = 0; i < order.size(); ++i) {
      const freq_table& t = tables[order[i]];
      uint64_t* e = d.entry64.data() + i * S;
      for (size_t s = 0; s < t.alphabet(); ++s)
        for (uint32_t k = 0; k < t.freq[s]; ++k) e[t.start[s] + k] = rans_dec_entry_pack(static_cast<uint32_t>(s), t.freq[s], k);
    }
  }
  d.col_off.resize(cols + rans_max_lanes);
  for (size_t c = 0; c < d.col_off.size(); ++c) d.col_off[c] = slot_of[table_of_col[c % cols]];
  return d;
}

/// Decode n symbols, symbol i with column i % d.cols's table. Sym = uint8_t requires alphabets of at
/// most 256. simd picks the decoder (tests); every choice gives the same output and errors.
template <class Sym, class = std::enable_if_t<detail::is_rans_symbol_v<Sym>>>
void rans_decode_ctx(const uint8_t* data, size_t size, const rans_ctx_decoder& d, int lanes, Sym* out, size_t n,
                     detail::rans_simd simd = detail::rans_simd::best) {
  const char* where = "rans_decode_ctx";
  // Two forms: 64-bit entries (with a compact copy when the tables fit it), or compact entries only.
  const bool only32 = d.entry64.empty() && !d.entry32.empty();
  const size_t entries = only32 ? d.entry32.size() : d.entry64.size();
  if (d.cols == 0 || d.col_off.size() != d.cols + rans_max_lanes || d.prob_bits < rans_min_prob_bits || d.prob_bits > rans_max_prob_bits ||
      entries == 0 || entries % (size_t{1} << d.prob_bits) != 0 || (!only32 && !d.entry32.empty() && d.entry32.size() != d.entry64.size()))
    throw_bad_input(where, "decoder", "a layout built by make_rans_ctx_decoder", "an inconsistent one");
  for (size_t c = 0; c < d.cols; ++c)
    if (d.col_off[c] > entries - (size_t{1} << d.prob_bits)) throw_bad_input(where, "decoder", "a layout built by make_rans_ctx_decoder", "an inconsistent one");
  detail::check_output_alphabet<Sym>(where, d.alphabet);
  const detail::rans_fast_tables ft{d.entry32.data(), d.col_off.data()};
  const detail::rans_fast_tables* pft = d.entry32.empty() ? nullptr : &ft;
  const auto run = [&](const auto* entries_base) {
    using Entry = std::remove_cv_t<std::remove_pointer_t<decltype(entries_base)>>;
    if (d.cols == 1) {
      const Entry* tab = entries_base + d.col_off[0];
      detail::rans_decode_impl<Sym, false, Entry>(data, size, 1, &tab, d.prob_bits, lanes, out, n, where, simd, pft);
      return;
    }
    std::vector<const Entry*> tabs(d.cols);
    for (size_t c = 0; c < d.cols; ++c) tabs[c] = entries_base + d.col_off[c];
    detail::rans_decode_impl<Sym, true, Entry>(data, size, d.cols, tabs.data(), d.prob_bits, lanes, out, n, where, simd, pft);
  };
  if (only32)
    run(d.entry32.data());
  else
    run(d.entry64.data());
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
