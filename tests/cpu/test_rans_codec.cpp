// Tests of kvcodec/cpu/rans_codec.hpp: exact round trips over lanes, sizes, precisions and
// adversarial distributions; golden bytes of the stream layout; compression near the entropy;
// corrupt, truncated and bad inputs; per-column tables; real KV data from ../shared.
#include <doctest/doctest.h>

#include <cstring>

#include "kvcodec/cpu/rans_codec.hpp"
#include "../support/shared_data.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_cpu_rans_codec {

using namespace kvcodec;

namespace {

bool throws_kind(auto&& fn, error_kind kind) {
  try {
    fn();
  } catch (const error& e) {
    return e.kind() == kind;
  }
  return false;
}

std::vector<uint16_t> laplace_symbols(size_t n, double center, double scale, size_t alphabet, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> ex(1.0 / scale);
  std::bernoulli_distribution sign(0.5);
  std::vector<uint16_t> s(n);
  for (auto& v : s) {
    const double x = center + (sign(rng) ? 1 : -1) * ex(rng);
    v = static_cast<uint16_t>(std::clamp(std::lround(x), 0l, static_cast<long>(alphabet) - 1));
  }
  return s;
}

template <class Sym>
void round_trip(const std::vector<Sym>& sym, const freq_table& t, int lanes) {
  const auto bytes = rans_encode(sym.data(), sym.size(), t, lanes);
  CHECK(bytes.size() <= rans_max_encoded_size(sym.size(), lanes));
  CHECK(bytes.size() >= 4 * static_cast<size_t>(lanes));
  const decode_table d = make_decode_table(t);
  std::vector<Sym> out(sym.size() + 1, static_cast<Sym>(0x5a));
  rans_decode(bytes.data(), bytes.size(), d, lanes, out.data(), sym.size());
  CHECK(std::equal(sym.begin(), sym.end(), out.begin()));
  CHECK(out.back() == static_cast<Sym>(0x5a));  // nothing written past n
}

}  // namespace

TEST_CASE("round trips over lanes / sizes / prob_bits and distributions") {
  std::mt19937 rng(1);
  for (int lanes : {32, 64, 128}) {
    for (int m = rans_min_prob_bits; m <= rans_max_prob_bits; ++m) {
      const size_t L = static_cast<size_t>(lanes);
      for (size_t n : {size_t{0}, size_t{1}, L - 1, L, L + 1, 2 * L - 1, 3 * L + 5, size_t{4099}}) {
        CAPTURE(lanes);
        CAPTURE(m);
        CAPTURE(n);
        // one symbol only (freq = 2^M: zero bits per symbol)
        {
          std::vector<uint32_t> c(3, 0);
          c[2] = 1;
          const freq_table t = normalize_freqs(c, m);
          std::vector<uint16_t> s(n, 2);
          round_trip(s, t, lanes);
          CHECK(rans_encode(s.data(), n, t, lanes).size() == 4 * L);
        }
        // uniform over the largest alphabet the precision allows
        {
          const size_t a = std::min<size_t>(rans_max_alphabet, size_t{1} << m);
          std::vector<uint16_t> s(n);
          for (auto& v : s) v = static_cast<uint16_t>(rng() % a);
          std::vector<uint32_t> c(a, 1);
          round_trip(s, normalize_freqs(c, m), lanes);
        }
        // very skewed: one dominant symbol and freq-1 symbols that do occur
        {
          std::vector<uint32_t> c(200, 1);
          c[7] = 1000000;
          const freq_table t = normalize_freqs(c, m);
          REQUIRE(t.freq[0] == 1);
          std::vector<uint16_t> s(n);
          for (auto& v : s) v = rng() % 4 == 0 ? static_cast<uint16_t>(rng() % 200) : 7;
          round_trip(s, t, lanes);
          std::vector<uint8_t> s8(s.begin(), s.end());
          round_trip(s8, t, lanes);
        }
        // all symbols equal but the table is spread out
        {
          std::vector<uint16_t> s(n, 1);
          std::vector<uint32_t> c(256, 10);
          round_trip(s, normalize_freqs(c, m), lanes);
        }
      }
    }
  }
}

TEST_CASE("maximal alphabet of 4096 symbols and large n") {
  const auto s = laplace_symbols(300001, 2048, 300, 4096, 9);
  const auto h = histogram(s.data(), s.size(), 4096);
  std::vector<uint32_t> c = h;
  for (auto& v : c) v += 1;  // every symbol codable
  for (int m : {12, 15}) round_trip(s, normalize_freqs(c, m), 32);
  round_trip(s, normalize_freqs(c, 15), 256);
}

