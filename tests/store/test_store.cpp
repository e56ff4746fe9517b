// Store core on the file backend: keys, chunking, longest prefix, visibility, checks, concurrency.
#include <doctest/doctest.h>

#include <thread>

#include "kvcodec/store/open.hpp"
#include "kvcodec/store/store.hpp"
#include "store_support.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_store_store {

using namespace kvcodec;
using namespace kvcodec::store;
using kvcodec::test::host_kv;
using kvcodec::test::same_prefix;
using kvcodec::test::temp_dir;

namespace {
store_options opts(const std::string& model = "m", std::int64_t chunk = 128) {
  store_options o;
  o.model = model;
  o.chunk_tokens = chunk;
  return o;
}
kv_store file_store(const std::string& dir, const std::string& model = "m", std::int64_t chunk = 128) {
  return kv_store(open_backend("file://" + dir), opts(model, chunk));
}
host_kv sample(std::int64_t T = 600, unsigned seed = 1) {
  host_kv kv(2, 2, T, 16);
  kv.fill_random(seed);
  return kv;
}
}  // namespace

TEST_CASE("store chain hashes cover the model spec shape chunk size and every earlier token") {
  std::vector<std::int32_t> t(600);
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<std::int32_t>(i * 31 % 997);
  const store_shape s{2, 2, 16};
  const auto base = chain_hashes(namespace_text("m", s, 128, "raw"), t, 128);
  REQUIRE(base.size() == 5);  // 4 full chunks and one of 88 tokens
  CHECK(base != chain_hashes(namespace_text("m2", s, 128, "raw"), t, 128));
  CHECK(base != chain_hashes(namespace_text("m", s, 128, "zstd"), t, 128));
  CHECK(base != chain_hashes(namespace_text("m", store_shape{2, 2, 32}, 128, "raw"), t, 128));
  CHECK(base[0] != chain_hashes(namespace_text("m", s, 64, "raw"), t, 64)[1]);
  auto t2 = t;
  t2[300] += 1;  // chunk 2: chunks 0 and 1 keep their keys, every later one changes
  const auto h2 = chain_hashes(namespace_text("m", s, 128, "raw"), t2, 128);
  CHECK(h2[0] == base[0]);
  CHECK(h2[1] == base[1]);
  for (std::size_t k = 2; k < 5; ++k) CHECK(h2[k] != base[k]);
  CHECK(chunk_key(base[0]).rfind("kvc:v1:c:", 0) == 0);
  CHECK(chunk_key(base[0]).size() == 9 + 32);
}

TEST_CASE("store serves a spec its stages resolve per cache such as zstd with raw dtype auto") {
  // "zstd" is raw:dtype=auto|zstd, whose containers name raw:dtype=f16 (the view's dtype): the chunk's
  // metadata keeps the key's spec, so the check compares like with like.
  temp_dir d;
  auto st = file_store(d.path);
  host_kv kv = sample(300, 4);
  const auto p = st.put(kv.tokens, kv.cview(), "zstd");
  CHECK(p.spec.find("dtype=auto") != std::string::npos);
  host_kv out(2, 2, 300, 16);
  const auto g = st.get(kv.tokens, out.view());
  CHECK(g.problems.empty());
  CHECK(g.tokens == 300);
  CHECK(same_prefix(kv, out, 300));
  const auto e = st.entry(p.entry_key);
  REQUIRE(e);
  const auto v = *st.storage().get(e->chunk_keys[0]);
  const kvc_view cv = parse_kvc(v, "chunk");
  CHECK(cv.header.metadata.at(meta_spec) == p.spec);
  CHECK(cv.header.codec == "raw:dtype=f16|zstd:level=3");
  // A chunk made for this key (tokens, model, chain key) but recording another spec is refused.
  const auto hs = chain_hashes(namespace_text("m", store_shape{2, 2, 16}, 128, p.spec), kv.tokens, 128);
  REQUIRE(chunk_key(hs[0]) == e->chunk_keys[0]);
  codec c = make_codec("raw:dtype=f16|zstd");
  kv_extras ex;
  ex.tokens.assign(kv.tokens.begin(), kv.tokens.begin() + 128);
  ex.metadata[meta_model] = "m";
  ex.metadata[meta_key] = hs[0].hex();
  ex.metadata[meta_spec] = c.spec();
  encode_options eo;
  eo.chunk_tokens = 128;
  bytes forged;
  memory_sink sink(forged);
  encode_to(cpu::par, c, kv.cview().slice_tokens(0, 128), sink, eo, ex);
  st.storage().put(e->chunk_keys[0], forged);
  const auto g2 = st.get(kv.tokens, out.view());
  CHECK(g2.tokens == 0);
  REQUIRE(g2.problems.size() == 1);
  CHECK(g2.problems[0].find("codec") != std::string::npos);
}

