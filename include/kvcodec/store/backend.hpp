// kvcodec/store/backend.hpp — the key-value interface every store backend implements.
//
// A backend maps string keys to byte values. The store relies on four guarantees, which every
// backend documents how it keeps:
//  - put() is atomic: a reader sees the old value, no value, or the whole new value, never part of it
//    (file: a temporary file renamed into place; Redis: one SET);
//  - get() returns exactly the bytes stored (the store checks them again: container checksums);
//  - a failure (server down, timeout, disk error) throws kvcodec::error of kind io naming the backend,
//    the operation and the key; it never returns a value that was not stored;
//  - set_add()/set_members() keep a small set of strings under one key (the specs stored per model).
// Backends are not thread-safe: the store gives each thread of a get/put its own backend
// (clone()), so a fetch can run while another thread decodes.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"

namespace kvcodec::store {

using byte_buffer = std::vector<std::uint8_t>;

[[noreturn]] inline void throw_store_io(const std::string& what) { throw error(error_kind::io, what); }

class backend {
 public:
  virtual ~backend() = default;
  /// The URL the backend was opened with (for messages).
  virtual std::string url() const = 0;
  /// A new backend on the same storage with its own connection(s).
  virtual std::unique_ptr<backend> clone() const = 0;
  /// The value of `key`, or nullopt when there is none.
  virtual std::optional<byte_buffer> get(const std::string& key) = 0;
  /// Stores `value` under `key` atomically, replacing any value.
  virtual void put(const std::string& key, std::span<const std::uint8_t> value) = 0;
  /// Whether each key has a value (one answer per key, in order).
  virtual std::vector<bool> exists(const std::vector<std::string>& keys) = 0;
  /// Removes `key`; true when it had a value.
  virtual bool remove(const std::string& key) = 0;
  /// Every key starting with `prefix` (order unspecified).
  virtual std::vector<std::string> list(const std::string& prefix) = 0;
  /// Adds `member` to the set under `key`.
  virtual void set_add(const std::string& key, const std::string& member) = 0;
  /// The members of the set under `key` (empty when there is none).
  virtual std::vector<std::string> set_members(const std::string& key) = 0;
  /// Makes every write so far durable as configured (Redis: WAIT for the replicas asked for; file:
  /// writes are already fsynced). Throws when the durability asked for was not reached.
  virtual void sync() {}
};

/// A backend that passes every call to another: derive and override what a wrapper changes (the tiered
/// store records the sizes a put writes; the tests count calls and inject failures).
class forwarding_backend : public backend {
 public:
  explicit forwarding_backend(std::unique_ptr<backend> b) : b_(std::move(b)) {}
  std::string url() const override { return b_->url(); }
  std::optional<byte_buffer> get(const std::string& k) override { return b_->get(k); }
  void put(const std::string& k, std::span<const std::uint8_t> v) override { b_->put(k, v); }
  std::vector<bool> exists(const std::vector<std::string>& k) override { return b_->exists(k); }
  bool remove(const std::string& k) override { return b_->remove(k); }
  std::vector<std::string> list(const std::string& p) override { return b_->list(p); }
  void set_add(const std::string& k, const std::string& m) override { b_->set_add(k, m); }
  std::vector<std::string> set_members(const std::string& k) override { return b_->set_members(k); }
  void sync() override { b_->sync(); }

 protected:
  backend& inner() const { return *b_; }

 private:
  std::unique_ptr<backend> b_;
};

}  // namespace kvcodec::store
