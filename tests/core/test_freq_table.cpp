// Tests of kvcodec/core/freq_table.hpp: normalisation invariants and optimality, code lengths,
// serialisation round trips and corrupt inputs, the Laplace builder and the coder tables.
#include <doctest/doctest.h>

#include "kvcodec/core/freq_table.hpp"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_freq_table {

using namespace kvcodec;

namespace {

void check_invariants(const freq_table& t, const std::vector<uint32_t>& counts) {
  REQUIRE(t.alphabet() == counts.size());
  uint64_t sum = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    if (counts[s] > 0) REQUIRE(t.freq[s] >= 1);
    else REQUIRE(t.freq[s] == 0);
    REQUIRE(t.start[s] == sum);
    sum += t.freq[s];
  }
  REQUIRE(sum == t.total());
  CHECK_NOTHROW(validate(t));
}

/// No single unit move between two present symbols lowers the code length.
void check_locally_optimal(const freq_table& t, const std::vector<uint32_t>& counts) {
  double best_gain = 0, least_cost = INFINITY;
  for (size_t s = 0; s < counts.size(); ++s) {
    if (!counts[s]) continue;
    best_gain = std::max(best_gain, counts[s] * std::log2((t.freq[s] + 1.0) / t.freq[s]));
    if (t.freq[s] > 1) least_cost = std::min(least_cost, counts[s] * std::log2(t.freq[s] / (t.freq[s] - 1.0)));
  }
  CHECK(best_gain <= least_cost * (1 + 1e-9) + 1e-9);
}

bool throws_kind(auto&& fn, error_kind kind) {
  try {
    fn();
  } catch (const error& e) {
    return e.kind() == kind;
  }
  return false;
}

}  // namespace

TEST_CASE("normalisation invariants over random / skewed and degenerate histograms") {
  std::mt19937 rng(11);
  for (int m = rans_min_prob_bits; m <= rans_max_prob_bits; ++m) {
    CAPTURE(m);
    {  // "random"
      for (size_t a : {1u, 2u, 3u, 17u, 256u, 1000u}) {
        if (a > (1u << m)) continue;
        std::vector<uint32_t> c(a);
        for (auto& v : c) v = rng() % 3 == 0 ? 0 : rng() % 100000;
        c[rng() % a] += 1;
        const freq_table t = normalize_freqs(c, m);
        check_invariants(t, c);
        check_locally_optimal(t, c);
      }
    }
    {  // "very skewed: one huge count and many count-1 symbols"
      std::vector<uint32_t> c(1000, 1);
      c[500] = 4000000000u;
      const freq_table t = normalize_freqs(c, m);
      check_invariants(t, c);
      check_locally_optimal(t, c);
      CHECK(t.freq[500] == t.total() - 999);
    }
    {  // "a single present symbol gets the whole range"
      std::vector<uint32_t> c(4096, 0);
      c[4095] = 3;
      const freq_table t = normalize_freqs(c, m);
      check_invariants(t, c);
      CHECK(t.freq[4095] == t.total());
    }
    {  // "exactly 2^prob_bits present symbols all get 1"
      if (m > 12) continue;  // 2^prob_bits symbols would exceed the 4096 alphabet
      std::vector<uint32_t> c(size_t{1} << m, 0);
      for (size_t s = 0; s < c.size(); ++s) c[s] = 1 + static_cast<uint32_t>(s);
      const freq_table t = normalize_freqs(c, m);
      check_invariants(t, c);
      for (uint32_t f : t.freq) REQUIRE(f == 1);
    }
  }
}

TEST_CASE("normalisation: full alphabet of 4096 at prob_bits 12 and 15") {
  std::vector<uint32_t> c(4096);
  for (size_t s = 0; s < c.size(); ++s) c[s] = 1 + static_cast<uint32_t>((s * 7919) % 1000);
  for (int m : {12, 15}) {
    const freq_table t = normalize_freqs(c, m);
    check_invariants(t, c);
    check_locally_optimal(t, c);
  }
}

TEST_CASE("normalisation rejects too many symbols and bad parameters") {
  std::vector<uint32_t> c(1025, 1);
  CHECK(throws_kind([&] { normalize_freqs(c, 10); }, error_kind::bad_input));
  CHECK_NOTHROW(normalize_freqs(c, 11));
  CHECK(throws_kind([&] { normalize_freqs(c, 9); }, error_kind::bad_input));
  CHECK(throws_kind([&] { normalize_freqs(c, 16); }, error_kind::bad_input));
  std::vector<uint32_t> big(4097, 1);
  CHECK(throws_kind([&] { normalize_freqs(big, 15); }, error_kind::bad_input));
  std::vector<uint32_t> none;
  CHECK(throws_kind([&] { normalize_freqs(none, 12); }, error_kind::bad_input));
}

TEST_CASE("an all-zero histogram gives symbol 0 the whole range") {
  std::vector<uint32_t> c(10, 0);
  const freq_table t = normalize_freqs(c, 12);
  CHECK(t.freq[0] == 4096);
  CHECK_NOTHROW(validate(t));
}

