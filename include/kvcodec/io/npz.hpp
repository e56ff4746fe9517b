// kvcodec/io/npz.hpp — NumPy .npz archives (a zip of .npy members) to and from io::tensor_file.
//
// Format: PKWARE APPNOTE zip. The reader locates the end-of-central-directory record (and the zip64
// records numpy writes for large archives), walks the central directory and reads each member's data
// through its local header; members may be stored (method 0) or deflated (method 8, zlib raw inflate),
// and each is checked against its CRC-32. Member "foo.npy" becomes tensor "foo"; a member
// "__metadata__.npy" holding a u8 array of JSON {string: string} becomes tensor_file::metadata (this
// library's convention, so metadata survives a round trip). Invariant: every count, offset and size
// is checked against the archive's real size before anything is allocated; a deflated member may not
// claim more than the maximum deflate ratio (1032:1) of its compressed size, and it must inflate to
// exactly its declared size. The writer emits stored members with fixed timestamps (1980-01-01), so
// equal inputs give equal bytes; archives needing zip64 (> 4 GiB or > 65535 members) are not written.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include "kvcodec/core/error.hpp"
#include "kvcodec/io/file.hpp"
#include "kvcodec/io/npy.hpp"
#include "kvcodec/io/safetensors.hpp"

namespace kvcodec::io {

inline constexpr std::uint64_t max_npz_member_bytes = std::uint64_t{1} << 40;

inline bool is_zip(std::span<const std::uint8_t> b) noexcept {
  return b.size() >= 4 && b[0] == 'P' && b[1] == 'K' && ((b[2] == 3 && b[3] == 4) || (b[2] == 5 && b[3] == 6));
}

namespace detail {

struct zip_member {
  std::string name;
  std::uint16_t flags = 0, method = 0;
  std::uint32_t crc = 0;
  std::uint64_t csize = 0, usize = 0, offset = 0;
};

struct inflate_guard {
  z_stream* zs;
  ~inflate_guard() { inflateEnd(zs); }
};

inline std::vector<std::uint8_t> inflate_member(const std::uint8_t* src, const zip_member& m, const std::string& where) {
  const std::string field = "member '" + m.name + "'";
  std::vector<std::uint8_t> out(static_cast<std::size_t>(m.usize));
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) throw_io(where + ": zlib inflateInit2 failed");
  inflate_guard guard{&zs};
  constexpr std::uint64_t chunk = std::uint64_t{1} << 30;
  std::uint64_t in_pos = 0, out_pos = 0;
  unsigned char scratch = 0;
  for (;;) {
    if (zs.avail_in == 0 && in_pos < m.csize) {
      const std::uint64_t n = std::min(m.csize - in_pos, chunk);
      zs.next_in = const_cast<Bytef*>(src + in_pos);
      zs.avail_in = static_cast<uInt>(n);
      in_pos += n;
    }
    const bool full = out_pos >= m.usize;
    if (!full) {
      const std::uint64_t n = std::min(m.usize - out_pos, chunk);
      zs.next_out = out.data() + out_pos;
      zs.avail_out = static_cast<uInt>(n);
    } else {
      zs.next_out = &scratch;
      zs.avail_out = 1;
    }
    const uInt before = zs.avail_out;
    const int rc = inflate(&zs, Z_NO_FLUSH);
    const uInt produced = before - zs.avail_out;
    if (full && produced > 0)
      throw_bad_input(where, field, "to inflate to its declared " + std::to_string(m.usize) + " bytes", "more data");
    out_pos += full ? 0 : produced;
    if (rc == Z_STREAM_END) break;
    if (rc == Z_BUF_ERROR && zs.avail_in == 0 && in_pos >= m.csize)
      throw_bad_input(where, field, "a complete deflate stream", "a stream truncated after " + std::to_string(m.csize) + " bytes");
    if (rc != Z_OK && rc != Z_BUF_ERROR)
      throw_bad_input(where, field, "valid deflate data", std::string("zlib error: ") + (zs.msg ? zs.msg : std::to_string(rc)));
  }
  if (out_pos != m.usize)
    throw_bad_input(where, field, "to inflate to its declared " + std::to_string(m.usize) + " bytes", std::to_string(out_pos) + " bytes");
  return out;
}

/// Applies the zip64 extended-information extra field to the members whose 32-bit fields are 0xffffffff.
inline void apply_zip64_extra(const std::uint8_t* extra, std::size_t len, zip_member& m, bool need_u, bool need_c,
                              bool need_o, const std::string& where) {
  std::size_t p = 0;
  while (p + 4 <= len) {
    const std::uint16_t id = load_le16(extra + p), sz = load_le16(extra + p + 2);
    if (p + 4 + sz > len) break;
    if (id == 0x0001) {
      std::size_t q = p + 4;
      const std::size_t end = q + sz;
      const auto take = [&](std::uint64_t& dst) {
        if (q + 8 > end) throw_bad_input(where, "member '" + m.name + "' zip64 extra field", "8 more bytes", "a short field");
        dst = load_le64(extra + q);
        q += 8;
      };
      if (need_u) take(m.usize);
      if (need_c) take(m.csize);
      if (need_o) take(m.offset);
      return;
    }
    p += 4 + sz;
  }
  throw_bad_input(where, "member '" + m.name + "'", "a zip64 extra field for its 0xffffffff sizes", "none");
}

/// Reads the central directory; every entry's local header and data range is checked against `b`.
inline std::vector<zip_member> zip_directory(std::span<const std::uint8_t> b, const std::string& where, std::uint64_t& data_limit) {
  const std::uint64_t size = b.size();
  if (size < 22) throw_bad_input(where, "zip", "an end-of-central-directory record (22 bytes)", std::to_string(size) + " bytes");
  std::uint64_t eocd = size;
  const std::uint64_t lowest = size - 22 > 0xffff ? size - 22 - 0xffff : 0;
  for (std::uint64_t p = size - 22 + 1; p-- > lowest;) {
    if (load_le32(b.data() + p) == 0x06054b50u && p + 22 + load_le16(b.data() + p + 20) == size) {
      eocd = p;
      break;
    }
  }
  if (eocd == size) throw_bad_input(where, "zip", "an end-of-central-directory record", "none (not a zip archive or truncated)");
  const std::uint8_t* e = b.data() + eocd;
  if (load_le16(e + 4) != 0 || load_le16(e + 6) != 0) throw_bad_input(where, "zip", "a single-disk archive", "a multi-disk archive");
  std::uint64_t count = load_le16(e + 10), cd_size = load_le32(e + 12), cd_off = load_le32(e + 16);
  std::uint64_t cd_limit = eocd;
  if (count == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
    if (eocd < 20 || load_le32(b.data() + eocd - 20) != 0x07064b50u)
      throw_bad_input(where, "zip64", "an end-of-central-directory locator", "none");
    const std::uint64_t z = load_le64(b.data() + eocd - 20 + 8);
    if (z > eocd - 20 || eocd - 20 - z < 56 || load_le32(b.data() + z) != 0x06064b50u)
      throw_bad_input(where, "zip64", "an end-of-central-directory record before offset " + std::to_string(eocd - 20),
                      "offset " + std::to_string(z));
    count = load_le64(b.data() + z + 32);
    cd_size = load_le64(b.data() + z + 40);
    cd_off = load_le64(b.data() + z + 48);
    cd_limit = z;
  }
  if (cd_off > cd_limit || cd_size > cd_limit - cd_off)
    throw_bad_input(where, "central directory", "within the " + std::to_string(cd_limit) + " bytes before its end record",
                    "offset " + std::to_string(cd_off) + " size " + std::to_string(cd_size));
  if (count > cd_size / 46)
    throw_bad_input(where, "central directory", "at most " + std::to_string(cd_size / 46) + " entries in " + std::to_string(cd_size) + " bytes",
                    std::to_string(count) + " entries");
  std::vector<zip_member> members;
  members.reserve(static_cast<std::size_t>(count));
  std::uint64_t p = cd_off;
  const std::uint64_t cd_end = cd_off + cd_size;
  for (std::uint64_t i = 0; i < count; ++i) {
    if (cd_end - p < 46 || load_le32(b.data() + p) != 0x02014b50u)
      throw_bad_input(where, "central directory entry " + std::to_string(i), "signature PK\\1\\2 within the directory",
                      "offset " + std::to_string(p));
    const std::uint8_t* c = b.data() + p;
    const std::uint64_t nlen = load_le16(c + 28), xlen = load_le16(c + 30), klen = load_le16(c + 32);
    if (46 + nlen + xlen + klen > cd_end - p)
      throw_bad_input(where, "central directory entry " + std::to_string(i), "name and extra fields within the directory",
                      std::to_string(46 + nlen + xlen + klen) + " bytes past offset " + std::to_string(p));
    zip_member m;
    m.name.assign(reinterpret_cast<const char*>(c + 46), static_cast<std::size_t>(nlen));
    m.flags = load_le16(c + 8);
    m.method = load_le16(c + 10);
    m.crc = load_le32(c + 16);
    m.csize = load_le32(c + 20);
    m.usize = load_le32(c + 24);
    m.offset = load_le32(c + 42);
    const bool nu = m.usize == 0xffffffffu, nc = m.csize == 0xffffffffu, no = m.offset == 0xffffffffu;
    if (nu || nc || no) apply_zip64_extra(c + 46 + nlen, static_cast<std::size_t>(xlen), m, nu, nc, no, where);
    members.push_back(std::move(m));
    p += 46 + nlen + xlen + klen;
  }
  data_limit = cd_off;
  return members;
}

}  // namespace detail