TEST_CASE("golden bytes of the stream layout") {
  // freq {3, 1021} at prob_bits 10; lane 0 codes symbols 0 and 32 (both symbol 0), lanes 1..31 symbol 1.
  // Lane 0: 65536 -> (65536/3 << 10) + 65536 % 3 = 22369281 = 0x1555401; then it emits 0x5401,
  // 0x155 = 341 -> (113 << 10) + 2 = 115714. Lanes 1..31: (64 << 10) + 192 + 3 = 65731.
  const freq_table t = make_freq_table({3, 1021}, 10);
  std::vector<uint16_t> s(33, 1);
  s[0] = s[32] = 0;
  const auto bytes = rans_encode(s.data(), s.size(), t, 32);
  std::vector<uint8_t> want(4 * 32 + 2);
  detail::store_le32(want.data(), 115714);
  for (int j = 1; j < 32; ++j) detail::store_le32(want.data() + 4 * j, 65731);
  want[128] = 0x01;
  want[129] = 0x54;
  CHECK(bytes == want);
  std::vector<uint16_t> out(33);
  rans_decode(bytes.data(), bytes.size(), make_decode_table(t), 32, out.data(), out.size());
  CHECK(out == s);
  const auto empty = rans_encode(s.data(), 0, t, 64);
  REQUIRE(empty.size() == 256);
  for (int j = 0; j < 64; ++j) CHECK(detail::load_le32(empty.data() + 4 * j) == rans_l);
}

TEST_CASE("payload within 1% of the empirical entropy on a 1M-symbol Laplace source") {
  const size_t n = 1 << 20;
  const auto s = laplace_symbols(n, 128, 6.0, 256, 4);
  const auto h = histogram(s.data(), n, 256);
  const double hbits = entropy_bits(h.data(), h.size());
  for (int m : {12, 15}) {
    const freq_table t = normalize_freqs(h, m);
    for (int lanes : {32, 128}) {
      const auto bytes = rans_encode(s.data(), n, t, lanes);
      const double payload_bits = 8.0 * static_cast<double>(bytes.size() - 4 * static_cast<size_t>(lanes));
      const double ideal = code_length_bits(h.data(), h.size(), t);
      MESSAGE("prob_bits ", m, " lanes ", lanes, ": entropy ", hbits / n, " bits/sym, table ", ideal / n,
              ", payload ", payload_bits / n, ", with states ", 8.0 * bytes.size() / n);
      CHECK(payload_bits <= 1.01 * hbits);
      CHECK(payload_bits >= ideal - 32.0 * lanes);
      std::vector<uint16_t> out(n);
      rans_decode(bytes.data(), bytes.size(), make_decode_table(t), lanes, out.data(), n);
      CHECK(out == s);
    }
  }
}

