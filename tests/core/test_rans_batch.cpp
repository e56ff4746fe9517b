// Tests of kvcodec/core/rans_batch.hpp: the CUDA batch decoder's lane logic, run by its host
// emulation (warp ballots computed from 32 lanes), against the CPU decoder of cpu/rans_codec.hpp on
// the same CPU-encoded bytes: identical symbols, and a failure wherever the CPU decoder refuses.
#include <doctest/doctest.h>

#include "kvcodec/core/rans_batch.hpp"
#include "kvcodec/core/warp.hpp"
#include "kvcodec/cpu/rans_codec.hpp"
#include "../support/rans_batch_cases.hpp"

#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace kvcodec_test_core_rans_batch {

using namespace kvcodec;

using namespace kvcodec::test_support;

namespace {

/// True when the CPU decoder refuses the bytes.
bool cpu_refuses(const case_data& c, std::span<const std::uint8_t> bytes) {
  std::vector<std::uint16_t> out(c.symbols.size());
  try {
    rans_decode_ctx(bytes.data(), bytes.size(), c.dec, c.lanes, out.data(), out.size());
  } catch (const error& e) {
    return e.kind() == error_kind::corrupt;
  }
  return false;
}

}  // namespace

TEST_CASE("warp wrappers: lanemask_lt - rank_below and the host ballot follow CUDA's definitions") {
  CHECK(warp::lanemask_lt(0) == 0u);
  CHECK(warp::lanemask_lt(1) == 1u);
  CHECK(warp::lanemask_lt(31) == 0x7fffffffu);
  bool pred[32] = {};
  pred[0] = pred[3] = pred[31] = true;
  const std::uint32_t b = warp::ballot_host(pred);
  CHECK(b == 0x80000009u);
  CHECK(warp::rank_below(b, 0) == 0u);
  CHECK(warp::rank_below(b, 3) == 1u);
  CHECK(warp::rank_below(b, 31) == 2u);
  CHECK(warp::popc(b) == 3u);
}

TEST_CASE("batch emulation decodes the CPU encoder's bytes exactly: lanes - columns - lengths around a step") {
  for (int lanes : {32, 64, 96, 1024}) {
    for (std::size_t cols : {std::size_t{1}, std::size_t{3}, std::size_t{1024}}) {
      const std::size_t N = static_cast<std::size_t>(lanes);
      rans_batch_builder<std::uint32_t> b32;
      rans_batch_builder<std::uint64_t> b64;
      std::vector<case_data> cases;
      std::uint64_t seed = 100 * static_cast<std::uint64_t>(lanes) + cols;
      for (std::size_t n : {std::size_t{0}, std::size_t{1}, N - 1, N, N + 1, 5 * N + 7, 40 * N})
      {
        const int prob_bits = 10 + static_cast<int>(seed % 3);
        cases.push_back(make_case(n, cols, cols == 1 ? 1 : 4, 40, prob_bits, lanes, seed));
        ++seed;
      }
      for (const auto& c : cases) {
        add(b32, c, c.bytes);
        add(b64, c, c.bytes);
      }
      for (int form = 0; form < 2; ++form) {
        std::vector<std::uint16_t> out(b32.out_symbols, 0xffff);
        std::vector<rans_batch_status> st(cases.size(), rans_batch_status::bad_size);
        if (form == 0)
          rans_decode_batch_emulated(b32.host_args(out.data()), st.data());
        else
          rans_decode_batch_emulated(b64.host_args(out.data()), st.data());
        std::size_t off = 0;
        for (std::size_t k = 0; k < cases.size(); ++k) {
          INFO("lanes " << lanes << ", cols " << cols << ", n " << cases[k].symbols.size() << ", form " << form);
          CHECK(st[k] == rans_batch_status::ok);
          CHECK(std::equal(cases[k].symbols.begin(), cases[k].symbols.end(), out.begin() + static_cast<std::ptrdiff_t>(off)));
          off += cases[k].symbols.size();
        }
      }
    }
  }
}

TEST_CASE("batch emulation mixes lane counts in one batch (idle lanes of the wider group take no words)") {
  rans_batch_builder<std::uint32_t> b;
  std::vector<case_data> cases;
  std::uint64_t seed = 9;
  for (int lanes : {32, 1024, 64, 96})
    for (std::size_t n : {std::size_t{777}, std::size_t{5000}}) cases.push_back(make_case(n, 1024, 16, 64, 10, lanes, seed++));
  for (const auto& c : cases) add(b, c, c.bytes);
  CHECK(b.max_lanes == 1024u);
  std::vector<std::uint16_t> out(b.out_symbols);
  std::vector<rans_batch_status> st(cases.size());
  rans_decode_batch_emulated(b.host_args(out.data()), st.data());
  std::size_t off = 0;
  for (std::size_t k = 0; k < cases.size(); ++k) {
    CHECK(st[k] == rans_batch_status::ok);
    CHECK(std::equal(cases[k].symbols.begin(), cases[k].symbols.end(), out.begin() + static_cast<std::ptrdiff_t>(off)));
    off += cases[k].symbols.size();
  }
}

