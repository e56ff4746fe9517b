// kvcodec/store/redis_cluster.hpp — Redis Cluster backend (`redis-cluster://HOST:PORT,HOST:PORT,...`).
//
// Keys live in 16384 hash slots (CRC16-XMODEM of the key, or of its {hash tag}, mod 16384); the
// client learns which master serves each slot with CLUSTER SLOTS (from any reachable seed or known
// node) and sends each key's command to that master. The store's keys carry no hash tag, so the chunks
// of one context spread over all masters. Redirects are followed as the cluster specification says:
// `MOVED slot host:port` (the slot has moved for good: the map is updated and reloaded) and
// `ASK slot host:port` (the slot is being migrated: this one command goes to the target preceded by
// ASKING); TRYAGAIN (a multi-key operation during migration) is retried after a pause. A master that
// cannot be reached makes the slot map reload once; if the slot still has no reachable master the
// operation throws io naming the node and the slot. Per-key reads are therefore either the stored value,
// "no value", or an error — never another key's value.
#pragma once

#include <array>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "kvcodec/store/redis.hpp"

namespace kvcodec::store {

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), the cluster's key hash.
inline std::uint16_t crc16_xmodem(std::string_view s) noexcept {
  std::uint16_t crc = 0;
  for (unsigned char ch : s) {
    crc = static_cast<std::uint16_t>(crc ^ (static_cast<std::uint16_t>(ch) << 8));
    for (int i = 0; i < 8; ++i) crc = static_cast<std::uint16_t>((crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1);
  }
  return crc;
}

inline constexpr int cluster_slots = 16384;

/// The hash slot of a key (hash tags honoured as in the cluster specification).
inline int key_slot(std::string_view key) noexcept {
  const auto open = key.find('{');
  if (open != std::string_view::npos) {
    const auto close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
  }
  return crc16_xmodem(key) % cluster_slots;
}

/// "host:port" -> (host, port); throws usage naming `where`.
inline std::pair<std::string, int> parse_host_port(const std::string& s, const std::string& where) {
  const auto c = s.rfind(':');
  if (c == std::string::npos || c == 0 || c + 1 == s.size()) throw_usage(where + ": expected HOST:PORT, found '" + s + "'");
  int port = 0;
  try {
    std::size_t used = 0;
    port = std::stoi(s.substr(c + 1), &used);
    if (used != s.size() - c - 1) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    throw_usage(where + ": port of '" + s + "' is not a number");
  }
  if (port <= 0 || port > 65535) throw_usage(where + ": port of '" + s + "' is not within 1..65535");
  return {s.substr(0, c), port};
}

class redis_cluster_backend final : public backend {
 public:
  redis_cluster_backend(std::vector<std::string> seeds, redis_options o = {}) : seeds_(std::move(seeds)), o_(o) {
    if (seeds_.empty()) throw_usage("redis-cluster://: no HOST:PORT given");
    for (const auto& s : seeds_) parse_host_port(s, "redis-cluster://");
    slot_.fill(-1);
    refresh();
  }
  std::string url() const override {
    std::string u = "redis-cluster://";
    for (std::size_t i = 0; i < seeds_.size(); ++i) u += (i ? "," : "") + seeds_[i];
    return u;
  }
  std::unique_ptr<backend> clone() const override { return std::make_unique<redis_cluster_backend>(seeds_, o_); }

  /// Values over two pieces are read in GETRANGE pieces (redis_get_in_pieces) on the master the slot map
  /// names; if that fails (a slot moving: MOVED/ASK abort the MULTI; a master gone), one GET through
  /// keyed() follows the redirects, reloads the map or reports the node.
  std::optional<byte_buffer> get(const std::string& key) override {
    if (o_.get_piece_kb > 0) {
      const int n = node_for(key_slot(key));
      if (n >= 0) {
        try {
          auto v = redis_get_in_pieces(conn(nodes_[static_cast<std::size_t>(n)]), key, o_.get_piece_kb);
          last_node_ = nodes_[static_cast<std::size_t>(n)];
          ++piece_gets_;
          return v;
        } catch (const error&) {
        }
      }
    }
    auto r = keyed(key, {"GET", key}, "GET '" + key + "'");
    expect_reply(r.get(), {REDIS_REPLY_STRING, REDIS_REPLY_NIL}, last_node_, "GET '" + key + "'");
    if (r->type == REDIS_REPLY_NIL) return std::nullopt;
    return byte_buffer(reinterpret_cast<const std::uint8_t*>(r->str), reinterpret_cast<const std::uint8_t*>(r->str) + r->len);
  }
  void put(const std::string& key, std::span<const std::uint8_t> value) override {
    auto r = keyed(key, {"SET", key, std::string_view(reinterpret_cast<const char*>(value.data()), value.size())}, "SET '" + key + "'");
    expect_reply(r.get(), {REDIS_REPLY_STATUS}, last_node_, "SET '" + key + "'");
    written_.insert(last_node_);
  }
  std::vector<bool> exists(const std::vector<std::string>& keys) override {
    // One pipeline per master; keys whose slot answers with a redirect are asked again one by one.
    std::vector<bool> out(keys.size(), false);
    std::map<int, std::vector<std::size_t>> by_node;
    for (std::size_t i = 0; i < keys.size(); ++i) by_node[node_for(key_slot(keys[i]))].push_back(i);
    std::vector<std::size_t> again;
    for (const auto& [node, idx] : by_node) {
      if (node < 0) {
        again.insert(again.end(), idx.begin(), idx.end());
        continue;
      }
      std::vector<redis_conn::command> cmds;
      for (auto i : idx) cmds.push_back({"EXISTS", keys[i]});
      std::vector<reply_ptr> rs;
      try {
        rs = conn(nodes_[static_cast<std::size_t>(node)]).run(cmds, "EXISTS (" + std::to_string(idx.size()) + " keys)");
      } catch (const error&) {
        again.insert(again.end(), idx.begin(), idx.end());  // keyed() reloads the map or reports the node
        continue;
      }
      for (std::size_t j = 0; j < idx.size(); ++j) {
        if (rs[j]->type == REDIS_REPLY_INTEGER) out[idx[j]] = rs[j]->integer > 0;
        else again.push_back(idx[j]);
      }
    }
    for (auto i : again) {
      auto r = keyed(keys[i], {"EXISTS", keys[i]}, "EXISTS '" + keys[i] + "'");
      expect_reply(r.get(), {REDIS_REPLY_INTEGER}, last_node_, "EXISTS '" + keys[i] + "'");
      out[i] = r->integer > 0;
    }
    return out;
  }
  bool remove(const std::string& key) override {
    auto r = keyed(key, {"DEL", key}, "DEL '" + key + "'");
    expect_reply(r.get(), {REDIS_REPLY_INTEGER}, last_node_, "DEL '" + key + "'");
    return r->integer > 0;
  }
  std::vector<std::string> list(const std::string& prefix) override {
    std::set<int> masters;
    for (int s = 0; s < cluster_slots; ++s)
      if (slot_[static_cast<std::size_t>(s)] >= 0) masters.insert(slot_[static_cast<std::size_t>(s)]);
    std::vector<std::string> out;
    for (int m : masters) scan_prefix(conn(nodes_[static_cast<std::size_t>(m)]), prefix, out);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());  // a key being migrated can be on two nodes
    return out;
  }
  void set_add(const std::string& key, const std::string& member) override {
    auto r = keyed(key, {"SADD", key, member}, "SADD '" + key + "'");
    expect_reply(r.get(), {REDIS_REPLY_INTEGER}, last_node_, "SADD '" + key + "'");
    written_.insert(last_node_);
  }
  std::vector<std::string> set_members(const std::string& key) override {
    auto r = keyed(key, {"SMEMBERS", key}, "SMEMBERS '" + key + "'");
    expect_reply(r.get(), {REDIS_REPLY_ARRAY}, last_node_, "SMEMBERS '" + key + "'");
    std::vector<std::string> out;
    for (std::size_t i = 0; i < r->elements; ++i) out.push_back(reply_text(r->element[i]));
    return out;
  }
  void sync() override {
    for (const auto& n : written_) wait_replicas(conn(n), o_.wait_replicas, o_.wait_timeout_ms);
    written_.clear();
  }

  /// The master serving `key` now ("host:port"; reloads the map when the slot is unknown).
  std::string node_of(const std::string& key) {
    const int n = node_for(key_slot(key));
    return n < 0 ? std::string() : nodes_[static_cast<std::size_t>(n)];
  }
  /// Redirects followed so far (MOVED, ASK), for tests and stats.
  std::size_t moved_seen() const noexcept { return moved_; }
  std::size_t ask_seen() const noexcept { return ask_; }
  /// get() calls answered by the GETRANGE-pieces path (the rest went through one GET and keyed()).
  std::size_t piece_gets() const noexcept { return piece_gets_; }

 private:
  int node_index(const std::string& hp) {
    for (std::size_t i = 0; i < nodes_.size(); ++i)
      if (nodes_[i] == hp) return static_cast<int>(i);
    nodes_.push_back(hp);
    return static_cast<int>(nodes_.size() - 1);
  }
  redis_conn& conn(const std::string& hp) {
    auto it = conns_.find(hp);
    if (it == conns_.end()) {
      const auto [h, p] = parse_host_port(hp, url());
      it = conns_.emplace(hp, std::make_unique<redis_conn>(h, p, o_)).first;
    }
    return *it->second;
  }
  int node_for(int slot) {
    if (slot_[static_cast<std::size_t>(slot)] < 0) refresh();
    return slot_[static_cast<std::size_t>(slot)];
  }
  /// Reloads the slot map from the first node (seeds first, then nodes seen) that answers CLUSTER SLOTS.
  void refresh() {
    std::vector<std::string> cands = seeds_;
    for (const auto& n : nodes_)
      if (std::find(cands.begin(), cands.end(), n) == cands.end()) cands.push_back(n);
    std::string why;
    for (const auto& cand : cands) {
      reply_ptr r;
      try {
        r = conn(cand).run1({"CLUSTER", "SLOTS"}, "CLUSTER SLOTS");
      } catch (const error& e) {
        why += std::string(why.empty() ? "" : "; ") + e.what();
        continue;
      }
      if (!r || r->type != REDIS_REPLY_ARRAY) {
        why += std::string(why.empty() ? "" : "; ") + cand + ": CLUSTER SLOTS: " + (r ? reply_text(r.get()) : "no reply");
        continue;
      }
      const std::string cand_host = parse_host_port(cand, url()).first;
      std::array<int, cluster_slots> map;
      map.fill(-1);
      for (std::size_t i = 0; i < r->elements; ++i) {
        const redisReply* e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2) continue;
        const redisReply* m = e->element[2];
        std::string host = reply_text(m->element[0]);
        if (host.empty() || host == "?") host = cand_host;  // "the node we asked" (cluster-preferred-endpoint-type unknown-endpoint)
        const int idx = node_index(host + ":" + std::to_string(m->element[1]->integer));
        for (long long s = e->element[0]->integer; s <= e->element[1]->integer && s < cluster_slots; ++s)
          if (s >= 0) map[static_cast<std::size_t>(s)] = idx;
      }
      slot_ = map;
      return;
    }
    throw_store_io(url() + ": no node answered CLUSTER SLOTS: " + why);
  }
  /// Runs a single-key command on the slot's master, following MOVED/ASK/TRYAGAIN.
  reply_ptr keyed(const std::string& key, redis_conn::command cmd, const std::string& what) {
    const int slot = key_slot(key);
    std::string target;  // set by a redirect
    bool asking = false, reloaded = false;
    for (int hop = 0; hop < 16; ++hop) {
      if (target.empty()) {
        const int n = node_for(slot);
        if (n < 0) throw_store_io(url() + ": " + what + ": slot " + std::to_string(slot) + " is served by no master (cluster down?)");
        target = nodes_[static_cast<std::size_t>(n)];
      }
      reply_ptr r;
      try {
        if (asking) {
          auto rs = conn(target).run({{"ASKING"}, cmd}, what);
          r = std::move(rs[1]);
        } else {
          r = conn(target).run1(cmd, what);
        }
      } catch (const error& e) {
        if (reloaded) throw_store_io(url() + ": " + what + " (slot " + std::to_string(slot) + "): " + e.what());
        // The master may have been replaced (failover) or the slot moved: reload once and retry.
        reloaded = true;
        refresh();
        target.clear();
        asking = false;
        continue;
      }
      last_node_ = target;
      if (r->type != REDIS_REPLY_ERROR) return r;
      const std::string err = reply_text(r.get());
      if (err.rfind("MOVED ", 0) == 0 || err.rfind("ASK ", 0) == 0) {
        const bool ask = err[0] == 'A';
        const auto sp = err.rfind(' ');
        const std::string hp = err.substr(sp + 1);
        parse_host_port(hp, url() + ": " + what + ": redirect '" + err + "'");
        if (ask) {
          ++ask_;
          asking = true;
          target = hp;
        } else {
          ++moved_;
          asking = false;
          slot_[static_cast<std::size_t>(slot)] = node_index(hp);
          target = hp;
        }
        continue;
      }
      if (err.rfind("TRYAGAIN", 0) == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(o_.retry_delay_ms));
        continue;
      }
      return r;  // CLUSTERDOWN, WRONGTYPE...: the caller's expect_reply names it
    }
    throw_store_io(url() + ": " + what + ": more than 16 redirects for slot " + std::to_string(slot));
  }

  std::vector<std::string> seeds_;
  redis_options o_;
  std::vector<std::string> nodes_;  ///< "host:port" of every master seen
  std::array<int, cluster_slots> slot_{};
  std::map<std::string, std::unique_ptr<redis_conn>> conns_;
  std::set<std::string> written_;
  std::string last_node_;
  std::size_t moved_ = 0, ask_ = 0, piece_gets_ = 0;
};

}  // namespace kvcodec::store
