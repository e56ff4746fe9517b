// Store on a real standalone redis-server (loopback): round trips, failures mid-get and mid-put,
// AOF restarts, damaged values, replicas and WAIT, concurrency.
#include <doctest/doctest.h>

#include <thread>

#include "kvcodec/store/open.hpp"
#include "kvcodec/store/store.hpp"
#include "redis_fixture.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_store_redis {

using namespace kvcodec;
using namespace kvcodec::store;
using kvcodec::test::host_kv;
using kvcodec::test::redis_server;
using kvcodec::test::same_prefix;
using kvcodec::test::temp_dir;

namespace {
store_options opts(const std::string& model = "m") {
  store_options o;
  o.model = model;
  o.chunk_tokens = 128;
  return o;
}
host_kv sample(std::int64_t T = 600, unsigned seed = 1) {
  host_kv kv(2, 2, T, 16);
  kv.fill_random(seed);
  return kv;
}
/// Short timeouts and no retries, so a dead server is reported at once.
std::string fast(const redis_server& s) { return s.url() + "?retries=0&connect_timeout_ms=500&timeout_ms=2000"; }
}  // namespace

TEST_CASE("redis store round trip longest prefix and miss") {
  temp_dir d;
  redis_server srv(d.path + "/r");
  kv_store st(open_backend(srv.url()), opts());
  host_kv kv = sample();
  const auto p = st.put(kv.tokens, kv.cview(), "kvc:level=5");
  CHECK(p.chunks_written == 5);
  // Redis holds exactly 5 chunks, 5 markers and one spec set.
  auto n = srv.cmd({"DBSIZE"});
  CHECK(n->integer == 11);
  host_kv out(2, 2, 600, 16), ref(2, 2, 600, 16);
  CHECK(st.get(kv.tokens, out.view()).tokens == 600);
  // The same bytes as the file backend gives (same chunks, same codec).
  kv_store fs(open_backend("file://" + d.path + "/f"), opts());
  fs.put(kv.tokens, kv.cview(), "kvc:level=5");
  REQUIRE(fs.get(kv.tokens, ref.view()).tokens == 600);
  CHECK(same_prefix(ref, out, 600));
  auto t = kv.tokens;
  t[130] += 1;
  CHECK(st.get(t, out.view()).tokens == 128);
  t[0] += 1;
  CHECK(st.get(t, out.view()).tokens == 0);
  // Another model with the same tokens never sees these chunks.
  kv_store other(open_backend(srv.url()), opts("other"));
  CHECK(other.get(kv.tokens, out.view()).tokens == 0);
  CHECK(st.entries().size() == 1);
}

TEST_CASE("redis server killed mid get gives a clear error and the data survives a restart") {
  temp_dir d;
  redis_server srv(d.path + "/r");
  host_kv kv = sample(1024, 2);
  {
    kv_store st(open_backend(srv.url()), opts());
    st.put(kv.tokens, kv.cview(), "raw:dtype=f16");
  }
  auto h = std::make_shared<test::hooks>();
  h->on_get = [&](int n) {
    if (n == 4) srv.kill9();  // after three chunks were fetched
  };
  kv_store st(std::make_unique<test::hooked_backend>(open_backend(fast(srv)), h), opts());
  host_kv out(2, 2, 1024, 16);
  try {
    st.get(kv.tokens, out.view());
    FAIL("get on a killed server returned");
  } catch (const error& e) {
    CHECK(e.kind() == error_kind::io);
    CHECK(std::string(e.what()).find("redis 127.0.0.1:" + std::to_string(srv.port())) != std::string::npos);
  }
  srv.start();  // AOF with fsync always: everything acknowledged is back
  kv_store again(open_backend(srv.url()), opts());
  CHECK(again.get(kv.tokens, out.view()).tokens == 1024);
  CHECK(same_prefix(kv, out, 1024));
}

