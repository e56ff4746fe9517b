// kvcodec/format/container.hpp — the .kvc container (specified in docs/FORMAT.md).
//
// Version 2 (written), streamable front to back and randomly accessible from the back:
//
//   prefix   magic "\x89KVC\r\n\x1a\n" | u32 version | u32 header_len | u64 header_xxh3
//   header   JSON: codec spec, shape, dtype, metadata, token ids/positions, state sizes/checksums
//   states   the stage-state blobs, back to back
//   records  per segment: 40-byte record header (tag, layer, t0, t1, size, checksum) + its bytes,
//            chunk-major (all layers of chunk 0, then chunk 1, ...)
//   index    per segment 48 bytes (layer, t0, t1, offset, size, checksum)
//   footer   u64 index_offset | u64 count | u64 index_xxh3 | "KVCINDEX"
//
// A segment's checksum is XXH3-64 of its bytes seeded with the header checksum, its layer and token
// range, so a segment cannot be moved to another place, another file or another codec unnoticed.
// Version 1 files (segment index inside the JSON header) are still read.
//
// Everything a reader sizes from the file is checked against the bytes that back it and fixed limits
// before it is allocated; JSON integers must be integers in range.
#pragma once


#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/format/bytes.hpp"
#include "kvcodec/format/hash.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec {

inline constexpr std::uint8_t kvc_magic[8] = {0x89, 'K', 'V', 'C', '\r', '\n', 0x1a, '\n'};
inline constexpr std::uint8_t kvc_index_magic[8] = {'K', 'V', 'C', 'I', 'N', 'D', 'E', 'X'};
inline constexpr std::uint32_t kvc_version = 2;  ///< written; 1 and 2 are read
inline constexpr std::size_t kvc_prefix_size = 24;
inline constexpr std::size_t kvc_record_size = 40;  ///< v2 segment record header
inline constexpr std::size_t kvc_index_entry_size = 48;
inline constexpr std::size_t kvc_footer_size = 32;
inline constexpr std::uint32_t kvc_record_tag = 0x4745534bu;  ///< "KSEG" little-endian
inline constexpr std::uint64_t kvc_max_header = 64ull << 20;  ///< 64 MiB of JSON at most

inline std::uint64_t checksum64(std::span<const std::uint8_t> b) noexcept { return xxh3_64(b.data(), b.size()); }

/// Fuzz builds (KVCODEC_FUZZ_NO_CHECKSUM) skip every checksum comparison so that mutated bytes reach
/// the structure checks and the stage decoders; every other check stays.
#ifdef KVCODEC_FUZZ_NO_CHECKSUM
inline constexpr bool kvc_check_sums = false;
#else
inline constexpr bool kvc_check_sums = true;
#endif

/// v2 segment checksum: bound to the header (codec, shape, ...), the layer and the token range.
inline std::uint64_t segment_checksum(std::uint64_t header_sum, std::int32_t layer, std::int64_t t0, std::int64_t t1,
                                      std::span<const std::uint8_t> b) noexcept {
  std::uint64_t key[4] = {header_sum, static_cast<std::uint64_t>(static_cast<std::uint32_t>(layer)), static_cast<std::uint64_t>(t0),
                          static_cast<std::uint64_t>(t1)};
  return xxh3_64(b.data(), b.size(), xxh3_64(key, sizeof key));
}

struct segment_entry {
  std::int32_t layer = 0;
  std::int64_t t0 = 0, t1 = 0;
  std::uint64_t offset = 0, size = 0, checksum = 0;  ///< offset: of the segment's bytes, from the start of `kvc_view::payload`
};

struct state_entry {
  std::uint32_t stage = 0;  ///< index of the stage in the canonical spec
  std::uint64_t offset = 0, size = 0, checksum = 0;
};

struct kvc_header {
  std::uint32_t version = kvc_version;
  std::uint64_t header_checksum = 0;  ///< XXH3-64 of the JSON text (seeds v2 segment checksums)
  std::string codec;  ///< canonical full spec
  kv_shape shape;     ///< q_heads is informational: queries are not stored
  dtype source_dtype = dtype::f32;
  std::map<std::string, std::string> metadata;
  std::string layout;  ///< dump layout the cache came from (hint for decode's writer), may be empty
  bool sparse = false;  ///< segments carry kept-token masks
  std::int64_t chunk_tokens = 0;
  std::vector<std::int32_t> tokens, positions;
  std::vector<state_entry> states;
  std::vector<segment_entry> segments;  ///< in chunk-major order (segment i = chunk i / layers, layer i % layers)

  std::int64_t chunks() const noexcept { return chunk_tokens > 0 ? (shape.tokens + chunk_tokens - 1) / chunk_tokens : 0; }
  std::size_t segment_count() const noexcept { return static_cast<std::size_t>(chunks()) * static_cast<std::size_t>(shape.layers); }
  /// Chunk-major index of the segment (layer, chunk starting at t0).
  std::size_t segment_index(std::int32_t layer, std::int64_t t0) const noexcept {
    return static_cast<std::size_t>(t0 / chunk_tokens) * static_cast<std::size_t>(shape.layers) + static_cast<std::size_t>(layer);
  }
};

