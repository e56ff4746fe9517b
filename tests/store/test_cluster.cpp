// Store on a real 3-master Redis Cluster (loopback, made with `redis-cli --cluster create`): hash slots,
// chunks spread over the masters, ASK and MOVED during a slot migration, a master killed.
#include <doctest/doctest.h>

#include <map>
#include <random>
#include <thread>

#include "kvcodec/store/open.hpp"
#include "kvcodec/store/store.hpp"
#include "redis_fixture.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_store_cluster {

using namespace kvcodec;
using namespace kvcodec::store;
using kvcodec::test::host_kv;
using kvcodec::test::redis_server;
using kvcodec::test::same_prefix;
using kvcodec::test::temp_dir;

namespace {

struct cluster {
  std::vector<std::unique_ptr<redis_server>> nodes;
  explicit cluster(const std::string& dir) {
    for (int i = 0; i < 3; ++i)
      nodes.push_back(std::make_unique<redis_server>(dir + "/n" + std::to_string(i),
                                                     std::vector<std::string>{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                                                              "--cluster-node-timeout", "5000"}));
    std::string cmd = "redis-cli --cluster create";
    for (const auto& n : nodes) cmd += " " + n->addr();
    cmd += " --cluster-replicas 0 --cluster-yes > " + dir + "/create.log 2>&1";
    REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, "redis-cli --cluster create failed; see " << dir << "/create.log");
    for (const auto& n : nodes) {
      bool ok = false;
      for (int i = 0; i < 400 && !ok; ++i) {
        ok = reply_text(n->cmd({"CLUSTER", "INFO"}).get()).find("cluster_state:ok") != std::string::npos;
        if (!ok) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      REQUIRE_MESSAGE(ok, "cluster node " << n->addr() << " never reached cluster_state:ok");
    }
  }
  std::string url(const std::string& opts = "") const {
    std::string u = "redis-cluster://";
    for (std::size_t i = 0; i < nodes.size(); ++i) u += (i ? "," : "") + nodes[i]->addr();
    return u + opts;
  }
  redis_server& node(const std::string& addr) {
    for (auto& n : nodes)
      if (n->addr() == addr) return *n;
    FAIL("no node " << addr);
    return *nodes[0];
  }
  std::vector<std::string> keys_on(redis_server& n, const std::string& prefix) {
    redis_conn c("127.0.0.1", n.port(), redis_options{});
    std::vector<std::string> out;
    scan_prefix(c, prefix, out);
    return out;
  }
};

store_options opts(std::int64_t chunk = 128) {
  store_options o;
  o.model = "m";
  o.chunk_tokens = chunk;
  return o;
}

}  // namespace

TEST_CASE("redis cluster key slots match the servers") {
  CHECK(crc16_xmodem("123456789") == 0x31C3);
  CHECK(key_slot("{user1000}.following") == key_slot("{user1000}.followers"));
  temp_dir d;
  redis_server n(d.path + "/n", {"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"});
  for (const std::string k : {"foo", "kvc:v1:c:0123456789abcdef0123456789abcdef", "a{b}c", "{}x", "x{}y{z}"})
    CHECK(n.cmd({"CLUSTER", "KEYSLOT", k})->integer == key_slot(k));
}

TEST_CASE("redis cluster spreads the chunks of a 32k-token context over the three masters") {
  temp_dir d;
  cluster c(d.path);
  host_kv kv(1, 1, 32768, 8);
  kv.fill_random(11, 50000);
  kv_store st(open_backend(c.url()), opts(256));
  const auto p = st.put(kv.tokens, kv.cview(), "raw:dtype=f16");
  REQUIRE(p.chunks == 128);
  std::size_t total = 0;
  for (auto& n : c.nodes) {
    const auto ks = c.keys_on(*n, "kvc:v1:c:");
    CHECK_MESSAGE(ks.size() >= 20, n->addr() << " holds " << ks.size() << " of 128 chunks");
    total += ks.size();
  }
  CHECK(total == 128);
  host_kv out(1, 1, 32768, 8);
  const auto g = st.get(kv.tokens, out.view());
  CHECK(g.tokens == 32768);
  CHECK(same_prefix(kv, out, 32768));
  CHECK(st.entries().size() == 1);
  // Values over two GETRANGE pieces (64 KiB here) are read in pieces from the master of their slot and
  // come back whole; one at a piece boundary, one just past it, a large one; a missing key is a miss.
  auto be = open_backend(c.url("?get_piece_kb=64"));
  auto* cb = dynamic_cast<redis_cluster_backend*>(be.get());
  REQUIRE(cb != nullptr);
  std::mt19937 rng(5);
  for (const std::size_t n : {std::size_t{3} * 65536, std::size_t{3} * 65536 + 1, std::size_t{5} << 20}) {
    byte_buffer v(n);
    for (auto& b : v) b = static_cast<std::uint8_t>(rng());
    const std::string key = "kvc:test:pieces:" + std::to_string(n);
    be->put(key, v);
    const auto got = be->get(key);
    REQUIRE(got.has_value());
    CHECK(*got == v);
  }
  CHECK(cb->piece_gets() == 3);
  CHECK_FALSE(be->get("kvc:test:pieces:missing").has_value());
}

