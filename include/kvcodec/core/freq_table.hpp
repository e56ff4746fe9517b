// kvcodec/core/freq_table.hpp — rANS frequency tables: normalisation of a histogram, exact code
// lengths, a compact serialisation, a discretised Laplace model, and the encoder/decoder tables.
//
// Invariant of a valid freq_table: 10 <= prob_bits <= 15, 1 <= alphabet <= 4096, the frequencies sum
// to exactly 2^prob_bits and each lies in [0, 2^prob_bits]; start[s] is the exclusive prefix sum.
// Normalisation gives every symbol with a nonzero count a frequency >= 1 and minimises the code length
// sum_s count_s * (prob_bits - log2 freq_s): proportional rounding, then greedy unit moves by the
// least Kullback-Leibler cost until no single move between two symbols lowers the length (for this
// separable convex cost that local optimum is the global one).
//
// Serialised format (all integers LEB128 varints, at most 3 bytes each, no overlong encodings):
//   prob_bits, alphabet - 1, then runs until the alphabet is covered:
//     z       number of zero-frequency symbols (may be 0); stop when they reach the alphabet end
//     k - 1   number k >= 1 of nonzero symbols that follow, then k values freq - 1
//   The parser rejects prob_bits outside [10, 15], alphabet outside [1, 4096], runs past the
//   alphabet, frequencies above 2^prob_bits and a sum other than 2^prob_bits (error_kind::corrupt).
// The Laplace builder discretises a Laplace(mean, scale) density on the bins [k - 1/2, k + 1/2)
// (tails folded into the end symbols) and normalises it with every symbol >= 1, so any symbol of the
// alphabet can be coded; it is deterministic given IEEE double arithmetic and the same libm.
#pragma once

#include "kvcodec/core/error.hpp"
#include "kvcodec/core/rans.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <queue>
#include <string>
#include <utility>
#include <vector>

namespace kvcodec {

struct freq_table {
  int prob_bits = rans_min_prob_bits;
  std::vector<uint32_t> freq;   ///< one per symbol of the alphabet
  std::vector<uint32_t> start;  ///< exclusive prefix sums of freq

