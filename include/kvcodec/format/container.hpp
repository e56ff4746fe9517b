// kvcodec/format/container.hpp — the .kvc container (specified in docs/FORMAT.md).
//
//   magic "\x89KVC\r\n\x1a\n" | u32 version | u32 header_len | u64 header_xxh3 | header JSON | payload
//
// The JSON header records the full codec spec, shape, dtype, metadata, token ids/positions, the
// stage-state blobs and the segment index (layer, token range, payload offset, size, xxh3-64).
// Segments are independently decodable (layer x token chunk, chunk-major order so a stream can be
// consumed as it arrives). parse_kvc() validates every size and count against the real byte count
// and fixed limits before anything is allocated; segment checksums are checked when decoded.
#pragma once

#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/format/bytes.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec {

inline constexpr std::uint8_t kvc_magic[8] = {0x89, 'K', 'V', 'C', '\r', '\n', 0x1a, '\n'};
inline constexpr std::uint32_t kvc_version = 1;
inline constexpr std::size_t kvc_prefix_size = 24;
inline constexpr std::uint64_t kvc_max_header = 64ull << 20;  ///< 64 MiB of JSON at most

inline std::uint64_t checksum64(std::span<const std::uint8_t> b) noexcept { return XXH3_64bits(b.data(), b.size()); }

struct segment_entry {
  std::int32_t layer = 0;
  std::int64_t t0 = 0, t1 = 0;
  std::uint64_t offset = 0, size = 0, checksum = 0;
};

struct state_entry {
  std::uint32_t stage = 0;  ///< index of the stage in the canonical spec
  std::uint64_t offset = 0, size = 0, checksum = 0;
};

struct kvc_header {
  std::uint32_t version = kvc_version;
  std::string codec;  ///< canonical full spec
  kv_shape shape;     ///< q_heads is informational: queries are not stored
  dtype source_dtype = dtype::f32;
  std::map<std::string, std::string> metadata;
  std::string layout;  ///< dump layout the cache came from (hint for decode's writer), may be empty
  bool sparse = false;  ///< segments carry kept-token masks
  std::int64_t chunk_tokens = 0;
  std::vector<std::int32_t> tokens, positions;
  std::vector<state_entry> states;
  std::vector<segment_entry> segments;
};

struct kvc_view {
  kvc_header header;
  std::span<const std::uint8_t> payload;
  std::size_t file_size = 0;
  std::string name;  ///< for error messages

  std::span<const std::uint8_t> segment_bytes(std::size_t i) const {
    const auto& s = header.segments[i];
    auto b = payload.subspan(static_cast<std::size_t>(s.offset), static_cast<std::size_t>(s.size));
    if (checksum64(b) != s.checksum)
      throw_corrupt(name, "checksum mismatch in segment " + std::to_string(i) + " (layer " + std::to_string(s.layer) +
                              ", tokens " + std::to_string(s.t0) + ".." + std::to_string(s.t1) + ")");
    return b;
  }
  std::span<const std::uint8_t> state_bytes(std::size_t i) const {
    const auto& s = header.states[i];
    auto b = payload.subspan(static_cast<std::size_t>(s.offset), static_cast<std::size_t>(s.size));
    if (checksum64(b) != s.checksum) throw_corrupt(name, "checksum mismatch in the state of stage " + std::to_string(s.stage));
    return b;
  }
};