struct kvc_limits {
  /// Largest decoded (f32) cache accepted, in bytes; guards against headers that claim terabytes.
  std::uint64_t max_decoded_bytes = 64ull << 30;
  /// Largest ratio of decoded f32 bytes to container bytes accepted.
  std::uint64_t max_expansion = 4096;
};

/// Checks a segment's bytes against its entry (v1: plain XXH3; v2: bound to header, layer and range).
inline void verify_segment(const kvc_header& h, const segment_entry& s, std::span<const std::uint8_t> b, const std::string& name) {
  const std::uint64_t sum = h.version >= 2 ? segment_checksum(h.header_checksum, s.layer, s.t0, s.t1, b) : checksum64(b);
  if (kvc_check_sums && sum != s.checksum)
    throw_corrupt(name, "checksum mismatch in segment (layer " + std::to_string(s.layer) + ", tokens " + std::to_string(s.t0) + ".." +
                            std::to_string(s.t1) + ")");
}

struct kvc_view {
  kvc_header header;
  std::span<const std::uint8_t> payload;
  std::size_t file_size = 0;
  std::string name;  ///< for error messages

  std::span<const std::uint8_t> segment_bytes(std::size_t i) const {
    const auto& s = header.segments[i];
    auto b = payload.subspan(static_cast<std::size_t>(s.offset), static_cast<std::size_t>(s.size));
    verify_segment(header, s, b, name);
    return b;
  }
  std::span<const std::uint8_t> state_bytes(std::size_t i) const {
    const auto& s = header.states[i];
    auto b = payload.subspan(static_cast<std::size_t>(s.offset), static_cast<std::size_t>(s.size));
    if (kvc_check_sums && checksum64(b) != s.checksum) throw_corrupt(name, "checksum mismatch in the state of stage " + std::to_string(s.stage));
    return b;
  }
};

// ---- writing ------------------------------------------------------------------------------------

/// Where an encoder's bytes go, in order (a file, memory, a socket...).
class byte_sink {
 public:
  virtual ~byte_sink() = default;
  virtual void write(std::span<const std::uint8_t> b) = 0;
};

/// Appends to a byte vector.
class memory_sink final : public byte_sink {
 public:
  explicit memory_sink(bytes& out) : out_(&out) {}
  void write(std::span<const std::uint8_t> b) override { out_->insert(out_->end(), b.begin(), b.end()); }

 private:
  bytes* out_;
};

/// Hands every piece to a callback (e.g. a socket or a store connector).
class callback_sink final : public byte_sink {
 public:
  explicit callback_sink(std::function<void(std::span<const std::uint8_t>)> f) : f_(std::move(f)) {}
  void write(std::span<const std::uint8_t> b) override { f_(b); }

 private:
  std::function<void(std::span<const std::uint8_t>)> f_;
};

namespace detail {
inline std::string header_json_v2(const kvc_header& h) {
  using nlohmann::json;
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
  for (const auto& s : h.states) st.push_back({s.stage, s.size, s.checksum});
  j["states"] = st;
  j["segments"] = h.segment_count();
  return j.dump();
}
}  // namespace detail