TEST_CASE("redis cluster get follows ASK and MOVED while a slot migrates") {
  temp_dir d;
  cluster c(d.path);
  host_kv kv(2, 2, 600, 16);
  kv.fill_random(12);
  kv_store st(open_backend(c.url()), opts());
  const auto p = st.put(kv.tokens, kv.cview(), "raw:dtype=f16");
  const auto e = st.entry(p.entry_key);
  REQUIRE(e);
  const std::string key = e->chunk_keys[2];
  const int slot = key_slot(key);
  redis_cluster_backend probe({c.nodes[0]->addr()});
  const auto value = probe.get(key);
  REQUIRE(value);
  redis_server& src = c.node(probe.node_of(key));
  redis_server* dst = nullptr;
  for (auto& n : c.nodes)
    if (n.get() != &src) dst = n.get();
  const std::string src_id = reply_text(src.cmd({"CLUSTER", "MYID"}).get()), dst_id = reply_text(dst->cmd({"CLUSTER", "MYID"}).get());
  const std::string s = std::to_string(slot);
  REQUIRE(reply_text(dst->cmd({"CLUSTER", "SETSLOT", s, "IMPORTING", src_id}).get()) == "OK");
  REQUIRE(reply_text(src.cmd({"CLUSTER", "SETSLOT", s, "MIGRATING", dst_id}).get()) == "OK");
  // Move every key of the slot: the slot is still src's, its keys are on dst, so src answers ASK.
  auto inslot = src.cmd({"CLUSTER", "GETKEYSINSLOT", s, "1000"});
  std::vector<std::string> keys;
  for (std::size_t i = 0; i < inslot->elements; ++i) keys.push_back(reply_text(inslot->element[i]));
  REQUIRE(!keys.empty());
  const std::string dport = std::to_string(dst->port());
  std::vector<std::string_view> mig = {"MIGRATE", "127.0.0.1", dport, "", "0", "5000", "KEYS"};
  for (const auto& k : keys) mig.push_back(k);
  REQUIRE(reply_text(src.cmd(mig).get()) == "OK");
  CHECK(probe.get(key) == value);
  CHECK(probe.ask_seen() >= 1);
  host_kv out(2, 2, 600, 16);
  CHECK(st.get(kv.tokens, out.view()).tokens == 600);
  CHECK(same_prefix(kv, out, 600));
  // The slot now belongs to dst: src answers MOVED.
  for (redis_server* n : {dst, &src})
    REQUIRE(reply_text(n->cmd({"CLUSTER", "SETSLOT", s, "NODE", dst_id}).get()) == "OK");
  for (auto& n : c.nodes)
    if (n.get() != dst && n.get() != &src) n->cmd({"CLUSTER", "SETSLOT", s, "NODE", dst_id});
  CHECK(probe.get(key) == value);
  CHECK(probe.moved_seen() >= 1);
  CHECK(probe.node_of(key) == dst->addr());
  std::fill(out.data.begin(), out.data.end(), std::byte{0});
  CHECK(st.get(kv.tokens, out.view()).tokens == 600);
  CHECK(same_prefix(kv, out, 600));
}

TEST_CASE("redis cluster master killed gives a clear error or a miss and never wrong data") {
  temp_dir d;
  cluster c(d.path);
  host_kv kv(2, 2, 4096, 16);
  kv.fill_random(13);
  {
    kv_store st(open_backend(c.url()), opts());
    REQUIRE(st.put(kv.tokens, kv.cview(), "raw:dtype=f16").chunks == 32);
  }
  kv_store st(open_backend(c.url("?retries=0&connect_timeout_ms=300&timeout_ms=2000")), opts());
  c.nodes[1]->kill9();
  host_kv out(2, 2, 4096, 16);
  try {
    const auto g = st.get(kv.tokens, out.view());
    CHECK(g.tokens < 4096);
    CHECK(same_prefix(kv, out, g.tokens));
  } catch (const error& e) {
    CHECK(e.kind() == error_kind::io);
    CHECK(std::string(e.what()).find(c.nodes[1]->addr()) != std::string::npos);
  }
  // Mid-get: the master dies after a few chunks arrived.
  auto h = std::make_shared<test::hooks>();
  c.nodes[1]->start();
  for (int i = 0; i < 200; ++i) {
    if (reply_text(c.nodes[0]->cmd({"CLUSTER", "INFO"}).get()).find("cluster_state:ok") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  h->on_get = [&](int n) {
    if (n == 5) c.nodes[1]->kill9();
  };
  kv_store st2(std::make_unique<test::hooked_backend>(open_backend(c.url("?retries=0&connect_timeout_ms=300&timeout_ms=2000")), h), opts());
  try {
    const auto g = st2.get(kv.tokens, out.view());
    CHECK(g.tokens < 4096);
    CHECK(same_prefix(kv, out, g.tokens));
  } catch (const error& e) {
    CHECK(e.kind() == error_kind::io);
  }
}

}  // namespace kvcodec_test_store_cluster