  size_t alphabet() const noexcept { return freq.size(); }
  uint32_t total() const noexcept { return 1u << prob_bits; }
};

/// Division-free encoder table: one rans_enc_symbol per symbol of the alphabet.
struct encode_table {
  int prob_bits = rans_min_prob_bits;
  std::vector<rans_enc_symbol> sym;
  size_t alphabet() const noexcept { return sym.size(); }
};

/// Decoder table: 2^prob_bits packed entries (see rans_dec_entry_pack).
struct decode_table {
  int prob_bits = rans_min_prob_bits;
  size_t alphabet = 0;
  std::vector<uint64_t> entry;
};

namespace detail {

inline void check_prob_bits(const std::string& where, int prob_bits) {
  if (prob_bits < rans_min_prob_bits || prob_bits > rans_max_prob_bits)
    throw_bad_input(where, "prob_bits", "10..15", std::to_string(prob_bits));
}

inline void check_alphabet(const std::string& where, size_t alphabet) {
  if (alphabet < 1 || alphabet > rans_max_alphabet)
    throw_bad_input(where, "alphabet", "1..4096", std::to_string(alphabet));
}

inline void fill_starts(freq_table& t) {
  t.start.assign(t.freq.size(), 0);
  uint32_t acc = 0;
  for (size_t s = 0; s < t.freq.size(); ++s) {
    t.start[s] = acc;
    acc += t.freq[s];
  }
}

/// Cost in bits of lowering freq f (> 1) by one for weight w; increasing is gain of the same form.
inline double dec_cost(double w, uint32_t f) { return w * std::log2(static_cast<double>(f) / (f - 1)); }
inline double inc_gain(double w, uint32_t f) { return w * std::log2(static_cast<double>(f + 1) / f); }

/// Normalise nonnegative weights to integer frequencies summing to 2^prob_bits. Symbols with weight
/// > 0 (or every symbol when keep_all) get >= 1; the others get 0.
inline freq_table normalize_weights(const double* w, size_t alphabet, int prob_bits, bool keep_all,
                                    const std::string& where) {
  check_prob_bits(where, prob_bits);
  check_alphabet(where, alphabet);
  const uint32_t total = 1u << prob_bits;
  freq_table t;
  t.prob_bits = prob_bits;
  t.freq.assign(alphabet, 0);
  double sum = 0;
  size_t present = 0;
  for (size_t s = 0; s < alphabet; ++s) {
    if (!(w[s] >= 0) || !std::isfinite(w[s]))
      throw_bad_input(where, "weight[" + std::to_string(s) + "]", "finite and >= 0", std::to_string(w[s]));
    sum += w[s];
    if (keep_all || w[s] > 0) ++present;
  }
  if (present > total)
    throw_bad_input(where, "distinct symbols", "at most 2^prob_bits = " + std::to_string(total),
                    std::to_string(present));
  if (present == 0) {
    t.freq[0] = total;
    fill_starts(t);
    return t;
  }
  // A tiny weight for kept zero-weight symbols keeps the cost model strictly convex for them.
  std::vector<double> wt(w, w + alphabet);
  if (keep_all) {
    const double floor_w = sum > 0 ? sum * 1e-12 : 1.0;
    for (double& v : wt) v = std::max(v, floor_w);
    sum = 0;
    for (double v : wt) sum += v;
  }
  int64_t assigned = 0;
  for (size_t s = 0; s < alphabet; ++s) {
    if (wt[s] <= 0) continue;
    const double exact = wt[s] * total / sum;
    uint32_t f = static_cast<uint32_t>(std::floor(exact));
    if (f < 1) f = 1;
    if (f > total) f = total;
    t.freq[s] = f;
    assigned += f;
  }
  // Heaps of (cost, symbol) with the cost computed once per push (a comparator that recomputes the two
  // log2 costs on every comparison dominated model fitting); same order as comparing costs then symbols.
  using entry = std::pair<double, size_t>;
  const auto cmp_dec = [](const entry& a, const entry& b) {  // min-heap by cost of decrement
    return a.first > b.first || (a.first == b.first && a.second > b.second);
  };
  const auto cmp_inc = [](const entry& a, const entry& b) {  // max-heap by gain of increment
    return a.first < b.first || (a.first == b.first && a.second > b.second);
  };
  if (assigned > total) {
    std::priority_queue<entry, std::vector<entry>, decltype(cmp_dec)> heap(cmp_dec);
    for (size_t s = 0; s < alphabet; ++s)
      if (t.freq[s] > 1) heap.push({dec_cost(wt[s], t.freq[s]), s});
    while (assigned > total) {
      const size_t s = heap.top().second;
      heap.pop();
      --t.freq[s];
      --assigned;
      if (t.freq[s] > 1) heap.push({dec_cost(wt[s], t.freq[s]), s});
    }
  } else if (assigned < total) {
    std::priority_queue<entry, std::vector<entry>, decltype(cmp_inc)> heap(cmp_inc);
    for (size_t s = 0; s < alphabet; ++s)
      if (t.freq[s] > 0) heap.push({inc_gain(wt[s], t.freq[s]), s});
    while (assigned < total) {
      const size_t s = heap.top().second;
      heap.pop();
      ++t.freq[s];
      ++assigned;
      heap.push({inc_gain(wt[s], t.freq[s]), s});
    }
  }
  // Exchange pass: move one unit from the cheapest decrement to the best increment while it helps. The
  // per-symbol gain and cost are cached and recomputed only for the two symbols a move changes.
  std::vector<double> gain(alphabet, 0.0), cost(alphabet, std::numeric_limits<double>::infinity());
  const auto refresh = [&](size_t s) {
    gain[s] = t.freq[s] == 0 ? 0.0 : inc_gain(wt[s], t.freq[s]);
    cost[s] = t.freq[s] > 1 ? dec_cost(wt[s], t.freq[s]) : std::numeric_limits<double>::infinity();
  };
  for (size_t s = 0; s < alphabet; ++s) refresh(s);
  for (size_t iter = 0; iter < 4 * alphabet + 64; ++iter) {
    size_t best_inc = alphabet, best_dec = alphabet;
    double g = 0, c = std::numeric_limits<double>::infinity();
    for (size_t s = 0; s < alphabet; ++s) {
      if (t.freq[s] == 0) continue;
      if (gain[s] > g) g = gain[s], best_inc = s;
      if (t.freq[s] > 1 && cost[s] < c) c = cost[s], best_dec = s;
    }
    if (best_inc == alphabet || best_dec == alphabet || best_inc == best_dec) break;
    if (!(g > c * (1 + 1e-12) + 1e-12)) break;
    ++t.freq[best_inc];
    --t.freq[best_dec];
    refresh(best_inc);
    refresh(best_dec);
  }
  fill_starts(t);
  return t;
}

inline void put_varint(std::vector<uint8_t>& out, uint32_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<uint8_t>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<uint8_t>(v));
}

inline uint32_t get_varint(const uint8_t* data, size_t size, size_t& pos, const std::string& where) {
  uint32_t v = 0;
  for (int i = 0; i < 3; ++i) {
    if (pos >= size) throw_corrupt(where, "frequency table truncated at byte " + std::to_string(pos));
    const uint8_t b = data[pos++];
    v |= static_cast<uint32_t>(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) {
      if (i > 0 && b == 0) throw_corrupt(where, "overlong varint ending at byte " + std::to_string(pos - 1));
      return v;
    }
  }
  throw_corrupt(where, "varint longer than 3 bytes ending at byte " + std::to_string(pos - 1));
}

}  // namespace detail