TEST_CASE("batch emulation refuses what the CPU decoder refuses: cut - padded - bad states - odd sizes - flipped bytes") {
  const case_data c = make_case(3000, 1024, 8, 48, 10, 64, 77);
  std::vector<std::vector<std::uint8_t>> bad;
  std::vector<rans_batch_status> expect;
  auto cut = c.bytes;
  cut.resize(cut.size() - 2);
  bad.push_back(cut);
  expect.push_back(rans_batch_status::words_short);
  auto pad = c.bytes;
  pad.push_back(0);
  pad.push_back(0);
  bad.push_back(pad);
  expect.push_back(rans_batch_status::words_left);
  auto low = c.bytes;
  low[4 * 5 + 2] = low[4 * 5 + 3] = 0;  // lane 5's state below 2^16
  bad.push_back(low);
  expect.push_back(rans_batch_status::bad_state);
  auto odd = c.bytes;
  odd.push_back(1);
  bad.push_back(odd);
  expect.push_back(rans_batch_status::bad_size);
  bad.push_back(std::vector<std::uint8_t>(c.bytes.begin(), c.bytes.begin() + 100));
  expect.push_back(rans_batch_status::bad_size);
  rans_batch_builder<std::uint32_t> b;
  for (const auto& v : bad) add(b, c, v);
  std::vector<std::uint16_t> out(b.out_symbols);
  std::vector<rans_batch_status> st(bad.size());
  rans_decode_batch_emulated(b.host_args(out.data()), st.data());
  for (std::size_t k = 0; k < bad.size(); ++k) {
    INFO("variant " << k);
    CHECK(st[k] == expect[k]);
    CHECK(cpu_refuses(c, bad[k]));
  }
  // Single byte flips in the words: the emulation fails exactly when the CPU decoder does, and
  // when both accept, the symbols agree.
  std::mt19937_64 rng(5);
  int refused = 0;
  for (int k = 0; k < 200; ++k) {
    auto f = c.bytes;
    f[4 * 64 + rng() % (f.size() - 4 * 64)] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
    rans_batch_builder<std::uint32_t> bf;
    add(bf, c, f);
    std::vector<std::uint16_t> o(bf.out_symbols);
    rans_batch_status s1{};
    rans_decode_batch_emulated(bf.host_args(o.data()), &s1);
    const bool cpu_bad = cpu_refuses(c, f);
    CHECK((s1 != rans_batch_status::ok) == cpu_bad);
    if (!cpu_bad) {
      std::vector<std::uint16_t> ref(c.symbols.size());
      rans_decode_ctx(f.data(), f.size(), c.dec, c.lanes, ref.data(), ref.size());
      CHECK(ref == o);
    }
    refused += cpu_bad;
  }
  CHECK(refused > 0);
  bool threw = false;
  try {
    rans_batch_throw_failed(std::span<const rans_batch_status>(st), [](std::size_t i) { return "stream " + std::to_string(i); });
  } catch (const error& e) {
    threw = e.kind() == error_kind::corrupt && std::string(e.what()).find("stream 0") != std::string::npos;
  }
  CHECK(threw);
}

TEST_CASE("batch encode emulation writes the CPU encoder's bytes: lanes - columns - lengths around a step - byte and 16-bit symbols") {
  for (int lanes : {32, 64, 96, 1024}) {
    for (std::size_t cols : {std::size_t{1}, std::size_t{3}, std::size_t{1024}}) {
      const std::size_t N = static_cast<std::size_t>(lanes);
      std::vector<case_data> cases;
      std::uint64_t seed = 7 + 100 * static_cast<std::uint64_t>(lanes) + cols;
      for (std::size_t n : {std::size_t{0}, std::size_t{1}, N - 1, N, N + 1, 5 * N + 7, 40 * N}) {
        cases.push_back(make_case(n, cols, cols == 1 ? 1 : 4, 40, 10 + static_cast<int>(seed % 6), lanes, seed));
        ++seed;
      }
      for (bool wide : {false, true}) {
        const encode_layout L = make_encode_layout(cases, wide);
        std::vector<std::uint16_t> w;
        std::vector<std::uint32_t> st, bad;
        std::vector<std::uint64_t> count;
        rans_encode_batch_emulated(L.host_args(w, st, count, bad));
        for (std::size_t k = 0; k < cases.size(); ++k) {
          INFO("lanes " << lanes << ", cols " << cols << ", n " << cases[k].symbols.size() << (wide ? ", 16-bit" : ", bytes"));
          CHECK(bad[k] == 0u);
          CHECK(L.stream_bytes(k, w, st, count) == cases[k].bytes);
        }
      }
    }
  }
}

