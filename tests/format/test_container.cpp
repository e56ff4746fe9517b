// Bad-input behaviour of the .kvc container: every corruption is an error, never a crash.
#include <doctest/doctest.h>

#include <cstring>
#include <random>

#include "kvcodec/kvcodec.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_format_container {

using namespace kvcodec;

namespace {
kv_cache small_cache() {
  kv_cache kv = kv_cache::zeros(kv_shape{3, 2, 0, 8, 100}, dtype::f16);
  std::mt19937 rng(7);
  std::normal_distribution<float> n;
  for (auto* side : {&kv.keys, &kv.values})
    for (auto& l : *side)
      for (auto& x : l) x = round_to_dtype(n(rng), dtype::f16);
  return kv;
}

error_kind decode_error(const bytes& b) {
  try {
    decode(cpu::seq, b, decode_options{.name = "test.kvc"});
  } catch (const error& e) {
    return e.kind();
  }
  FAIL("decoding corrupted bytes did not throw");
  return error_kind::io;
}

/// Rewrites the JSON header of a valid container (recomputing its checksum), to forge lying headers.
bytes with_header(const bytes& good, const std::function<void(nlohmann::json&)>& edit) {
  std::uint32_t hlen;
  std::memcpy(&hlen, good.data() + 12, 4);
  nlohmann::json j = nlohmann::json::parse(good.begin() + 24, good.begin() + 24 + hlen);
  edit(j);
  const std::string text = j.dump();
  bytes out(good.begin(), good.begin() + 24);
  const std::uint32_t nl = static_cast<std::uint32_t>(text.size());
  std::memcpy(out.data() + 12, &nl, 4);
  const std::uint64_t sum = XXH3_64bits(text.data(), text.size());
  std::memcpy(out.data() + 16, &sum, 8);
  out.insert(out.end(), text.begin(), text.end());
  out.insert(out.end(), good.begin() + 24 + hlen, good.end());
  return out;
}

/// The same container in version 1 (index in the JSON header, plain checksums), as older kvcodec wrote it.
bytes to_v1(const bytes& v2) {
  const kvc_view v = parse_kvc(v2, "v2");
  std::uint32_t hlen;
  std::memcpy(&hlen, v2.data() + 12, 4);
  nlohmann::json j = nlohmann::json::parse(v2.begin() + 24, v2.begin() + 24 + hlen);
  bytes payload;
  nlohmann::json st = nlohmann::json::array(), seg = nlohmann::json::array();
  for (std::size_t i = 0; i < v.header.states.size(); ++i) {
    const auto b = v.state_bytes(i);
    st.push_back({v.header.states[i].stage, payload.size(), b.size(), checksum64(b)});
    payload.insert(payload.end(), b.begin(), b.end());
  }
  for (std::size_t i = 0; i < v.header.segments.size(); ++i) {
    const auto b = v.segment_bytes(i);
    const auto& e = v.header.segments[i];
    seg.push_back({e.layer, e.t0, e.t1, payload.size(), b.size(), checksum64(b)});
    payload.insert(payload.end(), b.begin(), b.end());
  }
  j["states"] = st;
  j["segments"] = seg;
  const std::string text = j.dump();
  bytes out(v2.begin(), v2.begin() + 24);
  out[8] = 1;
  const std::uint32_t nl = static_cast<std::uint32_t>(text.size());
  std::memcpy(out.data() + 12, &nl, 4);
  const std::uint64_t sum = XXH3_64bits(text.data(), text.size());
  std::memcpy(out.data() + 16, &sum, 8);
  out.insert(out.end(), text.begin(), text.end());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}
}  // namespace

TEST_CASE("version 1 containers still decode / to the same cache") {
  for (const char* spec : {"raw", "kvc:level=5", "zstd"}) {
    const bytes good = encode(spec, small_cache(), {.chunk_tokens = 32}).data;
    const bytes old = to_v1(good);
    CHECK(parse_kvc(old, "old").header.version == 1);
    const kv_cache a = decode(cpu::seq, good), b = decode(cpu::par(2), old);
    CHECK(a.keys == b.keys);
    CHECK(a.values == b.values);
  }
}

