#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/io/kv_dump.hpp"
#include "../support/shared_data.hpp"
#include "../support/io_helpers.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_io_kv_dump {

using namespace kvcodec;
using namespace kvcodec::io;

namespace {

using test::catch_error;
using test::caught;

kv_cache make_cache(int L, int H, int Hq, std::int64_t T, int D, unsigned seed = 1, bool extras = true) {
  kv_cache c = kv_cache::zeros(kv_shape{L, H, Hq, D, T});
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (auto* vv : {&c.keys, &c.values, &c.queries})
    for (auto& v : *vv)
      for (auto& x : v) x = nd(rng);
  if (extras) {
    for (std::int64_t t = 0; t < T; ++t) {
      c.tokens.push_back(static_cast<std::int32_t>(rng() % 512));
      c.positions.push_back(static_cast<std::int32_t>(t + 3));
    }
    c.metadata = {{"model", "synthetic"}, {"rope_theta", "10000"}};
  }
  return c;
}

/// Ragged kept sets: head 0 keeps every other token, head 1 keeps nothing, the rest keep all.
void add_kept(kv_cache& c) {
  c.kept.assign(static_cast<std::size_t>(c.shape.layers), {});
  for (auto& layer : c.kept) {
    layer.resize(static_cast<std::size_t>(c.shape.kv_heads));
    for (std::size_t h = 0; h < layer.size(); ++h)
      for (std::int32_t t = 0; t < c.shape.tokens; ++t)
        if ((h == 0 && t % 2 == 0) || h >= 2) layer[h].push_back(t);
  }
}

std::vector<float> rounded(const std::vector<float>& v, dtype t) {
  std::vector<float> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) r[i] = round_to_dtype(v[i], t);
  return r;
}

/// `expect` after storage in `t`, with dropped tokens zeroed.
void check_same(const kv_cache& got, const kv_cache& expect, dtype t) {
  REQUIRE(got.shape == expect.shape);
  CHECK(got.source_dtype == t);
  CHECK(got.tokens == expect.tokens);
  CHECK(got.positions == expect.positions);
  CHECK(got.metadata == expect.metadata);
  CHECK(got.kept == expect.kept);
  const std::int64_t T = expect.shape.tokens, D = expect.shape.head_dim;
  for (std::size_t l = 0; l < expect.keys.size(); ++l) {
    auto k = rounded(expect.keys[l], t), v = rounded(expect.values[l], t);
    if (!expect.kept.empty())
      for (std::size_t h = 0; h < expect.kept[l].size(); ++h)
        for (std::int64_t tok = 0; tok < T; ++tok)
          if (!std::binary_search(expect.kept[l][h].begin(), expect.kept[l][h].end(), static_cast<std::int32_t>(tok)))
            for (std::int64_t d = 0; d < D; ++d) {
              k[static_cast<std::size_t>((static_cast<std::int64_t>(h) * T + tok) * D + d)] = 0.0f;
              v[static_cast<std::size_t>((static_cast<std::int64_t>(h) * T + tok) * D + d)] = 0.0f;
            }
    CHECK(got.keys[l] == k);
    CHECK(got.values[l] == v);
    if (expect.has_queries()) {
      REQUIRE(got.queries.size() == expect.queries.size());
      CHECK(got.queries[l] == rounded(expect.queries[l], t));
    } else {
      CHECK(got.queries.empty());
    }
  }
}

caught kv_error(const tensor_file& f) {
  return catch_error([&] { kv_from_tensor_file(f, "dump.safetensors"); });
}

tensor ftensor(std::string name, std::vector<std::int64_t> shape, dtype t = dtype::f32) {
  tensor x{std::move(name), t, std::move(shape), {}};
  x.bytes.assign(static_cast<std::size_t>(x.numel() * dtype_size(t)), 0);
  return x;
}

}  // namespace

TEST_CASE("kv_dump: layout names") {
  for (auto l : {kv_layout::hf_4d, kv_layout::hf_3d, kv_layout::stacked, kv_layout::hf_compact})
    CHECK(parse_kv_layout(kv_layout_name(l)) == l);
  CHECK_FALSE(parse_kv_layout("nope").has_value());
}