/// Parses an .npz image; `where` names it in errors.
inline tensor_file read_npz_bytes(std::span<const std::uint8_t> b, const std::string& where) {
  std::uint64_t data_limit = 0;
  const auto members = detail::zip_directory(b, where, data_limit);
  tensor_file out;
  std::set<std::string> names;
  for (const auto& m : members) {
    const std::string field = "member '" + m.name + "'";
    if (m.flags & 1u) throw_bad_input(where, field, "an unencrypted member", "an encrypted one");
    if (m.method != 0 && m.method != 8)
      throw_bad_input(where, field + " compression", "0 (stored) or 8 (deflate)", std::to_string(m.method));
    if (m.name.size() < 5 || m.name.compare(m.name.size() - 4, 4, ".npy") != 0)
      throw_bad_input(where, field, "a name ending in .npy", "'" + m.name + "'");
    if (m.usize > max_npz_member_bytes)
      throw_bad_input(where, field + " size", "at most " + std::to_string(max_npz_member_bytes) + " bytes", std::to_string(m.usize));
    if (m.method == 0 && m.usize != m.csize)
      throw_bad_input(where, field + " size", "equal stored and uncompressed sizes", std::to_string(m.csize) + " vs " + std::to_string(m.usize));
    if (m.offset > data_limit || data_limit - m.offset < 30 || load_le32(b.data() + m.offset) != 0x04034b50u)
      throw_bad_input(where, field + " local header", "signature PK\\3\\4 before the central directory at " + std::to_string(data_limit),
                      "offset " + std::to_string(m.offset));
    const std::uint8_t* l = b.data() + m.offset;
    const std::uint64_t nlen = load_le16(l + 26), xlen = load_le16(l + 28);
    const std::uint64_t data_off = m.offset + 30 + nlen + xlen;
    if (data_off > data_limit || m.csize > data_limit - data_off)
      throw_bad_input(where, field + " data", "within the " + std::to_string(data_limit) + " bytes before the central directory",
                      std::to_string(m.csize) + " bytes at offset " + std::to_string(data_off));
    if (m.method == 8 && m.usize > m.csize * 1032 + 1024)
      throw_bad_input(where, field + " size", "at most 1032 x its compressed size " + std::to_string(m.csize) + " (deflate's limit)",
                      std::to_string(m.usize) + " bytes");
    if (nlen != m.name.size() || std::memcmp(l + 30, m.name.data(), m.name.size()) != 0)
      throw_bad_input(where, field + " local header", "the same name as the central directory", "a different name");
    std::vector<std::uint8_t> storage;
    std::span<const std::uint8_t> payload;
    if (m.method == 0) {
      payload = b.subspan(static_cast<std::size_t>(data_off), static_cast<std::size_t>(m.csize));
    } else {
      storage = detail::inflate_member(b.data() + data_off, m, where);
      payload = storage;
    }
    const std::uint32_t crc = static_cast<std::uint32_t>(crc32_z(0L, payload.data(), payload.size()));
    if (crc != m.crc)
      throw_bad_input(where, field + " crc32", std::to_string(m.crc), std::to_string(crc));
    const std::string tname = m.name.substr(0, m.name.size() - 4);
    if (!names.insert(tname).second) throw_bad_input(where, "members", "unique names", "'" + m.name + "' twice");
    tensor t = read_npy_bytes(payload, where + ": " + m.name, tname);
    if (tname == "__metadata__") {
      if (t.type != dtype::u8 || t.shape.size() != 1)
        throw_bad_input(where, field, "a 1-D u8 array of JSON", std::string(dtype_name(t.type)) + " " + shape_string(t.shape));
      nlohmann::json j = nlohmann::json::parse(t.bytes.begin(), t.bytes.end(), nullptr, false);
      if (j.is_discarded() || !j.is_object()) throw_bad_input(where, field, "a JSON object of strings", "invalid JSON");
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!it.value().is_string()) throw_bad_input(where, field + " key '" + it.key() + "'", "a string", it.value().type_name());
        out.metadata[it.key()] = it.value().get<std::string>();
      }
      continue;
    }
    out.tensors.push_back(std::move(t));
  }
  return out;
}

