#include <doctest/doctest.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/io/safetensors.hpp"
#include "../support/shared_data.hpp"
#include "../support/io_helpers.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_io_safetensors {

using namespace kvcodec;
using namespace kvcodec::io;

namespace {

using test::catch_error;
using test::caught;

/// A raw safetensors image from a header string and a data area.
std::vector<std::uint8_t> raw_file(const std::string& header, const std::vector<std::uint8_t>& data) {
  std::vector<std::uint8_t> out;
  append_le64(out, header.size());
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

caught parse_error(const std::string& header, std::size_t data_bytes) {
  const auto img = raw_file(header, std::vector<std::uint8_t>(data_bytes, 7));
  return catch_error([&] { read_safetensors_bytes(img, "fixture"); });
}

tensor_file sample_file() {
  tensor_file f;
  const float fl[] = {1.5f, -2.25f, 0.0f, 3e-8f, 65504.0f, -0.0f};
  f.tensors.push_back(make_float_tensor("a.f32", {2, 3}, fl, dtype::f32));
  f.tensors.push_back(make_float_tensor("b.f16", {3, 2}, fl, dtype::f16));
  f.tensors.push_back(make_float_tensor("c.bf16", {6}, fl, dtype::bf16));
  const std::int32_t ids[] = {1, -2, 2147483647, -2147483647 - 1, 0};
  f.tensors.push_back(make_i32_tensor("d.i32", {5}, ids));
  const std::uint8_t u[] = {0, 1, 255};
  f.tensors.push_back(make_u8_tensor("e.u8", {1, 3}, u));
  f.tensors.push_back(make_float_tensor("scalar", {}, fl, dtype::f32));
  f.tensors.push_back(make_float_tensor("empty", {0, 4}, fl, dtype::f32));
  f.metadata = {{"model", "stories260K"}, {"unicode", "h\xc3\xa9llo"}, {"empty", ""}};
  return f;
}

}  // namespace

TEST_CASE("safetensors: round trip of every dtype / shape edge cases and metadata") {
  const tensor_file f = sample_file();
  const auto bytes = safetensors_bytes(f);
  const std::uint64_t hlen = load_le64(bytes.data());
  CHECK(hlen % 8 == 0);
  CHECK(bytes[8] == '{');
  CHECK(bytes[8 + hlen - 1] == ' ');  // padded with spaces
  const tensor_file g = read_safetensors_bytes(bytes, "mem");
  REQUIRE(g.tensors.size() == f.tensors.size());
  for (std::size_t i = 0; i < f.tensors.size(); ++i) {
    CHECK(g.tensors[i].name == f.tensors[i].name);  // written order is file order
    CHECK(g.tensors[i].type == f.tensors[i].type);
    CHECK(g.tensors[i].shape == f.tensors[i].shape);
    CHECK(g.tensors[i].bytes == f.tensors[i].bytes);
  }
  CHECK(g.metadata == f.metadata);
  CHECK(safetensors_bytes(g) == bytes);  // deterministic
  REQUIRE(g.find("b.f16"));
  CHECK(g.find("nope") == nullptr);
  const auto halves = tensor_to_floats(*g.find("b.f16"), "t");
  CHECK(halves[0] == 1.5f);
  CHECK(halves[4] == 65504.0f);
  CHECK(g.find("scalar")->numel() == 1);
  CHECK(g.find("empty")->bytes.empty());
  CHECK(tensor_to_i32(*g.find("d.i32"), "t")[2] == 2147483647);
}

TEST_CASE("safetensors: empty file and one-tensor file") {
  tensor_file none;
  const auto b0 = safetensors_bytes(none);
  CHECK(read_safetensors_bytes(b0, "e").tensors.empty());
  tensor_file one;
  const float x = 42.0f;
  one.tensors.push_back(make_float_tensor("x", {1}, &x, dtype::f32));
  const auto g = read_safetensors_bytes(safetensors_bytes(one), "one");
  REQUIRE(g.tensors.size() == 1);
  CHECK(tensor_to_floats(g.tensors[0], "t")[0] == 42.0f);
}

TEST_CASE("safetensors: file write refuses to overwrite unless asked / atomic replace") {
  namespace fs = std::filesystem;
  const std::string dir = (fs::temp_directory_path() / ("kvcodec_st_" + std::to_string(std::random_device{}()))).string();
  fs::create_directories(dir);
  const std::string p = dir + "/t.safetensors";
  const tensor_file f = sample_file();
  write_safetensors(p, f);
  CHECK(read_safetensors(p).tensors.size() == f.tensors.size());
  const auto e = catch_error([&] { write_safetensors(p, f); });
  CHECK(e.thrown);
  CHECK(e.kind == error_kind::usage);
  CHECK(e.has("overwrite"));
  tensor_file small;
  write_safetensors(p, small, true);
  CHECK(read_safetensors(p).tensors.empty());
  CHECK(same_file(p, dir + "/./t.safetensors"));
  CHECK_FALSE(same_file(p, dir + "/missing"));
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& de : fs::directory_iterator(dir)) ++files;
  CHECK(files == 1);  // no temporary files left behind
  const auto missing = catch_error([&] { read_safetensors(dir + "/missing.safetensors"); });
  CHECK(missing.kind == error_kind::io);
  fs::remove_all(dir);
}