/// Assembles a container; fills offsets, sizes and checksums of `h.states` / `h.segments` from blobs.
inline bytes write_kvc(kvc_header h, const std::vector<bytes>& state_blobs, const std::vector<bytes>& segment_blobs) {
  using nlohmann::json;
  std::uint64_t off = 0;
  for (std::size_t i = 0; i < h.states.size(); ++i) {
    h.states[i].offset = off;
    h.states[i].size = state_blobs[i].size();
    h.states[i].checksum = checksum64(state_blobs[i]);
    off += state_blobs[i].size();
  }
  for (std::size_t i = 0; i < h.segments.size(); ++i) {
    h.segments[i].offset = off;
    h.segments[i].size = segment_blobs[i].size();
    h.segments[i].checksum = checksum64(segment_blobs[i]);
    off += segment_blobs[i].size();
  }
  json j;
  j["format"] = "kvc";
  j["codec"] = h.codec;
  j["shape"] = {{"layers", h.shape.layers}, {"kv_heads", h.shape.kv_heads}, {"q_heads", h.shape.q_heads},
                {"head_dim", h.shape.head_dim}, {"tokens", h.shape.tokens}};
  j["dtype"] = std::string(dtype_name(h.source_dtype));
  j["metadata"] = h.metadata;
  j["layout"] = h.layout;
  j["sparse"] = h.sparse;
  j["chunk_tokens"] = h.chunk_tokens;
  j["tokens"] = h.tokens;
  j["positions"] = h.positions;
  json st = json::array();
  for (const auto& s : h.states) st.push_back({s.stage, s.offset, s.size, s.checksum});
  j["states"] = st;
  json seg = json::array();
  for (const auto& s : h.segments) seg.push_back({s.layer, s.t0, s.t1, s.offset, s.size, s.checksum});
  j["segments"] = seg;
  const std::string text = j.dump();

  bytes out;
  out.reserve(kvc_prefix_size + text.size() + off);
  byte_writer w(out);
  w.put_bytes(kvc_magic, 8);
  w.put<std::uint32_t>(h.version);
  w.put<std::uint32_t>(static_cast<std::uint32_t>(text.size()));
  w.put<std::uint64_t>(XXH3_64bits(text.data(), text.size()));
  w.put_bytes(text.data(), text.size());
  for (const auto& b : state_blobs) w.put_bytes(b.data(), b.size());
  for (const auto& b : segment_blobs) w.put_bytes(b.data(), b.size());
  return out;
}

namespace detail {
template <class T>
T json_field(const nlohmann::json& j, const char* key, const std::string& name) {
  if (!j.is_object() || !j.contains(key)) throw_corrupt(name, std::string("header field '") + key + "' is missing");
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw_corrupt(name, std::string("header field '") + key + "' has the wrong type (" + j.at(key).type_name() + ")");
  }
}
inline void check_range(std::int64_t v, std::int64_t lo, std::int64_t hi, const char* field, const std::string& name) {
  if (v < lo || v > hi)
    throw_corrupt(name, describe_mismatch("", std::string("header field '") + field + "'",
                                          std::to_string(lo) + ".." + std::to_string(hi), std::to_string(v)));
}
}  // namespace detail

struct kvc_limits {
  /// Largest decoded (f32) cache accepted, in bytes; guards against headers that claim terabytes.
  std::uint64_t max_decoded_bytes = 64ull << 30;
  /// Largest ratio of decoded f32 bytes to container bytes accepted.
  std::uint64_t max_expansion = 4096;
};

