// kvcodec/io/file.hpp — whole-file reads with size limits, atomic writes, path helpers, little-endian
// load/store for the file readers (safetensors, .npy, .npz).
//
// Invariants: read_file never allocates more than the limit it is given (the size is checked before
// the buffer exists); write_file_atomic writes to a temporary file in the destination's directory and
// renames it over the target, so a reader never sees a half-written file, and it refuses to replace
// an existing file unless asked. Readers assume a little-endian host (checked at compile time).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "kvcodec/core/error.hpp"

namespace kvcodec::io {

static_assert(std::endian::native == std::endian::little, "kvcodec io assumes a little-endian host");

/// Default cap on a file read into memory (1 TiB): large enough for any real KV dump.
inline constexpr std::uint64_t default_max_file_bytes = std::uint64_t{1} << 40;

[[noreturn]] inline void throw_io(const std::string& what) { throw error(error_kind::io, what); }

/// Reads the whole regular file `path`; throws io when it cannot be opened or read, bad_input when it
/// is larger than `max_bytes` or not a regular file.
inline std::vector<std::uint8_t> read_file(const std::string& path, std::uint64_t max_bytes = default_max_file_bytes) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto st = fs::status(path, ec);
  if (ec || !fs::exists(st)) throw_io(path + ": cannot open: no such file");
  if (!fs::is_regular_file(st)) throw_bad_input(path, "file type", "a regular file", "not a regular file");
  const std::uintmax_t size = fs::file_size(path, ec);
  if (ec) throw_io(path + ": cannot read size: " + ec.message());
  if (size > max_bytes)
    throw_bad_input(path, "file size", "at most " + std::to_string(max_bytes) + " bytes", std::to_string(size) + " bytes");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_io(path + ": cannot open for reading");
  std::vector<std::uint8_t> buf(static_cast<std::size_t>(size));
  if (size > 0) in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(size));
  if (static_cast<std::uintmax_t>(in.gcount()) != size && size > 0)
    throw_io(path + ": short read: expected " + std::to_string(size) + " bytes, got " + std::to_string(in.gcount()));
  return buf;
}

/// True when `a` and `b` name the same existing file (std::filesystem::equivalent); false otherwise,
/// including when either does not exist.
inline bool same_file(const std::string& a, const std::string& b) noexcept {
  std::error_code ec;
  const bool eq = std::filesystem::equivalent(a, b, ec);
  return !ec && eq;
}

/// Lower-cased extension including the dot (".safetensors"), or "" when there is none.
inline std::string lower_extension(const std::string& path) {
  std::string e = std::filesystem::path(path).extension().string();
  for (auto& c : e) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return e;
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename. Throws usage
/// when `path` exists and `overwrite` is false (checked before and after writing), io on any failure;
/// the temporary file is removed on failure.
inline void write_file_atomic(const std::string& path, std::span<const std::uint8_t> bytes, bool overwrite) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto refuse = [&] {
    throw_usage(path + ": refusing to overwrite an existing file (ask for overwrite explicitly)");
  };
  if (!overwrite && fs::exists(fs::symlink_status(path, ec))) refuse();
  if (fs::is_directory(path, ec)) throw_usage(path + ": is a directory, expected a file path");
  std::random_device rd;
  const std::string tmp = path + ".tmp-" + std::to_string(rd()) + std::to_string(rd() & 0xffffu);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw_io(path + ": cannot create temporary file " + tmp);
    if (!bytes.empty()) out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      out.close();
      fs::remove(tmp, ec);
      throw_io(path + ": write failed (" + std::to_string(bytes.size()) + " bytes)");
    }
  }
  if (!overwrite && fs::exists(fs::symlink_status(path, ec))) {
    fs::remove(tmp, ec);
    refuse();
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    std::error_code ec2;
    fs::remove(tmp, ec2);
    throw_io(path + ": cannot rename temporary file into place: " + ec.message());
  }
}

// ---- little-endian helpers -------------------------------------------------------------------

inline std::uint16_t load_le16(const std::uint8_t* p) noexcept {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}
inline std::uint32_t load_le32(const std::uint8_t* p) noexcept {
  return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
         (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}
inline std::uint64_t load_le64(const std::uint8_t* p) noexcept {
  return static_cast<std::uint64_t>(load_le32(p)) | (static_cast<std::uint64_t>(load_le32(p + 4)) << 32);
}
inline void append_le16(std::vector<std::uint8_t>& out, std::uint16_t v) {
  out.push_back(static_cast<std::uint8_t>(v));
  out.push_back(static_cast<std::uint8_t>(v >> 8));
}
inline void append_le32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
inline void append_le64(std::vector<std::uint8_t>& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

/// The first `n` bytes as hex ("93 4e 55 ..."), for messages about unrecognised files.
inline std::string hex_prefix(std::span<const std::uint8_t> b, std::size_t n = 8) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < b.size() && i < n; ++i) {
    if (i) s += ' ';
    s += digits[b[i] >> 4];
    s += digits[b[i] & 15];
  }
  return s.empty() ? std::string("(empty)") : s;
}

}  // namespace kvcodec::io
