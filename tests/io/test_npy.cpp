#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <zlib.h>

#include "kvcodec/io/npy.hpp"
#include "kvcodec/io/npz.hpp"
#include "../support/io_helpers.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_io_npy {

using namespace kvcodec;
using namespace kvcodec::io;

namespace {

using test::catch_error;
using test::caught;

std::vector<std::uint8_t> to_bytes(const std::string& s) { return {s.begin(), s.end()}; }

/// An .npy image with a hand-written header (version major.0), padded like numpy does.
std::vector<std::uint8_t> npy_image(const std::string& dict, const std::vector<std::uint8_t>& data, int major = 1) {
  std::string h = dict;
  const std::size_t pre = major == 1 ? 10 : 12;
  while ((pre + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::vector<std::uint8_t> out = to_bytes(std::string("\x93NUMPY", 6));
  out.push_back(static_cast<std::uint8_t>(major));
  out.push_back(0);
  if (major == 1) append_le16(out, static_cast<std::uint16_t>(h.size()));
  else append_le32(out, static_cast<std::uint32_t>(h.size()));
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::vector<std::uint8_t> raw_deflate(const std::vector<std::uint8_t>& in) {
  z_stream zs{};
  REQUIRE(deflateInit2(&zs, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::vector<std::uint8_t> out(deflateBound(&zs, static_cast<uLong>(in.size())));
  zs.next_in = const_cast<Bytef*>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

struct zmember {
  std::string name;
  std::vector<std::uint8_t> data;
  bool deflate = false;
  std::int64_t usize = -1, csize = -1;  // declared sizes in the central directory (-1 = true)
  std::int64_t crc = -1;
  bool zip64_local = false, zip64_central = false;
};

/// A zip archive built field by field, so tests can make it lie.
std::vector<std::uint8_t> build_zip(const std::vector<zmember>& ms) {
  std::vector<std::uint8_t> out, cd;
  for (const auto& m : ms) {
    const auto stored = m.deflate ? raw_deflate(m.data) : m.data;
    const auto crc = m.crc >= 0 ? static_cast<std::uint32_t>(m.crc) : static_cast<std::uint32_t>(crc32(0, m.data.data(), static_cast<uInt>(m.data.size())));
    const std::uint64_t us = m.usize >= 0 ? static_cast<std::uint64_t>(m.usize) : m.data.size();
    const std::uint64_t cs = m.csize >= 0 ? static_cast<std::uint64_t>(m.csize) : stored.size();
    const auto offset = static_cast<std::uint32_t>(out.size());
    const auto hdr = [&](std::vector<std::uint8_t>& o, bool central) {
      const bool z64 = central ? m.zip64_central : m.zip64_local;
      append_le32(o, central ? 0x02014b50u : 0x04034b50u);
      if (central) append_le16(o, 45);
      append_le16(o, 45);
      append_le16(o, 0);
      append_le16(o, m.deflate ? 8 : 0);
      append_le16(o, 0);
      append_le16(o, 0x21);
      append_le32(o, crc);
      append_le32(o, z64 ? 0xffffffffu : static_cast<std::uint32_t>(cs));
      append_le32(o, z64 ? 0xffffffffu : static_cast<std::uint32_t>(us));
      append_le16(o, static_cast<std::uint16_t>(m.name.size()));
      append_le16(o, z64 ? 20 : 0);
      if (central) {
        append_le16(o, 0);
        append_le16(o, 0);
        append_le16(o, 0);
        append_le32(o, 0);
        append_le32(o, offset);
      }
      o.insert(o.end(), m.name.begin(), m.name.end());
      if (z64) {
        append_le16(o, 1);
        append_le16(o, 16);
        append_le64(o, us);
        append_le64(o, cs);
      }
    };
    hdr(out, false);
    out.insert(out.end(), stored.begin(), stored.end());
    hdr(cd, true);
  }
  const auto cd_off = static_cast<std::uint32_t>(out.size());
  out.insert(out.end(), cd.begin(), cd.end());
  append_le32(out, 0x06054b50u);
  append_le16(out, 0);
  append_le16(out, 0);
  append_le16(out, static_cast<std::uint16_t>(ms.size()));
  append_le16(out, static_cast<std::uint16_t>(ms.size()));
  append_le32(out, static_cast<std::uint32_t>(cd.size()));
  append_le32(out, cd_off);
  append_le16(out, 0);
  return out;
}

tensor sample(dtype t, std::vector<std::int64_t> shape, std::string name = "x") {
  tensor r{std::move(name), t, std::move(shape), {}};
  r.bytes.resize(static_cast<std::size_t>(r.numel() * dtype_size(t)));
  for (std::size_t i = 0; i < r.bytes.size(); ++i) r.bytes[i] = static_cast<std::uint8_t>(i * 37 + 11);
  if (t == dtype::f16 || t == dtype::f32)  // keep the values finite and well-formed
    for (std::size_t i = dtype_size(t) - 1; i < r.bytes.size(); i += dtype_size(t)) r.bytes[i] &= 0x3f;
  return r;
}

}  // namespace

TEST_CASE("npy: round trip of each supported dtype and odd shapes") {
  for (dtype t : {dtype::f32, dtype::f16, dtype::i32, dtype::u8}) {
    for (const auto& shape : std::vector<std::vector<std::int64_t>>{{}, {0}, {1}, {7}, {3, 5}, {2, 3, 4}, {1, 1, 1, 1, 1}}) {
      const tensor a = sample(t, shape);
      const auto b = npy_bytes(a);
      const std::size_t hlen = load_le16(b.data() + 8);
      CHECK((10 + hlen) % 64 == 0);
      CHECK(b[9 + hlen] == '\n');
      CHECK(b[6] == 1);
      const tensor r = read_npy_bytes(b, "mem", "x");
      CHECK(r.type == t);
      CHECK(r.shape == shape);
      CHECK(r.bytes == a.bytes);
    }
  }
}

TEST_CASE("npy: reads the header numpy writes and versions 2.0 and 3.0") {
  const float v[3] = {0.0f, 1.0f, 2.0f};
  std::vector<std::uint8_t> data(12);
  std::memcpy(data.data(), v, 12);
  std::string hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
  hdr.append(128 - 10 - 1 - hdr.size(), ' ');
  hdr += '\n';
  std::vector<std::uint8_t> img = to_bytes(std::string("\x93NUMPY\x01\x00", 8));
  append_le16(img, static_cast<std::uint16_t>(hdr.size()));
  img.insert(img.end(), hdr.begin(), hdr.end());
  img.insert(img.end(), data.begin(), data.end());
  tensor x{"x", dtype::f32, {3}, data};
  CHECK(npy_bytes(x) == img);  // byte-identical to numpy's np.save(np.arange(3, dtype='<f4'))
  const tensor r = read_npy_bytes(img, "numpy", "arange");
  CHECK(r.shape == std::vector<std::int64_t>{3});
  CHECK(tensor_to_floats(r, "t")[2] == 2.0f);

  for (int major : {2, 3}) {
    const auto b = npy_image("{\"descr\":'<i4',\"shape\":(2, 1),'fortran_order':False}", std::vector<std::uint8_t>(8, 1), major);
    const tensor t = read_npy_bytes(b, "v", "y");
    CHECK(t.type == dtype::i32);
    CHECK(t.shape == std::vector<std::int64_t>{2, 1});
  }
  const auto b = npy_image("{'descr': '|u1', 'fortran_order': False, 'shape': (4L,), }", {1, 2, 3, 4});
  CHECK(read_npy_bytes(b, "py2", "z").shape == std::vector<std::int64_t>{4});
}

TEST_CASE("npy: unsupported and malformed input") {
  const std::vector<std::uint8_t> eight(8, 0);
  const auto err = [](const std::vector<std::uint8_t>& b) { return catch_error([&] { read_npy_bytes(b, "f.npy", "f"); }); };
  SUBCASE("bfloat16 is rejected clearly on read and on write") {
    const auto e = err(npy_image("{'descr': '<V2', 'fortran_order': False, 'shape': (4,), }", eight));
    CHECK(e.kind == error_kind::bad_input);
    CHECK(e.has("bfloat16"));
    CHECK(err(npy_image("{'descr': 'bfloat16', 'fortran_order': False, 'shape': (4,), }", eight)).has("bfloat16"));
    tensor t{"b", dtype::bf16, {4}, eight};
    const auto w = catch_error([&] { npy_bytes(t); });
    CHECK(w.kind == error_kind::usage);
    CHECK(w.has("bf16"));
  }
  SUBCASE("fortran order") {
    CHECK(err(npy_image("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", eight)).has("Fortran"));
  }
  SUBCASE("big-endian and other dtypes") {
    CHECK(err(npy_image("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", eight)).has("big-endian"));
    CHECK(err(npy_image("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", eight)).has("'<f8'"));
    CHECK(err(npy_image("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", eight)).thrown);
  }
  SUBCASE("sizes") {
    CHECK(err(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", eight)).has("12 bytes"));
    CHECK(err(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", eight)).has("8 bytes"));
    auto b = npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", eight);
    b[8] = 0xff;
    b[9] = 0xff;
    CHECK(err(b).has("header length"));
    CHECK(err(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999,), }", eight)).has("2^48"));
  }
  SUBCASE("magic / version / header syntax") {
    CHECK(err(to_bytes("hello world, not numpy")).has("magic"));
    CHECK(err(to_bytes(std::string("\x93NUMPY\x01", 7))).has("preamble"));
    auto b = npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", eight);
    b[6] = 4;
    CHECK(err(b).has("version"));
    CHECK(err(npy_image("{'descr': '<f4', 'shape': (2,), }", eight)).has("fortran_order"));
    CHECK(err(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", eight)).thrown);
    CHECK(err(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': True}", eight)).has("exactly"));
    CHECK(err(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (2,) ", eight)).has("npy header"));
    CHECK(err(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", eight)).has("integer"));
    CHECK(err(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } trailing", eight)).has("after the dict"));
  }
  SUBCASE("random garbage after a valid magic") {
    std::mt19937 rng(7);
    for (int i = 0; i < 300; ++i) {
      std::vector<std::uint8_t> b = to_bytes(std::string("\x93NUMPY\x01\x00", 8));
      const std::size_t n = rng() % 80;
      for (std::size_t k = 0; k < n; ++k) b.push_back(static_cast<std::uint8_t>(rng()));
      if (b.size() >= 10 && rng() % 2) {
        b[8] = static_cast<std::uint8_t>(n > 2 ? (rng() % (n - 1)) : 0);
        b[9] = 0;
      }
      CHECK(err(b).thrown);
    }
  }
}

TEST_CASE("npy: file read names the tensor after the stem - overwrite is refused") {
  namespace fs = std::filesystem;
  const std::string dir = (fs::temp_directory_path() / ("kvcodec_npy_" + std::to_string(std::random_device{}()))).string();
  fs::create_directories(dir);
  const tensor a = sample(dtype::f32, {2, 2}, "ignored");
  write_npy(dir + "/keys.npy", a);
  const tensor r = read_npy(dir + "/keys.npy");
  CHECK(r.name == "keys");
  CHECK(r.bytes == a.bytes);
  CHECK(catch_error([&] { write_npy(dir + "/keys.npy", a); }).kind == error_kind::usage);
  write_npy(dir + "/keys.npy", a, true);
  fs::remove_all(dir);
}

TEST_CASE("npz: round trip with metadata / deterministic bytes") {
  tensor_file f;
  f.tensors.push_back(sample(dtype::f32, {2, 3}, "past_key_values.0.key"));
  f.tensors.push_back(sample(dtype::f16, {5}, "h"));
  f.tensors.push_back(sample(dtype::i32, {}, "scalar"));
  f.tensors.push_back(sample(dtype::u8, {0}, "empty"));
  f.metadata = {{"model", "m"}, {"rope", "interleaved-pairs"}};
  const auto z = npz_bytes(f);
  CHECK(z == npz_bytes(f));
  CHECK(is_zip(z));
  const tensor_file g = read_npz_bytes(z, "mem.npz");
  REQUIRE(g.tensors.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(g.tensors[i].name == f.tensors[i].name);
    CHECK(g.tensors[i].type == f.tensors[i].type);
    CHECK(g.tensors[i].shape == f.tensors[i].shape);
    CHECK(g.tensors[i].bytes == f.tensors[i].bytes);
  }
  CHECK(g.metadata == f.metadata);
  CHECK(read_npz_bytes(npz_bytes(tensor_file{}), "empty").tensors.empty());
  tensor_file bf;
  bf.tensors.push_back(sample(dtype::bf16, {2}, "b"));
  CHECK(catch_error([&] { npz_bytes(bf); }).kind == error_kind::usage);
}

TEST_CASE("npz: deflated members and numpy's zip64 headers") {
  const tensor a = sample(dtype::f32, {64, 8}, "a");
  std::vector<std::uint8_t> zeros_data(4096, 0);
  const auto zeros_npy = npy_bytes(tensor{"z", dtype::u8, {4096}, zeros_data});
  const auto z = build_zip({{"a.npy", npy_bytes(a), true}, {"dir/z.npy", zeros_npy, true}, {"s.npy", npy_bytes(a), false}});
  const tensor_file f = read_npz_bytes(z, "deflated.npz");
  REQUIRE(f.tensors.size() == 3);
  CHECK(f.tensors[0].bytes == a.bytes);
  CHECK(f.tensors[1].name == "dir/z");
  CHECK(f.tensors[1].bytes == zeros_data);
  CHECK(f.tensors[2].name == "s");

  zmember m{"a.npy", npy_bytes(a)};
  m.zip64_local = true;  // numpy writes force_zip64 local headers
  CHECK(read_npz_bytes(build_zip({m}), "z64").tensors[0].bytes == a.bytes);
  m.zip64_central = true;
  m.deflate = true;
  CHECK(read_npz_bytes(build_zip({m}), "z64c").tensors[0].bytes == a.bytes);
}

TEST_CASE("npz: lying and broken archives are rejected before allocation") {
  const tensor a = sample(dtype::f32, {16}, "a");
  const auto npy = npy_bytes(a);
  const auto err = [](const std::vector<std::uint8_t>& b) { return catch_error([&] { read_npz_bytes(b, "bad.npz"); }); };
  SUBCASE("stored member claiming more bytes than the file has") {
    zmember m{"a.npy", npy};
    m.usize = m.csize = 1'000'000;
    const auto e = err(build_zip({m}));
    CHECK(e.kind == error_kind::bad_input);
    CHECK(e.has("member 'a.npy' data"));
  }
  SUBCASE("stored member with different stored and real sizes") {
    zmember m{"a.npy", npy};
    m.usize = static_cast<std::int64_t>(npy.size()) + 1;
    CHECK(err(build_zip({m})).has("equal stored and uncompressed"));
  }
  SUBCASE("deflated member claiming an impossible ratio") {
    zmember m{"a.npy", npy, true};
    m.zip64_central = true;
    m.usize = std::int64_t{1} << 39;
    CHECK(err(build_zip({m})).has("1032"));
    m.usize = std::int64_t{1} << 45;
    CHECK(err(build_zip({m})).has("at most"));
  }
  SUBCASE("deflated member whose declared size is wrong either way") {
    zmember m{"a.npy", npy, true};
    m.usize = static_cast<std::int64_t>(npy.size()) + 5;
    CHECK(err(build_zip({m})).has("inflate to its declared"));
    m.usize = static_cast<std::int64_t>(npy.size()) - 5;
    CHECK(err(build_zip({m})).has("more data"));
  }
  SUBCASE("deflate stream cut short or corrupted") {
    zmember m{"a.npy", npy, true};
    const auto full = raw_deflate(npy);
    m.csize = static_cast<std::int64_t>(full.size()) - 3;
    CHECK(err(build_zip({m})).thrown);
    auto z = build_zip({zmember{"a.npy", npy, true}});
    for (std::size_t i = 30 + 5; i < 30 + 5 + 6; ++i) z[i] ^= 0x5a;
    CHECK(err(z).thrown);
  }
  SUBCASE("crc mismatch") {
    zmember m{"a.npy", npy};
    m.crc = 1234;
    CHECK(err(build_zip({m})).has("crc32"));
  }
  SUBCASE("structure") {
    auto z = build_zip({zmember{"a.npy", npy}});
    CHECK(err(std::vector<std::uint8_t>(z.begin(), z.end() - 1)).has("end-of-central-directory"));
    CHECK(err(std::vector<std::uint8_t>(z.begin(), z.begin() + 40)).has("end-of-central-directory"));
    auto count = z;
    count[count.size() - 12] = 200;  // total entries
    CHECK(err(count).has("entries"));
    auto cdoff = z;
    cdoff[cdoff.size() - 6] ^= 0x40;
    CHECK(err(cdoff).has("central directory"));
    auto local = z;
    local[0] = 'X';
    CHECK(err(local).has("local header"));
    CHECK(err(build_zip({zmember{"a.txt", npy}})).has(".npy"));
    CHECK(err(build_zip({zmember{"a.npy", npy}, zmember{"a.npy", npy}})).has("twice"));
    CHECK(err(build_zip({zmember{"a.npy", {1, 2, 3}}})).has("magic"));
    CHECK(err(build_zip({zmember{"__metadata__.npy", npy}})).has("JSON"));
  }
  SUBCASE("random garbage and mutations never crash") {
    std::mt19937 rng(99);
    for (int i = 0; i < 200; ++i) {
      std::vector<std::uint8_t> b = {'P', 'K', 3, 4};
      const std::size_t n = rng() % 200;
      for (std::size_t k = 0; k < n; ++k) b.push_back(static_cast<std::uint8_t>(rng()));
      CHECK(err(b).thrown);
    }
    const auto good = build_zip({zmember{"a.npy", npy, true}, zmember{"b.npy", npy}});
    for (int i = 0; i < 1000; ++i) {
      auto b = good;
      b[rng() % b.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
      try {
        read_npz_bytes(b, "mutated");
      } catch (const kvcodec::error&) {
      }
    }
  }
}

}  // namespace kvcodec_test_io_npy
