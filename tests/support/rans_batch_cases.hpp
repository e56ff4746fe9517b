// Test support: random interleaved-rANS streams from the CPU encoder (several context tables, a
// column map) and their batch layout, for the batch decoder's host emulation (tests/core) and its
// CUDA kernel (tests/cuda), which must both reproduce the symbols.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <type_traits>
#include <vector>

#include "kvcodec/core/freq_table.hpp"
#include "kvcodec/core/rans_batch.hpp"
#include "kvcodec/cpu/rans_codec.hpp"

namespace kvcodec::test_support {


/// Tables of a geometric-like shape with a per-table centre, so columns really differ.
inline std::vector<freq_table> make_tables(std::size_t count, std::size_t alphabet, int prob_bits, std::mt19937_64& rng) {
  std::vector<freq_table> t;
  for (std::size_t k = 0; k < count; ++k) {
    std::vector<double> w(alphabet);
    const double centre = static_cast<double>(rng() % alphabet), width = 1.0 + static_cast<double>(rng() % 8);
    for (std::size_t s = 0; s < alphabet; ++s) w[s] = std::exp(-std::abs(static_cast<double>(s) - centre) / width) + 1e-3;
    t.push_back(detail::normalize_weights(w.data(), alphabet, prob_bits, true, "test"));
  }
  return t;
}

/// Symbols drawn from each column's table.
inline std::vector<std::uint16_t> draw(const std::vector<freq_table>& tabs, const std::vector<std::uint32_t>& table_of_col, std::size_t n,
                                std::mt19937_64& rng) {
  std::vector<std::uint16_t> s(n);
  for (std::size_t i = 0; i < n; ++i) {
    const freq_table& t = tabs[table_of_col[i % table_of_col.size()]];
    const std::uint32_t slot = static_cast<std::uint32_t>(rng() % t.total());
    std::size_t k = 0;
    while (t.start[k] + t.freq[k] <= slot) ++k;
    s[i] = static_cast<std::uint16_t>(k);
  }
  return s;
}

struct case_data {
  std::vector<std::uint8_t> bytes;
  std::vector<std::uint16_t> symbols;
  rans_ctx_decoder dec;
  std::vector<freq_table> tabs;    ///< the tables
  std::vector<std::uint32_t> toc;  ///< the table of each column
  std::size_t cols = 1;
  int lanes = 32;
};

inline case_data make_case(std::size_t n, std::size_t cols, std::size_t ntab, std::size_t alphabet, int prob_bits, int lanes, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  case_data c;
  c.cols = cols;
  c.lanes = lanes;
  const auto tabs = make_tables(ntab, alphabet, prob_bits, rng);
  std::vector<std::uint32_t> toc(cols);
  for (auto& v : toc) v = static_cast<std::uint32_t>(rng() % ntab);
  c.symbols = draw(tabs, toc, n, rng);
  c.bytes = rans_encode_ctx(c.symbols.data(), n, cols, std::span<const freq_table>(tabs), std::span<const std::uint32_t>(toc), lanes);
  c.dec = make_rans_ctx_decoder(std::span<const freq_table>(tabs), std::span<const std::uint32_t>(toc));
  c.tabs = tabs;
  c.toc = toc;
  return c;
}

/// Adds c's model and stream to the builder (compact or 64-bit entries).
template <class Entry>
void add(rans_batch_builder<Entry>& b, const case_data& c, std::span<const std::uint8_t> bytes) {
  std::vector<Entry> e;
  if constexpr (std::is_same_v<Entry, std::uint32_t>) {
    e.assign(c.dec.entry32.begin(), c.dec.entry32.end());
  } else if (!c.dec.entry64.empty()) {
    e.assign(c.dec.entry64.begin(), c.dec.entry64.end());
  } else {  // the CPU decoder keeps only the compact form when every table fits it
    for (std::uint32_t v : c.dec.entry32) e.push_back(rans_dec_entry_pack(rans_dec32_symbol(v), rans_dec32_freq(v), rans_dec32_offset(v)));
  }
  const std::uint32_t base = b.add_model(std::span<const Entry>(e), std::span<const std::uint32_t>(c.dec.col_off.data(), c.cols), c.dec.prob_bits);
  b.add_stream(bytes, c.symbols.size(), c.lanes, base, static_cast<std::uint32_t>(c.cols), c.dec.prob_bits);
}

/// The cases as one encode batch (core/rans_batch.hpp), host arrays: symbols a byte each, or 16-bit
/// when wide; each case's tables once, its columns mapped onto them.
struct encode_layout {
  std::vector<std::uint8_t> sym;
  std::vector<rans_enc_symbol> tables;
  std::vector<std::uint32_t> col_tab, col_alpha;
  std::vector<rans_encode_stream> streams;
  std::uint64_t words = 0, states = 0;
  std::uint32_t max_lanes = 32;

