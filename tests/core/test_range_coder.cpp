// Tests of core/range_coder.hpp: exact round trips over adversarial CDFs, exact stream length,
// corrupt and truncated stream detection.
#include <doctest/doctest.h>

#include <random>
#include <vector>

#include "kvcodec/core/range_coder.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_core_range_coder {

using namespace kvcodec;

namespace {
std::vector<std::uint32_t> cdf_from_freq(const std::vector<std::uint32_t>& f) {
  std::vector<std::uint32_t> c(f.size() + 1, 0);
  for (std::size_t i = 0; i < f.size(); ++i) c[i + 1] = c[i] + f[i];
  return c;
}
std::vector<std::uint8_t> enc(const std::vector<std::uint32_t>& cdf, const std::vector<std::uint32_t>& s) {
  std::vector<std::uint8_t> buf(s.size() * 3 + 16);
  rc_encoder e;
  rc_enc_init(e, buf.data(), buf.size());
  for (auto x : s) rc_encode(e, cdf[x], cdf[x + 1] - cdf[x]);
  buf.resize(rc_enc_finish(e));
  REQUIRE(!e.overflow);
  return buf;
}
bool dec(const std::vector<std::uint32_t>& cdf, const std::vector<std::uint8_t>& b, std::vector<std::uint32_t>& out, std::size_t n) {
  rc_decoder d;
  rc_dec_init(d, b.data(), b.size());
  out.resize(n);
  const auto A = static_cast<std::uint32_t>(cdf.size() - 1);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t r;
    const auto t = rc_decode_target(d, r);
    const auto s = rc_cdf_find(cdf.data(), A, t);
    rc_decode_update(d, r, cdf[s], cdf[s + 1] - cdf[s]);
    out[i] = s;
  }
  return rc_dec_ok(d);
}
}  // namespace

TEST_CASE("range coder: round trips over adversarial distributions") {
  std::mt19937 rng(7);
  const std::vector<std::vector<std::uint32_t>> freqs = {
      {65536},                        // one symbol: zero bits per symbol
      {1, 65535},                     // a symbol of probability 2^-16
      {65535, 1},
      std::vector<std::uint32_t>(256, 256),
      [] { std::vector<std::uint32_t> f(33, 1); f[16] = 65536 - 32; return f; }(),
  };
  for (const auto& f : freqs) {
    const auto cdf = cdf_from_freq(f);
    REQUIRE(cdf.back() == 65536u);
    for (std::size_t n : {0u, 1u, 2u, 7u, 1000u, 20000u}) {
      std::vector<std::uint32_t> s(n);
      std::uniform_int_distribution<std::uint32_t> u(0, static_cast<std::uint32_t>(f.size() - 1));
      for (auto& x : s) x = u(rng);  // uniform over the alphabet: rare symbols are frequent here
      const auto b = enc(cdf, s);
      CHECK(b.size() >= 5);
      CHECK(b[0] == 0);
      std::vector<std::uint32_t> out;
      CHECK(dec(cdf, b, out, n));
      CHECK(out == s);
    }
  }
}

TEST_CASE("range coder: size is close to the ideal code length") {
  std::vector<std::uint32_t> f = {32768, 16384, 8192, 8192};
  const auto cdf = cdf_from_freq(f);
  std::mt19937 rng(1);
  std::discrete_distribution<int> dd({4, 2, 1, 1});
  std::vector<std::uint32_t> s(100000);
  double ideal = 0;
  for (auto& x : s) {
    x = static_cast<std::uint32_t>(dd(rng));
    ideal += 16 - std::log2(static_cast<double>(f[x]));
  }
  const auto b = enc(cdf, s);
  CHECK(static_cast<double>(b.size()) * 8 < ideal * 1.001 + 64);
}

TEST_CASE("range coder: truncated / extended and corrupted streams are detected") {
  std::vector<std::uint32_t> f(16, 4096);
  const auto cdf = cdf_from_freq(f);
  std::vector<std::uint32_t> s(500);
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<std::uint32_t>((i * 7) % 16);
  const auto b = enc(cdf, s);
  std::vector<std::uint32_t> out;
  auto t = b;
  t.pop_back();
  CHECK_FALSE(dec(cdf, t, out, s.size()));
  t = b;
  t.push_back(0);
  CHECK_FALSE(dec(cdf, t, out, s.size()));
  t = b;
  t[0] = 1;
  CHECK_FALSE(dec(cdf, t, out, s.size()));
  CHECK_FALSE(dec(cdf, {}, out, 3));
  // a flipped payload byte decodes to different symbols (uniform table: no detection guarantee otherwise)
  t = b;
  t[b.size() / 2] ^= 0x40;
  const bool ok = dec(cdf, t, out, s.size());
  CHECK((!ok || out != s));
}

}  // namespace kvcodec_test_core_range_coder
