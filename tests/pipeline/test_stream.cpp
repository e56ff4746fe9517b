// Encode from views and decode into views (every layout, paged included), streaming segments that
// arrive in pieces, random access, thread-count independence, and the bad inputs of each.
#include <doctest/doctest.h>

#include <cstring>
#include <random>

#include <unistd.h>

#include <filesystem>

#include "kvcodec/kvcodec.hpp"
#include "../support/random_cache.hpp"
#include "kvcodec/pipeline/decode_file.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_pipeline_stream {

using namespace kvcodec;
using kvcodec::test::random_cache;

namespace {

/// The cache's K/V stored in dtype `t` in a Hugging Face [1, H, T, D] buffer per layer and tensor.
struct hf_buffers {
  std::vector<std::vector<std::byte>> k, v;
  hf_buffers(const kv_cache& c, dtype t) {
    for (int l = 0; l < c.shape.layers; ++l) {
      for (auto* pair : {&k, &v}) {
        const auto& src = pair == &k ? c.keys[static_cast<std::size_t>(l)] : c.values[static_cast<std::size_t>(l)];
        std::vector<std::byte> b(src.size() * dtype_size(t));
        encode_floats(src.data(), src.size(), t, reinterpret_cast<std::uint8_t*>(b.data()));
        pair->push_back(std::move(b));
      }
    }
  }
  template <class V>
  V view(const kv_cache& c, dtype t) {
    std::vector<typename std::conditional_t<std::is_same_v<V, kv_view>, std::byte*, const std::byte*>> ks, vs;
    for (auto& b : k) ks.push_back(b.data());
    for (auto& b : v) vs.push_back(b.data());
    return V::hf(ks, vs, t, c.shape.kv_heads, c.shape.tokens, c.shape.head_dim);
  }
};

/// Element (l, K/V, h, t, d) of a view, as f32.
float at(const kv_view& w, int l, bool key, int h, std::int64_t t, int d) {
  float x = 0;
  decode_floats(reinterpret_cast<const std::uint8_t*>(w.row(l, key, h, t) + static_cast<std::int64_t>(d) * w.s_dim * static_cast<std::int64_t>(dtype_size(w.dt))), 1, w.dt, &x);
  return x;
}

void check_equal(const kv_view& w, const kv_cache& ref) {
  bool same = true;
  for (int l = 0; l < ref.shape.layers; ++l)
    for (int kvi = 0; kvi < 2; ++kvi)
      for (int h = 0; h < ref.shape.kv_heads; ++h)
        for (std::int64_t t = 0; t < ref.shape.tokens; ++t)
          for (int d = 0; d < ref.shape.head_dim; ++d) {
            const auto& src = kvi == 0 ? ref.keys : ref.values;
            const float want = round_to_dtype(src[static_cast<std::size_t>(l)][(static_cast<std::size_t>(h) * static_cast<std::size_t>(ref.shape.tokens) + static_cast<std::size_t>(t)) * static_cast<std::size_t>(ref.shape.head_dim) + static_cast<std::size_t>(d)], w.dt);
            same &= std::memcmp(&want, &(const float&)at(w, l, kvi == 0, h, t, d), 4) == 0 || (want == 0 && at(w, l, kvi == 0, h, t, d) == 0);
          }
  CHECK(same);
}
}  // namespace

