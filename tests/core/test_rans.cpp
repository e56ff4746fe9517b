// Tests of the pure rANS step functions in kvcodec/core/rans.hpp.
#include <doctest/doctest.h>

#include "kvcodec/core/rans.hpp"

#include <cstdint>
#include <random>
#include <vector>

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_rans {

using namespace kvcodec;

namespace {

uint32_t reference_put(uint32_t x, uint32_t start, uint32_t freq, int m) {
  return ((x / freq) << m) + (x % freq) + start;
}

}  // namespace

TEST_CASE("rans_enc_put equals the division form for every frequency class") {
  std::mt19937_64 rng(7);
  for (int m = rans_min_prob_bits; m <= rans_max_prob_bits; ++m) {
    const uint32_t total = 1u << m;
    std::vector<uint32_t> freqs = {1, 2, 3, 5, 7, total / 2 - 1, total / 2, total / 2 + 1, total - 1, total};
    for (int k = 0; k < 40; ++k) freqs.push_back(1 + static_cast<uint32_t>(rng() % total));
    for (uint32_t f : freqs) {
      const uint32_t start = total - f;  // largest legal start
      const rans_enc_symbol s = rans_enc_symbol_init(start, f, m);
      REQUIRE(rans_enc_symbol_codable(s));
      const uint64_t x_max = uint64_t{f} << (32 - m);
      CHECK(uint64_t{s.x_max_minus1} + 1 == x_max);
      std::vector<uint32_t> xs = {rans_l, rans_l + 1, static_cast<uint32_t>(x_max - 1), static_cast<uint32_t>(x_max - 2),
                                  static_cast<uint32_t>(x_max / 2), static_cast<uint32_t>(x_max - f)};
      for (int k = 0; k < 200; ++k) xs.push_back(rans_l + static_cast<uint32_t>(rng() % (x_max - rans_l)));
      for (uint32_t x : xs) {
        if (x < rans_l || x >= x_max) continue;
        const uint32_t got = rans_enc_put(x, s);
        REQUIRE(got == reference_put(x, start, f, m));
        CHECK(got >= rans_l);
      }
    }
  }
}

TEST_CASE("rans_enc_put exhaustive over all states for small frequencies at prob_bits 15") {
  // rcp_freq exactness: every x below x_max for a few worst-case divisors (x_max up to 2^24 here).
  for (uint32_t f : {3u, 7u, 127u, 255u}) {
    const rans_enc_symbol s = rans_enc_symbol_init(11, f, 15);
    const uint32_t x_max = f << 17;
    for (uint32_t x = 0; x < x_max; ++x) REQUIRE(rans_enc_put(x, s) == reference_put(x, 11, f, 15));
  }
}

TEST_CASE("zero frequency is not codable") {
  const rans_enc_symbol s = rans_enc_symbol_init(0, 0, 12);
  CHECK_FALSE(rans_enc_symbol_codable(s));
}

TEST_CASE("renormalisation keeps the state interval and emits at most one word") {
  const int m = 12;
  for (uint32_t f : {1u, 2u, 100u, 4095u, 4096u}) {
    const rans_enc_symbol s = rans_enc_symbol_init(0, f, m);
    for (uint64_t x64 : {uint64_t{rans_l}, uint64_t{0xffffffffu}, uint64_t{f} << 20, (uint64_t{f} << 20) - 1}) {
      if (x64 < rans_l || x64 > 0xffffffffu) continue;
      uint32_t x = static_cast<uint32_t>(x64);
      uint16_t word = 0;
      const uint32_t emitted = rans_enc_renorm(x, s, &word);
      CHECK(emitted <= 1);
      CHECK(x <= s.x_max_minus1);
      if (emitted) CHECK(word == static_cast<uint16_t>(x64));
      const uint32_t y = rans_enc_put(x, s);
      CHECK(y >= rans_l);
    }
  }
}

TEST_CASE("decode entry packing round-trips the field limits") {
  const uint64_t e = rans_dec_entry_pack(4095, 32768, 32767);
  CHECK(rans_dec_entry_symbol(e) == 4095);
  CHECK(rans_dec_entry_freq(e) == 32768);
  CHECK(rans_dec_entry_offset(e) == 32767);
  const uint64_t z = rans_dec_entry_pack(0, 1, 0);
  CHECK(rans_dec_entry_symbol(z) == 0);
  CHECK(rans_dec_entry_freq(z) == 1);
  CHECK(rans_dec_entry_offset(z) == 0);
}

TEST_CASE("single-lane round trip through the step functions") {
  const int m = 11;
  const std::vector<uint32_t> freq = {1, 1000, 1, 500, 546};  // sums to 2048
  std::vector<uint32_t> start(freq.size());
  uint32_t acc = 0;
  for (size_t s = 0; s < freq.size(); ++s) start[s] = acc, acc += freq[s];
  REQUIRE(acc == 2048u);
  std::vector<rans_enc_symbol> enc;
  std::vector<uint64_t> dec(2048);
  for (size_t s = 0; s < freq.size(); ++s) {
    enc.push_back(rans_enc_symbol_init(start[s], freq[s], m));
    for (uint32_t k = 0; k < freq[s]; ++k) dec[start[s] + k] = rans_dec_entry_pack(static_cast<uint32_t>(s), freq[s], k);
  }
  std::mt19937 rng(3);
  std::discrete_distribution<int> dist(freq.begin(), freq.end());
  std::vector<uint16_t> sym(5000);
  for (auto& v : sym) v = static_cast<uint16_t>(dist(rng));
  sym[0] = 0;
  sym[1] = 2;
  sym[4999] = 0;

  std::vector<uint16_t> words;
  uint32_t x = rans_l;
  for (size_t i = sym.size(); i-- > 0;) {
    uint16_t w = 0;
    if (rans_enc_renorm(x, enc[sym[i]], &w)) words.push_back(w);
    x = rans_enc_put(x, enc[sym[i]]);
    REQUIRE(x >= rans_l);
  }
  size_t rd = words.size();
  for (size_t i = 0; i < sym.size(); ++i) {
    REQUIRE(rans_dec_get(x, dec.data(), m) == sym[i]);
    const uint32_t need = rans_dec_needs_word(x);
    uint16_t w = 0;
    if (need) {
      REQUIRE(rd > 0);
      w = words[--rd];
    }
    x = rans_dec_renorm(x, need, w);
    REQUIRE(x >= rans_l);
  }
  CHECK(rd == 0);
  CHECK(x == rans_l);
}

}  // namespace kvcodec_test_core_rans