inline tensor_file read_npz(const std::string& path) {
  const auto bytes = read_file(path);
  return read_npz_bytes(bytes, path);
}

/// Serialises `f` as an .npz of stored members (tensors in vector order, then __metadata__ if any).
inline std::vector<std::uint8_t> npz_bytes(const tensor_file& f, const std::string& where = "npz") {
  std::vector<tensor> extra;
  if (!f.metadata.empty()) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, v] : f.metadata) j[k] = v;
    std::string s;
    try {
      s = j.dump();
    } catch (const nlohmann::json::exception& e) {
      throw_bad_input(where, "metadata", "valid UTF-8", e.what());
    }
    extra.push_back(make_u8_tensor("metadata", {static_cast<std::int64_t>(s.size())}, reinterpret_cast<const std::uint8_t*>(s.data())));
  }
  std::vector<std::pair<std::string, const tensor*>> all;
  std::set<std::string_view> names;
  for (const auto& t : f.tensors) {
    if (!names.insert(t.name).second) throw_bad_input(where, "tensor name", "unique names", "'" + t.name + "' twice");
    all.emplace_back(t.name + ".npy", &t);
  }
  for (const auto& t : extra) all.emplace_back("__metadata__.npy", &t);
  if (all.size() > 0xfffe) throw error(error_kind::unsupported, where + ": more than 65534 members needs zip64, which is not written");
  std::vector<std::uint8_t> out, cd;
  const auto too_big = [&] { throw error(error_kind::unsupported, where + ": archive larger than 4 GiB needs zip64, which is not written"); };
  for (const auto& member : all) {
    // Plain references, not a structured binding: the header lambda below captures them (clang < 16
    // rejects lambdas that capture structured bindings).
    const std::string& name = member.first;
    const tensor* t = member.second;
    const auto npy = npy_bytes(*t, where);
    if (name.size() > 0xffff) throw_bad_input(where, "tensor name", "at most 65531 bytes", std::to_string(t->name.size()) + " bytes");
    if (npy.size() >= 0xffffffffu || out.size() >= 0xffffffffu) too_big();
    const auto crc = static_cast<std::uint32_t>(crc32_z(0L, npy.data(), npy.size()));
    const auto offset = static_cast<std::uint32_t>(out.size());
    const auto header = [&](std::vector<std::uint8_t>& o, bool central) {
      append_le32(o, central ? 0x02014b50u : 0x04034b50u);
      if (central) append_le16(o, 20);  // version made by
      append_le16(o, 20);               // version needed
      append_le16(o, 0x0800);           // UTF-8 names
      append_le16(o, 0);                // stored
      append_le16(o, 0);                // time 00:00
      append_le16(o, 0x21);             // date 1980-01-01
      append_le32(o, crc);
      append_le32(o, static_cast<std::uint32_t>(npy.size()));
      append_le32(o, static_cast<std::uint32_t>(npy.size()));
      append_le16(o, static_cast<std::uint16_t>(name.size()));
      append_le16(o, 0);  // extra
      if (central) {
        append_le16(o, 0);  // comment
        append_le16(o, 0);  // disk
        append_le16(o, 0);  // internal attributes
        append_le32(o, 0);  // external attributes
        append_le32(o, offset);
      }
      o.insert(o.end(), name.begin(), name.end());
    };
    header(out, false);
    out.insert(out.end(), npy.begin(), npy.end());
    header(cd, true);
  }
  if (out.size() + cd.size() >= 0xffffffffu) too_big();
  const auto cd_off = static_cast<std::uint32_t>(out.size());
  out.insert(out.end(), cd.begin(), cd.end());
  append_le32(out, 0x06054b50u);
  append_le16(out, 0);
  append_le16(out, 0);
  append_le16(out, static_cast<std::uint16_t>(all.size()));
  append_le16(out, static_cast<std::uint16_t>(all.size()));
  append_le32(out, static_cast<std::uint32_t>(cd.size()));
  append_le32(out, cd_off);
  append_le16(out, 0);
  return out;
}

inline void write_npz(const std::string& path, const tensor_file& f, bool overwrite = false) {
  const auto bytes = npz_bytes(f, path);
  write_file_atomic(path, bytes, overwrite);
}

}  // namespace kvcodec::io