/// Streams a version-2 container into a sink: the constructor writes prefix, header and stage state;
/// add_segment() writes one record (chunk-major order); finish() writes the index and footer.
class kvc_writer {
 public:
  /// `h.states[i].stage` must be set; sizes and checksums are filled from `state_blobs`.
  kvc_writer(byte_sink& sink, kvc_header h, const std::vector<bytes>& state_blobs) : sink_(&sink), h_(std::move(h)) {
    h_.version = kvc_version;
    for (std::size_t i = 0; i < h_.states.size(); ++i) {
      h_.states[i].size = state_blobs[i].size();
      h_.states[i].checksum = checksum64(state_blobs[i]);
    }
    const std::string text = detail::header_json_v2(h_);
    h_.header_checksum = xxh3_64(text.data(), text.size());
    std::uint8_t pre[kvc_prefix_size];
    std::memcpy(pre, kvc_magic, 8);
    detail::store_le<std::uint32_t>(pre + 8, kvc_version);
    detail::store_le<std::uint32_t>(pre + 12, static_cast<std::uint32_t>(text.size()));
    detail::store_le<std::uint64_t>(pre + 16, h_.header_checksum);
    emit({pre, kvc_prefix_size});
    emit({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
    for (std::size_t i = 0; i < h_.states.size(); ++i) {
      h_.states[i].offset = pos_;
      emit(state_blobs[i]);
    }
    h_.segments.clear();
  }
  /// Writes the next segment (chunk-major order is the caller's job; the index records what is written).
  void add_segment(std::int32_t layer, std::int64_t t0, std::int64_t t1, std::span<const std::uint8_t> data) {
    segment_entry e{layer, t0, t1, pos_ + kvc_record_size, data.size(), segment_checksum(h_.header_checksum, layer, t0, t1, data)};
    std::uint8_t rec[kvc_record_size];
    detail::store_le<std::uint32_t>(rec, kvc_record_tag);
    detail::store_le<std::int32_t>(rec + 4, layer);
    detail::store_le<std::int64_t>(rec + 8, t0);
    detail::store_le<std::int64_t>(rec + 16, t1);
    detail::store_le<std::uint64_t>(rec + 24, e.size);
    detail::store_le<std::uint64_t>(rec + 32, e.checksum);
    emit({rec, kvc_record_size});
    emit(data);
    h_.segments.push_back(e);
  }
  /// Writes the index and the footer; returns the container's total size.
  std::uint64_t finish() {
    const std::uint64_t index_offset = pos_;
    bytes idx(h_.segments.size() * kvc_index_entry_size, 0);
    for (std::size_t i = 0; i < h_.segments.size(); ++i) {
      std::uint8_t* p = idx.data() + i * kvc_index_entry_size;
      const auto& s = h_.segments[i];
      detail::store_le<std::int32_t>(p, s.layer);
      detail::store_le<std::int64_t>(p + 8, s.t0);
      detail::store_le<std::int64_t>(p + 16, s.t1);
      detail::store_le<std::uint64_t>(p + 24, s.offset);
      detail::store_le<std::uint64_t>(p + 32, s.size);
      detail::store_le<std::uint64_t>(p + 40, s.checksum);
    }
    emit(idx);
    std::uint8_t foot[kvc_footer_size];
    detail::store_le<std::uint64_t>(foot, index_offset);
    detail::store_le<std::uint64_t>(foot + 8, h_.segments.size());
    detail::store_le<std::uint64_t>(foot + 16, xxh3_64(idx.data(), idx.size(), h_.header_checksum));
    std::memcpy(foot + 24, kvc_index_magic, 8);
    emit({foot, kvc_footer_size});
    return pos_;
  }
  /// The header as written, with state and segment entries (offsets from the start of the file).
  const kvc_header& header() const noexcept { return h_; }
  std::uint64_t bytes_written() const noexcept { return pos_; }

 private:
  void emit(std::span<const std::uint8_t> b) {
    if (!b.empty()) sink_->write(b);
    pos_ += b.size();
  }
  byte_sink* sink_;
  kvc_header h_;
  std::uint64_t pos_ = 0;
};

/// Assembles a whole container in memory.
inline bytes write_kvc(kvc_header h, const std::vector<bytes>& state_blobs, const std::vector<bytes>& segment_blobs) {
  bytes out;
  memory_sink sink(out);
  std::vector<segment_entry> segs = h.segments;
  kvc_writer w(sink, std::move(h), state_blobs);
  for (std::size_t i = 0; i < segs.size(); ++i) w.add_segment(segs[i].layer, segs[i].t0, segs[i].t1, segment_blobs[i]);
  w.finish();
  return out;
}

// ---- reading ------------------------------------------------------------------------------------

namespace detail {
/// An integer JSON field: must be an integer (not a float, bool or string) within [lo, hi].
inline std::int64_t json_int(const nlohmann::json& j, const char* key, std::int64_t lo, std::int64_t hi, const std::string& name,
                             const std::string& path = "") {
  const std::string field = path.empty() ? key : path + "." + key;
  if (!j.is_object() || !j.contains(key)) throw_corrupt(name, "header field '" + field + "' is missing");
  const auto& v = j.at(key);
  if (!v.is_number_integer())
    throw_corrupt(name, describe_mismatch("", "header field '" + field + "'", "an integer", std::string(v.type_name()) + " " + v.dump()));
  if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(hi))
    throw_corrupt(name, describe_mismatch("", "header field '" + field + "'", std::to_string(lo) + ".." + std::to_string(hi), v.dump()));
  const std::int64_t x = v.get<std::int64_t>();
  if (x < lo || x > hi) throw_corrupt(name, describe_mismatch("", "header field '" + field + "'", std::to_string(lo) + ".." + std::to_string(hi), v.dump()));
  return x;
}
template <class T>
T json_field(const nlohmann::json& j, const char* key, const std::string& name) {
  if (!j.is_object() || !j.contains(key)) throw_corrupt(name, std::string("header field '") + key + "' is missing");
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw_corrupt(name, std::string("header field '") + key + "' has the wrong type (" + j.at(key).type_name() + ")");
  }
}
/// An array of int32 values, each an integer in range.
inline std::vector<std::int32_t> json_i32_array(const nlohmann::json& j, const char* key, const std::string& name) {
  if (!j.contains(key)) throw_corrupt(name, std::string("header field '") + key + "' is missing");
  const auto& a = j.at(key);
  if (!a.is_array()) throw_corrupt(name, describe_mismatch("", std::string("header field '") + key + "'", "an array", a.type_name()));
  std::vector<std::int32_t> out;
  out.reserve(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto& v = a[i];
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<std::uint64_t>() > 0x7fffffffu) ||
        (!v.is_number_unsigned() && (v.get<std::int64_t>() < INT32_MIN || v.get<std::int64_t>() > INT32_MAX)))
      throw_corrupt(name, describe_mismatch("", std::string("header field '") + key + "[" + std::to_string(i) + "]'", "a 32-bit integer", v.dump()));
    out.push_back(static_cast<std::int32_t>(v.get<std::int64_t>()));
  }
  return out;
}
inline std::uint64_t json_u64(const nlohmann::json& v, const std::string& field, const std::string& name) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0))
    throw_corrupt(name, describe_mismatch("", field, "a non-negative integer", v.dump()));
  return v.get<std::uint64_t>();
}