TEST_CASE("views: encode from f16/bf16/f32 buffers equals encoding the owning cache / decode into every dtype") {
  for (dtype t : {dtype::f16, dtype::bf16, dtype::f32}) {
    CAPTURE(dtype_name(t));
    const kv_cache kv = random_cache(2, 3, 300, 32, t);
    hf_buffers buf(kv, t);
    const const_kv_view in = buf.view<const_kv_view>(kv, t);
    for (const char* spec : {"raw", "kvc:level=5", "q8_0", "kivi:bits=4|rans", "hadamard|uniform:bits=4"}) {
      CAPTURE(spec);
      codec c1 = make_codec(spec), c2 = make_codec(spec);
      kv_extras ex;
      ex.tokens = kv.tokens;
    ex.metadata = kv.metadata;
      ex.metadata = kv.metadata;
      const encoded a = encode(cpu::seq, c1, in, {.chunk_tokens = 128}, ex);
      const encoded b = encode(cpu::par(3), c2, kv, {.chunk_tokens = 128});
      CHECK(a.data == b.data);  // same container from a view and from the cache, any thread count
      const kv_cache ref = decode(cpu::seq, b.data);
      for (dtype out : {dtype::f16, dtype::bf16, dtype::f32}) {
        CAPTURE(dtype_name(out));
        hf_buffers ob(ref, out);
        kv_view dst = ob.view<kv_view>(ref, out);
        for (auto& x : ob.k) std::fill(x.begin(), x.end(), std::byte{0x7f});
        for (auto& x : ob.v) std::fill(x.begin(), x.end(), std::byte{0x7f});
        decode_into(cpu::par(2), a.data, dst);
        check_equal(dst, ref);
      }
    }
  }
}

TEST_CASE("views: paged pools with a scattered block table / K and V interleaved in one pool") {
  const int L = 2, H = 2, D = 16, T = 70, BS = 16;
  const kv_cache kv = random_cache(L, H, T, D, dtype::f16, 9);
  const std::int64_t nb = 12;
  const std::vector<std::int32_t> table = {7, 2, 11, 0, 5};  // 5 blocks cover 70 tokens
  // Pool per layer: [num_blocks, 2 (K/V), block_size, H, D], f16.
  std::vector<std::vector<std::uint16_t>> pool(L, std::vector<std::uint16_t>(static_cast<std::size_t>(nb * 2 * BS * H * D), 0));
  std::vector<const std::byte*> ks, vs;
  for (int l = 0; l < L; ++l) {
    ks.push_back(reinterpret_cast<const std::byte*>(pool[static_cast<std::size_t>(l)].data()));
    vs.push_back(reinterpret_cast<const std::byte*>(pool[static_cast<std::size_t>(l)].data() + BS * H * D));
  }
  const_kv_view pv = const_kv_view::paged_pool(ks, vs, dtype::f16, H, D, BS, nb, table, T);
  pv.s_block = 2 * BS * H * D;  // K and V interleaved per block
  pv.extent = nb * pv.s_block;
  for (int l = 0; l < L; ++l)
    for (int kvi = 0; kvi < 2; ++kvi)
      for (int h = 0; h < H; ++h)
        for (int t = 0; t < T; ++t) {
          auto* row = reinterpret_cast<std::uint16_t*>(const_cast<std::byte*>(pv.row(l, kvi == 0, h, t)));
          const auto& src = kvi == 0 ? kv.keys : kv.values;
          f32_to_f16_n(src[static_cast<std::size_t>(l)].data() + (static_cast<std::size_t>(h) * T + static_cast<std::size_t>(t)) * D, D, row);
        }
  for (const char* spec : {"raw", "kvc:level=3", "q4_0"}) {
    CAPTURE(spec);
    codec c = make_codec(spec);
    kv_extras ex;
    ex.tokens = kv.tokens;
    ex.metadata = kv.metadata;
    const encoded e = encode(cpu::par(2), c, pv, {.chunk_tokens = 32}, ex);
    codec c2 = make_codec(spec);
    CHECK(e.data == encode(cpu::seq, c2, kv, {.chunk_tokens = 32}).data);
    const kv_cache ref = decode(cpu::seq, e.data);
    // Decode into a second pool with another block table.
    std::vector<std::vector<std::uint16_t>> out(L, std::vector<std::uint16_t>(static_cast<std::size_t>(nb * BS * H * D), 0));
    std::vector<std::vector<std::uint16_t>> outv = out;
    std::vector<std::byte*> ok, ov;
    for (int l = 0; l < L; ++l) {
      ok.push_back(reinterpret_cast<std::byte*>(out[static_cast<std::size_t>(l)].data()));
      ov.push_back(reinterpret_cast<std::byte*>(outv[static_cast<std::size_t>(l)].data()));
    }
    const kv_view dst = kv_view::paged_pool(ok, ov, dtype::f16, H, D, BS, nb, {3, 9, 1, 4, 10}, T);
    decode_into(cpu::par(2), e.data, dst);
    check_equal(dst, ref);
  }
}