TEST_CASE("entropy_bits and code_length_bits") {
  std::vector<uint32_t> c = {10, 10, 10, 10};
  CHECK(entropy_bits(c.data(), c.size()) == doctest::Approx(80.0));
  const freq_table t = normalize_freqs(c, 12);
  CHECK(code_length_bits(c.data(), c.size(), t) == doctest::Approx(80.0));
  std::vector<uint32_t> one = {0, 5, 0};
  CHECK(entropy_bits(one.data(), one.size()) == 0.0);
  std::vector<uint32_t> d = {1, 0, 3, 0};
  CHECK(std::isinf(code_length_bits(d.data(), d.size(), t)) == false);
  const freq_table skew = make_freq_table({4095, 0, 1, 0}, 12);
  std::vector<uint32_t> e = {0, 1, 0, 0};
  CHECK(std::isinf(code_length_bits(e.data(), e.size(), skew)));
  std::vector<uint32_t> outside = {1, 0, 0, 0, 1};
  CHECK(std::isinf(code_length_bits(outside.data(), outside.size(), skew)));
  // A fitted table costs at least the entropy and, with many samples, little more.
  std::mt19937 rng(5);
  std::vector<uint32_t> h(256, 0);
  std::geometric_distribution<int> g(0.1);
  for (int i = 0; i < 1000000; ++i) ++h[std::min(255, g(rng))];
  const double hbits = entropy_bits(h.data(), h.size());
  const double lbits12 = code_length_bits(h.data(), h.size(), normalize_freqs(h, 12));
  const double lbits15 = code_length_bits(h.data(), h.size(), normalize_freqs(h, 15));
  MESSAGE("geometric(0.1): entropy ", hbits, " bits, code length at prob_bits 12: ", lbits12, ", at 15: ", lbits15);
  CHECK(lbits15 >= hbits);
  CHECK(lbits12 >= lbits15);
  CHECK(lbits12 <= hbits * 1.005);
  CHECK(lbits15 <= hbits * 1.0002);
}

TEST_CASE("histogram counts symbols and rejects out-of-alphabet ones") {
  const std::vector<uint16_t> s = {0, 3, 3, 1};
  const auto h = histogram(s.data(), s.size(), 4);
  CHECK(h == std::vector<uint32_t>{1, 1, 0, 2});
  CHECK(throws_kind([&] { histogram(s.data(), s.size(), 3); }, error_kind::bad_input));
}

TEST_CASE("validate and make_freq_table reject broken tables") {
  CHECK(throws_kind([] { make_freq_table({1000, 23}, 10); }, error_kind::bad_input));
  CHECK(throws_kind([] { make_freq_table({}, 10); }, error_kind::bad_input));
  CHECK_NOTHROW(make_freq_table({1000, 24}, 10));
  freq_table t = make_freq_table({1000, 24}, 10);
  t.start[1] = 5;
  CHECK(throws_kind([&] { validate(t); }, error_kind::bad_input));
}

TEST_CASE("serialisation round trips and is compact") {
  std::mt19937 rng(2);
  for (int m = rans_min_prob_bits; m <= rans_max_prob_bits; ++m) {
    for (size_t a : {1u, 2u, 255u, 256u, 1024u, 4096u}) {
      std::vector<uint32_t> c(a, 0);
      for (auto& v : c) v = rng() % 4 == 0 ? 0 : rng() % 5000;
      c[0] = 1;
      if (a > 1) c[a - 1] = 0;
      std::vector<uint32_t> present;
      size_t np = 0;
      for (uint32_t v : c) np += v > 0;
      if (np > (1u << m)) continue;
      const freq_table t = normalize_freqs(c, m);
      const auto bytes = serialize(t);
      const freq_table u = parse_freq_table(bytes);
      CHECK(u.prob_bits == t.prob_bits);
      CHECK(u.freq == t.freq);
      CHECK(u.start == t.start);
    }
  }
  const freq_table lap = laplace_table(128.0, 4.0, 256, 12);
  const auto bytes = serialize(lap);
  CHECK(bytes.size() < 2 + 256 * 2);
  const freq_table single = make_freq_table({0, 0, 1024}, 10);
  CHECK(serialize(single) == std::vector<uint8_t>{10, 2, 2, 0, 0xff, 0x07});
}

