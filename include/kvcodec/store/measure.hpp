// kvcodec/store/measure.hpp — a tier's latency and bandwidth measured on its real backend, for the planner
// (`kvcodec store plan --measure URL`).
//
// latency: the median time of `latency_reps` GETs of a 64-byte value; get bandwidth: payload bytes over
// (best of `reps` GETs of a `payload`-byte value minus the latency); put bandwidth likewise with SETs. The
// values are random bytes under keys `kvc:v1:bench:<pid>-<n>`, removed afterwards (also when a step
// fails). An unreachable backend is the backend's io error.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/store/backend.hpp"

namespace kvcodec::store {

struct tier_measurement {
  std::string url;
  std::size_t payload_bytes = 0;
  double latency_s = 0;              ///< median small GET
  double get_bandwidth_bytes_s = 0;  ///< payload / (best GET - latency)
  double put_bandwidth_bytes_s = 0;  ///< payload / (best SET - latency)
  double best_get_s = 0, best_put_s = 0;
};

inline tier_measurement measure_backend(backend& b, std::size_t payload_bytes = 4u << 20, int reps = 5, int latency_reps = 31) {
  if (payload_bytes < 1) throw_usage("store measure: the payload must be at least 1 byte");
  if (reps < 1 || latency_reps < 1) throw_usage("store measure: repetitions must be >= 1");
  static std::atomic<int> counter{0};
  const std::string base = std::string("kvc:v1:bench:") + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  const std::string small_key = base + "-s", big_key = base + "-b";
  std::mt19937_64 rng(0x6b7663);
  byte_buffer small(64), big(payload_bytes);
  for (auto& x : small) x = static_cast<std::uint8_t>(rng());
  for (auto& x : big) x = static_cast<std::uint8_t>(rng());
  using clk = std::chrono::steady_clock;
  const auto secs = [](clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); };
  tier_measurement m;
  m.url = b.url();
  m.payload_bytes = payload_bytes;
  struct cleanup {
    backend& b;
    std::string a, c;
    ~cleanup() {
      try {
        b.remove(a);
        b.remove(c);
      } catch (...) {  // the backend failed already: its error is what the caller sees
      }
    }
  } clean{b, small_key, big_key};
  b.put(small_key, small);
  std::vector<double> lat;
  for (int i = 0; i < latency_reps; ++i) {
    const auto t0 = clk::now();
    const auto v = b.get(small_key);
    lat.push_back(secs(t0));
    if (!v || *v != small) throw error(error_kind::io, b.url() + ": store measure: the value read back is not the one written");
  }
  std::nth_element(lat.begin(), lat.begin() + static_cast<std::ptrdiff_t>(lat.size() / 2), lat.end());
  m.latency_s = lat[lat.size() / 2];
  m.best_put_s = m.best_get_s = 1e300;
  for (int i = 0; i < reps; ++i) {
    auto t0 = clk::now();
    b.put(big_key, big);
    m.best_put_s = std::min(m.best_put_s, secs(t0));
    t0 = clk::now();
    const auto v = b.get(big_key);
    m.best_get_s = std::min(m.best_get_s, secs(t0));
    if (!v || v->size() != big.size() || *v != big) throw error(error_kind::io, b.url() + ": store measure: the value read back is not the one written");
  }
  const auto bw = [&](double t) { return static_cast<double>(payload_bytes) / (t > 2 * m.latency_s ? t - m.latency_s : t); };
  m.get_bandwidth_bytes_s = bw(m.best_get_s);
  m.put_bandwidth_bytes_s = bw(m.best_put_s);
  return m;
}

}  // namespace kvcodec::store
