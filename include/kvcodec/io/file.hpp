// kvcodec/io/file.hpp — whole-file reads with size limits, atomic writes, path helpers, little-endian
// load/store for the file readers (safetensors, .npy, .npz).
//
// Invariants: read_file never allocates more than the limit it is given (the size is checked before
// the buffer exists); write_file_atomic writes to a temporary file in the destination's directory,
// fsyncs it and renames it over the target, so a reader never sees a half-written file; it refuses
// to replace an existing file unless asked (atomically: never a file created meanwhile), keeps the
// permissions of a file it replaces, and removes its temporary file on failure and on SIGINT/SIGTERM.
// POSIX only (open/fsync/renameat2). Readers assume a little-endian host (checked at compile time).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
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

namespace detail {

// ---- temporary files removed on SIGINT / SIGTERM ---------------------------------------------
// A fixed table of slots (no allocation, no locks: the signal handler only reads it). A slot is
// free (0), being filled (1) or holds a temporary path (2). The handler unlinks every registered
// path, restores the default action and re-raises, so the process still dies of the signal.

inline constexpr std::size_t temp_slots = 32;
inline constexpr std::size_t temp_path_max = 4096;
inline std::atomic<int> temp_state[temp_slots];
inline char temp_path[temp_slots][temp_path_max];
inline std::atomic<bool> temp_handlers_installed{false};

extern "C" inline void unlink_temps_and_reraise(int sig) {
  const int saved = errno;
  for (std::size_t i = 0; i < temp_slots; ++i)
    if (temp_state[i].load(std::memory_order_acquire) == 2) ::unlink(temp_path[i]);
  errno = saved;
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

/// Installs the handler for SIGINT and SIGTERM, once, and only where the disposition is the default
/// (a program that handles or ignores these signals keeps its own choice).
inline void install_temp_handlers() {
  if (temp_handlers_installed.exchange(true)) return;
  for (const int sig : {SIGINT, SIGTERM}) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) != 0 || old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO)) continue;
    struct sigaction sa {};
    sa.sa_handler = unlink_temps_and_reraise;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGINT);
    sigaddset(&sa.sa_mask, SIGTERM);
    sa.sa_flags = SA_RESETHAND;
    ::sigaction(sig, &sa, nullptr);
  }
}

/// Registers `path` for removal on SIGINT/SIGTERM while it exists; unregisters on destruction.
/// Paths too long for a slot, or beyond the 32 concurrent writes the table holds, are not registered
/// (they are still removed on every failure the writer sees).
class temp_registration {
 public:
  explicit temp_registration(const std::string& path) {
    install_temp_handlers();
    if (path.size() >= temp_path_max) return;
    for (std::size_t i = 0; i < temp_slots; ++i) {
      int expected = 0;
      if (temp_state[i].compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
        std::memcpy(temp_path[i], path.c_str(), path.size() + 1);
        temp_state[i].store(2, std::memory_order_release);
        slot_ = static_cast<int>(i);
        return;
      }
    }
  }
  temp_registration(const temp_registration&) = delete;
  temp_registration& operator=(const temp_registration&) = delete;
  ~temp_registration() {
    if (slot_ >= 0) temp_state[static_cast<std::size_t>(slot_)].store(0, std::memory_order_release);
  }

 private:
  int slot_ = -1;
};

/// write(2) all of `n` bytes, retrying on EINTR and short writes; false with errno set on failure.
inline bool write_all(int fd, const std::uint8_t* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<std::size_t>(n, std::size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

inline std::string errno_text(int e) { return std::error_code(e, std::generic_category()).message(); }

/// fsync of the directory holding `path`, so a completed rename survives a crash. Best effort: some
/// file systems refuse fsync on directories (EINVAL), which loses nothing the rename did not.
inline void fsync_parent_dir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return;
  ::fsync(dfd);
  ::close(dfd);
}

/// Moves `tmp` to `path` only if `path` does not exist (atomically): renameat2(RENAME_NOREPLACE), or
/// where the file system lacks it link() + unlink(). Returns 0, or the errno of the failure (EEXIST:
/// a file appeared at `path`).
inline int rename_noreplace(const std::string& tmp, const std::string& path) {
#if defined(RENAME_NOREPLACE)
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP && errno != EOPNOTSUPP) return errno;
#endif
  if (::link(tmp.c_str(), path.c_str()) == 0) {
    ::unlink(tmp.c_str());
    return 0;
  }
  return errno;
}

}  // namespace detail