TEST_CASE("truncated / extended and corrupt streams throw corrupt and never crash") {
  const size_t n = 5000;
  const auto s = laplace_symbols(n, 20, 3.0, 64, 8);
  // A fitted (non power-of-two) table mixes every word into the final states; with power-of-two
  // frequencies rANS only shifts bits, and a flipped payload bit cannot be detected.
  auto c = histogram(s.data(), n, 64);
  for (auto& v : c) v += 1;
  const freq_table t = normalize_freqs(c, 11);
  const decode_table d = make_decode_table(t);
  for (int lanes : {32, 64}) {
    const auto bytes = rans_encode(s.data(), n, t, lanes);
    std::vector<uint16_t> out(n);
    // Every truncation is detected: the decoder follows the same path until a missing word.
    for (size_t len = 0; len < bytes.size(); len += (len < 300 || len + 300 > bytes.size()) ? 1 : 97) {
      CAPTURE(len);
      CHECK(throws_kind([&] { rans_decode(bytes.data(), len, d, lanes, out.data(), n); }, error_kind::corrupt));
    }
    auto longer = bytes;
    longer.push_back(0);
    longer.push_back(0);
    CHECK(throws_kind([&] { rans_decode(longer.data(), longer.size(), d, lanes, out.data(), n); }, error_kind::corrupt));
    longer.pop_back();
    CHECK(throws_kind([&] { rans_decode(longer.data(), longer.size(), d, lanes, out.data(), n); }, error_kind::corrupt));
    // Fewer or more symbols than were coded leave states off the initial value or words unread.
    CHECK(throws_kind([&] { rans_decode(bytes.data(), bytes.size(), d, lanes, out.data(), n - 1); }, error_kind::corrupt));
    std::vector<uint16_t> big(n + 1);
    CHECK(throws_kind([&] { rans_decode(bytes.data(), bytes.size(), d, lanes, big.data(), n + 1); }, error_kind::corrupt));
    // A state below 2^16 is rejected up front.
    auto low = bytes;
    detail::store_le32(low.data() + 4, 100);
    CHECK(throws_kind([&] { rans_decode(low.data(), low.size(), d, lanes, out.data(), n); }, error_kind::corrupt));
    // Bit flips: each decode either throws corrupt or returns; nearly all are detected.
    std::mt19937 rng(3);
    int detected = 0, trials = 300;
    for (int k = 0; k < trials; ++k) {
      auto b = bytes;
      b[rng() % b.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
      try {
        rans_decode(b.data(), b.size(), d, lanes, out.data(), n);
      } catch (const error& e) {
        CHECK(e.kind() == error_kind::corrupt);
        ++detected;
      }
    }
    CHECK(detected >= trials * 95 / 100);
    // Random garbage of every small size.
    for (size_t len = 0; len < 600; len += 2) {
      std::vector<uint8_t> g(len);
      for (auto& v : g) v = static_cast<uint8_t>(rng());
      try {
        rans_decode(g.data(), g.size(), d, lanes, out.data(), 100);
      } catch (const error& e) {
        CHECK(e.kind() == error_kind::corrupt);
      }
    }
  }
}

TEST_CASE("bad arguments throw bad_input") {
  const freq_table t = make_freq_table({512, 0, 512}, 10);
  const decode_table d = make_decode_table(t);
  const std::vector<uint16_t> s = {0, 2, 0};
  for (int lanes : {0, 16, 31, 33, 48, 2048, -32})
    CHECK(throws_kind([&] { rans_encode(s.data(), s.size(), t, lanes); }, error_kind::bad_input));
  CHECK_NOTHROW(rans_encode(s.data(), s.size(), t, 1024));
  const std::vector<uint16_t> zero_freq = {0, 1, 0};
  CHECK(throws_kind([&] { rans_encode(zero_freq.data(), 3, t, 32); }, error_kind::bad_input));
  const std::vector<uint16_t> outside = {0, 3, 0};
  CHECK(throws_kind([&] { rans_encode(outside.data(), 3, t, 32); }, error_kind::bad_input));
  const auto bytes = rans_encode(s.data(), s.size(), t, 32);
  std::vector<uint16_t> out(3);
  CHECK(throws_kind([&] { rans_decode(bytes.data(), bytes.size(), d, 48, out.data(), 3); }, error_kind::bad_input));
  CHECK(throws_kind([&] { rans_decode(bytes.data(), bytes.size(), decode_table{}, 32, out.data(), 3); }, error_kind::bad_input));
  std::vector<uint32_t> wide(300, 1);
  const decode_table dw = make_decode_table(normalize_freqs(wide, 10));
  std::vector<uint8_t> out8(3);
  CHECK(throws_kind([&] { rans_decode(bytes.data(), bytes.size(), dw, 32, out8.data(), 3); }, error_kind::bad_input));
  CHECK(throws_kind([&] { rans_encode(static_cast<const uint16_t*>(nullptr), 3, t, 32); }, error_kind::bad_input));
  CHECK_NOTHROW(rans_encode(static_cast<const uint16_t*>(nullptr), 0, t, 32));
}

TEST_CASE("per-column tables: round trips / cols = 1 equals the plain stream / bad maps throw") {
  std::mt19937 rng(12);
  const int m = 12;
  std::vector<freq_table> ft;
  for (int k = 0; k < 5; ++k) ft.push_back(laplace_table(8.0 + 4 * k, 0.5 + k, 40, m));
  ft.push_back(normalize_freqs(std::vector<uint32_t>(40, 0), m));  // only symbol 0
  std::vector<decode_table> dt;
  for (const auto& t : ft) dt.push_back(make_decode_table(t));
  for (size_t cols : {size_t{1}, size_t{3}, size_t{7}, size_t{32}, size_t{64}, size_t{100}}) {
    std::vector<uint32_t> map(cols);
    for (size_t c = 0; c < cols; ++c) map[c] = static_cast<uint32_t>((c * 7 + 1) % ft.size());
    for (int lanes : {32, 64}) {
      for (size_t n : {size_t{0}, size_t{1}, cols, static_cast<size_t>(lanes) + 1, size_t{10007}}) {
        CAPTURE(cols);
        CAPTURE(lanes);
        CAPTURE(n);
        std::vector<uint8_t> s(n);
        for (size_t i = 0; i < n; ++i) {
          const freq_table& t = ft[map[i % cols]];
          std::discrete_distribution<int> dist(t.freq.begin(), t.freq.end());
          s[i] = static_cast<uint8_t>(dist(rng));
        }
        const auto bytes = rans_encode_ctx(s.data(), n, cols, std::span<const freq_table>(ft), map, lanes);
        std::vector<uint8_t> out(n);
        rans_decode_ctx(bytes.data(), bytes.size(), cols, std::span<const decode_table>(dt), map, lanes, out.data(), n);
        CHECK(out == s);
        if (cols == 1) {
          CHECK(bytes == rans_encode(s.data(), n, ft[map[0]], lanes));
        }
      }
    }
  }
  const std::vector<uint8_t> s = {1, 2, 3};
  const std::vector<uint32_t> bad_map = {0, 9};
  const std::vector<uint32_t> ok_map = {0, 1};
  CHECK(throws_kind([&] { rans_encode_ctx(s.data(), 3, 2, std::span<const freq_table>(ft), bad_map, 32); }, error_kind::bad_input));
  CHECK(throws_kind([&] { rans_encode_ctx(s.data(), 3, 3, std::span<const freq_table>(ft), ok_map, 32); }, error_kind::bad_input));
  CHECK(throws_kind([&] { rans_encode_ctx(s.data(), 3, 0, std::span<const freq_table>(ft), {}, 32); }, error_kind::bad_input));
  std::vector<freq_table> mixed = {ft[0], laplace_table(3, 1, 40, 13)};
  CHECK(throws_kind([&] { rans_encode_ctx(s.data(), 3, 2, std::span<const freq_table>(mixed), ok_map, 32); }, error_kind::bad_input));
  std::vector<decode_table> mixed_d = {dt[0], make_decode_table(mixed[1])};
  std::vector<uint8_t> out(3);
  const auto bytes = rans_encode_ctx(s.data(), 3, 2, std::span<const freq_table>(ft), ok_map, 32);
  CHECK(throws_kind([&] { rans_decode_ctx(bytes.data(), bytes.size(), 2, std::span<const decode_table>(mixed_d), ok_map, 32, out.data(), 3); }, error_kind::bad_input));
  // Symbol 0 only in table 5: coding any other symbol in that column is rejected.
  const std::vector<uint32_t> to5 = {5};
  CHECK(throws_kind([&] { rans_encode_ctx(s.data(), 3, 1, std::span<const freq_table>(ft), to5, 32); }, error_kind::bad_input));
}

TEST_CASE("real KV cache: 8-bit quantised keys/values coded with one table per channel") {
  const kv_cache* dump = test::shared_dump("stories260K-s0.safetensors");
  KVCODEC_REQUIRE_SHARED(dump);
  REQUIRE(dump->shape.layers > 3);
  int tested = 0;
  for (const auto& [name, src] : {std::pair{"past_key_values.0.key", &dump->keys[0]},
                                  std::pair{"past_key_values.3.value", &dump->values[3]}}) {
    const std::vector<float>& v = *src;
    const size_t head_dim = static_cast<size_t>(dump->shape.head_dim);
    const size_t count = v.size();
    REQUIRE(count == dump->shape.layer_elements());
    const auto [mn, mx] = std::minmax_element(v.begin(), v.end());
    std::vector<uint8_t> q(count);
    for (size_t i = 0; i < count; ++i)
      q[i] = static_cast<uint8_t>(std::lround((v[i] - *mn) / (*mx - *mn) * 255.0));
    std::vector<freq_table> tables;
    std::vector<decode_table> dec;
    std::vector<uint32_t> map(head_dim);
    double ideal = 0;
    for (size_t c = 0; c < head_dim; ++c) {
      std::vector<uint32_t> h(256, 0);
      for (size_t i = c; i < count; i += head_dim) ++h[q[i]];
      tables.push_back(normalize_freqs(h, 12));
      dec.push_back(make_decode_table(tables.back()));
      ideal += code_length_bits(h.data(), h.size(), tables.back());
      map[c] = static_cast<uint32_t>(c);
    }
    const auto bytes = rans_encode_ctx(q.data(), count, head_dim, std::span<const freq_table>(tables), map, 32);
    std::vector<uint8_t> out(count);
    rans_decode_ctx(bytes.data(), bytes.size(), head_dim, std::span<const decode_table>(dec), map, 32, out.data(), count);
    CHECK(out == q);
    const double payload = 8.0 * static_cast<double>(bytes.size() - 128);
    MESSAGE(std::string(name), ": ", count, " symbols, ", payload / count, " bits/sym (table code length ", ideal / count, ")");
    CHECK(payload <= ideal * 1.01 + 64);
    ++tested;
  }
  CHECK(tested == 2);
}

TEST_CASE("vector decoder (when the CPU has it) equals the scalar reference / corrupt streams included") {
  std::mt19937 rng(21);
  for (int lanes : {32, 64, 128}) {
    for (int m : {10, 12, 15}) {
      for (size_t n : {size_t{0}, size_t{5}, static_cast<size_t>(lanes) * 3 + 7, size_t{70001}}) {
        const auto s16 = laplace_symbols(n, 100, 9.0, 256, static_cast<uint32_t>(rng()));
        const std::vector<uint8_t> s(s16.begin(), s16.end());
        auto h = histogram(s.data(), n, 256);
        for (auto& v : h) v += 1;
        const freq_table t = normalize_freqs(h, m);
        const decode_table d = make_decode_table(t);
        const uint64_t* tab = d.entry.data();
        auto bytes = rans_encode(s.data(), n, t, lanes);
        for (int variant = 0; variant < 3; ++variant) {
          CAPTURE(lanes);
          CAPTURE(m);
          CAPTURE(n);
          CAPTURE(variant);
          auto b = bytes;
          if (variant == 1 && b.size() > 4u * lanes) b[4u * lanes + rng() % (b.size() - 4u * lanes)] ^= 0x10;
          if (variant == 2 && b.size() >= 4u * lanes + 2) b.erase(b.end() - 2, b.end());
          std::vector<uint8_t> o_ref(n), o_vec(n);
          std::string e_ref, e_vec;
          try {
            detail::rans_decode_impl<uint8_t, false>(b.data(), b.size(), 1, &tab, m, lanes, o_ref.data(), n, "ref", detail::rans_simd::scalar);
          } catch (const error& e) {
            e_ref = std::string(e.what()).substr(3);
          }
          try {
            detail::rans_decode_impl<uint8_t, false>(b.data(), b.size(), 1, &tab, m, lanes, o_vec.data(), n, "vec", detail::rans_simd::avx512);
          } catch (const error& e) {
            e_vec = std::string(e.what()).substr(3);
          }
          CHECK(e_ref == e_vec);
          CHECK(o_ref == o_vec);
          if (variant == 0) {
            CHECK(e_ref.empty());
            CHECK(o_ref == s);
          }
          std::vector<uint16_t> w_ref(n), w_vec(n);
          try {
            detail::rans_decode_impl<uint16_t, false>(b.data(), b.size(), 1, &tab, m, lanes, w_ref.data(), n, "ref", detail::rans_simd::scalar);
          } catch (const error&) {
          }
          try {
            detail::rans_decode_impl<uint16_t, false>(b.data(), b.size(), 1, &tab, m, lanes, w_vec.data(), n, "vec", detail::rans_simd::avx512);
          } catch (const error&) {
          }
          CHECK(w_ref == w_vec);
        }
      }
    }
  }
#if KVCODEC_RANS_AVX512
  MESSAGE("AVX-512 decoder available on this CPU: ", detail::rans_avx512_available());
#endif
}

TEST_CASE("compact-table decoders (AVX2 / AVX-512F when the CPU has them) equal the scalar reference for per-column tables") {
  std::mt19937 rng(33);
  size_t compared = 0;
  for (int m : {10, 12, 13}) {
    std::vector<freq_table> ft;
    for (int k = 0; k < 4; ++k) ft.push_back(laplace_table(20.0 + 30 * k, 1.5 + 2 * k, k == 3 ? 256 : 200, m));
    ft.push_back(normalize_freqs(std::vector<uint32_t>(256, 0), m));  // symbol 0 owns every slot
    std::vector<decode_table> dt;
    for (const auto& t : ft) dt.push_back(make_decode_table(t));
    for (size_t cols : {size_t{1}, size_t{3}, size_t{32}, size_t{100}, size_t{1024}}) {
      std::vector<uint32_t> map(cols);
      for (size_t c = 0; c < cols; ++c) map[c] = static_cast<uint32_t>((c * 3 + c / 5) % ft.size());
      const rans_ctx_decoder dec = make_rans_ctx_decoder(std::span<const decode_table>(dt), map);
      CHECK(dec.entry32.empty() == (m > 12));
      // Built from the frequency tables: compact entries only where they fit, 64-bit ones otherwise.
      const rans_ctx_decoder dec_ft = make_rans_ctx_decoder(std::span<const freq_table>(ft), map);
      CHECK(dec_ft.entry64.empty() == (m <= 12));
      CHECK(dec_ft.entry32.empty() == (m > 12));
      for (int lanes : {32, 64, 96}) {
        for (size_t n : {size_t{0}, size_t{1}, static_cast<size_t>(lanes) - 1, static_cast<size_t>(lanes) * 5 + 3, size_t{50001}}) {
          std::vector<uint8_t> s(n);
          for (size_t i = 0; i < n; ++i) {
            const freq_table& t = ft[map[i % cols]];
            std::discrete_distribution<int> dist(t.freq.begin(), t.freq.end());
            s[i] = static_cast<uint8_t>(dist(rng));
          }
          const auto bytes = rans_encode_ctx(s.data(), n, cols, std::span<const freq_table>(ft), map, lanes);
          for (int variant = 0; variant < 4; ++variant) {
            CAPTURE(m);
            CAPTURE(cols);
            CAPTURE(lanes);
            CAPTURE(n);
            CAPTURE(variant);
            auto b = bytes;
            const size_t hdr = 4u * static_cast<size_t>(lanes);
            if (variant == 1 && b.size() > hdr) b[hdr + rng() % (b.size() - hdr)] ^= 0x22;
            if (variant == 2 && b.size() >= hdr + 2) b.erase(b.end() - 2, b.end());
            if (variant == 3) b.insert(b.end(), {0x01, 0x02});
            std::vector<uint8_t> o_ref(n, 0x77), o_vec(n, 0x77);
            std::vector<uint16_t> w_ref(n, 0x7777), w_vec(n, 0x7777);
            std::string e_ref, e_vec, e_w;
            const auto run = [&](auto* out, detail::rans_simd simd, std::string& err, const rans_ctx_decoder* with = nullptr) {
              try {
                rans_decode_ctx(b.data(), b.size(), with ? *with : dec, lanes, out, n, simd);
              } catch (const error& e) {
                CHECK(e.kind() == error_kind::corrupt);
                err = e.what();
              }
            };
            run(o_ref.data(), detail::rans_simd::scalar, e_ref);
            run(o_vec.data(), detail::rans_simd::avx2, e_vec);
            CHECK(e_ref == e_vec);
            CHECK(o_ref == o_vec);
            std::vector<uint8_t> o_512(n, 0x77);
            std::string e_512;
            run(o_512.data(), detail::rans_simd::avx512, e_512);
            CHECK(e_ref == e_512);
            CHECK(o_ref == o_512);
            std::string e_ref16;
            run(w_ref.data(), detail::rans_simd::scalar, e_ref16);
            run(w_vec.data(), detail::rans_simd::best, e_w);
            CHECK(e_ref16 == e_w);
            CHECK(w_ref == w_vec);
            for (const auto simd : {detail::rans_simd::scalar, detail::rans_simd::avx2, detail::rans_simd::avx512, detail::rans_simd::best}) {
              std::vector<uint16_t> w_ft(n, 0x7777);
              std::string e_ft;
              run(w_ft.data(), simd, e_ft, &dec_ft);
              CHECK(e_ft == e_ref16);
              CHECK(w_ft == w_ref);
            }
            if (variant == 0) {
              CHECK(e_ref.empty());
              CHECK(o_ref == s);
            }
            if (variant == 3 && n > 0) CHECK_FALSE(e_ref.empty());
            ++compared;
          }
          // The legacy per-call API decodes the same stream identically.
          std::vector<uint8_t> o_api(n);
          rans_decode_ctx(bytes.data(), bytes.size(), cols, std::span<const decode_table>(dt), map, lanes, o_api.data(), n);
          CHECK(o_api == s);
        }
      }
    }
  }
  CHECK(compared == 3 * 5 * 3 * 5 * 4);
#if KVCODEC_RANS_AVX512
  MESSAGE("AVX2 decoder available on this CPU: ", detail::rans_avx2_available(), "; AVX-512F compact decoder: ", detail::rans_avx512f_available());
#endif
}

TEST_CASE("rans_ctx_decoder.sym_bound: one past the highest symbol any table in use can decode") {
  // Symbols 0..4 of table 0 and 0..9 of table 1 have frequencies; table 2 (unused) reaches 19.
  std::vector<uint32_t> a(32, 0), b(32, 0), c(32, 0);
  for (int i = 0; i < 5; ++i) a[i] = 3;
  for (int i = 0; i < 10; ++i) b[i] = 1;
  for (int i = 0; i < 20; ++i) c[i] = 1;
  const std::vector<freq_table> t = {normalize_freqs(a, 10), normalize_freqs(b, 10), normalize_freqs(c, 10)};
  const std::vector<uint32_t> first = {0, 0, 0}, two = {0, 1, 0};
  CHECK(make_rans_ctx_decoder(std::span<const freq_table>(t), first).sym_bound == 5);
  CHECK(make_rans_ctx_decoder(std::span<const freq_table>(t), two).sym_bound == 10);
  // From decode tables (no frequencies kept) the bound is the alphabet.
  const decode_table d = make_decode_table(t[0]);
  CHECK(make_rans_ctx_decoder(std::span<const decode_table>(&d, 1), first).sym_bound == t[0].alphabet());
}

TEST_CASE("compact decoder layout: field limits and bad layouts") {
  // The largest fields of a compact entry survive packing.
  CHECK(rans_dec32_symbol(rans_dec32_pack(255, 4096, 4095)) == 255);
  CHECK(rans_dec32_freq(rans_dec32_pack(255, 4096, 4095)) == 4096);
  CHECK(rans_dec32_offset(rans_dec32_pack(255, 4096, 4095)) == 4095);
  CHECK(rans_dec32_freq(rans_dec32_pack(0, 1, 0)) == 1);
  // Alphabets above 256 keep 64-bit entries only, and still decode.
  std::vector<uint32_t> h(300, 1);
  const freq_table t = normalize_freqs(h, 12);
  const decode_table d = make_decode_table(t);
  const std::vector<uint32_t> map = {0, 0};
  const rans_ctx_decoder dec = make_rans_ctx_decoder(std::span<const decode_table>(&d, 1), map);
  CHECK(dec.entry32.empty());
  std::vector<uint16_t> s(5000);
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<uint16_t>((i * 7919) % 300);
  const auto bytes = rans_encode_ctx(s.data(), s.size(), 2, std::span<const freq_table>(&t, 1), map, 32);
  std::vector<uint16_t> out(s.size());
  rans_decode_ctx(bytes.data(), bytes.size(), dec, 32, out.data(), out.size());
  CHECK(out == s);
  std::vector<uint8_t> out8(s.size());
  CHECK(throws_kind([&] { rans_decode_ctx(bytes.data(), bytes.size(), dec, 32, out8.data(), out8.size()); }, error_kind::bad_input));
  rans_ctx_decoder broken = dec;
  broken.col_off.pop_back();
  CHECK(throws_kind([&] { rans_decode_ctx(bytes.data(), bytes.size(), broken, 32, out.data(), out.size()); }, error_kind::bad_input));
  CHECK(throws_kind([&] { rans_decode_ctx(bytes.data(), bytes.size(), rans_ctx_decoder{}, 32, out.data(), out.size()); }, error_kind::bad_input));
  const std::vector<uint32_t> bad = {0, 1};
  CHECK(throws_kind([&] { make_rans_ctx_decoder(std::span<const decode_table>(&d, 1), bad); }, error_kind::bad_input));
  CHECK(throws_kind([&] { make_rans_ctx_decoder(std::span<const decode_table>(&d, 1), {}); }, error_kind::bad_input));
  // From frequency tables: an alphabet above 256 keeps 64-bit entries and decodes the same.
  const rans_ctx_decoder dec_ft = make_rans_ctx_decoder(std::span<const freq_table>(&t, 1), map);
  CHECK(dec_ft.entry32.empty());
  std::vector<uint16_t> out_ft(s.size());
  rans_decode_ctx(bytes.data(), bytes.size(), dec_ft, 32, out_ft.data(), out_ft.size());
  CHECK(out_ft == s);
  CHECK(throws_kind([&] { make_rans_ctx_decoder(std::span<const freq_table>(&t, 1), bad); }, error_kind::bad_input));
  CHECK(throws_kind([&] { make_rans_ctx_decoder(std::span<const freq_table>(&t, 1), {}); }, error_kind::bad_input));
  freq_table wrong = t;
  wrong.freq[0] += 1;  // no longer sums to 2^prob_bits
  CHECK(throws_kind([&] { make_rans_ctx_decoder(std::span<const freq_table>(&wrong, 1), map); }, error_kind::bad_input));
  const freq_table t10 = normalize_freqs(std::vector<uint32_t>(8, 1), 10), t12 = normalize_freqs(std::vector<uint32_t>(8, 1), 12);
  const std::vector<freq_table> mixed = {t12, t10};
  CHECK(throws_kind([&] { make_rans_ctx_decoder(std::span<const freq_table>(mixed), std::vector<uint32_t>{0, 1}); }, error_kind::bad_input));
  // A compact-only layout whose column offsets point past its entries is refused.
  rans_ctx_decoder small = make_rans_ctx_decoder(std::span<const freq_table>(&t12, 1), map);
  CHECK(small.entry64.empty());
  small.col_off[1] = 4096;
  std::vector<uint8_t> o8(10);
  CHECK(throws_kind([&] { rans_decode_ctx(bytes.data(), bytes.size(), small, 32, o8.data(), o8.size()); }, error_kind::bad_input));
}

TEST_CASE("decode tables from a table_arena: aligned - spanning chunks - equal to heap tables - copies leave the arena") {
  table_arena arena;
  // Allocations are 64-byte aligned and distinct; one larger than a chunk gets a chunk of its own.
  std::vector<std::byte*> ps;
  for (std::size_t n : {std::size_t{1}, std::size_t{100}, std::size_t{4096}, table_arena::chunk + 1, std::size_t{64}, table_arena::chunk - 64})
    ps.push_back(static_cast<std::byte*>(arena.allocate(n)));
  for (auto* p : ps) CHECK(reinterpret_cast<std::uintptr_t>(p) % 64 == 0);
  std::memset(ps[3], 0xab, table_arena::chunk + 1);  // the whole block is writable
  std::memset(ps[5], 0xcd, table_arena::chunk - 64);
  CHECK(ps[1] == ps[0] + 64);
  CHECK(std::to_integer<int>(ps[3][table_arena::chunk]) == 0xab);
  // Many models' tables from one arena decode exactly as tables from the heap.
  std::mt19937 rng(7);
  std::vector<freq_table> tabs;
  for (int k = 0; k < 40; ++k) {
    std::vector<uint32_t> h(32);
    for (auto& x : h) x = 1 + rng() % 1000;
    tabs.push_back(normalize_freqs(h, 10));
  }
  std::vector<uint32_t> map(128);
  for (size_t c = 0; c < map.size(); ++c) map[c] = static_cast<uint32_t>((c * 7) % tabs.size());
  std::vector<uint16_t> s(20000);
  for (auto& x : s) x = static_cast<uint16_t>(rng() % 32);
  const auto stream = rans_encode_ctx(s.data(), s.size(), map.size(), std::span<const freq_table>(tabs), map, 64);
  const rans_ctx_decoder heap = make_rans_ctx_decoder(std::span<const freq_table>(tabs), map);
  table_arena a2;
  std::vector<rans_ctx_decoder> in_arena;
  for (int i = 0; i < 30; ++i) in_arena.push_back(make_rans_ctx_decoder(std::span<const freq_table>(tabs), map, "t", &a2));  // > one 2 MiB chunk
  CHECK(in_arena.back().entry32.get_allocator().arena == &a2);
  CHECK(std::equal(heap.entry32.begin(), heap.entry32.end(), in_arena.back().entry32.begin(), in_arena.back().entry32.end()));
  std::vector<uint16_t> o1(s.size()), o2(s.size());
  rans_decode_ctx(stream.data(), stream.size(), heap, 64, o1.data(), o1.size());
  rans_decode_ctx(stream.data(), stream.size(), in_arena.front(), 64, o2.data(), o2.size());
  CHECK(o1 == s);
  CHECK(o2 == s);
  // A copy lives on the heap and outlives the arena's memory.
  rans_ctx_decoder copy = in_arena.front();
  CHECK(copy.entry32.get_allocator().arena == nullptr);
  in_arena.clear();
  a2.release_all();
  std::fill(o2.begin(), o2.end(), uint16_t{0});
  rans_decode_ctx(stream.data(), stream.size(), copy, 64, o2.data(), o2.size());
  CHECK(o2 == s);
}

TEST_CASE("table arenas hand released chunks to the next arena - up to the pool's limit") {
  auto& pool = detail::table_chunk_pool::instance();
  void* first = nullptr;
  {
    table_arena a;
    first = a.allocate(1000);
    std::memset(first, 0x5a, 1000);
  }  // its 2 MiB chunk goes to the pool
  const std::size_t kept = pool.kept_bytes();
  CHECK(kept >= table_arena::chunk);
  {
    table_arena b;
    void* again = b.allocate(64);
    CHECK(again == first);  // the same mapped chunk, not a fresh one
    CHECK(pool.kept_bytes() == kept - table_arena::chunk);
  }
  CHECK(pool.kept_bytes() == kept);
  // More than the limit released at once: the pool keeps at most its limit, the rest is unmapped.
  {
    table_arena big;
    for (std::size_t i = 0; i < detail::table_chunk_pool::limit / table_arena::chunk + 4; ++i) big.allocate(table_arena::chunk);
  }
  CHECK(pool.kept_bytes() <= detail::table_chunk_pool::limit);
  // Reused chunks still decode: tables built in a recycled chunk equal the heap's.
  std::vector<uint32_t> h(32, 3);
  const std::vector<freq_table> tabs = {normalize_freqs(h, 10)};
  const std::vector<uint32_t> map = {0};
  table_arena c;
  const rans_ctx_decoder d = make_rans_ctx_decoder(std::span<const freq_table>(tabs), map, "t", &c);
  const rans_ctx_decoder e = make_rans_ctx_decoder(std::span<const freq_table>(tabs), map);
  CHECK(std::equal(d.entry32.begin(), d.entry32.end(), e.entry32.begin(), e.entry32.end()));
}

TEST_CASE("vector encoder (AVX2 when the CPU has it) writes exactly the scalar encoder's bytes and errors") {
  std::mt19937 rng(77);
  size_t compared = 0;
  for (int lanes : {32, 64, 96}) {
    for (size_t cols : {size_t{1}, size_t{7}, size_t{128}}) {
      for (int m : {10, 12, 15}) {
        const size_t A = 40;
        std::vector<freq_table> ft;
        for (int g = 0; g < 4; ++g) ft.push_back(laplace_table(10.0 + 5 * g, 0.3 + 1.5 * g, A, m));
        std::vector<uint32_t> f(A, 1);  // frequency-1 symbols (rcp_shift 0) and one near 2^m
        f[3] = (1u << m) - static_cast<uint32_t>(A - 1);
        ft.push_back(make_freq_table(f, m));
        std::vector<uint32_t> g(A, 5);  // symbol 7 has zero frequency
        g[7] = 0;
        ft.push_back(normalize_freqs(g, m));
        std::vector<encode_table> et;
        for (const auto& t : ft) et.push_back(make_encode_table(t));
        std::vector<uint32_t> map(cols);
        for (size_t c = 0; c < cols; ++c) map[c] = static_cast<uint32_t>((c * 7 + 1) % (ft.size() - 1));
        std::vector<const rans_enc_symbol*> tabs(cols);
        std::vector<size_t> alpha(cols, A);
        for (size_t c = 0; c < cols; ++c) tabs[c] = et[map[c]].sym.data();
        for (size_t n : {size_t{0}, size_t{5}, static_cast<size_t>(lanes) * 4, static_cast<size_t>(lanes) * 9 + 3, size_t{20001}}) {
          std::vector<uint16_t> s(n);
          for (size_t i = 0; i < n; ++i) {
            const freq_table& t = ft[map[i % cols]];
            std::discrete_distribution<int> dist(t.freq.begin(), t.freq.end());
            s[i] = static_cast<uint16_t>(dist(rng));
          }
          for (int variant = 0; variant < 3; ++variant) {
            CAPTURE(lanes);
            CAPTURE(cols);
            CAPTURE(m);
            CAPTURE(n);
            CAPTURE(variant);
            auto in = s;
            auto tb = tabs;
            if (variant == 1 && n > 0) in[rng() % n] = static_cast<uint16_t>(A + rng() % 5);  // outside the alphabet
            if (variant == 2 && n > 0) {  // a zero-frequency symbol in the last column's table
              for (auto& p : tb) p = et[ft.size() - 1].sym.data();
              in.assign(n, 2);
              in[rng() % n] = 7;
            }
            std::vector<uint8_t> v, r;
            std::string ev, er;
            try {
              v = detail::rans_encode_impl(in.data(), n, cols, tb.data(), alpha.data(), lanes, "enc", true);
            } catch (const error& e) {
              ev = e.what();
            }
            try {
              r = detail::rans_encode_impl(in.data(), n, cols, tb.data(), alpha.data(), lanes, "enc", false);
            } catch (const error& e) {
              er = e.what();
            }
            CHECK(ev == er);
            CHECK(v == r);
            if (variant > 0 && n > 0) CHECK_FALSE(er.empty());
            ++compared;
          }
        }
      }
    }
  }
  CHECK(compared == 3 * 3 * 3 * 5 * 3);
}

}  // namespace kvcodec_test_cpu_rans_codec
