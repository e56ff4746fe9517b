// store/measure.hpp: a tier's latency and bandwidth measured on a real backend.
#include <doctest/doctest.h>

#include "kvcodec/store/measure.hpp"
#include "kvcodec/store/memory_backend.hpp"
#include "kvcodec/store/open.hpp"
#include "redis_fixture.hpp"
#include "store_support.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_store_measure {

using namespace kvcodec;
using namespace kvcodec::store;
using kvcodec::test::redis_server;
using kvcodec::test::temp_dir;

TEST_CASE("measure_backend times real backends and leaves no key behind") {
  temp_dir d;
  redis_server srv(d.path + "/r");
  memory_backend mem;
  auto dir = open_backend("file://" + d.path + "/f");
  auto red = open_backend(srv.url());
  for (backend* b : {static_cast<backend*>(&mem), dir.get(), red.get()}) {
    const auto m = measure_backend(*b, 300000, 3, 5);
    CHECK(m.url == b->url());
    CHECK(m.payload_bytes == 300000);
    CHECK(m.latency_s > 0);
    CHECK(m.latency_s < 1);
    CHECK(m.get_bandwidth_bytes_s > 1e6);  // anything real moves more than 1 MB/s
    CHECK(m.put_bandwidth_bytes_s > 1e6);
    CHECK(m.best_get_s >= m.latency_s / 2);
    CHECK(b->list("kvc:v1:bench:").empty());
  }
  CHECK_THROWS_AS(measure_backend(mem, 0), error);
  // A server gone: the backend's io error, naming it.
  auto fast = open_backend(srv.url() + "?retries=0&connect_timeout_ms=300&timeout_ms=1000");
  srv.kill9();
  const std::string addr = srv.addr();
  CHECK_THROWS_WITH_AS(measure_backend(*fast, 1000), doctest::Contains(addr.c_str()), error);
}

}  // namespace kvcodec_test_store_measure
