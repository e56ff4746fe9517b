// kvcodec/io/safetensors.hpp — named tensors in memory and the safetensors file format.
//
// Format (huggingface/safetensors): u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data area; offsets are relative to the data area. Supported dtypes: F32, F16, BF16, I32, U8.
// Invariant: everything read from a header (length, shapes, offsets, sizes) is checked against the
// real byte count, with overflow-checked arithmetic, before any tensor buffer is allocated; the
// tensors tile the data area exactly (no overlap, no hole, no trailing bytes), as the format requires,
// so the memory a file yields never exceeds its size. The writer pads the header with spaces to a multiple of 8 bytes (as the reference
// implementation does) and stores tensors in the order of tensor_file::tensors.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcodec/core/error.hpp"
#include "kvcodec/io/file.hpp"
#include "kvcodec/tensor/dtype.hpp"

namespace kvcodec::io {

inline constexpr std::uint64_t max_safetensors_header_bytes = std::uint64_t{100} << 20;  ///< 100 MiB
inline constexpr std::int64_t max_tensor_dim = std::int64_t{1} << 48;
inline constexpr std::size_t max_tensor_rank = 16;

struct tensor {
  std::string name;
  dtype type = dtype::f32;
  std::vector<std::int64_t> shape;  ///< row-major (C order)
  std::vector<std::uint8_t> bytes;  ///< little-endian elements, product(shape) * dtype_size(type)

  std::uint64_t numel() const noexcept {
    std::uint64_t n = 1;
    for (auto d : shape) n *= static_cast<std::uint64_t>(d);
    return n;
  }
};

struct tensor_file {
  std::vector<tensor> tensors;
  std::map<std::string, std::string> metadata;

