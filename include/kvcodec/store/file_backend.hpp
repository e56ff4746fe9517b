// kvcodec/store/file_backend.hpp — the embedded backend: one file per key in a local directory.
//
// `file://DIR`: key "a:b:c" is the file DIR/a/b/c (each ':'-separated component one path level;
// components are [A-Za-z0-9._-], not "." or ".."). A value is written to a temporary file beside its
// final name, fsynced and renamed into place (io::atomic_output), so a reader opens either the old
// file or the complete new one, and a writer killed mid-put leaves only a temporary file, which
// list() ignores. A set is a directory with one file per member (named by the member's hash, holding
// the member). Several processes may share a directory.
#pragma once

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "kvcodec/format/hash.hpp"
#include "kvcodec/io/file.hpp"
#include "kvcodec/store/backend.hpp"

namespace kvcodec::store {

class file_backend final : public backend {
 public:
  explicit file_backend(std::string dir) : dir_(std::move(dir)) {
    namespace fs = std::filesystem;
    if (dir_.empty()) throw_usage("file:// store: empty directory (expected file://DIR)");
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (!fs::is_directory(dir_, ec)) throw_store_io("file://" + dir_ + ": cannot create or open the store directory" + (ec ? ": " + ec.message() : ""));
  }
  std::string url() const override { return "file://" + dir_; }
  std::unique_ptr<backend> clone() const override { return std::make_unique<file_backend>(dir_); }

  std::optional<byte_buffer> get(const std::string& key) override {
    const std::string p = path_of(key);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(p, ec)) return std::nullopt;
    try {
      return io::read_file(p);
    } catch (const error& e) {
      // Removed between the check and the read: no value.
      if (!std::filesystem::exists(p, ec)) return std::nullopt;
      throw_store_io(url() + ": get '" + key + "': " + e.what());
    }
  }
  void put(const std::string& key, std::span<const std::uint8_t> value) override {
    const std::string p = path_of(key);
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(p).parent_path(), ec);
    if (ec) throw_store_io(url() + ": put '" + key + "': cannot create " + std::filesystem::path(p).parent_path().string() + ": " + ec.message());
    try {
      io::write_file_atomic(p, value, /*overwrite=*/true);
    } catch (const error& e) {
      throw_store_io(url() + ": put '" + key + "': " + e.what());
    }
  }
  std::vector<bool> exists(const std::vector<std::string>& keys) override {
    std::vector<bool> r;
    r.reserve(keys.size());
    for (const auto& k : keys) {
      std::error_code ec;
      r.push_back(std::filesystem::is_regular_file(path_of(k), ec));
    }
    return r;
  }
  bool remove(const std::string& key) override {
    std::error_code ec;
    const bool had = std::filesystem::remove(path_of(key), ec);
    if (ec) throw_store_io(url() + ": remove '" + key + "': " + ec.message());
    return had;
  }
  std::vector<std::string> list(const std::string& prefix) override {
    namespace fs = std::filesystem;
    std::vector<std::string> out;
    std::error_code ec;
    // Start at the deepest directory the prefix names completely.
    std::string start_key;
    fs::path start = dir_;
    const auto colon = prefix.rfind(':');
    if (colon != std::string::npos) {
      start_key = prefix.substr(0, colon + 1);
      for (const auto& c : split(prefix.substr(0, colon))) {
        if (!valid_component(c)) return out;
        start /= c;
      }
    }
    if (!fs::is_directory(start, ec)) return out;
    for (auto it = fs::recursive_directory_iterator(start, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (!it->is_regular_file(ec)) continue;
      const std::string name = it->path().filename().string();
      if (name.find(".tmp-") != std::string::npos) continue;  // a put in progress (or killed)
      std::string key = start_key;
      const fs::path rel = fs::relative(it->path(), start, ec);
      bool first = true;
      for (const auto& c : rel) {
        key += (first ? "" : ":") + c.string();
        first = false;
      }
      if (key.compare(0, prefix.size(), prefix) == 0) out.push_back(std::move(key));
    }
    if (ec) throw_store_io(url() + ": list '" + prefix + "': " + ec.message());
    return out;
  }
  void set_add(const std::string& key, const std::string& member) override {
    const std::string p = path_of(key) + "/" + member_name(member);
    std::error_code ec;
    if (std::filesystem::is_regular_file(p, ec)) return;
    std::filesystem::create_directories(path_of(key), ec);
    if (ec) throw_store_io(url() + ": set_add '" + key + "': " + ec.message());
    try {
      io::write_file_atomic(p, std::span(reinterpret_cast<const std::uint8_t*>(member.data()), member.size()), /*overwrite=*/true);
    } catch (const error& e) {
      throw_store_io(url() + ": set_add '" + key + "': " + e.what());
    }
  }
  std::vector<std::string> set_members(const std::string& key) override {
    namespace fs = std::filesystem;
    std::vector<std::string> out;
    std::error_code ec;
    const std::string d = path_of(key);
    if (!fs::is_directory(d, ec)) return out;
    for (auto it = fs::directory_iterator(d, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (name.find(".tmp-") != std::string::npos || !it->is_regular_file(ec)) continue;
      try {
        const auto b = io::read_file(it->path().string(), 1 << 20);
        out.emplace_back(b.begin(), b.end());
      } catch (const error&) {
        // removed meanwhile
      }
    }
    return out;
  }

  const std::string& dir() const noexcept { return dir_; }

 private:
  static std::vector<std::string> split(const std::string& key) {
    std::vector<std::string> parts;
    std::size_t at = 0;
    while (true) {
      const auto c = key.find(':', at);
      parts.push_back(key.substr(at, c == std::string::npos ? std::string::npos : c - at));
      if (c == std::string::npos) break;
      at = c + 1;
    }
    return parts;
  }
  static bool valid_component(const std::string& c) {
    if (c.empty() || c == "." || c == ".." || c.find(".tmp-") != std::string::npos) return false;
    for (char ch : c)
      if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '_' || ch == '-')) return false;
    return true;
  }
  std::string path_of(const std::string& key) const {
    std::string p = dir_;
    for (const auto& c : split(key)) {
      if (!valid_component(c))
        throw_bad_input(url(), "key '" + key + "'", "':'-separated components of [A-Za-z0-9._-] (not '.', '..' or '.tmp-')", "'" + c + "'");
      p += "/" + c;
    }
    return p;
  }
  static std::string member_name(const std::string& member) {
    char b[17];
    std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(xxh3_64(member.data(), member.size())));
    return b;
  }
  std::string dir_;
};

}  // namespace kvcodec::store
