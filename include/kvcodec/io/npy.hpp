// kvcodec/io/npy.hpp — NumPy .npy arrays (format versions 1.0, 2.0, 3.0) to and from io::tensor.
//
// Format (numpy.lib.format): magic "\x93NUMPY", major, minor, header length (u16 LE for 1.0, u32 LE
// for 2.0/3.0), a Python dict literal {'descr': .., 'fortran_order': .., 'shape': (..), } padded with
// spaces and ended by '\n', then the raw C-order data. Supported descr: '<f4', '<f2', '<i4', '|u1'.
// bfloat16 is not a NumPy dtype: it is rejected on read and write with a message pointing to
// safetensors. Fortran order and big-endian data are rejected. Invariant: the header length, shape and
// data size are checked against the real byte count before the tensor buffer is allocated; the writer
// pads the header so the data starts on a 64-byte boundary and uses version 1.0 when the header fits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/io/file.hpp"
#include "kvcodec/io/safetensors.hpp"
#include "kvcodec/tensor/dtype.hpp"

namespace kvcodec::io {

inline constexpr std::string_view npy_magic{"\x93NUMPY", 6};

inline bool is_npy(std::span<const std::uint8_t> b) noexcept {
  return b.size() >= 6 && std::string_view(reinterpret_cast<const char*>(b.data()), 6) == npy_magic;
}

namespace detail {

struct npy_value {
  enum kind_t { str, boolean, tuple, other } kind = other;
  std::string s;
  bool b = false;
  std::vector<std::int64_t> ints;
};

/// Recursive-descent reader for the restricted Python literal of an .npy header.
struct npy_header_parser {
  std::string_view s;
  std::size_t i = 0;
  const std::string& where;