TEST_CASE("kv_dump: round trip of every layout / dtype and container / dense and with kept sets") {
  for (bool kept : {false, true}) {
    for (auto layout : {kv_layout::hf_4d, kv_layout::hf_3d, kv_layout::stacked, kv_layout::hf_compact}) {
      for (dtype t : {dtype::f32, dtype::f16, dtype::bf16}) {
        CAPTURE(kv_layout_name(layout));
        CAPTURE(dtype_name(t));
        CAPTURE(kept);
        kv_cache c = make_cache(3, 4, 8, 7, 5, 11);
        if (kept) add_kept(c);
        const tensor_file f = to_tensor_file(c, layout, t);
        if (layout == kv_layout::hf_4d) {
          CHECK(f.find("past_key_values.2.key")->shape == std::vector<std::int64_t>{1, 4, 7, 5});
          CHECK(f.find("queries.1")->shape == std::vector<std::int64_t>{1, 8, 7, 5});
          CHECK((f.find("past_key_values.0.kept") != nullptr) == kept);
        }
        if (layout == kv_layout::hf_3d) CHECK(f.find("past_key_values.2.value")->shape == std::vector<std::int64_t>{4, 7, 5});
        if (layout == kv_layout::stacked) CHECK(f.find("kv")->shape == std::vector<std::int64_t>{3, 2, 4, 7, 5});
        if (layout == kv_layout::hf_compact) {
          CHECK(f.find("past_key_values.1.h0.key")->shape == std::vector<std::int64_t>{kept ? 4 : 7, 5});
          CHECK(f.find("past_key_values.1.h1.positions")->shape == std::vector<std::int64_t>{kept ? 0 : 7});
        }
        CHECK(f.find("tokens")->type == dtype::i32);

        const auto st = safetensors_bytes(f);
        const kv_dump a = read_kv_dump_bytes(st, "mem.safetensors");
        CHECK(a.layout == layout);
        kv_cache expect = c;
        if (layout == kv_layout::hf_compact && !kept) {  // compact always records kept sets (all tokens here)
          add_kept(expect);
          for (auto& layer : expect.kept)
            for (auto& h : layer) {
              h.clear();
              for (std::int32_t i = 0; i < 7; ++i) h.push_back(i);
            }
        }
        check_same(a.cache, expect, t);
        if (t != dtype::bf16) {
          const auto z = npz_bytes(f);
          const kv_dump b = read_kv_dump_bytes(z, "mem.npz");
          CHECK(b.layout == layout);
          check_same(b.cache, expect, t);
        } else {
          CHECK(catch_error([&] { npz_bytes(f); }).kind == error_kind::usage);
        }
      }
    }
  }
}

TEST_CASE("kv_dump: smallest cache (1 layer x 1 head x 1 token x head_dim 1) without extras") {
  const kv_cache c = make_cache(1, 1, 0, 1, 1, 3, false);
  for (auto layout : {kv_layout::hf_4d, kv_layout::hf_3d, kv_layout::stacked}) {
    const kv_dump d = read_kv_dump_bytes(safetensors_bytes(to_tensor_file(c, layout, dtype::f32)), "tiny");
    CHECK(d.layout == layout);
    check_same(d.cache, c, dtype::f32);
  }
  const tensor_file f = to_tensor_file(c, kv_layout::hf_compact, dtype::f32);
  CHECK(f.find("past_key_values.num_tokens") != nullptr);
  CHECK(read_kv_dump_bytes(safetensors_bytes(f), "tiny").cache.kept_count(0, 0) == 1);
}

TEST_CASE("kv_dump: writer argument checks") {
  const kv_cache c = make_cache(2, 2, 0, 3, 4);
  CHECK(catch_error([&] { to_tensor_file(c, kv_layout::hf_4d, dtype::i32); }).kind == error_kind::usage);
  CHECK(catch_error([&] { to_tensor_file(c, kv_layout::stacked, dtype::f32, true); }).kind == error_kind::usage);
  kv_cache bad = c;
  bad.keys[1].pop_back();
  CHECK(catch_error([&] { to_tensor_file(bad, kv_layout::hf_4d, dtype::f32); }).has("keys[1]"));
}