/// Parses and validates a container held in memory (the bytes must outlive the view).
inline kvc_view parse_kvc(std::span<const std::uint8_t> file, const std::string& name, const kvc_limits& lim = {}) {
  using nlohmann::json;
  kvc_view v;
  v.name = name;
  v.file_size = file.size();
  if (file.size() < kvc_prefix_size || std::memcmp(file.data(), kvc_magic, 8) != 0) {
    if (file.size() >= 8 && std::memcmp(file.data(), kvc_magic, 8) == 0)
      throw_corrupt(name, "truncated: " + std::to_string(file.size()) + " bytes, shorter than the 24-byte prefix");
    throw error(error_kind::bad_input, name + ": not a .kvc container (magic bytes do not match)");
  }
  byte_reader r(file, name);
  r.get_bytes(8, "magic");
  const auto version = r.get<std::uint32_t>("version");
  if (version != kvc_version)
    throw error(error_kind::bad_input, describe_mismatch(name, "version", std::to_string(kvc_version), std::to_string(version)));
  const auto hlen = r.get<std::uint32_t>("header_len");
  const auto hsum = r.get<std::uint64_t>("header_checksum");
  if (hlen > kvc_max_header || hlen > file.size() - kvc_prefix_size)
    throw_corrupt(name, "header length " + std::to_string(hlen) + " exceeds the " + std::to_string(file.size() - kvc_prefix_size) +
                            " bytes after the prefix (or the 64 MiB limit)");
  const auto text = r.get_bytes(hlen, "header");
  if (XXH3_64bits(text.data(), text.size()) != hsum) throw_corrupt(name, "header checksum mismatch");
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    throw_corrupt(name, std::string("header is not valid JSON: ") + e.what());
  }
  if (!j.is_object() || !j.contains("format") || j["format"] != "kvc") throw_corrupt(name, "header field 'format' is not \"kvc\"");
  auto& h = v.header;
  h.version = version;
  h.codec = detail::json_field<std::string>(j, "codec", name);
  const json shape = detail::json_field<json>(j, "shape", name);
  const auto layers = detail::json_field<std::int64_t>(shape, "layers", name);
  const auto kvh = detail::json_field<std::int64_t>(shape, "kv_heads", name);
  const auto qh = detail::json_field<std::int64_t>(shape, "q_heads", name);
  const auto hd = detail::json_field<std::int64_t>(shape, "head_dim", name);
  const auto tok = detail::json_field<std::int64_t>(shape, "tokens", name);
  detail::check_range(layers, 1, 1 << 16, "shape.layers", name);
  detail::check_range(kvh, 1, 1 << 16, "shape.kv_heads", name);
  detail::check_range(qh, 0, 1 << 16, "shape.q_heads", name);
  detail::check_range(hd, 1, 1 << 16, "shape.head_dim", name);
  detail::check_range(tok, 1, std::int64_t{1} << 31, "shape.tokens", name);
  h.shape = kv_shape{static_cast<std::int32_t>(layers), static_cast<std::int32_t>(kvh), static_cast<std::int32_t>(qh),
                     static_cast<std::int32_t>(hd), tok};
  // Decoded size check in 128-bit-safe steps (each factor <= 2^31).
  const long double decoded = 2.0L * layers * kvh * hd * static_cast<long double>(tok) * 4.0L;
  if (decoded > static_cast<long double>(lim.max_decoded_bytes) ||
      decoded > static_cast<long double>(lim.max_expansion) * static_cast<long double>(std::max<std::size_t>(file.size(), 256)))
    throw_corrupt(name, "header claims a cache of " + std::to_string(static_cast<unsigned long long>(decoded)) +
                            " decoded bytes from a " + std::to_string(file.size()) + "-byte file: implausible, refusing to allocate");
  const auto dt = parse_dtype(detail::json_field<std::string>(j, "dtype", name));
  if (!dt || (*dt != dtype::f32 && *dt != dtype::f16 && *dt != dtype::bf16)) throw_corrupt(name, "header field 'dtype' is not f32, f16 or bf16");
  h.source_dtype = *dt;
  h.metadata = detail::json_field<std::map<std::string, std::string>>(j, "metadata", name);
  h.layout = detail::json_field<std::string>(j, "layout", name);
  h.sparse = detail::json_field<bool>(j, "sparse", name);
  h.chunk_tokens = detail::json_field<std::int64_t>(j, "chunk_tokens", name);
  detail::check_range(h.chunk_tokens, 1, std::int64_t{1} << 31, "chunk_tokens", name);
  h.tokens = detail::json_field<std::vector<std::int32_t>>(j, "tokens", name);
  h.positions = detail::json_field<std::vector<std::int32_t>>(j, "positions", name);
  if (!h.tokens.empty() && static_cast<std::int64_t>(h.tokens.size()) != tok)
    throw_corrupt(name, describe_mismatch("", "tokens", std::to_string(tok) + " ids", std::to_string(h.tokens.size())));
  if (!h.positions.empty() && static_cast<std::int64_t>(h.positions.size()) != tok)
    throw_corrupt(name, describe_mismatch("", "positions", std::to_string(tok) + " entries", std::to_string(h.positions.size())));

  const std::uint64_t payload_size = file.size() - kvc_prefix_size - hlen;
  v.payload = file.subspan(kvc_prefix_size + hlen);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> extents;
  auto check_extent = [&](std::uint64_t off, std::uint64_t size, const std::string& what) {
    if (off > payload_size || size > payload_size - off)
      throw_corrupt(name, what + " at offset " + std::to_string(off) + " size " + std::to_string(size) +
                              " lies outside the " + std::to_string(payload_size) + "-byte payload");
    extents.emplace_back(off, size);
  };
  const json states = detail::json_field<json>(j, "states", name);
  const json segs = detail::json_field<json>(j, "segments", name);
  if (!states.is_array() || !segs.is_array()) throw_corrupt(name, "header fields 'states' and 'segments' must be arrays");
  try {
    for (const auto& s : states) {
      state_entry e{s.at(0).get<std::uint32_t>(), s.at(1).get<std::uint64_t>(), s.at(2).get<std::uint64_t>(), s.at(3).get<std::uint64_t>()};
      if (e.stage > 64) throw_corrupt(name, "state entry names stage " + std::to_string(e.stage));
      check_extent(e.offset, e.size, "state of stage " + std::to_string(e.stage));
      h.states.push_back(e);
    }
    const std::int64_t chunks = (tok + h.chunk_tokens - 1) / h.chunk_tokens;
    const long double expected_segments = static_cast<long double>(chunks) * layers;
    if (static_cast<long double>(segs.size()) != expected_segments)
      throw_corrupt(name, "segment index has " + std::to_string(segs.size()) + " entries, the shape needs " +
                              std::to_string(static_cast<unsigned long long>(expected_segments)));
    std::vector<std::uint8_t> seen(static_cast<std::size_t>(expected_segments), 0);
    for (const auto& s : segs) {
      segment_entry e{s.at(0).get<std::int32_t>(), s.at(1).get<std::int64_t>(), s.at(2).get<std::int64_t>(),
                      s.at(3).get<std::uint64_t>(), s.at(4).get<std::uint64_t>(), s.at(5).get<std::uint64_t>()};
      if (e.layer < 0 || e.layer >= layers || e.t0 < 0 || e.t0 % h.chunk_tokens != 0 || e.t1 != std::min(tok, e.t0 + h.chunk_tokens))
        throw_corrupt(name, "segment (layer " + std::to_string(e.layer) + ", tokens " + std::to_string(e.t0) + ".." + std::to_string(e.t1) +
                                ") does not fit the shape and chunk size");
      auto& flag = seen[static_cast<std::size_t>(e.t0 / h.chunk_tokens * layers + e.layer)];
      if (flag) throw_corrupt(name, "segment (layer " + std::to_string(e.layer) + ", tokens from " + std::to_string(e.t0) + ") appears twice");
      flag = 1;
      check_extent(e.offset, e.size, "segment (layer " + std::to_string(e.layer) + ", tokens from " + std::to_string(e.t0) + ")");
      h.segments.push_back(e);
    }
  } catch (const nlohmann::json::exception& e) {
    throw_corrupt(name, std::string("malformed segment or state index: ") + e.what());
  }
  std::sort(extents.begin(), extents.end());
  std::uint64_t end = 0;
  for (const auto& [off, size] : extents) {
    if (off < end) throw_corrupt(name, "overlapping segments in the index");
    end = off + size;
  }
  if (end != payload_size)
    throw_corrupt(name, "payload is " + std::to_string(payload_size) + " bytes but the index accounts for " + std::to_string(end) +
                            (end < payload_size ? " (trailing bytes)" : ""));
  return v;
}

}  // namespace kvcodec