TEST_CASE("views: bad views are refused naming the field") {
  std::vector<std::byte> buf(2 * 4 * 8 * 2 * 2);  // K and V of 2 heads x 4 tokens x 8 f16 channels
  const_kv_view w = const_kv_view::hf({buf.data()}, {buf.data() + buf.size() / 2}, dtype::f16, 2, 4, 8);
  CHECK_NOTHROW(w.validate());
  auto msg = [](const const_kv_view& x) {
    try {
      x.validate("v");
    } catch (const error& e) {
      CHECK(e.kind() == error_kind::bad_input);
      return std::string(e.what());
    }
    return std::string();
  };
  const_kv_view o = w;
  o.s_token = 4;  // rows of 8 channels 4 apart overlap
  CHECK(msg(o).find("strides") != std::string::npos);
  o = w;
  o.extent = 10;
  CHECK(msg(o).find("extent") != std::string::npos);
  o = w;
  o.v[0] = o.k[0] + 8;  // V overlaps K
  CHECK(msg(o).find("disjoint") != std::string::npos);
  const_kv_view p = const_kv_view::paged_pool({buf.data()}, {buf.data() + buf.size() / 2}, dtype::f16, 1, 8, 2, 2, {0, 2}, 4);
  CHECK(msg(p).find("block_table[1]") != std::string::npos);
  p.block_table = {1, 1};
  CHECK(msg(p).find("distinct") != std::string::npos);
  // A destination of the wrong shape or a device view.
  const kv_cache kv = random_cache(1, 2, 4, 8, dtype::f16);
  const encoded e = encode("raw", kv);
  kv_view d = kv_view::hf({buf.data()}, {buf.data() + buf.size() / 2}, dtype::f16, 2, 3, 8);
  CHECK_THROWS_AS(decode_into(cpu::seq, e.data, d), error);
  d = kv_view::hf({buf.data()}, {buf.data() + buf.size() / 2}, dtype::f16, 2, 4, 8);
  d.space = memory_space::device;
  CHECK_THROWS_AS(decode_into(cpu::seq, e.data, d), error);
}

TEST_CASE("decode_into a parsed container: equals the bytes overload - a damaged segment is caught unless the caller vouches") {
  const kv_cache kv = random_cache(2, 2, 96, 16, dtype::f16, 9);
  codec c = make_codec("kvc:level=5");
  const encoded e = encode(cpu::seq, c, kv, {.chunk_tokens = 32});
  std::vector<std::uint16_t> a(2 * 2 * 2 * 96 * 16), b(a.size());
  const auto view_of_buf = [](std::vector<std::uint16_t>& buf) {
    auto* p = reinterpret_cast<std::byte*>(buf.data());
    const std::size_t layer = 2 * 96 * 16 * 2;  // K or V of one layer, bytes
    return kv_view::hf({p, p + 2 * layer}, {p + layer, p + 3 * layer}, dtype::f16, 2, 96, 16);
  };
  decode_into(cpu::seq, e.data, view_of_buf(a));
  const kvc_view v = parse_kvc(e.data, "c.kvc");
  decode_into(cpu::par(2), v, view_of_buf(b), {}, builtin_registry(), /*segments_checked=*/true);
  CHECK(a == b);
  // One byte of a segment flipped: the default overload hashes the segments and refuses the file.
  bytes damaged = e.data;
  const kvc_view dv = parse_kvc(damaged, "c.kvc");
  const auto& se = dv.header.segments[1];
  damaged[static_cast<std::size_t>(dv.payload.data() - damaged.data()) + static_cast<std::size_t>(se.offset) + 3] ^= 0x40;
  const kvc_view dv2 = parse_kvc(damaged, "c.kvc");
  bool corrupt = false;
  try {
    decode_into(cpu::seq, dv2, view_of_buf(b));
  } catch (const error& x) {
    corrupt = x.kind() == error_kind::corrupt;
  }
  CHECK(corrupt);
}