/// Parses the JSON fields common to versions 1 and 2 into `h` (segments/states left to the caller).
inline nlohmann::json parse_header_json(std::span<const std::uint8_t> text, kvc_header& h, std::uint64_t file_size, const std::string& name,
                                        const kvc_limits& lim) {
  using nlohmann::json;
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    throw_corrupt(name, std::string("header is not valid JSON: ") + e.what());
  }
  if (!j.is_object() || !j.contains("format") || j["format"] != "kvc") throw_corrupt(name, "header field 'format' is not \"kvc\"");
  h.codec = json_field<std::string>(j, "codec", name);
  const json shape = json_field<json>(j, "shape", name);
  if (!shape.is_object()) throw_corrupt(name, describe_mismatch("", "header field 'shape'", "an object", shape.type_name()));
  const auto layers = json_int(shape, "layers", 1, 1 << 16, name, "shape");
  const auto kvh = json_int(shape, "kv_heads", 1, 1 << 16, name, "shape");
  const auto qh = json_int(shape, "q_heads", 0, 1 << 16, name, "shape");
  const auto hd = json_int(shape, "head_dim", 1, 1 << 16, name, "shape");
  const auto tok = json_int(shape, "tokens", 1, std::int64_t{1} << 31, name, "shape");
  h.shape = kv_shape{static_cast<std::int32_t>(layers), static_cast<std::int32_t>(kvh), static_cast<std::int32_t>(qh), static_cast<std::int32_t>(hd), tok};
  // Decoded size in floating point (each factor <= 2^31, no overflow); compared, never cast back.
  const long double decoded = 2.0L * static_cast<long double>(layers) * static_cast<long double>(kvh) * static_cast<long double>(hd) *
                              static_cast<long double>(tok) * 4.0L;
  if (decoded > static_cast<long double>(lim.max_decoded_bytes) ||
      decoded > static_cast<long double>(lim.max_expansion) * static_cast<long double>(std::max<std::uint64_t>(file_size, 256))) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4Lg", decoded);
    throw_corrupt(name, std::string("header claims a cache of ") + buf + " decoded bytes from a " + std::to_string(file_size) +
                            "-byte file: implausible, refusing to allocate");
  }
  const auto dt = parse_dtype(json_field<std::string>(j, "dtype", name));
  if (!dt || (*dt != dtype::f32 && *dt != dtype::f16 && *dt != dtype::bf16)) throw_corrupt(name, "header field 'dtype' is not f32, f16 or bf16");
  h.source_dtype = *dt;
  h.metadata = json_field<std::map<std::string, std::string>>(j, "metadata", name);
  h.layout = json_field<std::string>(j, "layout", name);
  h.sparse = json_field<bool>(j, "sparse", name);
  h.chunk_tokens = json_int(j, "chunk_tokens", 1, std::int64_t{1} << 31, name);
  h.tokens = json_i32_array(j, "tokens", name);
  h.positions = json_i32_array(j, "positions", name);
  if (!h.tokens.empty() && static_cast<std::int64_t>(h.tokens.size()) != tok)
    throw_corrupt(name, describe_mismatch("", "tokens", std::to_string(tok) + " ids", std::to_string(h.tokens.size())));
  if (!h.positions.empty() && static_cast<std::int64_t>(h.positions.size()) != tok)
    throw_corrupt(name, describe_mismatch("", "positions", std::to_string(tok) + " entries", std::to_string(h.positions.size())));
  return j;
}

/// Checks one segment entry against the shape (layer, chunk-aligned range) and marks it seen.
inline void check_segment_entry(const kvc_header& h, const segment_entry& e, std::vector<std::uint8_t>& seen, const std::string& name) {
  if (e.layer < 0 || e.layer >= h.shape.layers || e.t0 < 0 || e.t0 >= h.shape.tokens || e.t0 % h.chunk_tokens != 0 ||
      e.t1 != std::min(h.shape.tokens, e.t0 + h.chunk_tokens))
    throw_corrupt(name, "segment (layer " + std::to_string(e.layer) + ", tokens " + std::to_string(e.t0) + ".." + std::to_string(e.t1) +
                            ") does not fit the shape and chunk size");
  auto& flag = seen[h.segment_index(e.layer, e.t0)];
  if (flag) throw_corrupt(name, "segment (layer " + std::to_string(e.layer) + ", tokens from " + std::to_string(e.t0) + ") appears twice");
  flag = 1;
}

/// Reads the v2 states list ([stage, size, checksum]) and lays the blobs out after the header.
inline void parse_states_v2(const nlohmann::json& j, kvc_header& h, std::uint64_t first_offset, std::uint64_t limit, const std::string& name) {
  const auto& states = j.contains("states") ? j.at("states") : nlohmann::json();
  if (!states.is_array()) throw_corrupt(name, "header field 'states' must be an array");
  if (states.size() > 64) throw_corrupt(name, describe_mismatch("", "header field 'states'", "at most 64 entries", std::to_string(states.size())));
  std::uint64_t off = first_offset;
  for (std::size_t i = 0; i < states.size(); ++i) {
    const auto& s = states[i];
    const std::string f = "header field 'states[" + std::to_string(i) + "]'";
    if (!s.is_array() || s.size() != 3) throw_corrupt(name, describe_mismatch("", f, "[stage, size, checksum]", s.dump()));
    state_entry e;
    const std::uint64_t st = json_u64(s[0], f, name);
    if (st > 64) throw_corrupt(name, describe_mismatch("", f, "a stage index <= 64", std::to_string(st)));
    e.stage = static_cast<std::uint32_t>(st);
    e.size = json_u64(s[1], f, name);
    e.checksum = json_u64(s[2], f, name);
    if (e.size > limit || off > limit - e.size)
      throw_corrupt(name, "state of stage " + std::to_string(e.stage) + " (" + std::to_string(e.size) + " bytes) runs past the end of the file");
    e.offset = off;
    off += e.size;
    h.states.push_back(e);
  }
}