TEST_CASE("parser rejects corrupt and truncated tables") {
  const freq_table t = normalize_freqs(std::vector<uint32_t>{5, 0, 0, 7, 100, 0, 1, 0}, 11);
  const auto bytes = serialize(t);
  for (size_t len = 0; len < bytes.size(); ++len) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(len));
    CHECK(throws_kind([&] { parse_freq_table(cut); }, error_kind::corrupt));
  }
  auto extra = bytes;
  extra.push_back(0);
  CHECK(throws_kind([&] { parse_freq_table(extra); }, error_kind::corrupt));
  size_t used = 0;
  CHECK(parse_freq_table(extra.data(), extra.size(), &used).freq == t.freq);
  CHECK(used == bytes.size());
  // Every single-byte change either throws corrupt or still yields a valid table.
  for (size_t i = 0; i < bytes.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      auto b = bytes;
      b[i] ^= static_cast<uint8_t>(1 << bit);
      try {
        const freq_table u = parse_freq_table(b);
        CHECK_NOTHROW(validate(u));
      } catch (const error& e) {
        CHECK(e.kind() == error_kind::corrupt);
      }
    }
  using V = std::vector<uint8_t>;
  CHECK(throws_kind([] { parse_freq_table(V{9, 0, 0, 0xff, 0x03}); }, error_kind::corrupt));   // prob_bits 9
  CHECK(throws_kind([] { parse_freq_table(V{16, 0, 0, 0xff, 0xff, 0x03}); }, error_kind::corrupt));
  CHECK(throws_kind([] { parse_freq_table(V{10, 0x80, 0x20, 0, 0, 0xff, 0x07}); }, error_kind::corrupt));  // alphabet 4097
  CHECK(throws_kind([] { parse_freq_table(V{10, 1, 3}); }, error_kind::corrupt));              // zero run past end
  CHECK(throws_kind([] { parse_freq_table(V{10, 1, 0, 2, 0, 0, 0}); }, error_kind::corrupt));  // 3 freqs in 2 symbols
  CHECK(throws_kind([] { parse_freq_table(V{10, 1, 0, 1, 0xff, 0x03, 0}); }, error_kind::corrupt));  // sum 1025
  CHECK(throws_kind([] { parse_freq_table(V{10, 0, 0, 0x80, 0x08}); }, error_kind::corrupt));  // freq 1025
  CHECK(throws_kind([] { parse_freq_table(V{10, 0x80, 0x00, 0, 0xff, 0x07}); }, error_kind::corrupt));  // overlong
  CHECK(throws_kind([] { parse_freq_table(V{10, 0, 0, 0xff, 0xff, 0xff, 0x01}); }, error_kind::corrupt));  // 4 bytes
  CHECK(throws_kind([] { parse_freq_table(V{10, 1, 1}); }, error_kind::corrupt));  // only zeros: sum 0
  CHECK(parse_freq_table(V{10, 1, 0, 1, 0xff, 0x01, 0xff, 0x05}).freq == std::vector<uint32_t>{256, 256 * 3});
}

TEST_CASE("Laplace table: every symbol codable / peak at the mean / symmetric") {
  for (int m : {10, 12, 15}) {
    const freq_table t = laplace_table(7.0, 1.5, 15, m);
    REQUIRE(t.alphabet() == 15);
    CHECK_NOTHROW(validate(t));
    for (uint32_t f : t.freq) CHECK(f >= 1);
    for (size_t s = 0; s < 15; ++s) {
      CHECK(t.freq[s] <= t.freq[7]);
      CHECK(std::abs(static_cast<int>(t.freq[s]) - static_cast<int>(t.freq[14 - s])) <= 1);
    }
    CHECK(t.freq[6] < t.freq[7]);
  }
  const freq_table wide = laplace_table(-3.0, 1e6, 1024, 10);  // forces every freq to 1
  for (uint32_t f : wide.freq) CHECK(f == 1);
  const freq_table narrow = laplace_table(2000.0, 1e-3, 4096, 15);
  CHECK(narrow.freq[2000] == (1u << 15) - 4095);
  CHECK(throws_kind([] { laplace_table(0, 0.0, 16, 12); }, error_kind::bad_input));
  CHECK(throws_kind([] { laplace_table(0, -1.0, 16, 12); }, error_kind::bad_input));
  CHECK(throws_kind([] { laplace_table(NAN, 1.0, 16, 12); }, error_kind::bad_input));
  CHECK(throws_kind([] { laplace_table(0, 1.0, 2048, 10); }, error_kind::bad_input));
  CHECK(laplace_table(3.3, 2.0, 64, 12).freq == laplace_table(3.3, 2.0, 64, 12).freq);
}

TEST_CASE("encoder and decoder tables agree with the frequency table") {
  const freq_table t = normalize_freqs(std::vector<uint32_t>{3, 0, 9, 1, 0, 40}, 10);
  const encode_table e = make_encode_table(t);
  const decode_table d = make_decode_table(t);
  REQUIRE(e.sym.size() == t.alphabet());
  REQUIRE(d.entry.size() == 1024);
  CHECK(d.alphabet == t.alphabet());
  for (size_t s = 0; s < t.alphabet(); ++s) {
    CHECK(rans_enc_symbol_codable(e.sym[s]) == (t.freq[s] > 0));
    for (uint32_t k = 0; k < t.freq[s]; ++k) {
      const uint64_t en = d.entry[t.start[s] + k];
      CHECK(rans_dec_entry_symbol(en) == s);
      CHECK(rans_dec_entry_freq(en) == t.freq[s]);
      CHECK(rans_dec_entry_offset(en) == k);
    }
  }
}

}  // namespace kvcodec_test_core_freq_table