/// An output file written through a temporary file in the same directory: write()/pwrite() pieces,
/// then commit() moves it into place. Throws usage when `path` exists and `overwrite` is false, io on
/// any failure. Guarantees:
///  - a reader never sees a half-written file: the data goes to `path.tmp-N`, is fsynced, then
///    renamed into place (and the directory fsynced);
///  - without `overwrite`, the final step never replaces a file, even one created while writing
///    (renameat2(RENAME_NOREPLACE), or link() + unlink() where the file system lacks it);
///  - with `overwrite`, the new file keeps the permission bits of the file it replaces (a 0600 file
///    stays 0600); a new file gets 0666 minus the umask;
///  - the temporary file is removed on every failure, when the object dies uncommitted, and on
///    SIGINT/SIGTERM (detail::temp_registration: the handler unlinks it, then the signal's default
///    action runs).
class atomic_output {
 public:
  atomic_output(std::string path, bool overwrite) : path_(std::move(path)), overwrite_(overwrite) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!overwrite_ && fs::exists(fs::symlink_status(path_, ec))) refuse();
    if (fs::is_directory(path_, ec)) throw_usage(path_ + ": is a directory, expected a file path");
    struct stat old_st {};
    const bool replacing = overwrite_ && ::stat(path_.c_str(), &old_st) == 0 && S_ISREG(old_st.st_mode);
    std::random_device rd;
    tmp_ = path_ + ".tmp-" + std::to_string(rd()) + std::to_string(rd() & 0xffffu);
    reg_.emplace(tmp_);  // before the file exists: a signal after open() finds it registered
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ < 0) throw_io(path_ + ": cannot create temporary file " + tmp_ + ": " + detail::errno_text(errno));
    if (replacing && ::fchmod(fd_, old_st.st_mode & 07777) != 0) fail("cannot copy the permissions of the file it replaces", errno);
  }
  atomic_output(const atomic_output&) = delete;
  atomic_output& operator=(const atomic_output&) = delete;
  ~atomic_output() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  /// Appends at the current end.
  void write(std::span<const std::uint8_t> b) { pwrite(end_, b); }
  /// Writes at `offset` (the file grows as needed).
  void pwrite(std::uint64_t offset, std::span<const std::uint8_t> b) {
    std::size_t done = 0;
    while (done < b.size()) {
      const ssize_t n = ::pwrite(fd_, b.data() + done, b.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("write failed at offset " + std::to_string(offset + done), n < 0 ? errno : EIO);
      done += static_cast<std::size_t>(n);
    }
    end_ = std::max<std::uint64_t>(end_, offset + b.size());
  }
  /// Sets the file's size (unwritten bytes read as zeros).
  void resize(std::uint64_t n) {
    if (::ftruncate(fd_, static_cast<off_t>(n)) != 0) fail("cannot size the output to " + std::to_string(n) + " bytes", errno);
    end_ = n;
  }
  /// Makes the data durable and moves the file into place.
  void commit() {
    if (::fsync(fd_) != 0) fail("fsync failed", errno);
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail("close failed", errno);
    if (overwrite_) {
      if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail("cannot rename temporary file into place", errno);
    } else {
      const int e = detail::rename_noreplace(tmp_, path_);
      if (e == EEXIST) {
        ::unlink(tmp_.c_str());
        refuse();
      }
      if (e != 0) fail("cannot move temporary file into place", e);
    }
    committed_ = true;
    detail::fsync_parent_dir(path_);
  }
  const std::string& path() const noexcept { return path_; }

 private:
  [[noreturn]] void refuse() const { throw_usage(path_ + ": refusing to overwrite an existing file (ask for overwrite explicitly)"); }
  [[noreturn]] void fail(const std::string& what, int e) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    ::unlink(tmp_.c_str());
    throw_io(path_ + ": " + what + ": " + detail::errno_text(e));
  }
  std::string path_, tmp_;
  bool overwrite_ = false, committed_ = false;
  int fd_ = -1;
  std::uint64_t end_ = 0;
  std::optional<detail::temp_registration> reg_;
};

/// Writes `bytes` to `path` atomically (atomic_output's guarantees).
inline void write_file_atomic(const std::string& path, std::span<const std::uint8_t> bytes, bool overwrite) {
  atomic_output out(path, overwrite);
  out.write(bytes);
  out.commit();
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
