// kvcodec/cpu/policy.hpp — CPU execution policies: `cpu::seq` (the reference) and `cpu::par`.
//
// parallel_for hands out indices dynamically to a fixed set of threads; results must not depend on
// the thread count (each index writes its own output). The first exception thrown by any index is
// rethrown on the calling thread after all threads stop.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace kvcodec::cpu {

struct seq_t {
  int threads() const noexcept { return 1; }
};

struct par_t {
  int n = 0;  ///< 0 = one thread per hardware thread
  par_t operator()(int threads) const noexcept { return par_t{threads}; }
  int threads() const noexcept {
    if (n > 0) return n;
    const unsigned h = std::thread::hardware_concurrency();
    return h ? static_cast<int>(h) : 1;
  }
};

inline constexpr seq_t seq{};
inline constexpr par_t par{};

template <class P>
concept cpu_policy = requires(const P& p) {
  { p.threads() } -> std::convertible_to<int>;
};

/// Like parallel_for, but f(i, w) also gets the index w in [0, workers(threads, n)) of the thread
/// running it: per-thread scratch (buffers reused from one index to the next) is indexed by w.
inline int workers(int threads, std::size_t n) noexcept {
  return static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(std::max(threads, 1)), std::max<std::size_t>(n, 1)));
}

template <class F>
void parallel_for_worker(int threads, std::size_t n, F&& f) {
  threads = workers(threads, n);
  if (threads <= 1) {
    for (std::size_t i = 0; i < n; ++i) f(i, 0);
    return;
  }
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr first;
  std::mutex m;
  auto work = [&](int w) {
    for (;;) {
      const std::size_t i = next.fetch_add(1);
      if (i >= n || failed.load()) return;
      try {
        f(i, w);
      } catch (...) {
        std::lock_guard<std::mutex> lock(m);
        if (!first) first = std::current_exception();
        failed = true;
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(threads - 1));
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& t : pool) t.join();
  if (first) std::rethrow_exception(first);
}

template <class F>
void parallel_for(int threads, std::size_t n, F&& f) {
  parallel_for_worker(threads, n, [&f](std::size_t i, int) { f(i); });
}

template <cpu_policy P, class F>
void parallel_for(const P& policy, std::size_t n, F&& f) {
  parallel_for(policy.threads(), n, std::forward<F>(f));
}

template <cpu_policy P, class F>
void parallel_for_worker(const P& policy, std::size_t n, F&& f) {
  parallel_for_worker(policy.threads(), n, std::forward<F>(f));
}

}  // namespace kvcodec::cpu
