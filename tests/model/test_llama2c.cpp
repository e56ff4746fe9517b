// Tests of the llama2.c checkpoint loader: the real stories260K model, synthetic models (shared and
// separate classifier, odd sizes), and corrupt files (truncated, lying header, invalid dims).
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kvcodec/model/llama2c.hpp"
#include "../support/shared_data.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_model_llama2c {

namespace {

namespace fs = std::filesystem;
using namespace kvcodec::model;

std::vector<unsigned char> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void set_i32(std::vector<unsigned char>& b, int index, std::int32_t v) { std::memcpy(b.data() + 4 * index, &v, 4); }

/// Runs f, requires a kvcodec::error of `kind` whose message contains every string of `needles`.
template <class F>
void require_error(F&& f, kvcodec::error_kind kind, std::initializer_list<std::string> needles) {
  try {
    f();
    FAIL("no exception thrown");
  } catch (const kvcodec::error& e) {
    CHECK(e.kind() == kind);
    for (const auto& n : needles) CHECK_MESSAGE(std::string(e.what()).find(n) != std::string::npos, std::string(e.what()), " lacks ", n);
  }
}

llama2c_config tiny_config(bool shared) {
  llama2c_config c;
  c.dim = 6;
  c.hidden_dim = 5;
  c.n_layers = 2;
  c.n_heads = 3;
  c.n_kv_heads = 1;
  c.vocab_size = 7;
  c.seq_len = 9;
  c.shared_classifier = shared;
  return c;
}

bool same(const matrix_rm& a, const matrix_rm& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * 4) == 0;
}
bool same(const vector_f& a, const vector_f& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * 4) == 0;
}

}  // namespace

TEST_CASE("llama2c: real stories260K checkpoint") {
  const auto file = kvcodec::test::shared_file("models/stories260K/stories260K.bin");
  KVCODEC_REQUIRE_SHARED(file);
  const std::string path = file->string();
  const llama2c_model m = load_llama2c(path);
  const llama2c_config& c = m.config;
  CHECK(c.dim == 64);
  CHECK(c.hidden_dim == 172);
  CHECK(c.n_layers == 5);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.vocab_size == 512);
  CHECK(c.seq_len == 512);
  CHECK(c.shared_classifier);
  CHECK(c.head_dim() == 8);
  CHECK(c.kv_dim() == 32);
  CHECK(c.kv_group() == 2);
  CHECK(&m.classifier() == &m.token_embedding);
  CHECK(m.wcls.size() == 0);
  REQUIRE(m.layers.size() == 5);
  CHECK(m.layers[4].wk.rows() == 32);
  CHECK(m.layers[4].wk.cols() == 64);
  CHECK(m.layers[4].w2.rows() == 64);
  CHECK(m.layers[4].w2.cols() == 172);

  const auto bytes = read_all(path);
  float first = 0, last_wq = 0;
  std::memcpy(&first, bytes.data() + 28, 4);
  CHECK(m.token_embedding(0, 0) == first);
  // wq of layer 4, last element: after embedding (512*64) + rms_att (5*64) + 5 wq blocks of 64*64.
  std::memcpy(&last_wq, bytes.data() + 28 + 4 * (512 * 64 + 5 * 64 + 5 * 64 * 64 - 1), 4);
  CHECK(m.layers[4].wq(63, 63) == last_wq);

  // parse_llama2c from memory equals the file loader; serialising gives the file back except for the
  // legacy RoPE table (written as zeros).
  const llama2c_model p = parse_llama2c(bytes.data(), bytes.size(), "mem");
  CHECK(same(p.token_embedding, m.token_embedding));
  CHECK(same(p.layers[3].w3, m.layers[3].w3));
  const auto out = serialize_llama2c(m);
  REQUIRE(out.size() == bytes.size());
  const std::size_t rope_begin = out.size() - 4u * 512u * 8u;
  CHECK(std::memcmp(out.data(), bytes.data(), rope_begin) == 0);

  // Truncated by one byte and one float: the error names the file and the field cut short.
  auto cut = bytes;
  cut.pop_back();
  require_error([&] { parse_llama2c(cut.data(), cut.size(), "cut.bin"); }, kvcodec::error_kind::bad_input,
                {"cut.bin", "freq_cis"});
  cut.resize(28 + 4 * 1000);
  require_error([&] { parse_llama2c(cut.data(), cut.size(), "cut.bin"); }, kvcodec::error_kind::bad_input,
                {"cut.bin", "token_embedding"});
}