TEST_CASE("redis server killed mid put leaves no partial entry visible") {
  temp_dir d;
  redis_server srv(d.path + "/r");
  host_kv kv = sample(1024, 3);
  auto h = std::make_shared<test::hooks>();
  h->on_put = [&](int n) {
    if (n == 4) srv.kill9();  // three chunks stored, no marker yet
  };
  {
    kv_store st(std::make_unique<test::hooked_backend>(open_backend(fast(srv)), h), opts());
    CHECK_THROWS_AS(st.put(kv.tokens, kv.cview(), "raw:dtype=f16"), error);
  }
  srv.start();
  kv_store st(open_backend(srv.url()), opts());
  host_kv out(2, 2, 1024, 16);
  CHECK(st.get(kv.tokens, out.view()).tokens == 0);
  CHECK(st.entries(true).empty());
  CHECK(st.storage().list("kvc:v1:c:").size() == 3);  // the orphan chunks, never served
  // A kill while the markers are written leaves only markers whose chunks are all stored.
  auto h2 = std::make_shared<test::hooks>();
  h2->on_put = [&](int n) {
    if (n == 10) srv.kill9();  // puts 1-5: the 5 missing chunks of 8; 6-9: markers 0..3; marker 4 never lands
  };
  {
    kv_store st2(std::make_unique<test::hooked_backend>(open_backend(fast(srv)), h2), opts());
    CHECK_THROWS_AS(st2.put(kv.tokens, kv.cview(), "raw:dtype=f16"), error);
  }
  srv.start();
  kv_store st3(open_backend(srv.url()), opts());
  CHECK(st3.storage().list("kvc:v1:c:").size() == 8);
  CHECK(st3.storage().list("kvc:v1:m:").size() == 4);
  const auto g = st3.get(kv.tokens, out.view());
  CHECK(g.tokens == 512);
  CHECK(same_prefix(kv, out, g.tokens));
  CHECK(st3.entries().empty());  // the context's entry (its last marker) was never written
}

TEST_CASE("redis AOF restart keeps stored entries") {
  temp_dir d;
  redis_server srv(d.path + "/r");
  host_kv kv = sample(700, 4);
  {
    kv_store st(open_backend(srv.url()), opts());
    st.put(kv.tokens, kv.cview(), "kvc:level=5");
  }
  srv.kill9();
  srv.start();
  kv_store st(open_backend(srv.url()), opts());
  host_kv out(2, 2, 700, 16);
  const auto g = st.get(kv.tokens, out.view());
  CHECK(g.tokens == 700);
  CHECK(g.problems.empty());
  CHECK(st.entries().size() == 1);
}

TEST_CASE("redis damaged values are detected and never served") {
  temp_dir d;
  redis_server srv(d.path + "/r");
  kv_store st(open_backend(srv.url()), opts());
  host_kv kv = sample(600, 5);
  const auto p = st.put(kv.tokens, kv.cview(), "kvc:level=5");
  const auto e = st.entry(p.entry_key);
  REQUIRE(e);
  // One byte in the middle of chunk 3's value, changed in place in Redis.
  const auto len = srv.cmd({"STRLEN", e->chunk_keys[3]})->integer;
  const std::string off = std::to_string(len / 2);
  const std::string old = store::reply_text(srv.cmd({"GETRANGE", e->chunk_keys[3], off, off}).get());
  REQUIRE(old.size() == 1);
  const std::string flipped(1, static_cast<char>(old[0] ^ 0x40));
  srv.cmd({"SETRANGE", e->chunk_keys[3], off, flipped});
  host_kv out(2, 2, 600, 16);
  auto g = st.get(kv.tokens, out.view());
  CHECK(g.tokens == 384);
  REQUIRE(g.problems.size() == 1);
  CHECK(g.problems[0].find(e->chunk_keys[3]) != std::string::npos);
  // Truncated value.
  srv.cmd({"SET", e->chunk_keys[1], "KVC"});
  g = st.get(kv.tokens, out.view());
  CHECK(g.tokens == 128);
  CHECK(st.stats().rejected_chunks == 2);
}