/// Throws bad_input unless t satisfies the freq_table invariant.
inline void validate(const freq_table& t, const std::string& where = "freq_table") {
  detail::check_prob_bits(where, t.prob_bits);
  detail::check_alphabet(where, t.alphabet());
  if (t.start.size() != t.freq.size())
    throw_bad_input(where, "start", "size " + std::to_string(t.freq.size()), "size " + std::to_string(t.start.size()));
  uint64_t acc = 0;
  for (size_t s = 0; s < t.freq.size(); ++s) {
    if (t.start[s] != acc)
      throw_bad_input(where, "start[" + std::to_string(s) + "]", std::to_string(acc), std::to_string(t.start[s]));
    acc += t.freq[s];
  }
  if (acc != t.total())
    throw_bad_input(where, "sum of freq", std::to_string(t.total()), std::to_string(acc));
}

/// Table from explicit frequencies (must sum to 2^prob_bits); throws bad_input otherwise.
inline freq_table make_freq_table(std::vector<uint32_t> freq, int prob_bits) {
  freq_table t;
  t.prob_bits = prob_bits;
  t.freq = std::move(freq);
  detail::fill_starts(t);
  validate(t, "make_freq_table");
  return t;
}

/// Normalise a histogram. Every symbol with a nonzero count gets freq >= 1; an all-zero histogram
/// gives symbol 0 the whole range (a valid table for coding zero symbols). Throws bad_input when more
/// than 2^prob_bits symbols are present.
inline freq_table normalize_freqs(const uint32_t* counts, size_t alphabet, int prob_bits) {
  detail::check_alphabet("normalize_freqs", alphabet);
  std::vector<double> w(counts, counts + alphabet);
  return detail::normalize_weights(w.data(), alphabet, prob_bits, false, "normalize_freqs");
}

inline freq_table normalize_freqs(const std::vector<uint32_t>& counts, int prob_bits) {
  detail::check_alphabet("normalize_freqs", counts.size());
  return normalize_freqs(counts.data(), counts.size(), prob_bits);
}