TEST_CASE("kv_dump: files by extension / overwrite refusal / .npy stacked array") {
  namespace fs = std::filesystem;
  const std::string dir = (fs::temp_directory_path() / ("kvcodec_kv_" + std::to_string(std::random_device{}()))).string();
  fs::create_directories(dir);
  kv_cache c = make_cache(2, 2, 4, 9, 3, 5);
  write_kv_dump(dir + "/a.safetensors", c, kv_layout::hf_4d, dtype::f16);
  check_same(read_kv_dump(dir + "/a.safetensors").cache, c, dtype::f16);
  write_kv_dump(dir + "/a.npz", c, kv_layout::hf_3d, dtype::f32);
  const kv_dump z = read_kv_dump(dir + "/a.npz");
  CHECK(z.layout == kv_layout::hf_3d);
  check_same(z.cache, c, dtype::f32);
  write_kv_dump(dir + "/b.NPZ", c, kv_layout::hf_compact, dtype::f32);
  CHECK(read_kv_dump(dir + "/b.NPZ").layout == kv_layout::hf_compact);

  const auto again = catch_error([&] { write_kv_dump(dir + "/a.npz", c, kv_layout::hf_4d, dtype::f32); });
  CHECK(again.kind == error_kind::usage);
  CHECK(again.has("overwrite"));
  write_kv_dump(dir + "/a.npz", c, kv_layout::stacked, dtype::f32, false, true);
  CHECK(read_kv_dump(dir + "/a.npz").layout == kv_layout::stacked);

  CHECK(catch_error([&] { write_kv_dump(dir + "/c.npy", c, kv_layout::stacked, dtype::f32); }).has("queries"));
  kv_cache plain = make_cache(2, 2, 0, 9, 3, 6);
  CHECK(catch_error([&] { write_kv_dump(dir + "/c.npy", plain, kv_layout::hf_4d, dtype::f32); }).has("stacked"));
  CHECK(catch_error([&] { write_kv_dump(dir + "/c.npy", plain, kv_layout::stacked, dtype::bf16); }).has("bf16"));
  write_kv_dump(dir + "/c.npy", plain, kv_layout::stacked, dtype::f16);
  const kv_dump n = read_kv_dump(dir + "/c.npy");
  CHECK(n.layout == kv_layout::stacked);
  plain.tokens.clear();
  plain.positions.clear();
  plain.metadata.clear();
  check_same(n.cache, plain, dtype::f16);
  CHECK(catch_error([&] { write_kv_dump(dir + "/c.bin", plain, kv_layout::stacked, dtype::f32); }).has("extension"));

  // Content decides the format: a safetensors file with a .npz name still reads.
  fs::copy_file(dir + "/a.safetensors", dir + "/renamed.npz");
  CHECK(read_kv_dump(dir + "/renamed.npz").layout == kv_layout::hf_4d);
  fs::remove_all(dir);
}

