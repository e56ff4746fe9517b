// Tests of cpu/policy.hpp: parallel_for and parallel_for_worker visit every index once, hand each
// worker an index of its own, and rethrow the first exception after every thread has stopped.
#include <doctest/doctest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kvcodec/cpu/policy.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_cpu_policy {

using namespace kvcodec;

TEST_CASE("parallel_for_worker: every index once - worker ids below workers() - one thread per id") {
  for (int threads : {1, 2, 3, 8}) {
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{1000}}) {
      CAPTURE(threads);
      CAPTURE(n);
      const int W = cpu::workers(threads, n);
      CHECK(W >= 1);
      CHECK(W <= threads);
      if (n > 0) CHECK(static_cast<std::size_t>(W) <= n);
      std::vector<std::atomic<int>> seen(n);
      std::vector<std::set<std::thread::id>> ids(static_cast<std::size_t>(W));
      std::mutex m;
      bool in_range = true;
      cpu::parallel_for_worker(cpu::par(threads), n, [&](std::size_t i, int w) {
        seen[i].fetch_add(1);
        std::lock_guard<std::mutex> lock(m);
        if (w < 0 || w >= W) in_range = false;
        else ids[static_cast<std::size_t>(w)].insert(std::this_thread::get_id());
      });
      CHECK(in_range);
      for (std::size_t i = 0; i < n; ++i) CHECK(seen[i].load() == 1);
      for (const auto& s : ids) CHECK(s.size() <= 1);  // a worker id is never shared by two threads
    }
  }
}

TEST_CASE("parallel_for: the first exception is rethrown on the caller - seq runs in order") {
  std::atomic<int> ran{0};
  CHECK_THROWS_AS(cpu::parallel_for(cpu::par(2), 100, [&](std::size_t i) {
                    ran.fetch_add(1);
                    if (i == 3) throw std::runtime_error("index 3");
                  }),
                  std::runtime_error);
  CHECK(ran.load() >= 1);
  std::vector<std::size_t> order;
  cpu::parallel_for(cpu::seq, 5, [&](std::size_t i) { order.push_back(i); });
  CHECK(order == std::vector<std::size_t>{0, 1, 2, 3, 4});
}

}  // namespace kvcodec_test_cpu_policy