/// Histogram of symbols; throws bad_input on a symbol >= alphabet.
template <class Sym>
inline std::vector<uint32_t> histogram(const Sym* sym, size_t n, size_t alphabet) {
  detail::check_alphabet("histogram", alphabet);
  std::vector<uint32_t> h(alphabet, 0);
  for (size_t i = 0; i < n; ++i) {
    if (sym[i] >= alphabet)
      throw_bad_input("histogram", "symbol[" + std::to_string(i) + "]", "< " + std::to_string(alphabet),
                      std::to_string(sym[i]));
    ++h[sym[i]];
  }
  return h;
}

namespace detail {
/// c * log2(c) for c < 4096 (a table: model selection evaluates it for every bin of every column).
inline double c_log2_c(uint64_t c) {
  static const std::vector<double> table = [] {
    std::vector<double> t(4096, 0.0);
    for (size_t i = 1; i < t.size(); ++i) t[i] = static_cast<double>(i) * std::log2(static_cast<double>(i));
    return t;
  }();
  return c < table.size() ? table[c] : static_cast<double>(c) * std::log2(static_cast<double>(c));
}
}  // namespace detail

/// Empirical entropy of a histogram in bits: sum -c * log2(c / n) = n log2 n - sum c log2 c.
inline double entropy_bits(const uint32_t* counts, size_t alphabet) {
  uint64_t n = 0;
  double sum = 0;
  for (size_t s = 0; s < alphabet; ++s) {
    n += counts[s];
    if (counts[s]) sum += detail::c_log2_c(counts[s]);
  }
  return n == 0 ? 0.0 : std::max(0.0, detail::c_log2_c(n) - sum);
}

/// Exact ideal code length in bits of the histogram under the table: sum c * (prob_bits - log2 f);
/// +infinity when a counted symbol has frequency 0 or lies outside the table's alphabet.
inline double code_length_bits(const uint32_t* counts, size_t alphabet, const freq_table& t) {
  double bits = 0;
  for (size_t s = 0; s < alphabet; ++s) {
    if (!counts[s]) continue;
    if (s >= t.alphabet() || t.freq[s] == 0) return std::numeric_limits<double>::infinity();
    bits += counts[s] * (t.prob_bits - std::log2(static_cast<double>(t.freq[s])));
  }
  return bits;
}

/// Discretised Laplace(mean, scale) over symbols 0 .. alphabet-1; every symbol gets freq >= 1.
inline freq_table laplace_table(double mean, double scale, size_t alphabet, int prob_bits) {
  const std::string where = "laplace_table";
  detail::check_prob_bits(where, prob_bits);
  detail::check_alphabet(where, alphabet);
  if (!std::isfinite(mean)) throw_bad_input(where, "mean", "finite", std::to_string(mean));
  if (!(scale > 0) || !std::isfinite(scale)) throw_bad_input(where, "scale", "finite and > 0", std::to_string(scale));
  if (alphabet > (size_t{1} << prob_bits))
    throw_bad_input(where, "alphabet", "at most 2^prob_bits = " + std::to_string(1u << prob_bits),
                    std::to_string(alphabet));
  const auto cdf = [&](double x) {
    const double z = (x - mean) / scale;
    return z < 0 ? 0.5 * std::exp(z) : 1.0 - 0.5 * std::exp(-z);
  };
  std::vector<double> w(alphabet);
  for (size_t k = 0; k < alphabet; ++k) {
    const double lo = k == 0 ? 0.0 : cdf(static_cast<double>(k) - 0.5);
    const double hi = k + 1 == alphabet ? 1.0 : cdf(static_cast<double>(k) + 0.5);
    w[k] = std::max(hi - lo, 0.0);
  }
  return detail::normalize_weights(w.data(), alphabet, prob_bits, true, where);
}

