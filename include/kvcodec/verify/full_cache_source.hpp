// kvcodec/verify/full_cache_source.hpp — where the verifier's full cache comes from, and its prefetch.
//
// Sources: memory (a resident kv_cache), file (a .kvc container decoded with kvcodec::decode, or a KV
// dump read with io::read_kv_dump; tokens [0, C) kept), and a simulated link (any source behind a
// wire of given bandwidth and latency: a fetch takes latency + bytes / bandwidth of wall time).
// VeriCache keeps the full cache out of accelerator memory and swaps it in for every verification,
// overlapping the swap with drafting; prefetcher runs one fetch on a background thread and measures
// the exposed part of it (time the session waits after drafting).
// Invariant: fetch() returns a validated cache of exactly context_tokens() tokens; prefetcher::wait()
// returns exactly what the started fetch returned (or rethrows its error).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "kvcodec/core/error.hpp"
#include "kvcodec/eval/model_eval.hpp"
#include "kvcodec/format/container.hpp"
#include "kvcodec/io/file.hpp"
#include "kvcodec/io/kv_dump.hpp"
#include "kvcodec/pipeline/encode.hpp"
#include "kvcodec/verify/hooks.hpp"

namespace kvcodec::verify {

class full_cache_source {
 public:
  virtual ~full_cache_source() = default;
  virtual full_cache_ptr fetch() = 0;
  virtual std::int64_t context_tokens() const = 0;
  /// Bytes one fetch moves (K+V elements x bytes_per_element of the serving dtype).
  virtual double bytes() const = 0;
  virtual std::string describe() const = 0;
};

namespace detail {
inline double cache_bytes(const kv_cache& c, double bytes_per_element) {
  return static_cast<double>(c.shape.kv_elements()) * bytes_per_element;
}
}  // namespace detail

/// A resident cache (tokens [0, C) of `c`).
class memory_source final : public full_cache_source {
 public:
  memory_source(const kv_cache& c, std::int64_t context_tokens, double bytes_per_element = 2.0)
      : cache_(std::make_shared<const kv_cache>(eval::slice_tokens(c, context_tokens))), bpe_(bytes_per_element) {}
  explicit memory_source(full_cache_ptr c, double bytes_per_element = 2.0) : cache_(std::move(c)), bpe_(bytes_per_element) {
    if (!cache_) throw_usage("memory_source: null cache");
    cache_->validate("memory_source");
  }
  full_cache_ptr fetch() override { return cache_; }
  std::int64_t context_tokens() const override { return cache_->shape.tokens; }
  double bytes() const override { return detail::cache_bytes(*cache_, bpe_); }
  std::string describe() const override { return "memory"; }

 private:
  full_cache_ptr cache_;
  double bpe_;
};

/// Reads a .kvc container or a KV dump on every fetch; tokens [0, C).
class file_source final : public full_cache_source {
 public:
  file_source(std::string path, std::int64_t context_tokens, double bytes_per_element = 2.0)
      : path_(std::move(path)), C_(context_tokens), bpe_(bytes_per_element) {
    const full_cache_ptr first = fetch();
    bytes_ = detail::cache_bytes(*first, bpe_);
  }
  full_cache_ptr fetch() override {
    const auto data = io::read_file(path_);
    kv_cache c;
    if (data.size() >= 8 && std::memcmp(data.data(), kvc_magic, 8) == 0)
      c = decode(cpu::par, data, decode_options{.name = path_});
    else
      c = io::read_kv_dump_bytes(data, path_, path_).cache;
    if (C_ < 1 || C_ > c.shape.tokens)
      throw_bad_input(path_, "context_tokens", "1.." + std::to_string(c.shape.tokens), std::to_string(C_));
    return std::make_shared<const kv_cache>(eval::slice_tokens(c, C_));
  }
  std::int64_t context_tokens() const override { return C_; }
  double bytes() const override { return bytes_; }
  std::string describe() const override { return "file " + path_; }

 private:
  std::string path_;
  std::int64_t C_;
  double bpe_, bytes_ = 0;
};

/// `inner` behind a link: a fetch completes no sooner than latency + bytes / bandwidth after it starts.
class link_source final : public full_cache_source {
 public:
  link_source(std::shared_ptr<full_cache_source> inner, double bandwidth_bytes_per_s, double latency_s)
      : inner_(std::move(inner)), bw_(bandwidth_bytes_per_s), lat_(latency_s) {
    if (!inner_) throw_usage("link_source: null inner source");
    if (!(bw_ > 0)) throw_usage("link_source: bandwidth must be > 0 bytes/s, got " + std::to_string(bw_));
    if (!(lat_ >= 0)) throw_usage("link_source: latency must be >= 0 s, got " + std::to_string(lat_));
  }
  full_cache_ptr fetch() override {
    const auto t0 = std::chrono::steady_clock::now();
    full_cache_ptr c = inner_->fetch();
    std::this_thread::sleep_until(t0 + std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(transfer_s())));
    return c;
  }
  double transfer_s() const { return lat_ + inner_->bytes() / bw_; }
  std::int64_t context_tokens() const override { return inner_->context_tokens(); }
  double bytes() const override { return inner_->bytes(); }
  std::string describe() const override {
    return "link " + std::to_string(bw_ / 1e9) + " GB/s + " + std::to_string(lat_ * 1e3) + " ms over " + inner_->describe();
  }

 private:
  std::shared_ptr<full_cache_source> inner_;
  double bw_, lat_;
};

/// One fetch in flight on a background thread.
class prefetcher {
 public:
  explicit prefetcher(full_cache_source& s) : src_(&s) {}
  prefetcher(const prefetcher&) = delete;
  prefetcher& operator=(const prefetcher&) = delete;
  ~prefetcher() {
    if (fut_.valid()) fut_.wait();
  }

  void start() {
    if (fut_.valid()) throw_usage("prefetcher: a fetch is already in flight");
    start_ = std::chrono::steady_clock::now();
    fut_ = std::async(std::launch::async, [this] {
      full_cache_ptr c = src_->fetch();
      done_ = std::chrono::steady_clock::now();
      return c;
    });
  }
  bool in_flight() const noexcept { return fut_.valid(); }

  /// The fetched cache; `exposed_s` = time spent waiting here, `fetch_s` = the fetch's own duration.
  full_cache_ptr wait(double& exposed_s, double& fetch_s) {
    if (!fut_.valid()) throw_usage("prefetcher: wait() without start()");
    const auto t0 = std::chrono::steady_clock::now();
    full_cache_ptr c = fut_.get();
    const auto t1 = std::chrono::steady_clock::now();
    exposed_s = std::chrono::duration<double>(t1 - t0).count();
    fetch_s = std::chrono::duration<double>(done_ - start_).count();
    if (!c || c->shape.tokens != src_->context_tokens())
      throw_usage("prefetcher: the source returned a cache of the wrong length");
    return c;
  }

 private:
  full_cache_source* src_;
  std::future<full_cache_ptr> fut_;
  std::chrono::steady_clock::time_point start_{}, done_{};
};

}  // namespace kvcodec::verify