TEST_CASE("every truncation of a container is rejected") {
  const bytes good = encode("zstd", small_cache(), {.chunk_tokens = 32}).data;
  for (std::size_t n = 0; n < good.size(); n += (n < 64 ? 1 : 97)) {
    bytes b(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    const auto k = decode_error(b);
    CHECK((k == error_kind::corrupt || k == error_kind::bad_input));
  }
}

TEST_CASE("bit flips anywhere are detected by a checksum or structure check") {
  for (const char* spec : {"raw", "zstd", "raw:dtype=bf16"}) {
    const bytes good = encode(spec, small_cache(), {.chunk_tokens = 40}).data;
    std::mt19937 rng(11);
    for (int i = 0; i < 300; ++i) {
      bytes b = good;
      const std::size_t pos = rng() % b.size();
      b[pos] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
      const auto k = decode_error(b);
      CHECK((k == error_kind::corrupt || k == error_kind::bad_input));
    }
  }
}

TEST_CASE("zero-filled and garbage files are rejected") {
  const bytes good = encode("raw", small_cache()).data;
  CHECK(decode_error(bytes(good.size(), 0)) == error_kind::bad_input);
  bytes zero_payload = good;
  std::fill(zero_payload.begin() + 24, zero_payload.end(), 0);
  CHECK(decode_error(zero_payload) == error_kind::corrupt);
  std::mt19937 rng(3);
  bytes garbage(5000);
  for (auto& x : garbage) x = static_cast<std::uint8_t>(rng());
  CHECK(decode_error(garbage) == error_kind::bad_input);
  CHECK(decode_error(bytes{}) == error_kind::bad_input);
}

TEST_CASE("a header claiming terabytes is refused before allocating") {
  const bytes good = encode("raw", small_cache()).data;
  const bytes huge = with_header(good, [](nlohmann::json& j) {
    j["shape"]["layers"] = 65536;
    j["shape"]["tokens"] = std::int64_t{1} << 30;
  });
  try {
    decode(cpu::seq, huge, decode_options{.name = "huge.kvc"});
    FAIL("no error");
  } catch (const error& e) {
    CHECK(e.kind() == error_kind::corrupt);
    CHECK(std::string(e.what()).find("refusing to allocate") != std::string::npos);
  }
}

TEST_CASE("lying segment indexes are rejected (version 1 header index)") {
  const bytes good = to_v1(encode("raw", small_cache(), {.chunk_tokens = 50}).data);
  auto expect = [&](const std::function<void(nlohmann::json&)>& edit, const char* needle) {
    try {
      decode(cpu::seq, with_header(good, edit), decode_options{.name = "x.kvc"});
      FAIL("no error for " << needle);
    } catch (const error& e) {
      CHECK(e.kind() == error_kind::corrupt);
      CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
    }
  };
  expect([](auto& j) { j["segments"][0][3] = 1u << 30; }, "outside");
  expect([](auto& j) { j["segments"][1][3] = j["segments"][0][3]; }, "overlapping");
  expect([](auto& j) { j["segments"].erase(1); }, "segment index has");
  expect([](auto& j) { j["segments"][1] = j["segments"][0]; }, "twice");
  expect([](auto& j) { j["segments"][0][2] = 7; }, "does not fit");
  expect([](auto& j) { j["chunk_tokens"] = 0; }, "chunk_tokens");
  expect([](auto& j) { j["shape"]["head_dim"] = -1; }, "head_dim");
  expect([](auto& j) { j.erase("codec"); }, "codec");
  expect([](auto& j) { j["codec"] = "nosuch"; }, "not usable");
  expect([](auto& j) { j["tokens"] = std::vector<int>{1, 2, 3}; }, "tokens");
  expect([](auto& j) { j["dtype"] = "i32"; }, "dtype");
  expect([](auto& j) { j["segments"][0][5] = 12345; }, "checksum");
  expect([](auto& j) { j["segments"][0][0] = 0.5; }, "integer");
  expect([](auto& j) { j["chunk_tokens"] = 16.9; }, "an integer");
  expect([](auto& j) { j["shape"]["layers"] = std::uint64_t{1} << 32; }, "layers");
  expect([](auto& j) { j["tokens"] = std::vector<std::int64_t>(100, std::int64_t{1} << 32); }, "32-bit integer");
}

TEST_CASE("lying version 2 indexes and footers are rejected") {
  const bytes good = encode("raw", small_cache(), {.chunk_tokens = 50}).data;
  const kvc_view v = parse_kvc(good, "x");
  const std::size_t n = v.header.segments.size();
  const std::size_t io = good.size() - kvc_footer_size - n * kvc_index_entry_size;
  // Edits one index entry and reseals the index checksum, as a forger would.
  auto forge = [&](std::size_t entry, std::size_t field_off, std::uint64_t value, std::size_t width) {
    bytes b = good;
    std::memcpy(b.data() + io + entry * kvc_index_entry_size + field_off, &value, width);
    const std::uint64_t sum = XXH3_64bits_withSeed(b.data() + io, n * kvc_index_entry_size, v.header.header_checksum);
    std::memcpy(b.data() + good.size() - kvc_footer_size + 16, &sum, 8);
    return b;
  };
  auto expect = [&](const bytes& b, const char* needle) {
    try {
      decode(cpu::seq, b, decode_options{.name = "x.kvc"});
      FAIL("no error for " << needle);
    } catch (const error& e) {
      CHECK(e.kind() == error_kind::corrupt);
      CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
    }
  };
  expect(forge(0, 24, 1u << 30, 8), "does not follow");
  expect(forge(1, 0, 0, 4), "twice");
  expect(forge(0, 8, 7, 8), "does not fit");
  expect(forge(2, 40, 12345, 8), "does not match the index");
  bytes b = good;
  b[good.size() - 20] ^= 1;  // index count
  expect(b, "index count");
  b = good;
  b[io + 3] ^= 1;  // index bytes without resealing
  expect(b, "index checksum");
}

TEST_CASE("a wrong version or magic is a clear bad-input error") {
  bytes b = encode("raw", small_cache()).data;
  b[8] = 9;
  try {
    decode(cpu::seq, b, decode_options{.name = "v.kvc"});
    FAIL("no error");
  } catch (const error& e) {
    CHECK(e.kind() == error_kind::bad_input);
    CHECK(std::string(e.what()).find("version") != std::string::npos);
  }
}

TEST_CASE("stage parameters that the container's shape refuses are a corrupt-file error naming the file") {
  // kivi's value groups must divide head_dim (16 here): a version 1 file (no header-bound checksums)
  // relabelled to group=12 reaches the stage, which refuses it at decode time.
  kv_cache kv = kv_cache::zeros(kv_shape{1, 2, 0, 16, 64}, dtype::f16);
  std::mt19937 rng(5);
  std::normal_distribution<float> n;
  for (auto* side : {&kv.keys, &kv.values})
    for (auto& l : *side)
      for (auto& x : l) x = round_to_dtype(n(rng), dtype::f16);
  const bytes good = to_v1(encode("kivi:bits=4,group=8", kv, {.chunk_tokens = 32}).data);
  const bytes bad = with_header(good, [](nlohmann::json& j) {
    std::string c = j["codec"];
    c.replace(c.find("group=8"), 7, "group=12");
    j["codec"] = c;
  });
  try {
    decode(cpu::seq, bad, decode_options{.name = "relabel.kvc"});
    FAIL("no error");
  } catch (const error& e) {
    CHECK(e.kind() == error_kind::corrupt);
    CHECK(std::string(e.what()).find("relabel.kvc") != std::string::npos);
  }
}

TEST_CASE("a stage's error inside a resealed segment names the file and the segment") {
  // Version 1 checksums are plain, so a damaged segment can be resealed and reach the stage decoders,
  // whose own errors name only their stream: decode puts the file, layer and tokens in front.
  const bytes good = to_v1(encode("uniform:bits=4|rans:tables=chunk", small_cache(), {.chunk_tokens = 32}).data);
  std::uint32_t hlen;
  std::memcpy(&hlen, good.data() + 12, 4);
  const nlohmann::json j0 = nlohmann::json::parse(good.begin() + 24, good.begin() + 24 + hlen);
  const std::size_t base = 24 + hlen, off = j0["segments"][0][3], size = j0["segments"][0][4];
  int refused = 0;
  for (std::size_t at = 0; at < size; at += 3) {
    bytes b = good;
    b[base + off + at] ^= 0x5a;
    const std::uint64_t sum = checksum64(std::span<const std::uint8_t>(b.data() + base + off, size));
    b = with_header(b, [&](nlohmann::json& j) { j["segments"][0][5] = sum; });
    try {
      (void)decode(cpu::seq, b, decode_options{.name = "resealed.kvc"});
    } catch (const error& e) {
      CAPTURE(e.what());
      CHECK(e.kind() == error_kind::corrupt);
      CHECK(std::string(e.what()).rfind("resealed.kvc", 0) == 0);
      ++refused;
    }
  }
  CHECK(refused > 0);
}

}  // namespace kvcodec_test_format_container
