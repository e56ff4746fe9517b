// Tests that the `ac` and `rans` decoders (cpu/ac.hpp, cpu/rans.hpp) and the model
// parser (cpu/entropy_model.hpp) bound every allocation a stream or stage state claims by the bytes
// that back it or by the cache's shape, and refuse lying streams with a corrupt error (issue 11).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "kvcodec/cpu/entropy_model.hpp"
#include "kvcodec/kvcodec.hpp"
#include "../support/io_helpers.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_cpu_entropy_limits {

using namespace kvcodec;
using test::catch_error;

namespace {
block one_block(std::uint32_t rows, std::int32_t head_dim) {
  block b;
  b.layer = 0;
  b.key = true;
  b.heads = 1;
  b.head_dim = head_dim;
  b.t0 = 0;
  b.t1 = rows;
  b.count = {rows};
  b.pos.resize(rows);
  return b;
}
std::unique_ptr<entropy_stage> entropy_of(const std::string& spec) { return std::move(make_codec(spec).entropy); }
void put_varint(bytes& b, std::uint64_t v) { byte_writer(b).put_varint(v); }
}  // namespace

TEST_CASE("ac decode: CDFs a stream claims must be backed by its bytes before they are allocated") {
  // One plane of alphabet 65535 and 64 columns: 64 CDFs of 65536 u16 = 8 MiB of stream, claimed by a
  // 310-byte stream (a crafted .kvc asked 17 GB this way: 65536 columns).
  bytes s;
  put_varint(s, 1);      // planes
  put_varint(s, 65535);  // alphabet
  put_varint(s, 1);      // rows
  put_varint(s, 64);     // cols
  s.resize(s.size() + 300, 0);
  for (const char* spec : {"ac", "ac:streams=block"}) {
    auto st = entropy_of(spec);
    const auto e = catch_error([&] { st->decode(s, one_block(1, 64)); });
    CHECK(e.thrown);
    CHECK(e.kind == error_kind::corrupt);
    CHECK(e.has("64 CDFs of 65536 entries need 8388608 bytes"));
  }
  // Per-row stream lengths (u32 each) are checked against the bytes left too.
  bytes r;
  put_varint(r, 1);
  put_varint(r, 2);      // alphabet 2: a CDF is 3 u16
  put_varint(r, 60000);  // rows
  put_varint(r, 1);      // cols
  byte_writer w(r);
  w.put<std::uint16_t>(0);
  w.put<std::uint16_t>(100);
  w.put<std::uint16_t>(0);  // 2^16 stored as 0
  r.resize(r.size() + 64, 0);
  const auto e = catch_error([&] { entropy_of("ac")->decode(r, one_block(60000, 1)); });
  CHECK(e.kind == error_kind::corrupt);
  CHECK(e.has("60000 stream lengths need 240000 bytes"));
}

TEST_CASE("entropy model: a parsed model allocates nothing per column that its bytes do not back") {
  using namespace kvcodec::cpu::em;
  SUBCASE("pooled: no column map at all / whatever cols is") {
    bytes m = {0 /* pooled */, 1 /* geometric */, 2, 0, 0, 0x80};
    byte_reader r(m, "model");
    const plane_model pm = parse_model(r, 1u << 24, 4, 12);
    CHECK(pm.groups == 1);
    CHECK(pm.cols == (1u << 24));
    CHECK(pm.group_of_col.empty());  // was 2^24 entries (64 MiB) from 6 bytes
    r.expect_end();
  }
  SUBCASE("channel: one table per column must fit in the bytes left") {
    bytes m = {1 /* channel */, 1, 2, 0, 0, 0x80};
    byte_reader r(m, "model");
    const auto e = catch_error([&] { parse_model(r, 1u << 20, 4, 12); });
    CHECK(e.kind == error_kind::corrupt);
    CHECK(e.has("channel model of 1048576 columns needs 1048576 tables"));
  }
  SUBCASE("map: its groups' tables must fit / a map of one group keeps no column map") {
    bytes m = {2 /* map */};
    put_varint(m, 100000);  // groups
    m.resize(m.size() + 64, 0);
    byte_reader r(m, "model");
    CHECK(catch_error([&] { parse_model(r, 1u << 20, 4, 12); }).has("model of 100000 groups needs 100000 tables"));
    bytes one = {2, 1 /* one group: 0-bit ids */, 1, 2, 0, 0, 0x80};
    byte_reader r1(one, "model");
    const plane_model pm = parse_model(r1, 1u << 24, 4, 12);
    CHECK(pm.group_of_col.empty());
    r1.expect_end();
  }
  SUBCASE("models written by the encoder still parse and decode") {
    for (const char* spec : {"rans:ctx=pooled", "rans:ctx=channel", "rans:model=geometric", "rans"}) {
      symbols in;
      symbol_plane p;
      p.alphabet = 16;
      p.rows = 40;
      p.cols = 24;
      for (std::uint32_t i = 0; i < p.rows * p.cols; ++i) p.sym.push_back(static_cast<std::uint16_t>((i * 7 + i / 24) % 16));
      in.planes.push_back(p);
      auto st = entropy_of(spec);
      bytes out;
      coder_stats cs;
      st->encode(in, one_block(40, 24), out, cs);
      CHECK(st->decode(out, one_block(40, 24)).planes[0].sym == p.sym);
    }
  }
}

TEST_CASE("rans:tables=shared load_state: cols bounded by the shape / one entry per key") {
  cache_info info;
  info.shape = kv_shape{2, 1, 0, 8, 4};  // largest block: 4 rows x 8 -> 65600 symbols at most
  const auto entry = [](bytes& s, std::uint64_t layer, std::uint8_t key, std::uint64_t cols) {
    put_varint(s, layer);
    s.push_back(key);
    put_varint(s, 0);  // plane
    s.push_back(0);    // sub-plane
    put_varint(s, 4);  // alphabet
    put_varint(s, cols);
    for (std::uint8_t b : {0, 1, 2, 0, 0, 0x80}) s.push_back(b);  // pooled geometric model
  };
  SUBCASE("a valid state loads") {
    bytes s;
    put_varint(s, 2);
    entry(s, 0, 1, 8);
    entry(s, 1, 0, 65600);
    CHECK_FALSE(catch_error([&] { entropy_of("rans:tables=shared")->load_state(s, info); }).thrown);
  }
  SUBCASE("more columns than any block of the cache can have") {
    bytes s;
    put_varint(s, 1);
    entry(s, 0, 1, 65601);
    const auto e = catch_error([&] { entropy_of("rans:tables=shared")->load_state(s, info); });
    CHECK(e.kind == error_kind::corrupt);
    CHECK(e.has("field 'cols': expected at most 65600"));
  }
  SUBCASE("the same (layer / K/V / plane / sub-plane) twice") {
    bytes s;
    put_varint(s, 3);
    entry(s, 0, 1, 8);
    entry(s, 1, 1, 8);
    entry(s, 0, 1, 8);
    const auto e = catch_error([&] { entropy_of("rans:tables=shared")->load_state(s, info); });
    CHECK(e.kind == error_kind::corrupt);
    CHECK(e.has("entry 2: a second table for layer 0 K plane 0 sub-plane 0"));
  }
  SUBCASE("an entry count the state's bytes cannot hold") {
    bytes s;
    put_varint(s, 1000);
    entry(s, 0, 1, 8);
    const auto e = catch_error([&] { entropy_of("rans:tables=shared")->load_state(s, info); });
    CHECK(e.kind == error_kind::corrupt);
    CHECK(e.has("field 'entries'"));
  }
}

}  // namespace kvcodec_test_cpu_entropy_limits
