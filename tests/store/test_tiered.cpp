// Tiered store (store/tiered.hpp): URL form, placement by the planner, capacities, promotion, demotion
// and eviction order, data after moves, a failing tier, persistence of the tier records, a Redis tier.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>

#include "kvcodec/store/tiered.hpp"
#include "redis_fixture.hpp"
#include "store_support.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_store_tiered {

using namespace kvcodec;
using namespace kvcodec::store;
using kvcodec::test::host_kv;
using kvcodec::test::redis_server;
using kvcodec::test::same_prefix;
using kvcodec::test::temp_dir;

namespace {
constexpr const char* lossless = "raw:dtype=f16";

tiered_options topts() {
  tiered_options o;
  o.store.model = "m";
  o.store.chunk_tokens = 128;
  return o;
}
host_kv ctx(unsigned seed, std::int64_t T = 256) {
  host_kv kv(2, 2, T, 16);
  kv.fill_random(seed, 30000);
  return kv;
}
/// Bytes one 256-token context takes stored losslessly (measured on a memory tier).
std::size_t entry_bytes() {
  tiered_store probe({tier_config{"mem"}}, topts());
  host_kv a = ctx(99);
  probe.put(a.tokens, a.cview(), lossless);
  return probe.stats()[0].bytes;
}
tier_config tc(std::string url, double cap = std::numeric_limits<double>::infinity()) {
  tier_config t;
  t.url = std::move(url);
  t.capacity_bytes = cap;
  return t;
}
std::size_t tier_of(tiered_store& st, const host_kv& kv) {
  for (const auto& e : st.entries()) {
    const auto hs = chain_hashes(namespace_text("m", e.shape, 128, e.spec), kv.tokens, 128);
    if (marker_key(hs.back()) == e.key) return e.tier;
  }
  return 99;
}
/// Gets kv's tokens and checks the bytes are kv's.
tiered_get_result get_equal(tiered_store& st, const host_kv& kv) {
  host_kv out(kv.L, kv.H, kv.T, kv.D);
  auto r = st.get(kv.tokens, out.view());
  CHECK(r.get.tokens == kv.T);
  CHECK(same_prefix(kv, out, kv.T));
  return r;
}
void check_capacities(tiered_store& st) {
  for (const auto& s : st.stats()) CHECK_MESSAGE(static_cast<double>(s.bytes) <= s.capacity_bytes, s.url << " holds " << s.bytes << " > " << s.capacity_bytes);
}
}  // namespace

TEST_CASE("tiered URL names backends capacities bandwidths and latencies") {
  const auto t = parse_tiered_url("tiered://mem:64MB,file:///tmp/x:1.5GiB:2GBps:50us,redis-cluster://a:1,b:2?retries=0:800MBps,redis://h:6379");
  REQUIRE(t.size() == 4);
  CHECK(t[0].url == "mem");
  CHECK(t[0].capacity_bytes == 64e6);
  CHECK(t[1].url == "file:///tmp/x");
  CHECK(t[1].capacity_bytes == 1.5 * 1073741824.0);
  CHECK(t[1].bandwidth_bytes_s == 2e9);
  CHECK(std::abs(t[1].latency_s - 50e-6) < 1e-12);
  CHECK(t[2].url == "redis-cluster://a:1,b:2?retries=0");
  CHECK(std::isinf(t[2].capacity_bytes));
  CHECK(t[2].bandwidth_bytes_s == 800e6);
  CHECK(t[3].url == "redis://h:6379");  // a port is not a capacity
  const auto d = tier_defaults(t[3]);
  CHECK(d.bandwidth_bytes_s == 1.8e9);
  CHECK(tier_defaults(t[0]).latency_s == 1e-6);
  CHECK_THROWS_AS(parse_tiered_url("tiered://"), error);
  CHECK_THROWS_AS(parse_tiered_url("tiered://mem,ftp://x"), error);
  CHECK_THROWS_AS(parse_tiered_url("file:///x"), error);
  CHECK_THROWS_AS(parse_tiered_url("tiered://mem:12XB"), error);
  CHECK(is_tiered_url("tiered://mem"));
}