  /// Arguments over host arrays (for the emulation), writing into the given outputs.
  rans_encode_args host_args(std::vector<std::uint16_t>& w, std::vector<std::uint32_t>& st, std::vector<std::uint64_t>& count, std::vector<std::uint32_t>& bad) const {
    w.assign(static_cast<std::size_t>(words), 0);
    st.assign(static_cast<std::size_t>(states), 0);
    count.assign(streams.size(), 0);
    bad.assign(streams.size(), 0);
    return {streams.data(), streams.size(), max_lanes, sym.data(), tables.data(), col_tab.data(), col_alpha.data(), w.data(), st.data(), count.data(), bad.data()};
  }
  /// Stream k in core/rans.hpp's layout from the kernel's outputs, through rans_stream_gather_op.
  std::vector<std::uint8_t> stream_bytes(std::size_t k, const std::vector<std::uint16_t>& w, const std::vector<std::uint32_t>& st,
                                         const std::vector<std::uint64_t>& count) const {
    const rans_encode_stream& s = streams[k];
    const rans_gather_block g{s.state_offset, s.word_offset + s.n - count[k], count[k], 0, s.lanes};
    std::vector<std::uint8_t> out(4 * s.lanes + 2 * count[k]);
    const rans_stream_gather_op op{st.data(), w.data(), out.data()};
    for (std::uint64_t i = 0; i < op.count(g); ++i) op(g, i);
    return out;
  }
};

inline encode_layout make_encode_layout(const std::vector<case_data>& cases, bool wide) {
  encode_layout L;
  for (const auto& c : cases) {
    std::vector<std::uint32_t> first;
    for (const auto& t : c.tabs) {
      first.push_back(static_cast<std::uint32_t>(L.tables.size()));
      const encode_table e = make_encode_table(t);
      L.tables.insert(L.tables.end(), e.sym.begin(), e.sym.end());
    }
    const auto col_base = static_cast<std::uint32_t>(L.col_tab.size());
    for (std::size_t cc = 0; cc < c.cols; ++cc) {
      L.col_tab.push_back(first[c.toc[cc]]);
      L.col_alpha.push_back(static_cast<std::uint32_t>(c.tabs[c.toc[cc]].freq.size()));
    }
    rans_encode_stream s;
    s.sym_first = L.sym.size();
    s.n = c.symbols.size();
    s.word_offset = L.words;
    s.state_offset = L.states;
    s.lanes = static_cast<std::uint32_t>(c.lanes);
    s.cols = static_cast<std::uint32_t>(c.cols);
    s.col_base = col_base;
    s.wide = wide ? 1 : 0;
    for (std::uint16_t v : c.symbols) {
      L.sym.push_back(static_cast<std::uint8_t>(v));
      if (wide) L.sym.push_back(static_cast<std::uint8_t>(v >> 8));
    }
    L.streams.push_back(s);
    L.words += s.n;
    L.states += s.lanes;
    L.max_lanes = std::max(L.max_lanes, s.lanes);
  }
  return L;
}

}  // namespace kvcodec::test_support
