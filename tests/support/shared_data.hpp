// tests/support/shared_data.hpp — the one place tests find the real data beside the project
// (shared/kv/*.safetensors KV dumps, shared/models/...) and load a KV dump.
//
// Lookup order: env var KVCODEC_SHARED (when set it wins, even if it does not exist), else ../shared
// relative to the current directory, else /work/shared. Invariant: shared_dir() only returns a
// directory that exists; shared_dump() reads each file at most once per process (thread-safe cache)
// with kvcodec::io::read_kv_dump and returns nullptr when the file is absent, so a fresh clone
// without shared/ skips the real-data cases with a doctest MESSAGE instead of failing.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>

#include <doctest/doctest.h>

#include "kvcodec/io/kv_dump.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::test {

/// Declares that the running test case cannot test anything here (its data is absent) and ends with no
/// assertion on purpose: tests/test_main.cpp reports it as skipped instead of failing it for running no
/// assertion. Call it right before returning early, after a MESSAGE saying why.
void mark_skipped();

inline std::optional<std::filesystem::path> shared_dir() {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (const char* e = std::getenv("KVCODEC_SHARED"); e && *e) {
    if (fs::is_directory(e, ec)) return fs::path(e);
    return std::nullopt;
  }
  for (const char* p : {"../shared", "/work/shared"})
    if (fs::is_directory(p, ec)) return fs::path(p);
  return std::nullopt;
}

/// `<shared>/<relative>` when that file exists, else nullopt.
inline std::optional<std::filesystem::path> shared_file(const std::string& relative) {
  const auto dir = shared_dir();
  if (!dir) return std::nullopt;
  std::error_code ec;
  auto p = *dir / relative;
  if (!std::filesystem::exists(p, ec)) return std::nullopt;
  return p;
}

/// The KV dump `<shared>/kv/<file>`, read once per process; nullptr when absent.
inline const kv_cache* shared_dump(const std::string& file) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<const kv_cache>> cache;
  const auto path = shared_file("kv/" + file);
  if (!path) return nullptr;
  const std::string key = path->string();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end())
    it = cache.emplace(key, std::make_unique<const kv_cache>(io::read_kv_dump(key).cache)).first;
  return it->second.get();
}

}  // namespace kvcodec::test

/// Ends the current test case with a MESSAGE when the shared data it needs is absent.
#define KVCODEC_REQUIRE_SHARED(ptr)                                                      \
  do {                                                                                   \
    if (!(ptr)) {                                                                        \
      MESSAGE("shared data not found (set KVCODEC_SHARED): skipped");                   \
      ::kvcodec::test::mark_skipped();                                                   \
      return;                                                                            \
    }                                                                                    \
  } while (0)