TEST_CASE("kv_dump: non-KV / inconsistent and garbage input") {
  SUBCASE("a file with only foo lists the tensors and the accepted layouts") {
    tensor_file f;
    f.tensors.push_back(ftensor("foo", {3}));
    const auto e = kv_error(f);
    CHECK(e.kind == error_kind::bad_input);
    CHECK(e.has("foo F32 [3]"));
    CHECK(e.has("past_key_values.{l}.key"));
    CHECK(e.has("kv [L,2,H,T,D]"));
    const auto bytes = safetensors_bytes(f);
    CHECK(catch_error([&] { read_kv_dump_bytes(bytes, "foo.safetensors"); }).has("foo F32 [3]"));
    for (int i = 0; i < 12; ++i) f.tensors.push_back(ftensor("t" + std::to_string(i), {1}));
    CHECK(kv_error(f).has("3 more"));
  }
  SUBCASE("mismatched K/V shapes name both shapes") {
    tensor_file f;
    f.tensors.push_back(ftensor("past_key_values.0.key", {1, 2, 4, 8}));
    f.tensors.push_back(ftensor("past_key_values.0.value", {1, 2, 5, 8}));
    const auto e = kv_error(f);
    CHECK(e.has("[1, 2, 4, 8]"));
    CHECK(e.has("[1, 2, 5, 8]"));
  }
  SUBCASE("zero tokens") {
    tensor_file f;
    f.tensors.push_back(ftensor("past_key_values.0.key", {1, 2, 0, 8}));
    f.tensors.push_back(ftensor("past_key_values.0.value", {1, 2, 0, 8}));
    const auto e = kv_error(f);
    CHECK(e.has("tokens"));
    CHECK(e.has("> 0"));
    tensor_file g;
    g.tensors.push_back(ftensor("kv", {2, 2, 1, 0, 4}));
    CHECK(kv_error(g).has("tokens"));
  }
  SUBCASE("mixed K/V dtypes") {
    tensor_file f;
    f.tensors.push_back(ftensor("past_key_values.0.key", {2, 3, 4}));
    f.tensors.push_back(ftensor("past_key_values.0.value", {2, 3, 4}, dtype::f16));
    CHECK(kv_error(f).has("one dtype"));
    tensor_file g;
    g.tensors.push_back(ftensor("past_key_values.0.key", {2, 3, 4}));
    g.tensors.push_back(ftensor("past_key_values.0.value", {2, 3, 4}));
    g.tensors.push_back(ftensor("past_key_values.1.key", {2, 3, 4}, dtype::bf16));
    g.tensors.push_back(ftensor("past_key_values.1.value", {2, 3, 4}, dtype::bf16));
    CHECK(kv_error(g).has("one dtype"));
    tensor_file i;
    i.tensors.push_back(ftensor("past_key_values.0.key", {2, 3, 4}, dtype::i32));
    i.tensors.push_back(ftensor("past_key_values.0.value", {2, 3, 4}, dtype::i32));
    CHECK(kv_error(i).has("F32, F16 or BF16"));
  }
  SUBCASE("layers must be contiguous from 0 / with key and value") {
    tensor_file f;
    for (int l : {0, 2}) {
      f.tensors.push_back(ftensor("past_key_values." + std::to_string(l) + ".key", {2, 3, 4}));
      f.tensors.push_back(ftensor("past_key_values." + std::to_string(l) + ".value", {2, 3, 4}));
    }
    CHECK(kv_error(f).has("layer 1 missing"));
    tensor_file g;
    g.tensors.push_back(ftensor("past_key_values.0.key", {2, 3, 4}));
    g.tensors.push_back(ftensor("past_key_values.0.value", {2, 3, 4}));
    g.tensors.push_back(ftensor("past_key_values.1.key", {2, 3, 4}));
    CHECK(kv_error(g).has("no value"));
    g.tensors.push_back(ftensor("past_key_values.1.value", {2, 4, 4}));
    CHECK(kv_error(g).has("key and value of equal shape"));
    g.tensors.back().shape = {2, 3, 4};
    g.tensors.push_back(ftensor("past_key_values.01.key", {2, 3, 4}));  // not a layer name: ignored
    CHECK_FALSE(kv_error(g).thrown);
  }
  SUBCASE("bad batch / queries / kept / tokens") {
    tensor_file f;
    f.tensors.push_back(ftensor("past_key_values.0.key", {2, 2, 3, 4}));
    f.tensors.push_back(ftensor("past_key_values.0.value", {2, 2, 3, 4}));
    CHECK(kv_error(f).has("[1, H, T, D]"));
    f.tensors[0].shape = f.tensors[1].shape = {1, 2, 3, 4};
    f.tensors[0].bytes.resize(96);
    f.tensors[1].bytes.resize(96);
    CHECK_FALSE(kv_error(f).thrown);
    tensor_file q = f;
    q.tensors.push_back(ftensor("queries.0", {1, 3, 3, 4}));
    CHECK(kv_error(q).has("multiple of 2"));
    tensor_file q2 = f;
    q2.tensors.push_back(ftensor("queries.1", {1, 4, 3, 4}));
    CHECK(kv_error(q2).thrown);
    tensor_file k = f;
    k.tensors.push_back(ftensor("past_key_values.0.kept", {1, 2, 3}, dtype::u8));
    k.tensors.back().bytes[2] = 2;
    CHECK(kv_error(k).has("values 0 (dropped) or 1 (kept)"));
    k.tensors.back().shape = {1, 3, 2};
    CHECK(kv_error(k).has("kept"));
    tensor_file t = f;
    t.tensors.push_back(ftensor("tokens", {4}, dtype::i32));
    CHECK(kv_error(t).has("I32 [3]"));
    t.tensors.back() = ftensor("tokens", {3}, dtype::f32);
    CHECK(kv_error(t).has("I32 [3]"));
    tensor_file mix = f;
    mix.tensors.push_back(ftensor("kv", {1, 2, 2, 3, 4}));
    CHECK(kv_error(mix).has("a mix of hf stacked"));
  }
  SUBCASE("stacked and compact inconsistencies") {
    tensor_file s;
    s.tensors.push_back(ftensor("kv", {2, 3, 2, 3, 4}));
    CHECK(kv_error(s).has("[L, 2, H, T, D]"));
    s.tensors[0] = ftensor("kv", {2, 2, 2, 3, 4});
    s.tensors.push_back(ftensor("queries", {2, 2, 3, 5}));
    CHECK(kv_error(s).has("queries"));
    kv_cache c = make_cache(1, 2, 0, 4, 2);
    add_kept(c);
    tensor_file f = to_tensor_file(c, kv_layout::hf_compact, dtype::f32);
    tensor* p = f.find("past_key_values.0.h0.positions");
    const std::int32_t bad[] = {2, 0};
    std::memcpy(p->bytes.data(), bad, 8);
    CHECK(kv_error(f).has("strictly increasing"));
    f = to_tensor_file(c, kv_layout::hf_compact, dtype::f32);
    f.tensors.erase(f.tensors.begin() + 1);  // h0.value
    CHECK(kv_error(f).has("missing"));
    kv_cache d = make_cache(1, 2, 0, 4, 2, 1, false);
    f = to_tensor_file(d, kv_layout::hf_compact, dtype::f32);
    f.tensors.pop_back();  // num_tokens
    CHECK(kv_error(f).has("num_tokens"));
  }
  SUBCASE("garbage bytes / truncated and non-KV files") {
    std::mt19937 rng(5);
    for (int i = 0; i < 200; ++i) {
      std::vector<std::uint8_t> b(rng() % 100);
      for (auto& x : b) x = static_cast<std::uint8_t>(rng());
      CHECK(catch_error([&] { read_kv_dump_bytes(b, "noise.bin"); }).thrown);
    }
    const std::string text = "hello, this is not a kv dump";
    const std::vector<std::uint8_t> tb(text.begin(), text.end());
    const auto e = catch_error([&] { read_kv_dump_bytes(tb, "notes.txt", ".txt"); });
    CHECK(e.has("unrecognised first bytes 68 65 6c 6c"));
    const auto full = safetensors_bytes(to_tensor_file(make_cache(1, 1, 0, 4, 2), kv_layout::hf_4d, dtype::f32));
    const std::vector<std::uint8_t> cut(full.begin(), full.end() - 5);
    CHECK(catch_error([&] { read_kv_dump_bytes(cut, "cut.safetensors", ".safetensors"); }).has("data_offsets"));
    const std::vector<std::uint8_t> cut2(full.begin(), full.begin() + 30);
    CHECK(catch_error([&] { read_kv_dump_bytes(cut2, "cut.safetensors", ".safetensors"); }).has("header length"));
    CHECK(catch_error([&] { read_kv_dump_bytes(cut2, "cut.npz", ".npz"); }).has("end-of-central-directory"));
    for (std::size_t n = 0; n < full.size(); n += 7) {
      const std::vector<std::uint8_t> part(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
      CHECK(catch_error([&] { read_kv_dump_bytes(part, "part.safetensors", ".safetensors"); }).thrown);
    }
  }
}

TEST_CASE("kv_dump: a compact dump's dense size is bounded by the file's bytes (issue 11)") {
  // One layer, one head, no kept token: nothing in the file backs the tokens x head_dim it claims.
  const auto lying = [](std::int64_t head_dim, std::int32_t tokens) {
    tensor_file f;
    f.tensors.push_back(ftensor("past_key_values.0.h0.key", {0, head_dim}));
    f.tensors.push_back(ftensor("past_key_values.0.h0.value", {0, head_dim}));
    f.tensors.push_back(ftensor("past_key_values.0.h0.positions", {0}, dtype::i32));
    tensor nt = ftensor("past_key_values.num_tokens", {1}, dtype::i32);
    std::memcpy(nt.bytes.data(), &tokens, 4);
    f.tensors.push_back(nt);
    return f;
  };
  SUBCASE("num_tokens 2^28 from a few hundred bytes (read 'successfully' as 2 GB before)") {
    const auto img = safetensors_bytes(lying(1, 1 << 28));
    CHECK(img.size() < 400);
    const auto e = catch_error([&] { read_kv_dump_bytes(img, "lying.safetensors"); });
    CHECK(e.kind == error_kind::bad_input);
    CHECK(e.has("lying.safetensors"));
    CHECK(e.has("compact layout"));
    CHECK(e.has("268435456 tokens"));
  }
  SUBCASE("tokens x head_dim beyond size_t: a bad_input error / not std::length_error") {
    const auto img = safetensors_bytes(lying(std::int64_t{1} << 30, 2147483647));
    const auto e = catch_error([&] { read_kv_dump_bytes(img, "huge.safetensors"); });
    CHECK(e.kind == error_kind::bad_input);
    CHECK(e.has("1073741824 head_dim"));
  }
  SUBCASE("the same bound without a file: estimated from the tensors") {
    CHECK(kv_error(lying(8, 1 << 24)).has("compact layout"));
  }
  SUBCASE("a compact dump within the bound reads / dropped tokens zero") {
    const auto img = safetensors_bytes(lying(8, 64));
    const kv_dump d = read_kv_dump_bytes(img, "small.safetensors");
    CHECK(d.layout == kv_layout::hf_compact);
    CHECK(d.cache.shape.tokens == 64);
    CHECK(d.cache.kept.at(0).at(0).empty());
  }
}

TEST_CASE("kv_dump: real stories260K dumps") {
  const auto f32f = kvcodec::test::shared_file("kv/stories260K-s0.safetensors");
  const auto bf16f = kvcodec::test::shared_file("kv/stories260K-s0.bf16.safetensors");
  KVCODEC_REQUIRE_SHARED(f32f && bf16f);
  const std::string f32p = f32f->string();
  const std::string bf16p = bf16f->string();
  const kv_dump d = read_kv_dump(f32p);
  CHECK(d.layout == kv_layout::hf_4d);
  CHECK(d.cache.shape == kv_shape{5, 4, 8, 8, 512});
  CHECK(d.cache.source_dtype == dtype::f32);
  CHECK(d.cache.has_queries());
  CHECK(d.cache.tokens.size() == 512);
  CHECK(d.cache.positions.empty());
  CHECK(d.cache.is_dense());
  CHECK(d.cache.metadata.at("model") == "stories260K");
  CHECK(d.cache.metadata == read_safetensors(f32p).metadata);
  bool nonzero = false;
  for (float x : d.cache.keys[4]) nonzero |= x != 0.0f && std::isfinite(x);
  CHECK(nonzero);

  // f32 written back as f32 reproduces every tensor byte for byte.
  const tensor_file orig = read_safetensors(f32p);
  const tensor_file back = to_tensor_file(d.cache, d.layout, dtype::f32);
  for (const auto& t : orig.tensors) {
    const tensor* u = back.find(t.name);
    REQUIRE(u);
    CHECK(u->shape == t.shape);
    CHECK(u->bytes == t.bytes);
  }

  const kv_dump b = read_kv_dump(bf16p);
  CHECK(b.cache.source_dtype == dtype::bf16);
  CHECK(b.cache.shape == d.cache.shape);
  CHECK(b.cache.tokens == d.cache.tokens);
  const tensor_file borig = read_safetensors(bf16p);
  const tensor_file bback = to_tensor_file(b.cache, b.layout, dtype::bf16);
  CHECK(bback.tensors.size() == borig.tensors.size());
  for (const auto& t : borig.tensors) {
    const tensor* u = bback.find(t.name);
    REQUIRE(u);
    CHECK(u->type == t.type);
    CHECK(u->bytes == t.bytes);
  }
  CHECK(bback.metadata == borig.metadata);
  std::size_t differ = 0;
  for (std::size_t l = 0; l < 5; ++l)
    for (std::size_t i = 0; i < d.cache.keys[l].size(); ++i) differ += round_to_dtype(d.cache.keys[l][i], dtype::bf16) != b.cache.keys[l][i];
  CHECK(differ == 0);  // the bf16 dump is the f32 dump rounded to nearest even

  // Every container and layout round-trips the real cache.
  for (auto layout : {kv_layout::hf_3d, kv_layout::stacked, kv_layout::hf_compact}) {
    const kv_dump r = read_kv_dump_bytes(npz_bytes(to_tensor_file(d.cache, layout, dtype::f32)), "real.npz");
    CHECK(r.layout == layout);
    CHECK(r.cache.keys == d.cache.keys);
    CHECK(r.cache.queries == d.cache.queries);
    CHECK(r.cache.metadata == d.cache.metadata);
  }
}

}  // namespace kvcodec_test_io_kv_dump