/// Serialise a valid table (format in the header comment).
inline std::vector<uint8_t> serialize(const freq_table& t) {
  validate(t, "serialize");
  std::vector<uint8_t> out;
  detail::put_varint(out, static_cast<uint32_t>(t.prob_bits));
  detail::put_varint(out, static_cast<uint32_t>(t.alphabet() - 1));
  size_t pos = 0;
  const size_t a = t.alphabet();
  while (pos < a) {
    size_t z = 0;
    while (pos + z < a && t.freq[pos + z] == 0) ++z;
    detail::put_varint(out, static_cast<uint32_t>(z));
    pos += z;
    if (pos == a) break;
    size_t k = 0;
    while (pos + k < a && t.freq[pos + k] != 0) ++k;
    detail::put_varint(out, static_cast<uint32_t>(k - 1));
    for (size_t i = 0; i < k; ++i) detail::put_varint(out, t.freq[pos + i] - 1);
    pos += k;
  }
  return out;
}

/// Parse a serialised table starting at data[0]; *consumed (if given) receives its length in bytes.
/// Throws error_kind::corrupt on any violation of the format.
inline freq_table parse_freq_table(const uint8_t* data, size_t size, size_t* consumed = nullptr) {
  const std::string where = "freq_table";
  size_t pos = 0;
  const uint32_t pb = detail::get_varint(data, size, pos, where);
  if (pb < static_cast<uint32_t>(rans_min_prob_bits) || pb > static_cast<uint32_t>(rans_max_prob_bits))
    throw_corrupt(where, "prob_bits: expected 10..15, found " + std::to_string(pb));
  const uint32_t a = detail::get_varint(data, size, pos, where) + 1;
  if (a > rans_max_alphabet) throw_corrupt(where, "alphabet: expected 1..4096, found " + std::to_string(a));
  freq_table t;
  t.prob_bits = static_cast<int>(pb);
  t.freq.assign(a, 0);
  const uint32_t total = 1u << pb;
  uint64_t sum = 0;
  size_t s = 0;
  while (s < a) {
    const uint32_t z = detail::get_varint(data, size, pos, where);
    if (z > a - s) throw_corrupt(where, "zero run of " + std::to_string(z) + " passes the alphabet end at symbol " + std::to_string(s));
    s += z;
    if (s == a) break;
    const uint32_t k = detail::get_varint(data, size, pos, where) + 1;
    if (k > a - s) throw_corrupt(where, "run of " + std::to_string(k) + " frequencies passes the alphabet end at symbol " + std::to_string(s));
    for (uint32_t i = 0; i < k; ++i, ++s) {
      const uint32_t f = detail::get_varint(data, size, pos, where) + 1;
      if (f > total) throw_corrupt(where, "freq[" + std::to_string(s) + "]: expected <= " + std::to_string(total) + ", found " + std::to_string(f));
      t.freq[s] = f;
      sum += f;
    }
  }
  if (sum != total)
    throw_corrupt(where, "sum of frequencies: expected " + std::to_string(total) + ", found " + std::to_string(sum));
  detail::fill_starts(t);
  if (consumed) *consumed = pos;
  return t;
}

inline freq_table parse_freq_table(const std::vector<uint8_t>& bytes) {
  size_t used = 0;
  freq_table t = parse_freq_table(bytes.data(), bytes.size(), &used);
  if (used != bytes.size())
    throw_corrupt("freq_table", "trailing bytes: expected " + std::to_string(used) + " bytes, found " + std::to_string(bytes.size()));
  return t;
}

inline encode_table make_encode_table(const freq_table& t) {
  validate(t, "make_encode_table");
  encode_table e;
  e.prob_bits = t.prob_bits;
  e.sym.resize(t.alphabet());
  for (size_t s = 0; s < t.alphabet(); ++s) e.sym[s] = rans_enc_symbol_init(t.start[s], t.freq[s], t.prob_bits);
  return e;
}

inline decode_table make_decode_table(const freq_table& t) {
  validate(t, "make_decode_table");
  decode_table d;
  d.prob_bits = t.prob_bits;
  d.alphabet = t.alphabet();
  d.entry.resize(t.total());
  for (size_t s = 0; s < t.alphabet(); ++s)
    for (uint32_t k = 0; k < t.freq[s]; ++k)
      d.entry[t.start[s] + k] = rans_dec_entry_pack(static_cast<uint32_t>(s), t.freq[s], k);
  return d;
}

}  // namespace kvcodec
