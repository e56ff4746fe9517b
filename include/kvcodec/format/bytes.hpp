// kvcodec/format/bytes.hpp — bounds-checked little-endian byte writer/reader with LEB128 varints, and
// appending little-endian values to a byte vector (the loads and stores themselves: core/endian.hpp).
//
// Every read checks the remaining length first and throws kvcodec::error(corrupt) naming the stream
// and the field, so a truncated or lying stream can never read out of bounds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/error.hpp"

namespace kvcodec {

using bytes = std::vector<std::uint8_t>;

namespace detail {
/// Appends v little-endian (core/endian.hpp) to out.
template <class T>
inline void append_le(bytes& out, T v) {
  const std::size_t n = out.size();
  out.resize(n + sizeof(T));
  store_le(out.data() + n, v);
}
inline void append_le16(bytes& out, std::uint16_t v) { append_le(out, v); }
inline void append_le32(bytes& out, std::uint32_t v) { append_le(out, v); }
inline void append_le64(bytes& out, std::uint64_t v) { append_le(out, v); }
}  // namespace detail

class byte_writer {
 public:
  explicit byte_writer(bytes& out) : out_(&out) {}
  template <class T>
  void put(T v) {
    detail::append_le(*out_, v);
  }
  void put_varint(std::uint64_t v) {
    while (v >= 0x80) {
      out_->push_back(static_cast<std::uint8_t>(v | 0x80));
      v >>= 7;
    }
    out_->push_back(static_cast<std::uint8_t>(v));
  }
  void put_bytes(const void* p, std::size_t n) {
    if (n == 0) return;
    const std::size_t s = out_->size();
    out_->resize(s + n);
    std::memcpy(out_->data() + s, p, n);
  }
  /// A varint length followed by the bytes.
  void put_blob(std::span<const std::uint8_t> b) {
    put_varint(b.size());
    put_bytes(b.data(), b.size());
  }
  std::size_t size() const { return out_->size(); }

 private:
  bytes* out_;
};

class byte_reader {
 public:
  byte_reader(std::span<const std::uint8_t> in, std::string what) : in_(in), what_(std::move(what)) {}
  template <class T>
  T get(const char* field) {
    need(sizeof(T), field);
    const T v = detail::load_le<T>(in_.data() + pos_);
    pos_ += sizeof(T);
    return v;
  }
  std::uint64_t get_varint(const char* field) {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      need(1, field);
      const std::uint8_t b = in_[pos_++];
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    throw_corrupt(what_, std::string("varint '") + field + "' longer than 10 bytes");
  }
  /// A varint that must be <= limit (guards allocations sized by stream contents).
  std::uint64_t get_varint_max(const char* field, std::uint64_t limit) {
    const std::uint64_t v = get_varint(field);
    if (v > limit)
      throw_corrupt(what_, std::string("field '") + field + "': expected at most " + std::to_string(limit) +
                               ", found " + std::to_string(v));
    return v;
  }
  std::span<const std::uint8_t> get_bytes(std::size_t n, const char* field) {
    need(n, field);
    auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  std::span<const std::uint8_t> get_blob(const char* field) {
    const std::uint64_t n = get_varint(field);
    if (n > remaining())
      throw_corrupt(what_, std::string("field '") + field + "': length " + std::to_string(n) + " exceeds the " +
                               std::to_string(remaining()) + " bytes left");
    return get_bytes(static_cast<std::size_t>(n), field);
  }
  std::size_t remaining() const { return in_.size() - pos_; }
  std::size_t position() const { return pos_; }
  const std::string& what() const { return what_; }
  void expect_end() const {
    if (pos_ != in_.size())
      throw_corrupt(what_, std::to_string(in_.size() - pos_) + " unexpected trailing bytes");
  }

 private:
  void need(std::size_t n, const char* field) const {
    if (n > in_.size() - pos_)
      throw_corrupt(what_, std::string("truncated at field '") + field + "': need " + std::to_string(n) +
                               " bytes, " + std::to_string(in_.size() - pos_) + " left");
  }
  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
  std::string what_;
};

}  // namespace kvcodec