TEST_CASE("safetensors: writer rejects inconsistent tensors") {
  tensor_file f;
  f.tensors.push_back(tensor{"x", dtype::f32, {2, 2}, std::vector<std::uint8_t>(12)});
  CHECK(catch_error([&] { safetensors_bytes(f); }).has("bytes of tensor 'x'"));
  f.tensors[0].bytes.resize(16);
  f.tensors.push_back(f.tensors[0]);
  CHECK(catch_error([&] { safetensors_bytes(f); }).has("twice"));
  f.tensors.pop_back();
  f.tensors[0].name = "__metadata__";
  CHECK(catch_error([&] { safetensors_bytes(f); }).thrown);
  f.tensors[0].name = "bad\xff";
  CHECK(catch_error([&] { safetensors_bytes(f); }).has("UTF-8"));
}

TEST_CASE("safetensors: bad input is rejected with a precise message") {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  CHECK_FALSE(parse_error(ok, 8).thrown);

  SUBCASE("shorter than the length field") {
    const std::vector<std::uint8_t> b = {1, 2, 3};
    const auto e = catch_error([&] { read_safetensors_bytes(b, "tiny"); });
    CHECK(e.kind == error_kind::bad_input);
    CHECK(e.has("header length"));
  }
  SUBCASE("header length larger than the file") {
    auto img = raw_file(ok, std::vector<std::uint8_t>(8));
    img[0] = 0xff;
    img[1] = 0x10;
    const auto e = catch_error([&] { read_safetensors_bytes(img, "big"); });
    CHECK(e.has("header length"));
    CHECK(e.has(std::to_string(img.size() - 8)));
  }
  SUBCASE("header length above the 100 MiB cap") {
    auto img = raw_file(ok, std::vector<std::uint8_t>(8));
    img[7] = 0x01;
    CHECK(catch_error([&] { read_safetensors_bytes(img, "cap"); }).has("at most 104857600"));
  }
  SUBCASE("truncated data area") {
    const auto e = parse_error(ok, 7);
    CHECK(e.has("data_offsets"));
    CHECK(e.has("within the data area of 7 bytes"));
  }
  SUBCASE("truncated header") {
    auto img = raw_file(ok, std::vector<std::uint8_t>(8));
    img.resize(20);
    CHECK(catch_error([&] { read_safetensors_bytes(img, "cut"); }).has("header length"));
  }
  SUBCASE("overlapping offsets") {
    const auto e = parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12);
    CHECK(e.has("non-overlapping"));
    CHECK(e.has("'a'"));
    CHECK(e.has("'b'"));
  }
  SUBCASE("identical offsets overlap too") {
    CHECK(parse_error(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                      R"("b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 4).has("non-overlapping"));
  }
  SUBCASE("out-of-range offsets") {
    CHECK(parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[100,108]}})", 8).has("within the data area"));
  }
  SUBCASE("end before begin") {
    CHECK(parse_error(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8).has("end >= begin"));
  }
  SUBCASE("negative offsets") {
    CHECK(parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8).has("data_offsets"));
  }
  SUBCASE("unknown dtype names the tensor and the dtype") {
    const auto e = parse_error(R"({"weights.3":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8);
    CHECK(e.kind == error_kind::bad_input);
    CHECK(e.has("weights.3"));
    CHECK(e.has("F64"));
  }
  SUBCASE("size does not match shape") {
    const auto e = parse_error(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8);
    CHECK(e.has("12 bytes"));
    CHECK(e.has("8 bytes"));
  }
  SUBCASE("negative and absurd dims") {
    CHECK(parse_error(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8).has("shape"));
    CHECK(parse_error(R"({"a":{"dtype":"F32","shape":[1e3],"data_offsets":[0,8]}})", 8).has("shape"));
    CHECK(parse_error(R"({"a":{"dtype":"U8","shape":[281474976710657],"data_offsets":[0,8]}})", 8).has("shape"));
    CHECK(parse_error(R"({"a":{"dtype":"U8","shape":[281474976710656,281474976710656],"data_offsets":[0,8]}})", 8).has("64 bits"));
    CHECK(parse_error(R"({"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}})", 8).has("16 dims"));
  }
  SUBCASE("malformed header json") {
    CHECK(parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", 8).has("valid JSON"));
    CHECK(parse_error(R"([1,2])", 8).has("'{'"));
    CHECK(parse_error(R"({"a":1})", 8).has("tensor 'a'"));
    CHECK(parse_error(R"({"a":{"dtype":"F32","shape":[2]}})", 8).has("data_offsets"));
    CHECK(parse_error(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8).has("dtype"));
    CHECK(parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8)
              .has("'a' twice"));
    CHECK(parse_error(R"({"__metadata__":{"k":3}})", 0).has("__metadata__.k"));
    CHECK(parse_error(R"({"__metadata__":[1]})", 0).has("__metadata__"));
  }
}