TEST_CASE("tiered store serves from each tier promotes on hit and demotes the lowest utility per byte") {
  temp_dir d;
  const std::size_t S = entry_bytes();
  // Two contexts fit in the memory tier, two in the directory, the last directory is unbounded.
  tiered_store st({tc("mem", 2.5 * S), tc("file://" + d.path + "/a", 2.5 * S), tc("file://" + d.path + "/b")}, topts());
  host_kv A = ctx(1), B = ctx(2), C = ctx(3), D = ctx(4), E = ctx(5);
  for (host_kv* kv : {&A, &B, &C, &D, &E}) {
    const auto r = st.put(kv->tokens, kv->cview(), lossless);
    CHECK(r.put.spec == make_codec(lossless).spec());
    check_capacities(st);
  }
  auto s0 = st.stats();
  auto s = s0;
  CHECK(s[0].contexts == 2);
  CHECK(s[1].contexts == 2);
  CHECK(s[2].contexts == 1);
  CHECK(std::abs(static_cast<double>(s[0].bytes) - 2.0 * S) < 0.01 * S);
  // A hit from each tier, with the right bytes.
  std::map<std::size_t, const host_kv*> in;
  for (const host_kv* kv : {&A, &B, &C, &D, &E}) in[tier_of(st, *kv)] = kv;
  REQUIRE(in.count(0));
  REQUIRE(in.count(1));
  REQUIRE(in.count(2));
  const host_kv& m0 = *in[0];
  const host_kv& slow = *in[2];
  auto r0 = get_equal(st, m0);
  CHECK(r0.tier == 0u);
  CHECK(!r0.promoted_to);
  // The memory context not just read is the least recently used with the same utility per byte:
  // promoting the slow one moves it down.
  const host_kv* other0 = nullptr;
  for (const host_kv* kv : {&A, &B, &C, &D, &E})
    if (kv != &m0 && tier_of(st, *kv) == 0) other0 = kv;
  REQUIRE(other0);
  auto r2 = get_equal(st, slow);
  CHECK(r2.tier == 2u);
  CHECK(r2.promoted_to == 0u);
  CHECK(tier_of(st, slow) == 0);
  CHECK(tier_of(st, m0) == 0);        // read before: a higher weight, stays
  CHECK(tier_of(st, *other0) == 1);   // demoted, and the directory's lowest went down
  check_capacities(st);
  s = st.stats();
  CHECK(s[2].hits == 1);
  CHECK(s[0].hits == 1);
  CHECK(s[0].promoted_in == 1);
  CHECK(s[2].promoted_out == 1);
  CHECK(s[0].demoted_out - s0[0].demoted_out == 1);
  CHECK(s[1].demoted_in - s0[1].demoted_in == 1);
  CHECK(s[1].demoted_out - s0[1].demoted_out == 1);
  CHECK(s[2].demoted_in - s0[2].demoted_in == 1);
  // Every context still whole, with its bytes, after the moves; a hit from the directory too.
  for (const host_kv* kv : {&A, &B, &C, &D, &E}) {
    const std::size_t before = tier_of(st, *kv);
    auto r = get_equal(st, *kv);
    CHECK(r.tier == before);
    check_capacities(st);
  }
  CHECK(st.stats()[1].hits >= 1);
}

TEST_CASE("tiered store evicts from a bounded last tier and never serves an evicted context") {
  const std::size_t S = entry_bytes();
  tier_config slow = tc("mem", 1.5 * S);
  slow.bandwidth_bytes_s = 1e9;  // a second memory tier the planner sees as slower
  tiered_store st({tc("mem", 1.5 * S), slow}, topts());
  host_kv A = ctx(1), B = ctx(2), C = ctx(3);
  st.put(A.tokens, A.cview(), lossless);
  st.put(B.tokens, B.cview(), lossless);
  get_equal(st, A);  // A: a hit, B: none
  get_equal(st, A);
  st.put(C.tokens, C.cview(), lossless);
  check_capacities(st);
  const auto s = st.stats();
  CHECK(s[0].contexts + s[1].contexts == 2);
  CHECK(s[1].evicted + s[0].evicted == 1);
  host_kv out = ctx(0);
  // B (lowest weight per byte) is gone, A and C serve their bytes.
  CHECK(!st.get(B.tokens, out.view()).tier);
  get_equal(st, A);
  get_equal(st, C);
}