TEST_CASE("streaming: segments arriving in pieces of any size decode as they arrive") {
  const kv_cache kv = random_cache(3, 2, 200, 16, dtype::f16, 5);
  for (const char* spec : {"kvc:level=5", "snapkv:keep=0.5,window=8|kivi:bits=4|rans", "raw"}) {
    CAPTURE(spec);
    kv_cache with_q = kv;
    with_q.shape.q_heads = 2;
    with_q.queries = with_q.keys;
    codec c = make_codec(spec);
    // The encoder streams into a callback sink; collect the pieces as a receiver would.
    std::vector<bytes> pieces;
    callback_sink sink([&](std::span<const std::uint8_t> b) { pieces.emplace_back(b.begin(), b.end()); });
    kv_extras ex = extras_of(with_q);
    encode_to(cpu::par(2), c, view_of(with_q), sink, {.chunk_tokens = 48}, ex);
    bytes whole;
    for (auto& p : pieces) whole.insert(whole.end(), p.begin(), p.end());
    const kv_cache ref = decode(cpu::seq, whole);
    for (std::size_t piece : {std::size_t{1}, std::size_t{7}, std::size_t{4096}, whole.size()}) {
      CAPTURE(piece);
      kv_cache out = kv_cache::zeros(ref.shape, dtype::f32);
      stream_decoder sd(view_of(out), {.name = "stream"});
      std::int64_t valid_before = -1;
      for (std::size_t at = 0; at < whole.size(); at += piece) {
        sd.push(std::span<const std::uint8_t>(whole).subspan(at, std::min(piece, whole.size() - at)));
        CHECK(sd.valid_tokens() >= valid_before);
        valid_before = sd.valid_tokens();
      }
      const decode_result r = sd.finish();
      CHECK(sd.valid_tokens() == 200);
      CHECK(out.keys == ref.keys);
      CHECK(out.values == ref.values);
      CHECK(r.kept == ref.kept);
    }
  }
}

TEST_CASE("streaming: a stream cut short / a segment twice or out of order / junk after the end") {
  const kv_cache kv = random_cache(2, 2, 100, 8, dtype::f16, 6);
  const encoded e = encode("kvc:level=5", kv, {.chunk_tokens = 32});
  const kvc_view v = parse_kvc(e.data, "x");
  auto run = [&](const bytes& b) -> std::string {
    kv_cache out = kv_cache::zeros(kv.shape, dtype::f32);
    stream_decoder sd(view_of(out), {.name = "s.kvc"});
    try {
      sd.push(b);
      sd.finish();
    } catch (const error& ex) {
      CHECK(ex.kind() == error_kind::corrupt);
      return ex.what();
    }
    return "";
  };
  // Cut short after the first chunk's two segments: the message says which tokens are complete.
  const std::size_t cut = static_cast<std::size_t>(v.header.segments[2].offset);
  const std::string m = run(bytes(e.data.begin(), e.data.begin() + static_cast<std::ptrdiff_t>(cut)));
  CHECK(m.find("tokens 0..32 are complete") != std::string::npos);
  // Segment 1's record duplicated in place of segment 2 (same size is not needed: the order check fires first).
  bytes dup(e.data.begin(), e.data.begin() + static_cast<std::ptrdiff_t>(v.header.segments[2].offset - kvc_record_size));
  dup.insert(dup.end(), e.data.begin() + static_cast<std::ptrdiff_t>(v.header.segments[1].offset - kvc_record_size),
             e.data.begin() + static_cast<std::ptrdiff_t>(v.header.segments[1].offset + v.header.segments[1].size));
  CHECK(run(dup).find("twice") != std::string::npos);
  bytes junk = e.data;
  junk.push_back(0);
  CHECK(run(junk).find("after the end") != std::string::npos);
}