TEST_CASE("batch encode emulation mixes lane counts in one batch and codes wide alphabets") {
  std::vector<case_data> cases;
  cases.push_back(make_case(3000, 7, 3, 1000, 15, 32, 11));
  cases.push_back(make_case(70000, 128, 5, 4096, 15, 1024, 12));
  cases.push_back(make_case(999, 2, 2, 300, 12, 64, 13));
  const encode_layout L = make_encode_layout(cases, true);
  std::vector<std::uint16_t> w;
  std::vector<std::uint32_t> st, bad;
  std::vector<std::uint64_t> count;
  rans_encode_batch_emulated(L.host_args(w, st, count, bad));
  for (std::size_t k = 0; k < cases.size(); ++k) {
    INFO("stream " << k);
    CHECK(bad[k] == 0u);
    CHECK(L.stream_bytes(k, w, st, count) == cases[k].bytes);
  }
}

TEST_CASE("batch encode emulation flags a symbol without a code - outside the alphabet or of zero frequency") {
  std::vector<case_data> cases;
  cases.push_back(make_case(500, 4, 2, 40, 10, 32, 21));
  cases.push_back(make_case(500, 4, 2, 40, 10, 32, 22));
  // a zero-frequency symbol: widen the first case's tables by a symbol that none of them codes
  for (auto& t : cases[0].tabs) {
    t.freq.push_back(0);
    t.start.push_back(t.total());
  }
  cases[0].symbols[137] = 40;
  cases[1].symbols[250] = 41;  // outside every table of the second case
  const encode_layout L = make_encode_layout(cases, false);
  std::vector<std::uint16_t> w;
  std::vector<std::uint32_t> st, bad;
  std::vector<std::uint64_t> count;
  rans_encode_batch_emulated(L.host_args(w, st, count, bad));
  CHECK(bad[0] == 1u);
  CHECK(bad[1] == 1u);
}

TEST_CASE("histogram step counts every symbol in its column - refuses symbols outside the alphabet") {
  std::vector<std::uint8_t> sym = {0, 1, 2, 1, 1, 2, 0, 0, 2, 7};
  std::vector<std::uint32_t> hist(2 * 3 + 3, 0);
  const rans_hist_op op{sym.data(), hist.data()};
  const rans_hist_block b{0, 9, 0, 2, 3, 0};  // 9 symbols in 2 columns of alphabet 3
  for (std::uint64_t i = 0; i < op.count(b); ++i) CHECK(op(b, i));
  // column 0: symbols 0 2 1 0 2; column 1: 1 1 2 0
  CHECK(hist == std::vector<std::uint32_t>{2, 1, 2, 1, 2, 1, 0, 0, 0});
  const rans_hist_block one{9, 1, 6, 1, 3, 0};
  CHECK_FALSE(op(one, 0));
  CHECK(hist[6] + hist[7] + hist[8] == 0u);
  std::vector<std::uint8_t> wide = {1, 1, 2, 0};  // 16-bit symbols 257 and 2
  std::vector<std::uint32_t> wh(300, 0);
  const rans_hist_op wop{wide.data(), wh.data()};
  const rans_hist_block wb{0, 2, 0, 1, 300, 1};
  CHECK(wop(wb, 0));
  CHECK(wop(wb, 1));
  CHECK(wh[257] == 1u);
  CHECK(wh[2] == 1u);
}

TEST_CASE("batch builder refuses offsets outside the tables - bad lane counts and unknown columns") {
  rans_batch_builder<std::uint32_t> b;
  std::vector<std::uint32_t> tab(1024, rans_dec32_pack(0, 1024, 0));
  const std::uint32_t ok_off[] = {0};
  const std::uint32_t bad_off[] = {1};
  CHECK_THROWS_AS(b.add_model(std::span<const std::uint32_t>(tab), std::span<const std::uint32_t>(bad_off), 10), error);
  CHECK_THROWS_AS(b.add_model(std::span<const std::uint32_t>(tab), std::span<const std::uint32_t>(ok_off), 9), error);
  const std::uint32_t base = b.add_model(std::span<const std::uint32_t>(tab), std::span<const std::uint32_t>(ok_off), 10);
  const std::uint8_t bytes[4 * 32] = {};
  CHECK_THROWS_AS(b.add_stream(std::span<const std::uint8_t>(bytes), 0, 48, base, 1, 10), error);
  CHECK_THROWS_AS(b.add_stream(std::span<const std::uint8_t>(bytes), 0, 32, base, 2, 10), error);
  CHECK_NOTHROW(b.add_stream(std::span<const std::uint8_t>(bytes), 0, 32, base, 1, 10));
}

}  // namespace kvcodec_test_core_rans_batch