inline void parse_prefix(std::span<const std::uint8_t> pre, std::uint64_t file_size, const std::string& name, std::uint32_t& version,
                         std::uint32_t& hlen, std::uint64_t& hsum) {
  if (pre.size() < kvc_prefix_size || std::memcmp(pre.data(), kvc_magic, 8) != 0) {
    if (pre.size() >= 8 && std::memcmp(pre.data(), kvc_magic, 8) == 0)
      throw_corrupt(name, "truncated: " + std::to_string(pre.size()) + " bytes, shorter than the 24-byte prefix");
    throw error(error_kind::bad_input, name + ": not a .kvc container (magic bytes do not match)");
  }
  version = detail::load_le<std::uint32_t>(pre.data() + 8);
  if (version != 1 && version != 2)
    throw error(error_kind::bad_input, describe_mismatch(name, "version", "1 or 2", std::to_string(version)));
  hlen = detail::load_le<std::uint32_t>(pre.data() + 12);
  hsum = detail::load_le<std::uint64_t>(pre.data() + 16);
  if (hlen > kvc_max_header || hlen > file_size - kvc_prefix_size)
    throw_corrupt(name, "header length " + std::to_string(hlen) + " exceeds the " + std::to_string(file_size - kvc_prefix_size) +
                            " bytes after the prefix (or the 64 MiB limit)");
}

/// Parses a v2 footer (32 bytes at the end of a `file_size`-byte file); returns index offset and count.
inline std::pair<std::uint64_t, std::uint64_t> parse_footer(std::span<const std::uint8_t> foot, std::uint64_t file_size, std::uint64_t data_start,
                                                            std::size_t expected, const std::string& name) {
  if (foot.size() != kvc_footer_size || std::memcmp(foot.data() + 24, kvc_index_magic, 8) != 0)
    throw_corrupt(name, "no segment index at the end of the file (truncated or not written to the end)");
  const std::uint64_t io = detail::load_le<std::uint64_t>(foot.data()), n = detail::load_le<std::uint64_t>(foot.data() + 8);
  if (n != expected) throw_corrupt(name, describe_mismatch("", "index count", std::to_string(expected) + " segments (layers x chunks)", std::to_string(n)));
  if (io < data_start || io > file_size - kvc_footer_size || (file_size - kvc_footer_size - io) != n * kvc_index_entry_size)
    throw_corrupt(name, describe_mismatch("", "index_offset", "the index right before the 32-byte footer", std::to_string(io)));
  return {io, n};
}

/// Parses and checks the v2 index (`idx` = count x 48 bytes) against the header.
inline void parse_index_v2(std::span<const std::uint8_t> idx, std::span<const std::uint8_t> foot, kvc_header& h, std::uint64_t data_start,
                           std::uint64_t index_offset, const std::string& name) {
  if (kvc_check_sums && xxh3_64(idx.data(), idx.size(), h.header_checksum) != detail::load_le<std::uint64_t>(foot.data() + 16))
    throw_corrupt(name, "segment index checksum mismatch");
  const std::size_t n = idx.size() / kvc_index_entry_size;
  std::vector<std::uint8_t> seen(h.segment_count(), 0);
  h.segments.clear();
  h.segments.reserve(n);
  std::uint64_t at = data_start;  // records tile [data_start, index_offset) in index order
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t* p = idx.data() + i * kvc_index_entry_size;
    segment_entry e{detail::load_le<std::int32_t>(p), detail::load_le<std::int64_t>(p + 8), detail::load_le<std::int64_t>(p + 16), detail::load_le<std::uint64_t>(p + 24),
                    detail::load_le<std::uint64_t>(p + 32), detail::load_le<std::uint64_t>(p + 40)};
    check_segment_entry(h, e, seen, name);
    if (h.segment_index(e.layer, e.t0) != i)
      throw_corrupt(name, "segment " + std::to_string(i) + " of the index (layer " + std::to_string(e.layer) + ", tokens from " + std::to_string(e.t0) +
                              ") is out of chunk-major order");
    if (e.offset != at + kvc_record_size || e.size > index_offset - e.offset)
      throw_corrupt(name, "segment (layer " + std::to_string(e.layer) + ", tokens from " + std::to_string(e.t0) + ") at offset " +
                              std::to_string(e.offset) + " size " + std::to_string(e.size) + " does not follow the previous record");
    at = e.offset + e.size;
    h.segments.push_back(e);
  }
  if (at != index_offset)
    throw_corrupt(name, "segment records end at " + std::to_string(at) + " but the index starts at " + std::to_string(index_offset) +
                            (at < index_offset ? " (bytes between)" : ""));
}