TEST_CASE("store file backend round trip is exact with a lossless spec") {
  temp_dir d;
  auto st = file_store(d.path);
  host_kv kv = sample();
  const auto p = st.put(kv.tokens, kv.cview(), "raw:dtype=f16");
  CHECK(p.chunks == 5);
  CHECK(p.chunks_written == 5);
  CHECK(p.bytes_written > 0);
  host_kv out(2, 2, 600, 16);
  const auto g = st.get(kv.tokens, out.view());
  CHECK(g.tokens == 600);
  CHECK(g.chunks == 5);
  CHECK(g.problems.empty());
  CHECK(g.spec == p.spec);
  CHECK(same_prefix(kv, out, 600));
  CHECK(st.contains(kv.tokens, {2, 2, 16}).first == 600);
  // Putting it again writes nothing new.
  const auto p2 = st.put(kv.tokens, kv.cview(), "raw:dtype=f16");
  CHECK(p2.chunks_written == 0);
  CHECK(p2.chunks_present == 5);
  CHECK(st.stats().hits == 1);
}

TEST_CASE("store lossy chunks decode to what the codec gives for the same tokens") {
  temp_dir d;
  auto st = file_store(d.path);
  host_kv kv = sample(300, 3);
  st.put(kv.tokens, kv.cview(), "kvc:level=5");
  host_kv out(2, 2, 300, 16);
  REQUIRE(st.get(kv.tokens, out.view()).tokens == 300);
  // Reference: encode/decode of each chunk on its own with the same codec.
  host_kv ref(2, 2, 300, 16);
  for (std::int64_t t0 = 0; t0 < 300; t0 += 128) {
    const std::int64_t t1 = std::min<std::int64_t>(300, t0 + 128);
    codec c = make_codec("kvc:level=5");
    bytes b;
    memory_sink sink(b);
    encode_options eo;
    eo.chunk_tokens = 128;
    encode_to(cpu::par, c, kv.cview().slice_tokens(t0, t1), sink, eo);
    decode_into(cpu::par, b, ref.view().slice_tokens(t0, t1));
  }
  CHECK(same_prefix(ref, out, 300));
  CHECK_FALSE(same_prefix(kv, out, 300));  // level 5 is lossy: the test would notice a raw copy
}

TEST_CASE("store get serves the longest stored prefix and misses otherwise") {
  temp_dir d;
  auto st = file_store(d.path);
  host_kv kv = sample();
  st.put(kv.tokens, kv.cview(), "raw:dtype=f16");
  SUBCASE("diverging in chunk 2 serves chunks 0 and 1") {
    auto t = kv.tokens;
    t[300] = t[300] + 1;
    host_kv out(2, 2, 600, 16);
    const auto g = st.get(t, out.view());
    CHECK(g.tokens == 256);
    CHECK(same_prefix(kv, out, 256));
  }
  SUBCASE("a longer context serves the full chunks it shares") {
    host_kv longer = sample(700, 9);
    std::copy(kv.tokens.begin(), kv.tokens.end(), longer.tokens.begin());
    host_kv out(2, 2, 700, 16);
    CHECK(st.get(longer.tokens, out.view()).tokens == 512);  // the stored 88-token tail is not a prefix of 700 tokens' chunk 4
  }
  SUBCASE("a shorter context gets its own length when it ends on a chunk boundary") {
    std::vector<std::int32_t> t(kv.tokens.begin(), kv.tokens.begin() + 256);
    host_kv out(2, 2, 256, 16);
    CHECK(st.get(t, out.view()).tokens == 256);
  }
  SUBCASE("another first token misses") {
    auto t = kv.tokens;
    t[0] = t[0] + 1;
    host_kv out(2, 2, 600, 16);
    const auto g = st.get(t, out.view());
    CHECK(g.tokens == 0);
    CHECK_FALSE(g.hit());
    CHECK(st.stats().misses == 1);
  }
  SUBCASE("another model or shape misses") {
    auto other = file_store(d.path, "other-model");
    host_kv out(2, 2, 600, 16);
    CHECK(other.get(kv.tokens, out.view()).tokens == 0);
    host_kv wide(2, 4, 600, 16);
    CHECK(st.get(kv.tokens, wide.view()).tokens == 0);
  }
}