  const tensor* find(std::string_view name) const noexcept {
    for (const auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  tensor* find(std::string_view name) noexcept {
    for (auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
};

/// "[1, 4, 512, 8]"
inline std::string shape_string(const std::vector<std::int64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

/// Byte size of a tensor of `shape` and `t`; throws bad_input naming `where` and the tensor when a dim
/// is negative or absurd (> 2^48), the rank exceeds 16, or the product overflows 64 bits.
inline std::uint64_t checked_byte_size(const std::vector<std::int64_t>& shape, dtype t, const std::string& where,
                                       const std::string& name) {
  const std::string field = "shape of tensor '" + name + "'";
  if (shape.size() > max_tensor_rank)
    throw_bad_input(where, field, "at most " + std::to_string(max_tensor_rank) + " dims", shape_string(shape));
  std::uint64_t n = dtype_size(t);
  for (auto d : shape) {
    if (d < 0 || d > max_tensor_dim) throw_bad_input(where, field, "dims in [0, 2^48]", shape_string(shape));
    const auto ud = static_cast<std::uint64_t>(d);
    if (ud != 0 && n > std::numeric_limits<std::uint64_t>::max() / ud)
      throw_bad_input(where, field, "a byte size that fits in 64 bits", shape_string(shape));
    n *= ud;
  }
  return n;
}

inline std::string_view safetensors_dtype_name(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
    case dtype::i32: return "I32";
    case dtype::u8: return "U8";
  }
  return "?";
}

inline std::optional<dtype> parse_safetensors_dtype(std::string_view s) noexcept {
  if (s == "F32") return dtype::f32;
  if (s == "F16") return dtype::f16;
  if (s == "BF16") return dtype::bf16;
  if (s == "I32") return dtype::i32;
  if (s == "U8") return dtype::u8;
  return std::nullopt;
}

/// Checks name and byte count of a tensor about to be written; throws bad_input.
inline void validate_tensor(const tensor& t, const std::string& where) {
  if (t.name.empty()) throw_bad_input(where, "tensor name", "a non-empty name", "\"\"");
  if (t.name == "__metadata__") throw_bad_input(where, "tensor name", "not the reserved '__metadata__'", t.name);
  if (dtype_size(t.type) == 0) throw_bad_input(where, "dtype of tensor '" + t.name + "'", "f32, f16, bf16, i32 or u8", "an invalid value");
  const std::uint64_t need = checked_byte_size(t.shape, t.type, where, t.name);
  if (need != t.bytes.size())
    throw_bad_input(where, "bytes of tensor '" + t.name + "'",
                    std::to_string(need) + " (" + shape_string(t.shape) + " x " + std::string(dtype_name(t.type)) + ")",
                    std::to_string(t.bytes.size()));
}

// ---- typed construction and extraction -------------------------------------------------------

/// A tensor holding `n = product(shape)` floats from `src`, stored as `out` (f32, f16 or bf16, RNE).
inline tensor make_float_tensor(std::string name, std::vector<std::int64_t> shape, const float* src, dtype out) {
  if (out != dtype::f32 && out != dtype::f16 && out != dtype::bf16)
    throw_usage("tensor '" + name + "': float data can be stored as f32, f16 or bf16, not " + std::string(dtype_name(out)));
  tensor t{std::move(name), out, std::move(shape), {}};
  const std::uint64_t n = t.numel();
  t.bytes.resize(static_cast<std::size_t>(n * dtype_size(out)));
  if (n != 0) encode_floats(src, static_cast<std::size_t>(n), out, t.bytes.data());
  return t;
}

inline tensor make_i32_tensor(std::string name, std::vector<std::int64_t> shape, const std::int32_t* src) {
  tensor t{std::move(name), dtype::i32, std::move(shape), {}};
  t.bytes.resize(static_cast<std::size_t>(t.numel() * 4));
  if (!t.bytes.empty()) std::memcpy(t.bytes.data(), src, t.bytes.size());
  return t;
}

inline tensor make_u8_tensor(std::string name, std::vector<std::int64_t> shape, const std::uint8_t* src) {
  tensor t{std::move(name), dtype::u8, std::move(shape), {}};
  t.bytes.resize(static_cast<std::size_t>(t.numel()));
  if (!t.bytes.empty()) std::memcpy(t.bytes.data(), src, t.bytes.size());
  return t;
}

/// Widens an f32/f16/bf16 tensor to f32 (exact); throws bad_input for other dtypes.
inline std::vector<float> tensor_to_floats(const tensor& t, const std::string& where) {
  if (t.type != dtype::f32 && t.type != dtype::f16 && t.type != dtype::bf16)
    throw_bad_input(where, "dtype of tensor '" + t.name + "'", "F32, F16 or BF16", std::string(safetensors_dtype_name(t.type)));
  const std::size_t n = t.bytes.size() / dtype_size(t.type);
  std::vector<float> out(n);
  if (n != 0) decode_floats(t.bytes.data(), n, t.type, out.data());
  return out;
}

/// Copies an I32 tensor's elements; throws bad_input for other dtypes.
inline std::vector<std::int32_t> tensor_to_i32(const tensor& t, const std::string& where) {
  if (t.type != dtype::i32)
    throw_bad_input(where, "dtype of tensor '" + t.name + "'", "I32", std::string(safetensors_dtype_name(t.type)));
  std::vector<std::int32_t> out(t.bytes.size() / 4);
  if (!out.empty()) std::memcpy(out.data(), t.bytes.data(), out.size() * 4);
  return out;
}

// ---- reading ---------------------------------------------------------------------------------

/// A parsed safetensors header: every tensor's name, dtype, shape and byte range in the data area
/// (checked against the file as read_safetensors_bytes does), without copying any data.
struct safetensors_entry {
  std::string name;
  dtype type = dtype::f32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  ///< relative to the data area
};
struct safetensors_index {
  std::vector<safetensors_entry> entries;  ///< in data order
  std::map<std::string, std::string> metadata;
  std::uint64_t data_offset = 0;           ///< start of the data area in the file
  const safetensors_entry* find(std::string_view name) const noexcept {
    for (const auto& e : entries)
      if (e.name == name) return &e;
    return nullptr;
  }
};

/// Parses and checks a safetensors header (the whole file image must be given, its data is not read).
inline safetensors_index read_safetensors_index(std::span<const std::uint8_t> data, const std::string& where) {
  using nlohmann::json;
  const std::uint64_t size = data.size();
  if (size < 8) throw_bad_input(where, "header length", "an 8-byte little-endian length", std::to_string(size) + " bytes in the file");
  const std::uint64_t n = load_le64(data.data());
  if (n > max_safetensors_header_bytes)
    throw_bad_input(where, "header length", "at most " + std::to_string(max_safetensors_header_bytes) + " bytes", std::to_string(n));
  if (n > size - 8)
    throw_bad_input(where, "header length", "at most the " + std::to_string(size - 8) + " bytes after the length field", std::to_string(n));
  if (n < 2 || data[8] != '{') throw_bad_input(where, "header", "a JSON object starting with '{'", "header of " + std::to_string(n) + " bytes not starting with '{'");
  const char* hb = reinterpret_cast<const char*>(data.data() + 8);

  std::set<std::string> seen;
  std::string duplicate;
  const json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (depth == 1 && ev == json::parse_event_t::key && parsed.is_string() && duplicate.empty()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!seen.insert(k).second) duplicate = k;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(hb, hb + n, cb, true);
  } catch (const json::exception& e) {
    throw_bad_input(where, "header", "valid JSON", std::string("a parse error (") + e.what() + ")");
  }
  if (!duplicate.empty()) throw_bad_input(where, "header", "unique tensor names", "'" + duplicate + "' twice");
  if (!header.is_object()) throw_bad_input(where, "header", "a JSON object", header.type_name());

  const std::uint64_t data_size = size - 8 - n;
  using entry = safetensors_entry;
  std::vector<entry> entries;
  safetensors_index out;
  out.data_offset = 8 + n;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw_bad_input(where, "__metadata__", "an object of strings", v.type_name());
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw_bad_input(where, "__metadata__." + m.key(), "a string value", m.value().type_name());
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tf = "tensor '" + name + "'";
    if (name.empty()) throw_bad_input(where, "tensor name", "a non-empty name", "\"\"");
    if (!v.is_object()) throw_bad_input(where, tf, "an object with dtype, shape, data_offsets", v.type_name());
    const auto dt = v.find("dtype");
    const auto sh = v.find("shape");
    const auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) throw_bad_input(where, tf + " dtype", "a string", dt == v.end() ? "nothing" : dt->type_name());
    const std::string dts = dt->get<std::string>();
    const auto type = parse_safetensors_dtype(dts);
    if (!type) throw_bad_input(where, "dtype of tensor '" + name + "'", "one of F32, F16, BF16, I32, U8", dts);
    if (sh == v.end() || !sh->is_array()) throw_bad_input(where, tf + " shape", "an array", sh == v.end() ? "nothing" : sh->type_name());
    if (sh->size() > max_tensor_rank)
      throw_bad_input(where, tf + " shape", "at most " + std::to_string(max_tensor_rank) + " dims", std::to_string(sh->size()) + " dims");
    std::vector<std::int64_t> shape;
    for (const auto& d : *sh) {
      if (d.is_number_unsigned() && d.get<std::uint64_t>() <= static_cast<std::uint64_t>(max_tensor_dim)) {
        shape.push_back(static_cast<std::int64_t>(d.get<std::uint64_t>()));
      } else {
        throw_bad_input(where, tf + " shape", "non-negative integer dims <= 2^48", sh->dump());
      }
    }
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      throw_bad_input(where, tf + " data_offsets", "[begin, end] non-negative integers", off == v.end() ? "nothing" : off->dump());
    const auto b = (*off)[0].get<std::uint64_t>();
    const auto e = (*off)[1].get<std::uint64_t>();
    if (e < b) throw_bad_input(where, tf + " data_offsets", "end >= begin", off->dump());
    if (e > data_size)
      throw_bad_input(where, tf + " data_offsets", "within the data area of " + std::to_string(data_size) + " bytes", off->dump());
    const std::uint64_t need = checked_byte_size(shape, *type, where, name);
    if (need != e - b)
      throw_bad_input(where, tf + " size", std::to_string(need) + " bytes for " + dts + " " + shape_string(shape),
                      std::to_string(e - b) + " bytes (data_offsets " + off->dump() + ")");
    entries.push_back(entry{name, *type, std::move(shape), b, e});
  }
  std::sort(entries.begin(), entries.end(), [](const entry& a, const entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : (a.end != b.end ? a.end < b.end : a.name < b.name);
  });
  // The tensors must tile the data area exactly, as the format requires (and the reference reader
  // checks): in offset order each begins where the previous one ends, the first at 0 and the last
  // at the end of the file; no overlaps, no holes, no trailing bytes.
  const auto range = [](const entry& en) {
    return "'" + en.name + "' [" + std::to_string(en.begin) + ", " + std::to_string(en.end) + ")";
  };
  std::uint64_t pos = 0;
  const entry* prev = nullptr;
  for (const auto& en : entries) {
    if (en.begin < pos)
      throw_bad_input(where, "data_offsets of tensor '" + en.name + "'", "non-overlapping tensors",
                      (prev ? range(*prev) : std::string("the data area start")) + " and " + range(en));
    if (en.begin > pos)
      throw_bad_input(where, "data_offsets of tensor '" + en.name + "'",
                      "tensors that tile the data area (tensor data starting at byte " + std::to_string(pos) + ")",
                      "a hole of " + std::to_string(en.begin - pos) + " unused bytes before " + range(en));
    pos = en.end;
    prev = &en;
  }
  if (pos != data_size)
    throw_bad_input(where, "data area", "exactly the " + std::to_string(pos) + " bytes its tensors' data_offsets cover",
                    std::to_string(data_size) + " bytes (" + std::to_string(data_size - pos) + " trailing bytes that no tensor owns)");
  out.entries = std::move(entries);
  return out;
}

/// Parses a safetensors image; `where` names it in errors. Throws bad_input on any inconsistency.
inline tensor_file read_safetensors_bytes(std::span<const std::uint8_t> data, const std::string& where) {
  safetensors_index idx = read_safetensors_index(data, where);
  const std::uint8_t* base = data.data() + idx.data_offset;
  tensor_file out;
  out.metadata = std::move(idx.metadata);
  out.tensors.reserve(idx.entries.size());
  for (auto& en : idx.entries) {
    tensor t{std::move(en.name), en.type, std::move(en.shape), {}};
    t.bytes.assign(base + en.begin, base + en.end);
    out.tensors.push_back(std::move(t));
  }
  return out;
}

inline tensor_file read_safetensors(const std::string& path) {
  const auto bytes = read_file(path);
  return read_safetensors_bytes(bytes, path);
}

// ---- writing ---------------------------------------------------------------------------------

/// The header (u64 length + JSON padded with spaces to a multiple of 8 bytes) of a file holding
/// `entries` back to back in this order; fills each entry's begin/end from its shape and dtype.
inline std::vector<std::uint8_t> safetensors_header_bytes(std::vector<safetensors_entry>& entries, const std::map<std::string, std::string>& metadata,
                                                          const std::string& where = "safetensors") {
  using ojson = nlohmann::ordered_json;
  ojson header = ojson::object();
  if (!metadata.empty()) {
    ojson m = ojson::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  std::set<std::string_view> names;
  std::uint64_t offset = 0;
  for (auto& t : entries) {
    if (!names.insert(t.name).second) throw_bad_input(where, "tensor name", "unique names", "'" + t.name + "' twice");
    const std::uint64_t n = checked_byte_size(t.shape, t.type, where, t.name);
    t.begin = offset;
    t.end = offset + n;
    ojson e = ojson::object();
    e["dtype"] = std::string(safetensors_dtype_name(t.type));
    e["shape"] = t.shape;
    e["data_offsets"] = {t.begin, t.end};
    header[t.name] = std::move(e);
    offset = t.end;
  }
  std::string h;
  try {
    h = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw_bad_input(where, "tensor names and metadata", "valid UTF-8", e.what());
  }
  while (h.size() % 8 != 0) h.push_back(' ');
  std::vector<std::uint8_t> out;
  out.reserve(8 + h.size());
  append_le64(out, h.size());
  out.insert(out.end(), h.begin(), h.end());
  return out;
}

/// Serialises `f` (tensors in vector order, header padded with spaces to a multiple of 8 bytes).
inline std::vector<std::uint8_t> safetensors_bytes(const tensor_file& f, const std::string& where = "safetensors") {
  std::vector<safetensors_entry> es;
  std::uint64_t total = 0;
  for (const auto& t : f.tensors) {
    validate_tensor(t, where);
    es.push_back(safetensors_entry{t.name, t.type, t.shape, 0, 0});
    total += t.bytes.size();
  }
  std::vector<std::uint8_t> out = safetensors_header_bytes(es, f.metadata, where);
  out.reserve(out.size() + total);
  for (const auto& t : f.tensors) out.insert(out.end(), t.bytes.begin(), t.bytes.end());
  return out;
}

/// Writes `f` to `path` atomically; refuses to replace an existing file unless `overwrite`.
inline void write_safetensors(const std::string& path, const tensor_file& f, bool overwrite = false) {
  const auto bytes = safetensors_bytes(f, path);
  write_file_atomic(path, bytes, overwrite);
}

}  // namespace kvcodec::io