TEST_CASE("tiered store chooses the level with the planner and keeps shared prefixes") {
  temp_dir d;
  tiered_store st({tc("mem", 1e9), tc("file://" + d.path + "/f")}, topts());
  host_kv A = ctx(7, 512);
  // A profile where level 9 is as good as level 1 and far smaller: the planner must take it.
  context_profile p;
  p.levels = {{"kvc:level=1", 60000, 0.001, 1e-4}, {"kvc:level=9", 10000, 0.001, 1e-4}};
  const auto r = st.put(A.tokens, A.cview(), "auto", &p);
  CHECK(r.put.spec == make_codec("kvc:level=9").spec());
  CHECK(r.tier == 0);
  host_kv out(2, 2, 512, 16);
  CHECK(st.get(A.tokens, out.view()).get.tokens == 512);
  // The default proxy profile picks some kvc level too.
  host_kv B = ctx(8);
  const auto rb = st.put(B.tokens, B.cview());
  bool a_level = false;
  for (int l : {1, 3, 5, 7, 9}) a_level = a_level || rb.put.spec == make_codec("kvc:level=" + std::to_string(l)).spec();
  CHECK(a_level);
  // A context sharing A's first 256 tokens: its chunks are stored once; removing it keeps A whole.
  host_kv P = ctx(9, 256);
  P.tokens.assign(A.tokens.begin(), A.tokens.begin() + 256);
  const auto rp = st.put(P.tokens, P.cview(), "kvc:level=9");
  CHECK(!rp.already);
  CHECK(rp.put.chunks_present == 2);  // A's chunks (same tokens, same spec: the same keys)
  host_kv Q = ctx(10, 384);
  Q.tokens.assign(A.tokens.begin(), A.tokens.begin() + 384);
  Q.tokens[300] += 1;  // shares A's first two chunks only
  const auto before = st.stats()[0].bytes;
  const auto rq = st.put(Q.tokens, Q.cview(), "kvc:level=9", &p);
  CHECK(rq.put.chunks_present == 2);
  CHECK(st.stats()[0].bytes < before + st.entry(rq.put.entry_key)->bytes);  // shared chunks counted once
  CHECK(st.remove(Q.tokens, {2, 2, 16}) == 1);
  host_kv out2(2, 2, 512, 16);
  const auto g = st.get(A.tokens, out2.view());
  CHECK(g.get.tokens == 512);
  CHECK(g.get.problems.empty());
  CHECK(same_prefix(out, out2, 512));
  CHECK(st.stats()[0].bytes == before);
}

TEST_CASE("tiered store records survive a reopen and close moves the memory tier down") {
  temp_dir d;
  const std::size_t S = entry_bytes();
  const std::string url = "tiered://mem:" + std::to_string(3 * S) + "B,file://" + d.path + "/f";
  host_kv A = ctx(1), B = ctx(2);
  {
    auto st = open_tiered(url, topts());
    st->put(A.tokens, A.cview(), lossless);
    st->put(B.tokens, B.cview(), lossless);
    CHECK(st->stats()[0].contexts == 2);
    CHECK(st->close() == 2);
    CHECK(st->stats()[0].contexts == 0);
    CHECK(st->stats()[1].contexts == 2);
  }
  auto st = open_tiered(url, topts());
  CHECK(st->entries().size() == 2);
  CHECK(std::abs(static_cast<double>(st->stats()[1].bytes) - 2.0 * S) < 0.01 * S);
  auto r = get_equal(*st, A);
  CHECK(r.tier == 1u);
  CHECK(r.promoted_to == 0u);
  get_equal(*st, B);
  CHECK(st->stats()[0].contexts == 2);
  CHECK(st->close() == 2);
}

TEST_CASE("tiered store reopened with a context in two tiers keeps the faster copy") {
  temp_dir d;
  const std::string u1 = "file://" + d.path + "/f1", u2 = "file://" + d.path + "/f2";
  host_kv A = ctx(1);
  std::string key;
  {
    tiered_store st({tc(u1), tc(u2)}, topts());
    key = st.put(A.tokens, A.cview(), lossless).put.entry_key;
    REQUIRE(st.entry(key)->tier == 0);
  }
  // A move from f1 to f2 interrupted after its new copy was complete (record written, old copy not removed).
  auto b1 = open_backend(u1), b2 = open_backend(u2);
  for (const std::string p : {"kvc:v1:c:", "kvc:v1:m:", "kvc:v1:t:"})
    for (const auto& k : b1->list(p)) b2->put(k, *b1->get(k));
  for (const auto& k : b1->list("kvc:v1:s:"))
    for (const auto& m : b1->set_members(k)) b2->set_add(k, m);
  tiered_store st({tc(u1), tc(u2)}, topts());
  REQUIRE(st.entries().size() == 1);
  CHECK(st.entry(key)->tier == 0);
  CHECK(st.stats()[1].bytes == 0);
  CHECK(b2->list("kvc:v1:c:").empty());
  CHECK(b2->list("kvc:v1:t:").empty());
  get_equal(st, A);
}