TEST_CASE("llama2c: synthetic round trip with shared and separate classifier") {
  for (bool shared : {true, false}) {
    CAPTURE(shared);
    const llama2c_model m = random_llama2c(tiny_config(shared), 42);
    CHECK(m.config.head_dim() == 2);
    CHECK(m.config.kv_group() == 3);
    const auto bytes = serialize_llama2c(m);
    std::int32_t vocab_field = 0;
    std::memcpy(&vocab_field, bytes.data() + 20, 4);
    CHECK(vocab_field == (shared ? 7 : -7));
    const std::size_t floats = 7 * 6 + 2 * 6 + 2 * 36 + 2 * 2 * 12 + 2 * 36 + 2 * 6 + 3 * 2 * 30 + 6 + 9 * 2 + (shared ? 0 : 42);
    CHECK(bytes.size() == 28 + 4 * floats);
    const llama2c_model p = parse_llama2c(bytes.data(), bytes.size());
    CHECK(p.config.shared_classifier == shared);
    CHECK(p.config.vocab_size == 7);
    CHECK(same(p.token_embedding, m.token_embedding));
    for (std::size_t l = 0; l < 2; ++l) {
      CHECK(same(p.layers[l].rms_att, m.layers[l].rms_att));
      CHECK(same(p.layers[l].wq, m.layers[l].wq));
      CHECK(same(p.layers[l].wk, m.layers[l].wk));
      CHECK(same(p.layers[l].wv, m.layers[l].wv));
      CHECK(same(p.layers[l].wo, m.layers[l].wo));
      CHECK(same(p.layers[l].rms_ffn, m.layers[l].rms_ffn));
      CHECK(same(p.layers[l].w1, m.layers[l].w1));
      CHECK(same(p.layers[l].w2, m.layers[l].w2));
      CHECK(same(p.layers[l].w3, m.layers[l].w3));
    }
    CHECK(same(p.rms_final, m.rms_final));
    if (!shared) {
      CHECK(same(p.wcls, m.wcls));
      CHECK(&p.classifier() == &p.wcls);
      CHECK(!same(p.wcls, p.token_embedding));
    }
    // The file loader agrees with the memory parser.
    const fs::path tmp = fs::temp_directory_path() / ("kvcodec_llama2c_" + std::to_string(shared) + ".bin");
    {
      std::ofstream o(tmp, std::ios::binary);
      o.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    }
    const llama2c_model f = load_llama2c(tmp.string());
    CHECK(same(f.classifier(), m.classifier()));
    CHECK(same(f.layers[1].w2, m.layers[1].w2));
    fs::remove(tmp);
  }
  // Smallest legal model: every dimension 1 except head_dim 2.
  llama2c_config c{2, 1, 1, 1, 1, 1, 1, true};
  const auto bytes = serialize_llama2c(random_llama2c(c, 1));
  CHECK(bytes.size() == 28 + 4 * (2 + 2 + 4 + 4 + 4 + 4 + 2 + 2 + 2 + 2 + 2 + 2));
  CHECK(parse_llama2c(bytes.data(), bytes.size()).config.dim == 2);
}