/// Checks a v2 record header against the index entry it should hold.
inline void check_record(std::span<const std::uint8_t> rec, const segment_entry& e, const std::string& name) {
  if (detail::load_le<std::uint32_t>(rec.data()) != kvc_record_tag || detail::load_le<std::int32_t>(rec.data() + 4) != e.layer ||
      detail::load_le<std::int64_t>(rec.data() + 8) != e.t0 || detail::load_le<std::int64_t>(rec.data() + 16) != e.t1 ||
      detail::load_le<std::uint64_t>(rec.data() + 24) != e.size || detail::load_le<std::uint64_t>(rec.data() + 32) != e.checksum)
    throw_corrupt(name, "segment record (layer " + std::to_string(e.layer) + ", tokens from " + std::to_string(e.t0) + ") does not match the index");
}

/// Version 1 index (inside the JSON header, offsets relative to the payload after the header).
inline void parse_index_v1(const nlohmann::json& j, kvc_header& h, std::uint64_t payload_size, const std::string& name) {
  using nlohmann::json;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> extents;
  auto check_extent = [&](std::uint64_t off, std::uint64_t size, const std::string& what) {
    if (off > payload_size || size > payload_size - off)
      throw_corrupt(name, what + " at offset " + std::to_string(off) + " size " + std::to_string(size) + " lies outside the " +
                              std::to_string(payload_size) + "-byte payload");
    extents.emplace_back(off, size);
  };
  const json states = json_field<json>(j, "states", name);
  const json segs = json_field<json>(j, "segments", name);
  if (!states.is_array() || !segs.is_array()) throw_corrupt(name, "header fields 'states' and 'segments' must be arrays");
  if (states.size() > 64) throw_corrupt(name, "header field 'states' has more than 64 entries");
  for (std::size_t i = 0; i < states.size(); ++i) {
    const auto& s = states[i];
    const std::string f = "header field 'states[" + std::to_string(i) + "]'";
    if (!s.is_array() || s.size() != 4) throw_corrupt(name, describe_mismatch("", f, "[stage, offset, size, checksum]", s.dump()));
    state_entry e{0, json_u64(s[1], f, name), json_u64(s[2], f, name), json_u64(s[3], f, name)};
    const std::uint64_t st = json_u64(s[0], f, name);
    if (st > 64) throw_corrupt(name, "state entry names stage " + std::to_string(st));
    e.stage = static_cast<std::uint32_t>(st);
    check_extent(e.offset, e.size, "state of stage " + std::to_string(e.stage));
    h.states.push_back(e);
  }
  if (segs.size() != h.segment_count())
    throw_corrupt(name, "segment index has " + std::to_string(segs.size()) + " entries, the shape needs " + std::to_string(h.segment_count()));
  std::vector<std::uint8_t> seen(h.segment_count(), 0);
  for (std::size_t i = 0; i < segs.size(); ++i) {
    const auto& s = segs[i];
    const std::string f = "header field 'segments[" + std::to_string(i) + "]'";
    if (!s.is_array() || s.size() != 6) throw_corrupt(name, describe_mismatch("", f, "[layer, t0, t1, offset, size, checksum]", s.dump()));
    for (int k = 0; k < 3; ++k)
      if (!s[static_cast<std::size_t>(k)].is_number_integer() || std::llabs(s[static_cast<std::size_t>(k)].get<std::int64_t>()) > (std::int64_t{1} << 32))
        throw_corrupt(name, describe_mismatch("", f, "integer layer and token range", s.dump()));
    segment_entry e{static_cast<std::int32_t>(s[0].get<std::int64_t>()), s[1].get<std::int64_t>(), s[2].get<std::int64_t>(),
                    json_u64(s[3], f, name), json_u64(s[4], f, name), json_u64(s[5], f, name)};
    check_segment_entry(h, e, seen, name);
    check_extent(e.offset, e.size, "segment (layer " + std::to_string(e.layer) + ", tokens from " + std::to_string(e.t0) + ")");
    h.segments.push_back(e);
  }
  std::sort(h.segments.begin(), h.segments.end(), [&](const segment_entry& a, const segment_entry& b) {
    return h.segment_index(a.layer, a.t0) < h.segment_index(b.layer, b.t0);
  });
  std::sort(extents.begin(), extents.end());
  std::uint64_t end = 0;
  for (const auto& [off, size] : extents) {
    if (off < end) throw_corrupt(name, "overlapping segments in the index");
    end = off + size;
  }
  if (end != payload_size)
    throw_corrupt(name, "payload is " + std::to_string(payload_size) + " bytes but the index accounts for " + std::to_string(end) +
                            (end < payload_size ? " (trailing bytes)" : ""));
}
}  // namespace detail