  [[noreturn]] void fail(const std::string& expected) const {
    const std::size_t from = i < s.size() ? i : s.size();
    throw_bad_input(where, "npy header", expected, "'" + std::string(s.substr(from, 24)) + "' at offset " + std::to_string(i) +
                                                       " of header \"" + std::string(s.substr(0, 120)) + "\"");
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  bool eat(char c) {
    ws();
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  }
  std::string string_lit() {
    ws();
    if (i >= s.size() || (s[i] != '\'' && s[i] != '"')) fail("a quoted string");
    const char q = s[i++];
    std::string r;
    while (i < s.size() && s[i] != q) {
      if (s[i] == '\\') fail("a string without escapes");
      r += s[i++];
    }
    if (i >= s.size()) fail("a closing quote");
    ++i;
    return r;
  }
  std::int64_t integer() {
    ws();
    const std::size_t start = i;
    std::int64_t v = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      if (v > (std::int64_t{1} << 48)) fail("a dimension <= 2^48");
      v = v * 10 + (s[i++] - '0');
    }
    if (i == start) fail("a non-negative integer dimension");
    if (i < s.size() && s[i] == 'L') ++i;
    return v;
  }
  npy_value value() {
    ws();
    npy_value v;
    if (i < s.size() && (s[i] == '\'' || s[i] == '"')) {
      v.kind = npy_value::str;
      v.s = string_lit();
    } else if (s.substr(i, 4) == "True") {
      v.kind = npy_value::boolean;
      v.b = true;
      i += 4;
    } else if (s.substr(i, 5) == "False") {
      v.kind = npy_value::boolean;
      i += 5;
    } else if (eat('(')) {
      v.kind = npy_value::tuple;
      while (!eat(')')) {
        if (v.ints.size() > max_tensor_rank) fail("at most 16 dimensions");
        v.ints.push_back(integer());
        if (!eat(',')) {
          if (!eat(')')) fail("',' or ')' in the shape tuple");
          break;
        }
      }
    } else {
      fail("a string, True, False or a tuple of integers");
    }
    return v;
  }
  std::map<std::string, npy_value> dict() {
    std::map<std::string, npy_value> d;
    if (!eat('{')) fail("'{'");
    while (!eat('}')) {
      std::string k = string_lit();
      if (!eat(':')) fail("':'");
      if (d.count(k)) fail("unique keys");
      d[k] = value();
      if (!eat(',')) {
        if (!eat('}')) fail("',' or '}'");
        break;
      }
    }
    ws();
    if (i != s.size()) fail("nothing after the dict but spaces");
    return d;
  }
};

}  // namespace detail

/// Maps a NumPy descr to a dtype; throws bad_input with a specific message for unsupported ones.
inline dtype npy_descr_to_dtype(const std::string& d, const std::string& where) {
  if (d == "<f4") return dtype::f32;
  if (d == "<f2") return dtype::f16;
  if (d == "<i4") return dtype::i32;
  if (d == "|u1" || d == "<u1" || d == ">u1" || d == "=u1") return dtype::u8;
  const std::string expected = "one of '<f4', '<f2', '<i4', '|u1'";
  if (d.find("bfloat16") != std::string::npos || d == "<V2" || d == "|V2" || d == ">V2")
    throw_bad_input(where, "descr", expected + " (bfloat16 is not a NumPy dtype; store bf16 tensors in safetensors)",
                    "'" + d + "'");
  if (!d.empty() && d[0] == '>') throw_bad_input(where, "descr", expected + " (little-endian)", "big-endian '" + d + "'");
  throw_bad_input(where, "descr", expected, "'" + d + "'");
}

/// NumPy descr for a dtype; throws usage for bf16, which NumPy cannot represent.
inline std::string npy_descr(dtype t, const std::string& where) {
  switch (t) {
    case dtype::f32: return "<f4";
    case dtype::f16: return "<f2";
    case dtype::i32: return "<i4";
    case dtype::u8: return "|u1";
    case dtype::bf16: break;
  }
  throw_usage(where + ": bf16 cannot be stored in .npy (bfloat16 is not a NumPy dtype); use safetensors or f16/f32");
}

/// Parses an .npy image into a tensor called `tensor_name`; `where` names it in errors.
inline tensor read_npy_bytes(std::span<const std::uint8_t> b, const std::string& where, std::string tensor_name) {
  if (!is_npy(b)) throw_bad_input(where, "magic", "\\x93NUMPY", hex_prefix(b));
  if (b.size() < 10) throw_bad_input(where, "npy preamble", "at least 10 bytes", std::to_string(b.size()) + " bytes");
  const int major = b[6], minor = b[7];
  if (major < 1 || major > 3 || minor != 0)
    throw_bad_input(where, "npy version", "1.0, 2.0 or 3.0", std::to_string(major) + "." + std::to_string(minor));
  std::size_t pre = 10;
  std::uint64_t hlen = 0;
  if (major == 1) {
    hlen = load_le16(b.data() + 8);
  } else {
    if (b.size() < 12) throw_bad_input(where, "npy preamble", "at least 12 bytes", std::to_string(b.size()) + " bytes");
    hlen = load_le32(b.data() + 8);
    pre = 12;
  }
  if (hlen > b.size() - pre)
    throw_bad_input(where, "npy header length", "at most " + std::to_string(b.size() - pre) + " bytes (the rest of the file)",
                    std::to_string(hlen));
  const std::string_view hs(reinterpret_cast<const char*>(b.data() + pre), static_cast<std::size_t>(hlen));
  detail::npy_header_parser p{hs, 0, where};
  const auto d = p.dict();
  for (const char* k : {"descr", "fortran_order", "shape"})
    if (!d.count(k)) throw_bad_input(where, "npy header", "keys descr, fortran_order, shape", "no '" + std::string(k) + "'");
  if (d.size() != 3) throw_bad_input(where, "npy header", "exactly the keys descr, fortran_order, shape", std::to_string(d.size()) + " keys");
  const auto& descr = d.at("descr");
  if (descr.kind != detail::npy_value::str)
    throw_bad_input(where, "descr", "a simple dtype string", "a structured dtype (not supported)");
  const dtype t = npy_descr_to_dtype(descr.s, where);
  const auto& fo = d.at("fortran_order");
  if (fo.kind != detail::npy_value::boolean) throw_bad_input(where, "fortran_order", "True or False", "another value");
  if (fo.b) throw_bad_input(where, "fortran_order", "False (C order)", "True (Fortran order is not supported; save with np.ascontiguousarray)");
  const auto& sh = d.at("shape");
  if (sh.kind != detail::npy_value::tuple) throw_bad_input(where, "shape", "a tuple of integers", "another value");
  const std::uint64_t need = checked_byte_size(sh.ints, t, where, tensor_name);
  const std::uint64_t have = b.size() - pre - hlen;
  if (need != have)
    throw_bad_input(where, "npy data size", std::to_string(need) + " bytes for " + descr.s + " " + shape_string(sh.ints),
                    std::to_string(have) + " bytes");
  tensor out{std::move(tensor_name), t, sh.ints, {}};
  out.bytes.assign(b.begin() + static_cast<std::ptrdiff_t>(pre + hlen), b.end());
  return out;
}

/// Reads `path`; the tensor is named after the file's stem.
inline tensor read_npy(const std::string& path) {
  const auto bytes = read_file(path);
  return read_npy_bytes(bytes, path, std::filesystem::path(path).stem().string());
}

/// Serialises one tensor as .npy (version 1.0 unless the header needs 2.0).
inline std::vector<std::uint8_t> npy_bytes(const tensor& t, const std::string& where = "npy") {
  validate_tensor(t, where);
  std::string h = "{'descr': '" + npy_descr(t.type, where + ": tensor '" + t.name + "'") + "', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < t.shape.size(); ++i) h += (i ? ", " : "") + std::to_string(t.shape[i]);
  if (t.shape.size() == 1) h += ",";
  h += "), }";
  std::size_t pre = 10;
  std::size_t total = pre + h.size() + 1;
  if ((total + 63) / 64 * 64 - pre > 0xffff) pre = 12;
  total = pre + h.size() + 1;
  const std::size_t padded = (total + 63) / 64 * 64;
  h.append(padded - total, ' ');
  h.push_back('\n');
  std::vector<std::uint8_t> out(npy_magic.begin(), npy_magic.end());
  out.push_back(pre == 10 ? 1 : 2);
  out.push_back(0);
  if (pre == 10)
    append_le16(out, static_cast<std::uint16_t>(h.size()));
  else
    append_le32(out, static_cast<std::uint32_t>(h.size()));
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), t.bytes.begin(), t.bytes.end());
  return out;
}

inline void write_npy(const std::string& path, const tensor& t, bool overwrite = false) {
  const auto bytes = npy_bytes(t, path);
  write_file_atomic(path, bytes, overwrite);
}

}  // namespace kvcodec::io