TEST_CASE("llama2c: corrupt and invalid files throw bad_input naming file and field") {
  using kvcodec::error_kind;
  const auto good = serialize_llama2c(random_llama2c(tiny_config(false), 7));
  const auto parse = [](const std::vector<unsigned char>& b) { return parse_llama2c(b.data(), b.size(), "model.bin"); };

  SUBCASE("empty and short header") {
    std::vector<unsigned char> empty;
    require_error([&] { parse(empty); }, error_kind::bad_input, {"model.bin", "header"});
    std::vector<unsigned char> b(good.begin(), good.begin() + 27);
    require_error([&] { parse(b); }, error_kind::bad_input, {"model.bin", "header", "27"});
  }
  SUBCASE("header only") {
    std::vector<unsigned char> b(good.begin(), good.begin() + 28);
    require_error([&] { parse(b); }, error_kind::bad_input, {"model.bin", "token_embedding"});
  }
  SUBCASE("truncated inside the separate classifier") {
    std::vector<unsigned char> b(good.begin(), good.end() - 4);
    require_error([&] { parse(b); }, error_kind::bad_input, {"model.bin", "wcls"});
  }
  SUBCASE("trailing bytes") {
    auto b = good;
    b.push_back(0);
    require_error([&] { parse(b); }, error_kind::bad_input, {"model.bin", "file size"});
  }
  SUBCASE("lying header: more layers than the file holds") {
    auto b = good;
    set_i32(b, 2, 3);
    require_error([&] { parse(b); }, error_kind::bad_input, {"model.bin"});
    set_i32(b, 2, 1000000);
    require_error([&] { parse(b); }, error_kind::bad_input, {"model.bin", "rms_att"});
  }
  SUBCASE("lying header: huge sizes do not overflow or allocate") {
    auto b = good;
    set_i32(b, 0, 1 << 30);
    set_i32(b, 1, 0x7fffffff);
    set_i32(b, 2, 0x7fffffff);
    set_i32(b, 3, 1 << 29);
    set_i32(b, 4, 1 << 29);
    set_i32(b, 5, -0x7fffffff);
    set_i32(b, 6, 0x7fffffff);
    require_error([&] { parse(b); }, error_kind::bad_input, {"model.bin", "token_embedding"});
  }
  SUBCASE("separate classifier claimed but absent") {
    auto b = good;
    set_i32(b, 5, 7);  // shared: the file now has 42 floats too many
    require_error([&] { parse(b); }, error_kind::bad_input, {"model.bin", "file size"});
  }
  SUBCASE("non-positive dimensions") {
    const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
    for (int i = 0; i < 7; ++i) {
      CAPTURE(i);
      for (std::int32_t v : {0, -1, INT32_MIN}) {
        if (i == 5 && v == -1) continue;  // -1 is a legal vocab (separate classifier)
        auto b = good;
        set_i32(b, i, v);
        require_error([&] { parse(b); }, error_kind::bad_input, {"model.bin", std::string("'") + names[i] + "'"});
      }
    }
  }
  SUBCASE("head divisibility") {
    auto b = good;
    set_i32(b, 4, 2);  // 3 heads, 2 kv heads
    require_error([&] { parse(b); }, error_kind::bad_input, {"model.bin", "n_kv_heads"});
    b = good;
    set_i32(b, 3, 4);  // dim 6, 4 heads
    set_i32(b, 4, 1);
    require_error([&] { parse(b); }, error_kind::bad_input, {"model.bin", "n_heads"});
    b = good;
    set_i32(b, 3, 6);  // head_dim 1
    set_i32(b, 4, 1);
    require_error([&] { parse(b); }, error_kind::bad_input, {"model.bin", "head_dim"});
  }
  SUBCASE("missing file is an io error") {
    require_error([&] { load_llama2c("/nonexistent/kvcodec/model.bin"); }, error_kind::io, {"/nonexistent/kvcodec/model.bin"});
  }
  SUBCASE("file loader names the path") {
    const fs::path tmp = fs::temp_directory_path() / "kvcodec_llama2c_cut.bin";
    {
      std::ofstream o(tmp, std::ios::binary);
      o.write(reinterpret_cast<const char*>(good.data()), static_cast<std::streamsize>(good.size() / 2));
    }
    require_error([&] { load_llama2c(tmp.string()); }, error_kind::bad_input, {tmp.string(), "field"});
    fs::remove(tmp);
  }
  SUBCASE("random_llama2c rejects invalid configs") {
    llama2c_config c = tiny_config(true);
    c.n_kv_heads = 2;
    require_error([&] { random_llama2c(c, 1); }, error_kind::bad_input, {"random_llama2c", "n_kv_heads"});
  }
}

}  // namespace kvcodec_test_model_llama2c