/// Parses and validates a container held in memory (the bytes must outlive the view). Segment
/// checksums are checked when segment_bytes() reads them.
inline kvc_view parse_kvc(std::span<const std::uint8_t> file, const std::string& name, const kvc_limits& lim = {}) {
  kvc_view v;
  v.name = name;
  v.file_size = file.size();
  std::uint32_t version = 0, hlen = 0;
  std::uint64_t hsum = 0;
  detail::parse_prefix(file.first(std::min(file.size(), kvc_prefix_size)), file.size(), name, version, hlen, hsum);
  const auto text = file.subspan(kvc_prefix_size, hlen);
  if (kvc_check_sums && xxh3_64(text.data(), text.size()) != hsum) throw_corrupt(name, "header checksum mismatch");
  auto& h = v.header;
  h.version = version;
  h.header_checksum = hsum;
  const nlohmann::json j = detail::parse_header_json(text, h, file.size(), name, lim);
  const std::uint64_t data_start = kvc_prefix_size + hlen;
  if (version == 1) {
    v.payload = file.subspan(data_start);
    detail::parse_index_v1(j, h, v.payload.size(), name);
    return v;
  }
  v.payload = file;  // v2 offsets are from the start of the file
  detail::parse_states_v2(j, h, data_start, file.size(), name);
  const std::uint64_t seg_start = h.states.empty() ? data_start : h.states.back().offset + h.states.back().size;
  if (file.size() < seg_start + kvc_footer_size) throw_corrupt(name, "truncated: no room for the segment index after the header and state");
  const auto foot = file.last(kvc_footer_size);
  const auto [io, n] = detail::parse_footer(foot, file.size(), seg_start, h.segment_count(), name);
  detail::parse_index_v2(file.subspan(io, n * kvc_index_entry_size), foot, h, seg_start, io, name);
  for (const auto& e : h.segments) detail::check_record(file.subspan(e.offset - kvc_record_size, kvc_record_size), e, name);
  return v;
}

/// Reads a v2 container as it arrives, in pieces of any size: the header and state first, then each
/// segment record as soon as all of it is there (checked: order, range, checksum), then the index.
/// Memory held: the header, the state, and at most one incomplete record.
class kvc_stream_reader {
 public:
  explicit kvc_stream_reader(std::string name = "<stream>", kvc_limits lim = {}) : name_(std::move(name)), lim_(lim) {}

  /// Feeds the next bytes; calls on_segment(entry, verified bytes) for every segment completed.
  template <class OnSegment>
  void push(std::span<const std::uint8_t> in, OnSegment&& on_segment) {
    while (!in.empty() || ready_to_advance()) {
      const std::size_t want = need();
      if (want == 0) {
        if (!in.empty()) throw_corrupt(name_, std::to_string(in.size()) + " bytes after the end of the container");
        return;
      }
      // Take what the current item still needs.
      const std::size_t take = std::min(want - buf_.size(), in.size());
      buf_.insert(buf_.end(), in.begin(), in.begin() + static_cast<std::ptrdiff_t>(take));
      in = in.subspan(take);
      if (buf_.size() < want) return;
      advance(on_segment);
    }
  }
  /// Declares the end of the input; throws a corrupt error if the container is incomplete, naming
  /// the tokens whose every layer was delivered.
  void finish() const {
    if (stage_ != stage::done)
      throw_corrupt(name_, "stream ended early: " + std::to_string(received_) + " of " + std::to_string(h_.segment_count()) +
                               " segments received; tokens 0.." + std::to_string(complete_tokens()) + " are complete");
  }
  bool header_ready() const noexcept { return stage_ > stage::states; }
  bool done() const noexcept { return stage_ == stage::done; }
  const kvc_header& header() const noexcept { return h_; }
  /// The state blob of header().states[i] (checked).
  std::span<const std::uint8_t> state_bytes(std::size_t i) const { return states_[i]; }
  std::size_t segments_received() const noexcept { return received_; }
  /// Tokens [0, t) have every layer received.
  std::int64_t complete_tokens() const noexcept {
    if (h_.shape.layers == 0) return 0;
    const std::int64_t chunks_done = static_cast<std::int64_t>(received_ / static_cast<std::size_t>(h_.shape.layers));
    return std::min(h_.shape.tokens, chunks_done * h_.chunk_tokens);
  }

