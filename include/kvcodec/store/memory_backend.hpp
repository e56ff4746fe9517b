// kvcodec/store/memory_backend.hpp — an in-process backend (`mem`, the tiered store's DRAM tier).
//
// Values live in this process's memory for as long as the backend or one of its clones does (clones
// share the storage: the store's fetch thread reads what the caller's thread wrote). put() is atomic
// (the map's value is replaced under a mutex by a whole new buffer); nothing survives the process.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "kvcodec/store/backend.hpp"

namespace kvcodec::store {

class memory_backend final : public backend {
  struct state {
    std::mutex m;
    std::map<std::string, std::shared_ptr<const byte_buffer>> values;
    std::map<std::string, std::set<std::string>> sets;
  };

 public:
  memory_backend() : s_(std::make_shared<state>()) {}
  std::string url() const override { return "mem"; }
  std::unique_ptr<backend> clone() const override { return std::unique_ptr<backend>(new memory_backend(s_)); }
  std::optional<byte_buffer> get(const std::string& key) override {
    std::shared_ptr<const byte_buffer> v;
    {
      std::lock_guard<std::mutex> l(s_->m);
      const auto it = s_->values.find(key);
      if (it == s_->values.end()) return std::nullopt;
      v = it->second;
    }
    return *v;  // copied outside the lock
  }
  void put(const std::string& key, std::span<const std::uint8_t> value) override {
    auto v = std::make_shared<const byte_buffer>(value.begin(), value.end());
    std::lock_guard<std::mutex> l(s_->m);
    s_->values[key] = std::move(v);
  }
  std::vector<bool> exists(const std::vector<std::string>& keys) override {
    std::lock_guard<std::mutex> l(s_->m);
    std::vector<bool> out;
    for (const auto& k : keys) out.push_back(s_->values.count(k) > 0);
    return out;
  }
  bool remove(const std::string& key) override {
    std::lock_guard<std::mutex> l(s_->m);
    return s_->values.erase(key) > 0;
  }
  std::vector<std::string> list(const std::string& prefix) override {
    std::lock_guard<std::mutex> l(s_->m);
    std::vector<std::string> out;
    for (auto it = s_->values.lower_bound(prefix); it != s_->values.end() && it->first.rfind(prefix, 0) == 0; ++it) out.push_back(it->first);
    return out;
  }
  void set_add(const std::string& key, const std::string& member) override {
    std::lock_guard<std::mutex> l(s_->m);
    s_->sets[key].insert(member);
  }
  std::vector<std::string> set_members(const std::string& key) override {
    std::lock_guard<std::mutex> l(s_->m);
    const auto it = s_->sets.find(key);
    if (it == s_->sets.end()) return {};
    return {it->second.begin(), it->second.end()};
  }
  /// Bytes of all values held (keys not counted).
  std::size_t value_bytes() const {
    std::lock_guard<std::mutex> l(s_->m);
    std::size_t n = 0;
    for (const auto& [k, v] : s_->values) n += v->size();
    return n;
  }

 private:
  explicit memory_backend(std::shared_ptr<state> s) : s_(std::move(s)) {}
  std::shared_ptr<state> s_;
};

}  // namespace kvcodec::store
