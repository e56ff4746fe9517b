// kvcodec/store/open.hpp — a backend from a connection URL.
//
//   file://DIR                               local directory (relative or absolute path)
//   redis://HOST:PORT[?OPTIONS]              one Redis server
//   redis-cluster://HOST:PORT,HOST:PORT,...[?OPTIONS]   a Redis Cluster (any reachable nodes as seeds)
// OPTIONS are `&`-separated NAME=INTEGER pairs overriding redis_options: connect_timeout_ms,
// timeout_ms, retries, retry_delay_ms, wait (replicas sync() waits for), wait_timeout_ms, get_piece_kb
// (redis:// only: GETRANGE piece size of large values, 0 = one GET).
#pragma once

#include <memory>
#include <string>

#include "kvcodec/store/backend.hpp"
#include "kvcodec/store/file_backend.hpp"
#include "kvcodec/store/redis.hpp"
#include "kvcodec/store/redis_cluster.hpp"

namespace kvcodec::store {

/// Applies "a=1&b=2" to `o`; throws usage naming the URL and the option.
inline void parse_redis_options(const std::string& query, redis_options& o, const std::string& url) {
  std::size_t at = 0;
  while (at < query.size()) {
    auto amp = query.find('&', at);
    if (amp == std::string::npos) amp = query.size();
    const std::string kv = query.substr(at, amp - at);
    at = amp + 1;
    if (kv.empty()) continue;
    const auto eq = kv.find('=');
    if (eq == std::string::npos) throw_usage(url + ": option '" + kv + "': expected NAME=INTEGER");
    const std::string name = kv.substr(0, eq), val = kv.substr(eq + 1);
    int v = 0;
    try {
      std::size_t used = 0;
      v = std::stoi(val, &used);
      if (used != val.size() || v < 0) throw std::invalid_argument("bad");
    } catch (const std::exception&) {
      throw_usage(url + ": option '" + name + "': expected a non-negative integer, found '" + val + "'");
    }
    if (name == "connect_timeout_ms") o.connect_timeout_ms = std::max(v, 1);
    else if (name == "timeout_ms") o.timeout_ms = std::max(v, 1);
    else if (name == "retries") o.retries = v;
    else if (name == "retry_delay_ms") o.retry_delay_ms = v;
    else if (name == "wait") o.wait_replicas = v;
    else if (name == "wait_timeout_ms") o.wait_timeout_ms = v;
    else if (name == "get_piece_kb") o.get_piece_kb = v;
    else
      throw_usage(url + ": unknown option '" + name + "' (known: connect_timeout_ms, timeout_ms, retries, retry_delay_ms, wait, wait_timeout_ms, get_piece_kb)");
  }
}

/// Opens the backend a URL names (connecting to Redis now: an unreachable server is an io error).
inline std::unique_ptr<backend> open_backend(const std::string& url, redis_options o = {}) {
  const auto starts = [&](const char* p) { return url.rfind(p, 0) == 0; };
  if (starts("file://")) return std::make_unique<file_backend>(url.substr(7));
  const bool cluster = starts("redis-cluster://");
  if (cluster || starts("redis://")) {
    std::string rest = url.substr(cluster ? 16 : 8);
    const auto q = rest.find('?');
    if (q != std::string::npos) {
      parse_redis_options(rest.substr(q + 1), o, url);
      rest.resize(q);
    }
    while (!rest.empty() && rest.back() == '/') rest.pop_back();
    if (!cluster) {
      const auto [h, p] = parse_host_port(rest, url);
      return std::make_unique<redis_backend>(h, p, o);
    }
    std::vector<std::string> seeds;
    std::size_t at = 0;
    while (at <= rest.size()) {
      auto c = rest.find(',', at);
      if (c == std::string::npos) c = rest.size();
      if (c > at) seeds.push_back(rest.substr(at, c - at));
      at = c + 1;
    }
    return std::make_unique<redis_cluster_backend>(std::move(seeds), o);
  }
  throw_usage("store URL '" + url + "': expected file://DIR, redis://HOST:PORT or redis-cluster://HOST:PORT,...");
}

}  // namespace kvcodec::store