TEST_CASE("redis writes acknowledged by a replica survive the loss of the master") {
  temp_dir d;
  redis_server master(d.path + "/m");
  redis_server replica(d.path + "/r", {"--replicaof", "127.0.0.1", std::to_string(master.port())});
  // Wait until the replica is attached (WAIT below would time out otherwise).
  bool attached = false;
  for (int i = 0; i < 600 && !attached; ++i) {
    attached = store::reply_text(master.cmd({"INFO", "replication"}).get()).find("connected_slaves:1") != std::string::npos;
    if (!attached) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  REQUIRE_MESSAGE(attached, "the replica did not attach to the master within 30 s");
  host_kv kv = sample(600, 6);
  {
    kv_store st(open_backend(master.url() + "?wait=1&wait_timeout_ms=30000"), opts());
    st.put(kv.tokens, kv.cview(), "kvc:level=5");
  }
  master.kill9();
  std::filesystem::remove_all(master.dir());  // the master's own copy is gone too
  kv_store st(open_backend(replica.url()), opts());
  host_kv out(2, 2, 600, 16);
  CHECK(st.get(kv.tokens, out.view()).tokens == 600);
  // Asking for more replicas than exist is an error, not a silent success.
  redis_server lone(d.path + "/l");
  kv_store st2(open_backend(lone.url() + "?wait=1&wait_timeout_ms=200"), opts());
  CHECK_THROWS_WITH_AS(st2.put(kv.tokens, kv.cview(), "raw:dtype=f16"), doctest::Contains("replicas"), error);
}

TEST_CASE("redis concurrent writers and readers of the same prefix") {
  temp_dir d;
  redis_server srv(d.path + "/r");
  host_kv kv = sample(1024, 7);
  std::atomic<int> wrong{0}, errors{0};
  std::vector<std::thread> ts;
  for (int w = 0; w < 2; ++w)
    ts.emplace_back([&] {
      try {
        kv_store st(open_backend(srv.url()), opts());
        for (int i = 0; i < 2; ++i) st.put(kv.tokens, kv.cview(), "kvc:level=5");
      } catch (...) {
        ++errors;
      }
    });
  host_kv ref(2, 2, 1024, 16);
  {
    kv_store fs(open_backend("file://" + d.path + "/f"), opts());
    fs.put(kv.tokens, kv.cview(), "kvc:level=5");
    REQUIRE(fs.get(kv.tokens, ref.view()).tokens == 1024);
  }
  for (int r = 0; r < 2; ++r)
    ts.emplace_back([&] {
      try {
        kv_store st(open_backend(srv.url()), opts());
        host_kv out(2, 2, 1024, 16);
        for (int i = 0; i < 10; ++i) {
          const auto g = st.get(kv.tokens, out.view());
          if (!same_prefix(ref, out, g.tokens) || !g.problems.empty()) ++wrong;
        }
      } catch (...) {
        ++errors;
      }
    });
  for (auto& t : ts) t.join();
  CHECK(errors == 0);
  CHECK(wrong == 0);
  kv_store st(open_backend(srv.url()), opts());
  host_kv out(2, 2, 1024, 16);
  CHECK(st.get(kv.tokens, out.view()).tokens == 1024);
  CHECK(same_prefix(ref, out, 1024));
}

TEST_CASE("redis unreachable server is a clear error") {
  const int port = test::free_port();
  CHECK_THROWS_WITH_AS(open_backend("redis://127.0.0.1:" + std::to_string(port) + "?retries=1&retry_delay_ms=10"),
                       doctest::Contains(("127.0.0.1:" + std::to_string(port)).c_str()), error);
}

TEST_CASE("redis backend reads large values as GETRANGE pieces with the same bytes") {
  temp_dir d;
  redis_server srv(d.path + "/r");
  auto pieces = open_backend(srv.url() + "?get_piece_kb=64");
  auto whole = open_backend(srv.url() + "?get_piece_kb=0");
  std::mt19937 rng(5);
  for (const std::size_t n : {std::size_t{0}, std::size_t{1000}, std::size_t{65536}, std::size_t{65537}, std::size_t{131072}, std::size_t{131073}, std::size_t{1000003}}) {
    byte_buffer v(n);
    for (auto& x : v) x = static_cast<std::uint8_t>(rng());
    pieces->put("k", v);
    const auto a = pieces->get("k"), b = whole->get("k");
    REQUIRE(a);
    REQUIRE(b);
    CHECK(*a == v);
    CHECK(*b == v);
  }
  CHECK(!pieces->get("absent"));
  // A removed value: a miss on both paths.
  CHECK(srv.cmd({"DEL", "k"})->integer == 1);
  CHECK(!pieces->get("k"));
  CHECK_THROWS_WITH_AS(open_backend(srv.url() + "?get_piece_kb=x"), doctest::Contains("get_piece_kb"), error);
}

}  // namespace kvcodec_test_store_redis
