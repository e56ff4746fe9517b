// kvcodec/core/endian.hpp — little-endian loads and stores of integers and floats at any alignment,
// host and device: every byte order kvcodec writes (containers, stage side data, block formats, rANS
// states) goes through these.
//
// load_le<T> / store_le<T> take any trivially copyable T of 1, 2, 4 or 8 bytes (memcpy, so alignment
// and aliasing are free, plus a byte swap on a big-endian host); load_le16 ... store_le64 name the
// unsigned ones. On a little-endian host each is one plain load or store.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvcodec/core/config.hpp"

namespace kvcodec::detail {

template <std::size_t N> struct le_word;
template <> struct le_word<1> { using type = std::uint8_t; };
template <> struct le_word<2> { using type = std::uint16_t; };
template <> struct le_word<4> { using type = std::uint32_t; };
template <> struct le_word<8> { using type = std::uint64_t; };

/// Reverses the bytes of an unsigned word.
template <class U>
KVCODEC_HD inline U byte_reverse(U v) noexcept {
  U r = 0;
  for (std::size_t i = 0; i < sizeof(U); ++i) r = static_cast<U>((r << 8) | ((v >> (8 * i)) & 0xffu));
  return r;
}

/// The T stored little-endian at p.
template <class T>
KVCODEC_HD inline T load_le(const std::uint8_t* p) noexcept {
  static_assert(std::is_trivially_copyable_v<T>, "load_le: T must be trivially copyable");
  using U = typename le_word<sizeof(T)>::type;
  U u;
  std::memcpy(&u, p, sizeof u);
  if constexpr (std::endian::native == std::endian::big) u = byte_reverse(u);
  T v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

/// Stores v little-endian at p (sizeof(T) bytes).
template <class T>
KVCODEC_HD inline void store_le(std::uint8_t* p, T v) noexcept {
  static_assert(std::is_trivially_copyable_v<T>, "store_le: T must be trivially copyable");
  using U = typename le_word<sizeof(T)>::type;
  U u;
  std::memcpy(&u, &v, sizeof u);
  if constexpr (std::endian::native == std::endian::big) u = byte_reverse(u);
  std::memcpy(p, &u, sizeof u);
}

KVCODEC_HD inline std::uint16_t load_le16(const std::uint8_t* p) noexcept { return load_le<std::uint16_t>(p); }
KVCODEC_HD inline std::uint32_t load_le32(const std::uint8_t* p) noexcept { return load_le<std::uint32_t>(p); }
KVCODEC_HD inline std::uint64_t load_le64(const std::uint8_t* p) noexcept { return load_le<std::uint64_t>(p); }
KVCODEC_HD inline void store_le16(std::uint8_t* p, std::uint16_t v) noexcept { store_le(p, v); }
KVCODEC_HD inline void store_le32(std::uint8_t* p, std::uint32_t v) noexcept { store_le(p, v); }
KVCODEC_HD inline void store_le64(std::uint8_t* p, std::uint64_t v) noexcept { store_le(p, v); }

}  // namespace kvcodec::detail