 private:
  enum class stage { prefix, header, states, record, payload, index, done };
  bool ready_to_advance() const { return stage_ != stage::done && need() != 0 && buf_.size() >= need(); }
  std::size_t need() const {
    switch (stage_) {
      case stage::prefix: return kvc_prefix_size;
      case stage::header: return hlen_;
      case stage::states: return h_.states.empty() ? 0 : static_cast<std::size_t>(h_.states[states_.size()].size);
      case stage::record: return kvc_record_size;
      case stage::payload: return static_cast<std::size_t>(cur_.size);
      case stage::index: return h_.segment_count() * kvc_index_entry_size + kvc_footer_size;
      case stage::done: return 0;
    }
    return 0;
  }
  template <class OnSegment>
  void advance(OnSegment& on_segment) {
    switch (stage_) {
      case stage::prefix: {
        std::uint32_t version = 0;
        detail::parse_prefix(buf_, ~std::uint64_t{0} >> 1, name_, version, hlen_, hsum_);
        if (version != 2) throw error(error_kind::bad_input, describe_mismatch(name_, "version", "2 (version 1 files cannot be streamed)", std::to_string(version)));
        h_.version = version;
        h_.header_checksum = hsum_;
        stage_ = stage::header;
        break;
      }
      case stage::header: {
        if (kvc_check_sums && xxh3_64(buf_.data(), buf_.size()) != hsum_) throw_corrupt(name_, "header checksum mismatch");
        // The file size is unknown while streaming: the expansion limit applies to the decoded size alone.
        kvc_limits lim = lim_;
        lim.max_expansion = ~std::uint64_t{0} >> 8;
        const nlohmann::json j = detail::parse_header_json(buf_, h_, ~std::uint64_t{0} >> 8, name_, lim);
        detail::parse_states_v2(j, h_, kvc_prefix_size + hlen_, ~std::uint64_t{0} >> 8, name_);
        for (const auto& s : h_.states)
          if (s.size > (1ull << 31)) throw_corrupt(name_, "state of stage " + std::to_string(s.stage) + " claims " + std::to_string(s.size) + " bytes");
        seen_.assign(h_.segment_count(), 0);
        pos_ = kvc_prefix_size + hlen_;
        stage_ = h_.states.empty() ? stage::record : stage::states;
        break;
      }
      case stage::states: {
        const auto& s = h_.states[states_.size()];
        if (kvc_check_sums && checksum64(buf_) != s.checksum) throw_corrupt(name_, "checksum mismatch in the state of stage " + std::to_string(s.stage));
        states_.push_back(buf_);
        pos_ += buf_.size() - 0;
        if (states_.size() == h_.states.size()) stage_ = stage::record;
        buf_.clear();
        return;
      }
      case stage::record: {
        if (received_ == h_.segment_count()) {  // every segment is in: what follows is the index
          stage_ = stage::index;
          return;  // keep the bytes: they are the index's first 40
        }
        if (detail::load_le<std::uint32_t>(buf_.data()) != kvc_record_tag)
          throw_corrupt(name_, "segment record " + std::to_string(received_) + " has no record tag (stream damaged or cut)");
        cur_ = segment_entry{detail::load_le<std::int32_t>(buf_.data() + 4), detail::load_le<std::int64_t>(buf_.data() + 8),
                             detail::load_le<std::int64_t>(buf_.data() + 16), pos_ + kvc_record_size,
                             detail::load_le<std::uint64_t>(buf_.data() + 24), detail::load_le<std::uint64_t>(buf_.data() + 32)};
        detail::check_segment_entry(h_, cur_, seen_, name_);
        if (h_.segment_index(cur_.layer, cur_.t0) != received_)
          throw_corrupt(name_, "segment (layer " + std::to_string(cur_.layer) + ", tokens from " + std::to_string(cur_.t0) +
                                   ") arrived out of order: expected segment " + std::to_string(received_) + " in chunk-major order");
        // A segment holds at most a few bytes per element (raw f32 + framing): larger is a lie.
        const std::uint64_t elems = 2ull * static_cast<std::uint64_t>(h_.shape.kv_heads) * static_cast<std::uint64_t>(h_.shape.head_dim) *
                                    static_cast<std::uint64_t>(cur_.t1 - cur_.t0);
        if (cur_.size > 16 * elems + (1u << 20))
          throw_corrupt(name_, "segment (layer " + std::to_string(cur_.layer) + ", tokens from " + std::to_string(cur_.t0) + ") claims " +
                                   std::to_string(cur_.size) + " bytes for " + std::to_string(elems) + " elements");
        pos_ += kvc_record_size;
        stage_ = stage::payload;
        break;
      }
      case stage::payload: {
        verify_segment(h_, cur_, buf_, name_);
        h_.segments.push_back(cur_);
        ++received_;
        pos_ += buf_.size();
        stage_ = stage::record;
        on_segment(static_cast<const segment_entry&>(h_.segments.back()), std::span<const std::uint8_t>(buf_));
        break;
      }
      case stage::index: {
        const auto foot = std::span<const std::uint8_t>(buf_).last(kvc_footer_size);
        const auto [io, n] = detail::parse_footer(foot, pos_ + buf_.size(), 0, h_.segment_count(), name_);
        if (io != pos_) throw_corrupt(name_, describe_mismatch("", "index_offset", std::to_string(pos_), std::to_string(io)));
        kvc_header check = h_;
        const std::uint64_t seg_start = h_.states.empty() ? kvc_prefix_size + hlen_ : h_.states.back().offset + h_.states.back().size;
        detail::parse_index_v2(std::span<const std::uint8_t>(buf_).first(static_cast<std::size_t>(n) * kvc_index_entry_size), foot, check, seg_start, io, name_);
        for (std::size_t i = 0; i < h_.segments.size(); ++i)
          if (check.segments[i].checksum != h_.segments[i].checksum || check.segments[i].offset != h_.segments[i].offset)
            throw_corrupt(name_, "segment index disagrees with the records received (segment " + std::to_string(i) + ")");
        stage_ = stage::done;
        break;
      }
      case stage::done: return;
    }
    if (stage_ != stage::index) buf_.clear();
  }

  std::string name_;
  kvc_limits lim_;
  stage stage_ = stage::prefix;
  bytes buf_;
  std::uint32_t hlen_ = 0;
  std::uint64_t hsum_ = 0, pos_ = 0;
  kvc_header h_;
  std::vector<bytes> states_;
  std::vector<std::uint8_t> seen_;
  segment_entry cur_;
  std::size_t received_ = 0;
};

}  // namespace kvcodec