TEST_CASE("store never serves a chunk stored for another model spec or key") {
  temp_dir d;
  auto a = file_store(d.path, "model-a");
  host_kv kv = sample(256, 4);
  const auto pa = a.put(kv.tokens, kv.cview(), "raw:dtype=f16");
  // Model b stores its own context with the same tokens, then its chunk values are replaced by model a's.
  auto b = file_store(d.path, "model-b");
  host_kv kb = sample(256, 5);
  kb.tokens = kv.tokens;
  const auto pb = b.put(kb.tokens, kb.cview(), "raw:dtype=f16");
  REQUIRE(pb.chunks == 2);
  const auto ea = a.entry(pa.entry_key), eb = b.entry(pb.entry_key);
  REQUIRE(ea);
  REQUIRE(eb);
  for (std::size_t k = 0; k < 2; ++k) b.storage().put(eb->chunk_keys[k], *a.storage().get(ea->chunk_keys[k]));
  host_kv out(2, 2, 256, 16);
  const auto g = b.get(kb.tokens, out.view());
  CHECK(g.tokens == 0);
  REQUIRE(g.problems.size() == 1);
  CHECK(g.problems[0].find("model") != std::string::npos);
  CHECK(b.stats().rejected_chunks == 1);
  // A chunk of the same model and spec moved under another chunk's key is refused (tokens, chain key).
  host_kv kc = sample(256, 6);
  const auto pc = b.put(kc.tokens, kc.cview(), "raw:dtype=f16");
  const auto ec = b.entry(pc.entry_key);
  REQUIRE(ec);
  b.storage().put(ec->chunk_keys[1], *b.storage().get(ec->chunk_keys[0]));
  const auto g2 = b.get(kc.tokens, out.view());
  CHECK(g2.tokens == 128);
  CHECK(same_prefix(kc, out, 128));
  REQUIRE(g2.problems.size() == 1);
  CHECK(g2.problems[0].find("does not belong under this key") != std::string::npos);
}

TEST_CASE("store detects a damaged chunk and serves only the prefix before it") {
  temp_dir d;
  auto st = file_store(d.path);
  host_kv kv = sample();
  const auto p = st.put(kv.tokens, kv.cview(), "kvc:level=5");
  const auto e = st.entry(p.entry_key);
  REQUIRE(e);
  auto v = *st.storage().get(e->chunk_keys[2]);
  v[v.size() / 2] ^= 0x10;
  st.storage().put(e->chunk_keys[2], v);
  host_kv out(2, 2, 600, 16);
  const auto g = st.get(kv.tokens, out.view());
  CHECK(g.tokens == 256);
  REQUIRE(g.problems.size() == 1);
  CHECK(g.problems[0].find(e->chunk_keys[2]) != std::string::npos);
  CHECK(st.stats().rejected_chunks == 1);
  // A value that is not a container at all.
  const std::string junk = "not a kvc container";
  st.storage().put(e->chunk_keys[0], std::span(reinterpret_cast<const std::uint8_t*>(junk.data()), junk.size()));
  CHECK(st.get(kv.tokens, out.view()).tokens == 0);
}

TEST_CASE("store put that fails midway leaves no visible entry") {
  temp_dir d;
  auto h = std::make_shared<test::hooks>();
  h->on_put = [](int n) {
    if (n == 3) throw error(error_kind::io, "simulated backend failure on put 3");
  };
  kv_store st(std::make_unique<test::hooked_backend>(open_backend("file://" + d.path), h), opts());
  host_kv kv = sample();
  CHECK_THROWS_AS(st.put(kv.tokens, kv.cview(), "raw:dtype=f16"), error);
  auto clean = file_store(d.path);
  host_kv out(2, 2, 600, 16);
  CHECK(clean.get(kv.tokens, out.view()).tokens == 0);  // chunks 0 and 1 were stored, but no marker names them
  CHECK(clean.contains(kv.tokens, {2, 2, 16}).first == 0);
  CHECK(clean.entries().empty());
  CHECK(clean.storage().list("kvc:v1:c:").size() == 2);
  // The retried put completes and reuses the two chunks.
  const auto p = clean.put(kv.tokens, kv.cview(), "raw:dtype=f16");
  CHECK(p.chunks_present == 2);
  CHECK(clean.get(kv.tokens, out.view()).tokens == 600);
}

TEST_CASE("store entries stat and remove") {
  temp_dir d;
  auto st = file_store(d.path);
  host_kv a = sample(600, 1), b = sample(200, 2);
  const auto pa = st.put(a.tokens, a.cview(), "raw:dtype=f16");
  st.put(b.tokens, b.cview(), "zstd");
  const auto es = st.entries();
  REQUIRE(es.size() == 2);
  const auto ea = st.entry(pa.entry_key);
  REQUIRE(ea);
  CHECK(ea->final);
  CHECK(ea->tokens == 600);
  CHECK(ea->chunks == 5);
  CHECK(ea->model == "m");
  CHECK(ea->chunk_keys.size() == 5);
  CHECK(st.entries(true).size() == 5 + 2);
  CHECK(st.remove_entry(pa.entry_key) == 10);  // 5 markers, 5 chunks
  host_kv out(2, 2, 600, 16);
  CHECK(st.get(a.tokens, out.view()).tokens == 0);
  CHECK(st.remove(b.tokens, {2, 2, 16}) == 4);  // 2 markers, 2 chunks
  CHECK(st.entries(true).empty());
  CHECK_FALSE(st.entry(pa.entry_key));
  const std::string junk = "{}";
  st.storage().put(pa.entry_key, std::span(reinterpret_cast<const std::uint8_t*>(junk.data()), junk.size()));
  CHECK_THROWS_WITH_AS(st.entry(pa.entry_key), doctest::Contains(pa.entry_key.c_str()), error);
}