TEST_CASE("tiered store with a failing tier gives a miss or an error never wrong data") {
  temp_dir d;
  auto h = std::make_shared<kvcodec::test::hooks>();
  std::vector<std::unique_ptr<backend>> bs;
  bs.push_back(nullptr);
  bs.push_back(std::make_unique<kvcodec::test::hooked_backend>(open_backend("file://" + d.path + "/f"), h));
  tiered_store st({tc("mem", 1e9), tc("file://" + d.path + "/f")}, topts(), std::move(bs));
  host_kv A = ctx(1), B = ctx(2);
  st.put(A.tokens, A.cview(), lossless);
  st.put(B.tokens, B.cview(), lossless);
  CHECK(st.close() == 2);
  h->on_get = [](int) { throw error(error_kind::io, "injected: disk gone"); };
  host_kv out = ctx(0);
  const auto r = st.get(A.tokens, out.view());
  CHECK(!r.tier);
  CHECK(r.get.tokens == 0);
  REQUIRE(!r.get.problems.empty());
  CHECK(r.get.problems[0].find("disk gone") != std::string::npos);
  CHECK(st.stats()[1].errors >= 1);
  h->on_get = nullptr;
  get_equal(st, A);
  // A put into a failing tier (the memory tier holds nothing): an io error naming it, nothing visible.
  auto h2 = std::make_shared<kvcodec::test::hooks>();
  std::vector<std::unique_ptr<backend>> bs2;
  bs2.push_back(nullptr);
  bs2.push_back(std::make_unique<kvcodec::test::hooked_backend>(open_backend("file://" + d.path + "/g"), h2));
  tiered_store st2({tc("mem", 0), tc("file://" + d.path + "/g")}, topts(), std::move(bs2));
  h2->on_put = [](int n) {
    if (n == 2) throw error(error_kind::io, "injected: disk full");
  };
  host_kv C2 = ctx(3);
  CHECK_THROWS_AS(st2.put(C2.tokens, C2.cview(), lossless), error);
  h2->on_put = nullptr;
  host_kv out2 = ctx(0);
  CHECK(!st2.get(C2.tokens, out2.view()).tier);
  CHECK(st2.entries().empty());
  CHECK(st2.stats()[1].errors == 1);
  st2.put(C2.tokens, C2.cview(), lossless);  // the orphan chunk is reused
  get_equal(st2, C2);
  // A damaged chunk in the directory tier: detected, never served.
  host_kv C = ctx(4);
  const auto pc = st.put(C.tokens, C.cview(), lossless);
  st.close();
  const auto e = *st.entry(pc.put.entry_key);
  REQUIRE(e.tier == 1);
  auto v = st.storage(1).get(e.chunk_keys[1]);
  REQUIRE(v);
  (*v)[v->size() / 2] ^= 0x40;
  st.storage(1).put(e.chunk_keys[1], *v);
  host_kv out3 = ctx(0);
  const auto rc = st.get(C.tokens, out3.view());
  CHECK(rc.get.tokens == 128);  // the first chunk only
  CHECK(!rc.get.problems.empty());
  CHECK(same_prefix(C, out3, 128));
}

TEST_CASE("tiered store over a real redis-server tier") {
  temp_dir d;
  redis_server srv(d.path + "/r");
  const std::size_t S = entry_bytes();
  const std::string url = "tiered://mem:" + std::to_string(S + S / 2) + "B,file://" + d.path + "/f:" + std::to_string(S + S / 2) + "B," + srv.url() +
                          "?retries=0&timeout_ms=2000";
  host_kv A = ctx(1), B = ctx(2), C = ctx(3);
  {
    auto st = open_tiered(url, topts());
    for (host_kv* kv : {&A, &B, &C}) st->put(kv->tokens, kv->cview(), lossless);
    check_capacities(*st);
    const auto s = st->stats();
    CHECK(s[0].contexts == 1);
    CHECK(s[1].contexts == 1);
    CHECK(s[2].contexts == 1);
    const host_kv* in_redis = nullptr;
    for (const host_kv* kv : {&A, &B, &C})
      if (tier_of(*st, *kv) == 2) in_redis = kv;
    REQUIRE(in_redis);
    auto r = get_equal(*st, *in_redis);
    CHECK(r.tier == 2u);
    CHECK(r.promoted_to == 0u);
    check_capacities(*st);
    CHECK(st->close() == 1);
  }
  // Reopened: the Redis and directory tiers' records are read back.
  auto st = open_tiered(url, topts());
  CHECK(st->entries().size() == 3);
  for (const host_kv* kv : {&A, &B, &C}) get_equal(*st, *kv);
  check_capacities(*st);
  // Redis down: its contexts are a miss with the reason, the others still served.
  st->close();
  srv.kill9();
  std::size_t served = 0, missed = 0;
  for (const host_kv* kv : {&A, &B, &C}) {
    host_kv out = ctx(0);
    const auto r = st->get(kv->tokens, out.view());
    if (r.tier) {
      ++served;
      CHECK(same_prefix(*kv, out, 256));
    } else {
      ++missed;
      REQUIRE(!r.get.problems.empty());
    }
  }
  CHECK(missed >= 1);
  CHECK(served + missed == 3);
  CHECK(st->stats()[2].errors >= 1);
}

}  // namespace kvcodec_test_store_tiered