TEST_CASE("safetensors: tensors must tile the data area exactly (no holes / no trailing bytes)") {
  const std::string two = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})";
  CHECK_FALSE(parse_error(two, 8).thrown);
  SUBCASE("trailing junk after the last tensor") {
    const auto e = parse_error(two, 11);
    CHECK(e.kind == error_kind::bad_input);
    CHECK(e.has("fixture"));
    CHECK(e.has("field 'data area'"));
    CHECK(e.has("3 trailing bytes"));
  }
  SUBCASE("a hole between two tensors") {
    const auto e = parse_error(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}})", 10);
    CHECK(e.kind == error_kind::bad_input);
    CHECK(e.has("data_offsets of tensor 'b'"));
    CHECK(e.has("a hole of 2 unused bytes"));
  }
  SUBCASE("a hole before the first tensor") {
    CHECK(parse_error(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", 6).has("a hole of 2 unused bytes before 'a' [2, 6)"));
  }
  SUBCASE("a data area with no tensor at all") {
    CHECK(parse_error(R"({"__metadata__":{"k":"v"}})", 5).has("5 trailing bytes"));
  }
  SUBCASE("an empty tensor inside another one") {
    CHECK(parse_error(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"e":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}})", 4)
              .has("non-overlapping"));
  }
  SUBCASE("empty tensors where the previous one ends are fine / in any header order") {
    CHECK_FALSE(parse_error(R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                            R"("z":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})", 4).thrown);
  }
}

TEST_CASE("safetensors: random garbage and mutated files never crash") {
  std::mt19937 rng(12345);
  for (int i = 0; i < 300; ++i) {
    std::vector<std::uint8_t> b(rng() % 64);
    for (auto& x : b) x = static_cast<std::uint8_t>(rng());
    const auto e = catch_error([&] { read_safetensors_bytes(b, "garbage"); });
    CHECK(e.thrown);
  }
  const auto good = safetensors_bytes(sample_file());
  int accepted = 0;
  for (int i = 0; i < 500; ++i) {
    auto b = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) b[rng() % std::min<std::size_t>(b.size(), 8 + load_le64(good.data()))] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
    if (rng() % 4 == 0) b.resize(rng() % b.size());
    try {
      const auto f = read_safetensors_bytes(b, "mutated");
      for (const auto& t : f.tensors) CHECK(t.bytes.size() == checked_byte_size(t.shape, t.type, "x", t.name));
      ++accepted;
    } catch (const kvcodec::error&) {
    }
  }
  MESSAGE("mutated files accepted: " << accepted << " / 500");
}

TEST_CASE("safetensors: real stories260K dumps") {
  const auto f32f = kvcodec::test::shared_file("kv/stories260K-s0.safetensors");
  const auto bf16f = kvcodec::test::shared_file("kv/stories260K-s0.bf16.safetensors");
  KVCODEC_REQUIRE_SHARED(f32f && bf16f);
  const auto f = read_safetensors(f32f->string());
  CHECK(f.tensors.size() == 16);
  REQUIRE(f.find("past_key_values.0.key"));
  CHECK(f.find("past_key_values.0.key")->shape == std::vector<std::int64_t>{1, 4, 512, 8});
  CHECK(f.find("queries.4")->shape == std::vector<std::int64_t>{1, 8, 512, 8});
  CHECK(f.find("tokens")->type == dtype::i32);
  CHECK(f.metadata.at("model") == "stories260K");
  CHECK(f.metadata.at("layers") == "5");
  // Re-serialising and re-reading gives the same tensors.
  const auto g = read_safetensors_bytes(safetensors_bytes(f), "again");
  REQUIRE(g.tensors.size() == f.tensors.size());
  for (std::size_t i = 0; i < f.tensors.size(); ++i) CHECK(g.tensors[i].bytes == f.tensors[i].bytes);
  CHECK(g.metadata == f.metadata);

  const auto b = read_safetensors(bf16f->string());
  CHECK(b.find("past_key_values.3.value")->type == dtype::bf16);
}

}  // namespace kvcodec_test_io_safetensors