TEST_CASE("store concurrent writers and readers of the same prefix see all or nothing") {
  temp_dir d;
  host_kv kv = sample(512, 6);
  std::atomic<int> wrong{0}, hits{0}, errors{0};
  std::vector<std::thread> ts;
  for (int w = 0; w < 2; ++w)
    ts.emplace_back([&] {
      try {
        auto st = file_store(d.path);
        for (int i = 0; i < 3; ++i) st.put(kv.tokens, kv.cview(), "raw:dtype=f16");
      } catch (...) {
        ++errors;
      }
    });
  for (int r = 0; r < 2; ++r)
    ts.emplace_back([&] {
      try {
        auto st = file_store(d.path);
        host_kv out(2, 2, 512, 16);
        for (int i = 0; i < 20; ++i) {
          const auto g = st.get(kv.tokens, out.view());
          if (g.tokens > 0) ++hits;
          if (!same_prefix(kv, out, g.tokens) || !g.problems.empty()) ++wrong;
        }
      } catch (...) {
        ++errors;
      }
    });
  for (auto& t : ts) t.join();
  CHECK(errors == 0);
  CHECK(wrong == 0);
  host_kv out(2, 2, 512, 16);
  auto st = file_store(d.path);
  CHECK(st.get(kv.tokens, out.view()).tokens == 512);
  CHECK(same_prefix(kv, out, 512));
}

TEST_CASE("store refuses bad arguments with clear errors") {
  temp_dir d;
  auto st = file_store(d.path);
  host_kv kv = sample(100);
  std::vector<std::int32_t> short_tokens(kv.tokens.begin(), kv.tokens.begin() + 50);
  CHECK_THROWS_WITH_AS(st.put(short_tokens, kv.cview(), "raw"), doctest::Contains("tokens"), error);
  CHECK_THROWS_AS(st.put(kv.tokens, kv.cview(), "no-such-codec"), error);
  CHECK_THROWS_WITH_AS(open_backend("ftp://x"), doctest::Contains("expected file://DIR"), error);
  CHECK_THROWS_WITH_AS(open_backend("redis://localhost"), doctest::Contains("HOST:PORT"), error);
  CHECK_THROWS_WITH_AS(open_backend("redis://127.0.0.1:1?bogus=1"), doctest::Contains("unknown option"), error);
  CHECK_THROWS_WITH_AS(st.storage().get("kvc:../x"), doctest::Contains("key"), error);
  CHECK_THROWS_AS(kv_store(open_backend("file://" + d.path), opts("m", 0)), error);
}

TEST_CASE("store decodes into a paged destination view") {
  temp_dir d;
  auto st = file_store(d.path);
  host_kv kv = sample(256, 8);
  st.put(kv.tokens, kv.cview(), "raw:dtype=f16");
  // A pool of 8 blocks of 64 tokens, the sequence in blocks 5, 1, 7, 3.
  const int L = 2, H = 2, D = 16, B = 64, NB = 8;
  std::vector<std::vector<std::uint16_t>> kp(L, std::vector<std::uint16_t>(NB * B * H * D)), vp = kp;
  std::vector<std::byte*> ks, vs;
  for (int l = 0; l < L; ++l) {
    ks.push_back(reinterpret_cast<std::byte*>(kp[l].data()));
    vs.push_back(reinterpret_cast<std::byte*>(vp[l].data()));
  }
  const kv_view paged = kv_view::paged_pool(ks, vs, dtype::f16, H, D, B, NB, {5, 1, 7, 3}, 256);
  REQUIRE(st.get(kv.tokens, paged).tokens == 256);
  const kv_view src = kv.view();
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < H; ++h)
      for (std::int64_t t = 0; t < 256; t += 17) {
        CHECK(std::memcmp(paged.row(l, true, h, t), src.row(l, true, h, t), D * 2) == 0);
        CHECK(std::memcmp(paged.row(l, false, h, t), src.row(l, false, h, t), D * 2) == 0);
      }
}

}  // namespace kvcodec_test_store_store