TEST_CASE("container v2: segments are bound to their place / layer / range and codec") {
  const kv_cache kv = random_cache(2, 2, 64, 16, dtype::f16, 7);
  const encoded e = encode("q4_0", kv, {.chunk_tokens = 32});
  kvc_view v = parse_kvc(e.data, "x");
  // Swap the bytes of two equally sized segments: checksums no longer match their entries.
  const auto& a = v.header.segments[0];
  const auto& b = v.header.segments[1];
  REQUIRE(a.size == b.size);
  bytes sw = e.data;
  std::copy_n(e.data.begin() + static_cast<std::ptrdiff_t>(b.offset), b.size, sw.begin() + static_cast<std::ptrdiff_t>(a.offset));
  std::copy_n(e.data.begin() + static_cast<std::ptrdiff_t>(a.offset), a.size, sw.begin() + static_cast<std::ptrdiff_t>(b.offset));
  CHECK_THROWS_WITH_AS(decode(cpu::seq, sw), doctest::Contains("checksum mismatch"), error);
  // Relabel the codec and reseal the header: every segment's checksum depends on the header.
  const std::uint32_t hlen = detail::load_le<std::uint32_t>(e.data.data() + 12);
  std::string text(reinterpret_cast<const char*>(e.data.data() + kvc_prefix_size), hlen);
  const auto at = text.find("q4_0");
  REQUIRE(at != std::string::npos);
  text.replace(at, 4, "q4_1");
  bytes rel = e.data;
  std::memcpy(rel.data() + kvc_prefix_size, text.data(), hlen);
  detail::store_le<std::uint64_t>(rel.data() + 16, XXH3_64bits(text.data(), text.size()));
  CHECK_THROWS_AS(decode(cpu::seq, rel), error);
}

TEST_CASE("random access: a token range reads only the segments it needs - results independent of threads") {
  const kv_cache kv = random_cache(2, 2, 1000, 8, dtype::f16, 8);
  const encoded e = encode("kvc:level=4", kv, {.chunk_tokens = 100});
  const kv_cache all = decode(cpu::seq, e.data);
  for (int threads : {1, 2, 5}) {
    const kv_cache part = decode(cpu::par(threads), e.data, {.token_begin = 250, .token_end = 420});
    REQUIRE(part.shape.tokens == 170);
    bool same = true;
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < 2; ++h)
        for (int t = 0; t < 170; ++t)
          for (int d = 0; d < 8; ++d) {
            const std::size_t i = (static_cast<std::size_t>(h) * 170 + static_cast<std::size_t>(t)) * 8 + static_cast<std::size_t>(d);
            const std::size_t j = (static_cast<std::size_t>(h) * 1000 + static_cast<std::size_t>(t + 250)) * 8 + static_cast<std::size_t>(d);
            same &= part.keys[static_cast<std::size_t>(l)][i] == all.keys[static_cast<std::size_t>(l)][j];
            same &= part.values[static_cast<std::size_t>(l)][i] == all.values[static_cast<std::size_t>(l)][j];
          }
    CHECK(same);
  }
}

TEST_CASE("random access through a file reads the header and index and only the segments of the range") {
  const kv_cache kv = random_cache(3, 2, 1000, 8, dtype::f16, 10);
  const encoded e = encode("kvc:level=5", kv, {.chunk_tokens = 100});
  const std::string path = (std::filesystem::temp_directory_path() / ("kvcodec_ra_" + std::to_string(::getpid()) + ".kvc")).string();
  io::write_file_atomic(path, e.data, true);
  const io::kvc_file f(path);
  const std::uint64_t at_open = f.bytes_read();
  const kvc_view v = parse_kvc(e.data, "x");
  std::uint64_t segs = 0, outside = e.data.size();
  for (const auto& se : v.header.segments) {
    outside -= se.size + kvc_record_size;
    if (se.t1 > 250 && se.t0 < 420) segs += se.size;  // chunks 200..300, 300..400, 400..500 of every layer
  }
  CHECK(at_open <= outside);  // prefix, header, state, index and footer
  const kv_cache part = decode(cpu::par(2), f, {.token_begin = 250, .token_end = 420});
  CHECK(f.bytes_read() - at_open == segs);
  const kv_cache ref = decode(cpu::seq, e.data, {.token_begin = 250, .token_end = 420});
  CHECK(part.keys == ref.keys);
  CHECK(part.values == ref.values);
  std::filesystem::remove(path);
}

}  // namespace kvcodec_test_pipeline_stream
