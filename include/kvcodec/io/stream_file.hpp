// kvcodec/io/stream_file.hpp — files read and written piece by piece: a read-only mapping, a buffered
// byte_sink over an atomic_output (io/file.hpp),
// and random access to a .kvc container (header, index and only the segments asked for, by pread).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/format/container.hpp"
#include "kvcodec/io/file.hpp"

namespace kvcodec::io {

/// A regular file open for reading: its size and exact-length positional reads (thread-safe).
class input_file {
 public:
  explicit input_file(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw_io(path + ": cannot open for reading: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw_io(path + ": not a regular file");
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
  }
  input_file(const input_file&) = delete;
  input_file& operator=(const input_file&) = delete;
  ~input_file() { ::close(fd_); }
  int fd() const noexcept { return fd_; }
  std::uint64_t size() const noexcept { return size_; }
  const std::string& path() const noexcept { return path_; }
  /// Reads exactly out.size() bytes at `off`; a file that ends first is a corrupt error naming `what`.
  void read_at(std::uint64_t off, std::span<std::uint8_t> out, const char* what) const {
    std::size_t done = 0;
    while (done < out.size()) {
      const ssize_t n = ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(off + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw_io(path_ + ": read failed at offset " + std::to_string(off + done) + ": " + std::strerror(errno));
      if (n == 0) throw_corrupt(path_, std::string("truncated while reading the ") + what);
      done += static_cast<std::size_t>(n);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

/// A whole file mapped read-only (empty files map to an empty span).
class mapped_file {
 public:
  explicit mapped_file(const std::string& path) : file_(path), size_(static_cast<std::size_t>(file_.size())) {
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, file_.fd(), 0);
      if (p == MAP_FAILED) throw_io(path + ": cannot map: " + std::strerror(errno));
      data_ = static_cast<const std::uint8_t*>(p);
    }
  }
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file() {
    if (data_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
  }
  std::span<const std::uint8_t> bytes() const noexcept { return {data_, size_}; }
  const std::string& path() const noexcept { return file_.path(); }
  /// The same file for positional reads (a mapping faults whole large folios in; pread does not).
  const input_file& file() const noexcept { return file_; }

 private:
  input_file file_;
  std::size_t size_ = 0;
  const std::uint8_t* data_ = nullptr;
};

/// A byte_sink appending to an atomic_output through a 4 MiB buffer.
class file_sink final : public byte_sink {
 public:
  explicit file_sink(atomic_output& out) : out_(&out) { buf_.reserve(cap); }
  void write(std::span<const std::uint8_t> b) override {
    if (buf_.size() + b.size() > cap) flush();
    if (b.size() >= cap) {
      out_->write(b);
      return;
    }
    buf_.insert(buf_.end(), b.begin(), b.end());
  }
  void flush() {
    if (!buf_.empty()) out_->write(buf_);
    buf_.clear();
  }

 private:
  static constexpr std::size_t cap = std::size_t{4} << 20;
  atomic_output* out_;
  bytes buf_;
};

/// Random access to a .kvc file: reads the prefix, header, stage state and index (version 2: from
/// the footer at the end; version 1: from the header), then only the segments asked for.
class kvc_file {
 public:
  explicit kvc_file(const std::string& path, const kvc_limits& lim = {}) : file_(path), path_(path), size_(file_.size()) { open_(lim); }
  kvc_file(const kvc_file&) = delete;
  kvc_file& operator=(const kvc_file&) = delete;
  const kvc_header& header() const noexcept { return h_; }
  const std::string& path() const noexcept { return path_; }
  std::uint64_t size() const noexcept { return size_; }
  std::span<const std::uint8_t> state_bytes(std::size_t i) const { return states_[i]; }
  /// Reads segment i into `buf` and checks it; returns its bytes.
  std::span<const std::uint8_t> read_segment(std::size_t i, bytes& buf) const {
    const auto& e = h_.segments[i];
    buf.resize(static_cast<std::size_t>(e.size));
    read_at(base_ + e.offset, buf, "segment");
    verify_segment(h_, e, buf, path_);
    return buf;
  }
  /// Bytes read from the file so far (header, index and segments).
  std::uint64_t bytes_read() const noexcept { return read_.load(); }

 private:
  void read_at(std::uint64_t off, std::span<std::uint8_t> out, const char* what) const {
    file_.read_at(off, out, what);
    read_ += out.size();
  }
  bytes read_bytes(std::uint64_t off, std::uint64_t n, const char* what) const {
    bytes b(static_cast<std::size_t>(n));
    read_at(off, b, what);
    return b;
  }
  void open_(const kvc_limits& lim) {
    const bytes pre = read_bytes(0, std::min<std::uint64_t>(size_, kvc_prefix_size), "prefix");
    std::uint32_t version = 0, hlen = 0;
    std::uint64_t hsum = 0;
    kvcodec::detail::parse_prefix(pre, size_, path_, version, hlen, hsum);
    const bytes text = read_bytes(kvc_prefix_size, hlen, "header");
    if (kvc_check_sums && xxh3_64(text.data(), text.size()) != hsum) throw_corrupt(path_, "header checksum mismatch");
    h_.version = version;
    h_.header_checksum = hsum;
    const nlohmann::json j = kvcodec::detail::parse_header_json(text, h_, size_, path_, lim);
    const std::uint64_t data_start = kvc_prefix_size + hlen;
    if (version == 1) {
      base_ = data_start;
      kvcodec::detail::parse_index_v1(j, h_, size_ - data_start, path_);
    } else {
      kvcodec::detail::parse_states_v2(j, h_, data_start, size_, path_);
      const std::uint64_t seg_start = h_.states.empty() ? data_start : h_.states.back().offset + h_.states.back().size;
      if (size_ < seg_start + kvc_footer_size) throw_corrupt(path_, "truncated: no room for the segment index after the header and state");
      const bytes foot = read_bytes(size_ - kvc_footer_size, kvc_footer_size, "footer");
      const auto [io, n] = kvcodec::detail::parse_footer(foot, size_, seg_start, h_.segment_count(), path_);
      const bytes idx = read_bytes(io, n * kvc_index_entry_size, "segment index");
      kvcodec::detail::parse_index_v2(idx, foot, h_, seg_start, io, path_);
    }
    for (const auto& s : h_.states) {
      states_.push_back(read_bytes(base_ + s.offset, s.size, "stage state"));
      if (kvc_check_sums && checksum64(states_.back()) != s.checksum) throw_corrupt(path_, "checksum mismatch in the state of stage " + std::to_string(s.stage));
    }
  }

  input_file file_;
  std::string path_;
  std::uint64_t size_ = 0, base_ = 0;
  mutable std::atomic<std::uint64_t> read_{0};
  kvc_header h_;
  std::vector<bytes> states_;
};

}  // namespace kvcodec::io
