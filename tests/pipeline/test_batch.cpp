// Tests of kvcodec/pipeline/batch.hpp: a container's rANS streams planned into one batch and decoded by
// the CUDA kernel's lane logic (host emulation, core/rans_batch.hpp) give exactly the entropy stage's
// symbols for every block: kvc levels (shared tables), per-chunk tables, sparse containers, a real dump.
// The element steps (cachegen, the ggml block formats, fp8, raw) decode into views exactly as
// decode_into does.
#include <doctest/doctest.h>

#include <functional>
#include <span>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kvcodec/io/kv_dump.hpp"
#include "kvcodec/kvcodec.hpp"
#include "kvcodec/pipeline/batch.hpp"
#include "../support/random_cache.hpp"
#include "../support/shared_data.hpp"
#include "../support/test_views.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_pipeline_batch {

using namespace kvcodec;

namespace {

/// Plans every segment, runs the emulation, and compares each plane with the stage's own decode.
/// Returns the number of streams checked.
std::size_t check_container(const bytes& file, bool compact) {
  const kvc_view v = parse_kvc(file, "test.kvc");
  const segment_decoder dec(v.header, [&](std::size_t i) { return v.state_bytes(i); }, "test.kvc");
  std::vector<std::size_t> all(v.header.segments.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  const auto bytes_of = [&](std::size_t i) { return v.segment_bytes(i); };
  std::size_t streams = 0;
  const auto run = [&](auto plan) {
    std::vector<std::uint16_t> out(plan.builder.out_symbols);
    std::vector<rans_batch_status> st(plan.builder.streams.size(), rans_batch_status::bad_size);
    rans_decode_batch_emulated(plan.builder.host_args(out.data()), st.data());
    for (auto s : st) CHECK(s == rans_batch_status::ok);
    for (const auto& bb : plan.blocks) {
      // the CPU stage's decode of the same block
      byte_reader r(v.segment_bytes(bb.segment), "segment");
      if (v.header.sparse) (void)dec.read_kept(r, v.header.segments[bb.segment]);
      auto ks = r.get_blob("K stream");
      auto vs = r.get_blob("V stream");
      const symbols want = dec.stages().entropy->decode(bb.key ? ks : vs, bb.skeleton);
      CHECK(want.side == bb.headers.side);
      REQUIRE(bb.plane.size() == want.planes.size());
      for (std::size_t k = 0; k < bb.plane.size(); ++k) {
        const auto& w = want.planes[bb.plane[k]].sym;
        CHECK(std::equal(w.begin(), w.end(), out.begin() + static_cast<std::ptrdiff_t>(bb.first[k])));
        ++streams;
      }
    }
  };
  if (compact)
    run(plan_rans_batch<std::uint32_t>(dec, all, bytes_of));
  else
    run(plan_rans_batch<std::uint64_t>(dec, all, bytes_of));
  return streams;
}

/// A container (owned), parsed, and its decoder built (the name is "x.kvc").
struct opened {
  bytes file;
  kvc_view v;
  segment_decoder dec;
  explicit opened(bytes f)
      : file(std::move(f)), v(parse_kvc(file, "x.kvc")), dec(v.header, [this](std::size_t i) { return v.state_bytes(i); }, "x.kvc") {}
  opened(const opened&) = delete;
  opened& operator=(const opened&) = delete;
  std::function<std::span<const std::uint8_t>(std::size_t)> bytes_of() const {
    return [this](std::size_t i) { return v.segment_bytes(i); };
  }
};

/// The kind of error planning segment 0 of `spec`'s container throws (rans only, or through cachegen).
error_kind plan_error(const std::string& spec, const kv_cache& kv, bool cachegen) {
  const opened o(encode(spec, kv).data);
  const std::size_t seg0[] = {0};
  try {
    if (cachegen)
      (void)plan_cachegen_batch<std::uint32_t>(o.dec, seg0, o.bytes_of(), 0, kv.shape.tokens);
    else
      (void)plan_rans_batch<std::uint32_t>(o.dec, seg0, o.bytes_of());
  } catch (const error& err) {
    return err.kind();
  }
  return error_kind::io;  // no error: the caller expects usage
}
}  // namespace

TEST_CASE("batch plan: kvc levels - per-chunk tables and sparse containers decode exactly through the emulation") {
  const kv_cache kv = test::random_cache(3, 2, 700, 32, dtype::f16);
  for (const std::string spec : {"kvc:level=5", "kvc:level=9", "cachegen-quant|rans:lanes=0", "kivi:bits=2|rans:lanes=64,tables=shared"}) {
    INFO(spec);
    const encoded e = encode(spec, kv, encode_options{.chunk_tokens = 256});
    CHECK(check_container(e.data, true) > 0);
  }
  {  // kvc:level=1 keeps 2^12 tables with alphabets over 256: the 64-bit entries
    const encoded e = encode("kvc:level=1", kv, encode_options{.chunk_tokens = 256});
    CHECK(check_container(e.data, false) > 0);
  }
  {  // sparse: the kept masks come first in each segment
    const encoded e = encode("knorm:keep=0.5|kivi:bits=4|rans", kv, encode_options{.chunk_tokens = 256});
    CHECK(check_container(e.data, true) > 0);
  }
}

TEST_CASE("batch plan: a real dump's kvc:level=5 container decodes exactly through the emulation") {
  const kv_cache* kv = test::shared_dump("kvlab-d0.ctx256.safetensors");
  KVCODEC_REQUIRE_SHARED(kv);
  const encoded e = encode("kvc:level=5", *kv);
  CHECK(check_container(e.data, true) > 0);
}

TEST_CASE("batch plan: entropy stages without a batch decoder and predicted planes are usage errors") {
  const kv_cache kv = test::random_cache(2, 2, 300, 16, dtype::f16);
  for (const std::string spec : {"kivi:bits=4|ac", "cachegen-quant|rans:pred=prev"}) {
    INFO(spec);
    CHECK(plan_error(spec, kv, false) == error_kind::usage);
  }
}

namespace {
using dest = test::host_dest;

/// The batch decode (emulated) of tokens [tb, te) equals the CPU decode_into of the same range: the
/// decoder batch_kind_of picks, or (compact = false) cachegen with 64-bit table entries.
void check_decode(const bytes& file, dtype t, bool paged, std::int64_t tb, std::int64_t te, bool compact) {
  const kvc_view v = parse_kvc(file, "test.kvc");
  const segment_decoder dec(v.header, [&](std::size_t i) { return v.state_bytes(i); }, "test.kvc");
  dest want(v.header.shape, te - tb, t, paged), got(v.header.shape, te - tb, t, paged);
  decode_options opt;
  opt.token_begin = tb;
  opt.token_end = te;
  decode_into(cpu::par, file, want.view, opt);
  std::vector<std::size_t> segs;
  for (std::size_t i = 0; i < v.header.segments.size(); ++i)
    if (v.header.segments[i].t1 > tb && v.header.segments[i].t0 < te) segs.push_back(i);
  const auto bytes_of = [&](std::size_t i) { return v.segment_bytes(i); };
  if (compact)
    decode_batch_emulated(dec, segs, bytes_of, tb, te - tb, got.view);
  else
    decode_batch_emulated(plan_cachegen_batch<std::uint64_t>(dec, segs, bytes_of, tb, te - tb), got.view);
  CHECK(want.rows() == got.rows());
  if (dec.stages().quant->spec().name == "cachegen-quant" && batch_kind_of(dec.stages()) == batch_kind::cachegen && dec.stages().transforms.empty() && !v.header.sparse) {  // the unfused form too: symbols in memory, then the element step
    dest unfused(v.header.shape, te - tb, t, paged);
    decode_batch_emulated(plan_cachegen_batch<std::uint32_t>(dec, segs, bytes_of, tb, te - tb), unfused.view, false);
    CHECK(want.rows() == unfused.rows());
  }
}
}  // namespace

namespace {
/// check_decode of a 600-token container into every dtype, HF and paged, then two token ranges (the
/// second into a view of dtype `range_dtype`).
void check_views(const bytes& file, dtype range_dtype) {
  for (dtype t : {dtype::f16, dtype::bf16, dtype::f32})
    for (bool paged : {false, true}) {
      INFO("dtype " << dtype_name(t) << (paged ? " paged" : " hf"));
      check_decode(file, t, paged, 0, 600, true);
    }
  check_decode(file, dtype::f16, true, 256, 512, true);
  check_decode(file, range_dtype, false, 100, 300, true);
}

/// check_decode of a 300-token container into every dtype, HF and paged, then tokens 100..250 (paged
/// f16) and 190..300 (HF f32).
void check_views_300(const bytes& file) {
  for (dtype t : {dtype::f16, dtype::bf16, dtype::f32})
    for (bool paged : {false, true}) {
      INFO("dtype " << dtype_name(t) << (paged ? " paged" : " hf"));
      check_decode(file, t, paged, 0, 300, true);
    }
  check_decode(file, dtype::f16, true, 100, 250, true);
  check_decode(file, dtype::f32, false, 190, 300, true);
}

/// The message of the error decode_batch_emulated throws for every segment of `file` (tokens [0, T),
/// into an HF f16 view), which must be a usage error; "" when it decodes.
std::string emulated_usage_error(const bytes& file, std::int64_t T) {
  const opened o(file);
  std::vector<std::size_t> all(o.v.header.segments.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  dest d(o.v.header.shape, T, dtype::f16, false);
  try {
    decode_batch_emulated(o.dec, all, o.bytes_of(), 0, T, d.view);
  } catch (const error& e) {
    CHECK(e.kind() == error_kind::usage);
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("batch decode (emulated) equals decode_into: kvc levels - scale axes - planes coded with prediction - dtypes - HF and paged views - token ranges") {
  const kv_cache kv = test::random_cache(3, 2, 600, 32, dtype::f16);
  for (const std::string spec : {"kvc:level=5", "kvc:level=9", "cachegen-quant:kaxis=token,vaxis=channel,scale=bf16|rans:lanes=0", "cachegen-quant|rans:pred=prev",
                                 "cachegen-quant|rans:pred=anchor,group=10,lanes=0", "cachegen-quant:kbins=64,klayers=-,vbins=64,vlayers=-|rans:pred=linear",
                                 "cachegen-quant|rans:pred=linear,tables=chunk,ctx=pooled"}) {
    INFO(spec);
    check_views(encode(spec, kv, encode_options{.chunk_tokens = 256}).data, dtype::f16);
  }
  const encoded l1 = encode("kvc:level=1", kv, encode_options{.chunk_tokens = 256});
  check_decode(l1.data, dtype::f16, false, 0, 600, false);
}

TEST_CASE("batch decode: containers outside its scope are usage errors - a symbol above 2 x MAX is corrupt") {
  const kv_cache kv = test::random_cache(2, 2, 300, 16, dtype::f16);
  for (const std::string spec : {"knorm:keep=0.5|cachegen-quant|rans", "hadamard|cachegen-quant|rans", "kivi:bits=4|rans"}) {
    INFO(spec);
    CHECK(plan_error(spec, kv, true) == error_kind::usage);
  }
  // A plan whose symbols exceed the quantizer's range:
  const opened o(encode("kvc:level=5", kv).data);
  const std::size_t seg0[] = {0};
  auto plan = plan_cachegen_batch<std::uint32_t>(o.dec, seg0, o.bytes_of(), 0, 300);
  plan.blocks[0].max = 0;  // every symbol above 0 is now out of range
  dest d(o.v.header.shape, 300, dtype::f16, false);
  for (bool fused : {true, false}) {
    try {
      decode_batch_emulated(plan, d.view, fused);
      CHECK(false);
    } catch (const error& e) {
      CHECK(e.kind() == error_kind::corrupt);
      CHECK(std::string(e.what()).find(fused ? "outside the quantizer's range" : "above 2*MAX") != std::string::npos);
    }
  }
}

namespace {
/// The cachegen-quant|ac batch (tiled kernel when `tiled` and it can run, else the rows kernel) of
/// tokens [tb, te) equals the CPU decode_into of the same range.
void check_ac_decode(const bytes& file, dtype t, bool paged, std::int64_t tb, std::int64_t te, bool tiled) {
  const opened o(file);
  dest want(o.v.header.shape, te - tb, t, paged), got(o.v.header.shape, te - tb, t, paged);
  decode_options opt;
  opt.token_begin = tb;
  opt.token_end = te;
  decode_into(cpu::par, file, want.view, opt);
  std::vector<std::size_t> segs;
  for (std::size_t i = 0; i < o.v.header.segments.size(); ++i)
    if (o.v.header.segments[i].t1 > tb && o.v.header.segments[i].t0 < te) segs.push_back(i);
  decode_batch_emulated(plan_cachegen_ac_batch(o.dec, segs, o.bytes_of(), tb, te - tb), got.view, tiled);
  CHECK(want.rows() == got.rows());
}
}  // namespace

TEST_CASE("batch decode (emulated) equals decode_into: cachegen-quant with ac - tiled and rows kernels - contexts - stream layouts - predicted planes - dtypes - views - token ranges") {
  // 2 heads x head_dim 32 = 64 columns (two tiles of 32) and 8 x 20 = 160 (a short last tile); 150 and
  // 300 tokens in chunks of 128 (groups of 64 rows and a short one)
  const kv_cache a = test::random_cache(3, 2, 150, 32, dtype::f16);
  const kv_cache b = test::random_cache(2, 8, 300, 20, dtype::bf16);
  for (const std::string spec : {"cachegen", "cachegen-quant|ac:ctx=pooled", "cachegen-quant|ac:streams=block", "cachegen-paper:level=2", "cachegen-paper",
                                 "cachegen-quant|ac:pred=prev", "cachegen-quant|ac:pred=anchor,group=7,streams=block", "cachegen-quant|ac:pred=prev,ctx=pooled",
                                 "cachegen-quant:kbins=600,klayers=-,vbins=300,vlayers=-|ac", "cachegen-quant:kaxis=token,vaxis=channel,scale=bf16|ac"}) {
    // prediction (cachegen-paper: anchor groups of 10): the rows kernel, then the planes restored
    const bool predicted = spec.rfind("cachegen-paper", 0) == 0 || spec.find("pred=") != std::string::npos;
    for (const kv_cache* kv : {&a, &b}) {
      INFO(spec << " columns " << kv->shape.kv_heads * kv->shape.head_dim);
      const encoded e = encode(spec, *kv, encode_options{.chunk_tokens = 128});
      const opened o(e.data);
      std::vector<std::size_t> all(o.v.header.segments.size());
      for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
      const auto plan = plan_cachegen_ac_batch(o.dec, all, o.bytes_of(), 0, kv->shape.tokens);
      CHECK(plan.groups.empty() == (predicted || spec.find("streams=block") != std::string::npos));
      CHECK(plan.restore.empty() == !predicted);
      const std::int64_t T = kv->shape.tokens;
      for (bool tiled : {true, false})
        for (dtype t : {dtype::f16, dtype::bf16, dtype::f32})
          for (bool paged : {false, true}) {
            INFO((tiled ? "tiled " : "rows ") << dtype_name(t) << (paged ? " paged" : " hf"));
            check_ac_decode(e.data, t, paged, 0, T, tiled);
          }
      check_ac_decode(e.data, dtype::f16, true, 37, T - 20, true);
      check_ac_decode(e.data, dtype::bf16, false, 128, T, false);
    }
  }
  CHECK(ac_tile_width(63) == 32u);
  CHECK(ac_tile_width(599) == 13u);
  CHECK(ac_tile_width(9000) == 0u);
}

TEST_CASE("batch decode of cachegen-quant with ac: on damaged streams the tiled and rows kernels agree - refused or the same values") {
  // The container's checksums stop a damaged file before any decoder; here the planned streams' bytes
  // are damaged after the checks, so the kernels' own stream checks (rc_dec_ok) are what is tested.
  const kv_cache kv = test::random_cache(2, 2, 200, 32, dtype::f16);
  const opened o(encode("cachegen", kv, encode_options{.chunk_tokens = 128}).data);
  std::vector<std::size_t> all(o.v.header.segments.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  const auto plan = plan_cachegen_ac_batch(o.dec, all, o.bytes_of(), 0, 200);
  REQUIRE_FALSE(plan.groups.empty());
  std::mt19937_64 rng(9);
  int refused = 0;
  for (int k = 0; k < 200; ++k) {
    auto bad = plan;
    const std::size_t at = static_cast<std::size_t>(rng() % bad.data.size());
    bad.data[at] = static_cast<std::uint8_t>(bad.data[at] ^ (1u + rng() % 255));
    if (k % 5 == 0) bad.streams[rng() % bad.streams.size()].size -= 1;  // a cut stream
    INFO("byte " << at);
    dest tiled(kv.shape, 200, dtype::f16, false), rows(kv.shape, 200, dtype::f16, false);
    bool tiled_ok = true, rows_ok = true;
    try {
      decode_batch_emulated(bad, tiled.view, true);
    } catch (const error& e) {
      tiled_ok = false;
      CHECK(e.kind() == error_kind::corrupt);
    }
    try {
      decode_batch_emulated(bad, rows.view, false);
    } catch (const error& e) {
      rows_ok = false;
      CHECK(e.kind() == error_kind::corrupt);
    }
    CHECK(tiled_ok == rows_ok);
    if (tiled_ok && rows_ok) CHECK(tiled.rows() == rows.rows());
    refused += tiled_ok ? 0 : 1;
  }
  CHECK(refused > 0);
}

TEST_CASE("batch decode (emulated) equals decode_into: ggml block formats - fp8 - raw - uniform - kivi (outliers too) - dtypes - HF and paged views - token ranges") {
  // head_dim 32: each ggml block is one head's row; 8 heads x head_dim 20: blocks span heads
  const kv_cache a = test::random_cache(3, 2, 600, 32, dtype::f16);
  const kv_cache b = test::random_cache(2, 8, 300, 20, dtype::bf16);
  for (const std::string spec : {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "fp8", "fp8:format=e5m2,scale=head", "fp8:scale=token", "raw",
                                 "raw:dtype=f16", "raw:dtype=bf16", "raw:dtype=f32", "kivi:bits=4|rans", "kivi:bits=2,group=32,residual=200|pack",
                                 "kivi:bits=3,residual=0|rans:lanes=0", "kivi:bits=4,scale=f32|pack", "uniform|rans",
                                 "uniform:bits=3,mode=sym,kaxis=token,group=4|pack", "uniform:bits=8,kaxis=channel,vaxis=channel,group=10|rans",
                                 "nf4", "nf4:group=4,scale=f32|rans", "nf4:group=4|pack", "kmeans", "kmeans:bits=3|rans", "kmeans:bits=8|pack",
                                 "kivi:bits=2,outliers=1|rans", "kivi:bits=4,outliers=3,residual=200|pack", "kivi:bits=3,outliers=1,residual=0",
                                 "uniform:bits=3,outliers=0.5|rans", "uniform:bits=4,kaxis=channel,group=4,outliers=2",
                                 "kivi:bits=4|rans:pred=prev", "uniform:bits=3|rans:pred=anchor,group=5,tables=chunk", "nf4|rans:pred=linear",
                                 "kmeans:bits=3|rans:pred=linear,tables=chunk"}) {
    INFO(spec);
    check_views(encode(spec, a, encode_options{.chunk_tokens = 256}).data, dtype::bf16);
    const encoded eb = encode(spec, b, encode_options{.chunk_tokens = 128});
    check_decode(eb.data, dtype::f16, false, 0, 300, true);
    check_decode(eb.data, dtype::f32, true, 128, 300, true);
  }
}

TEST_CASE("batch decode (emulated) equals decode_into after the transforms hadamard and derope and weighted-quant's key rotation: every quantizer family - dtypes - HF and paged views - token ranges") {
  kv_cache a = test::random_cache(3, 2, 600, 32, dtype::f16);
  a.metadata["rope"] = "rotate-half";
  a.metadata["rope_theta"] = "10000";
  for (const std::string spec : {"hadamard|kvc:level=5", "derope|kvc:level=5", "derope|hadamard|cachegen-quant|ac", "hadamard:target=k|q8_0", "derope|fp8:scale=head",
                                 "hadamard:seed=3|raw", "derope|kivi:bits=4|rans", "hadamard|uniform:bits=3|pack", "derope|nf4|rans", "hadamard:target=v|kmeans:bits=3",
                                 "kvw", "kvw:kstep=0.05,vstep=0.1", "weighted-quant:bins=64,derope=off|rans", "hadamard|weighted-quant|rans:lanes=0"}) {
    INFO(spec);
    check_views(encode(spec, a, encode_options{.chunk_tokens = 256}).data, dtype::bf16);
  }
  {  // weighted-quant's key rotation with interleaved pairs, and chunks whose tables start mid-run (100 tokens)
    kv_cache ip = a;
    ip.metadata["rope"] = "interleaved-pairs";
    ip.metadata["rope_theta"] = "500000";
    const encoded e = encode("kvw", ip, encode_options{.chunk_tokens = 100});
    check_decode(e.data, dtype::f16, false, 0, 600, true);
    check_decode(e.data, dtype::f32, true, 96, 401, true);
    // the planner alone refuses it (its caller would not rotate the keys)
    const opened o(e.data);
    const std::size_t seg0[] = {0};
    CHECK_THROWS_AS((void)plan_cachegen_batch<std::uint32_t>(o.dec, seg0, o.bytes_of(), 0, 600), error);
  }
  // a planner called alone still refuses transforms (its caller would not invert them)
  const opened o(encode("hadamard|q8_0", a).data);
  const std::size_t seg0[] = {0};
  CHECK_THROWS_AS((void)plan_ggml_batch(o.dec, seg0, o.bytes_of(), 0, 600), error);
  // transforms without a batch decoder: a usage error
  CHECK_FALSE(emulated_usage_error(encode("delta|kvc:level=5", a).data, 600).empty());
}

TEST_CASE("batch decode: pack containers outside its scope are usage errors - a cut pack stream is corrupt") {
  const kv_cache kv = test::random_cache(2, 2, 300, 32, dtype::f16);
  for (const std::string spec : {"q8_0|zstd", "hadamard|q8_0", "knorm:keep=0.5|q8_0"}) {
    INFO(spec);
    const opened o(encode(spec, kv).data);
    const std::size_t seg0[] = {0};
    bool usage = false;
    try {
      (void)plan_ggml_batch(o.dec, seg0, o.bytes_of(), 0, 300);
    } catch (const error& err) {
      usage = err.kind() == error_kind::usage;
    }
    CHECK(usage);
  }
  {  // the wrong planner for the quantizer
    const opened o(encode("fp8", kv).data);
    const std::size_t seg0[] = {0};
    CHECK_THROWS_AS((void)plan_raw_batch(o.dec, seg0, o.bytes_of(), 0, 300), error);
    CHECK_THROWS_AS((void)plan_ggml_batch(o.dec, seg0, o.bytes_of(), 0, 300), error);
  }
  for (const std::string spec : {"q4_0", "fp8:scale=token", "raw:dtype=f16"}) {
    INFO(spec);
    const opened o(encode(spec, kv).data);
    const std::size_t seg0[] = {0};
    const auto whole = o.v.segment_bytes(0);
    for (std::size_t cut : {std::size_t{1}, whole.size() / 2, whole.size() - 1}) {
      const auto cut_bytes = [&](std::size_t) { return whole.first(cut); };
      error_kind k = error_kind::io;
      try {
        (void)plan_pack_batch(o.dec, seg0, cut_bytes);
      } catch (const error& err) {
        k = err.kind();
      }
      CHECK(k == error_kind::corrupt);
    }
  }
}

TEST_CASE("batch decode (emulated) of think containers equals decode_into: key rows at their coded width - every quantizer family but the block formats - dense and token-dropped - dtypes - views - token ranges") {
  const kv_cache kv = test::query_cache(2, 4, 300, 32, dtype::bf16);
  for (const std::string spec : {"think:prune=0.5|raw", "think:prune=0.25|raw:dtype=f32", "think|fp8:scale=token", "think:prune=0.5|fp8:scale=head",
                                 "think:prune=0.25|kivi:bits=4|rans", "think:prune=0.5|kivi:bits=2,residual=40", "think:prune=0.25|uniform:bits=3,outliers=1",
                                 "think:prune=0.25|uniform:bits=4,kaxis=channel,group=8|rans", "think:prune=0.5|nf4|rans", "think:prune=0.25|nf4:group=4",
                                 "think|kmeans:bits=3", "think:prune=0.5|kvc:level=5", "think:prune=0.25|cachegen", "think|cachegen-quant|rans:pred=linear,tables=chunk",
                                 "think|cachegen-quant|ac:pred=prev",
                                 // token-dropped: the compact kept rows are coded narrower too
                                 "knorm:keep=0.5|think|kivi:bits=4,residual=40|rans", "snapkv:keep=0.4,window=16|think:prune=0.25|fp8",
                                 "streamingllm:keep=0.5|think:prune=0.75|kivi:bits=2,outliers=2", "knorm:keep=0.4|think|cachegen-quant|rans:tables=chunk",
                                 "h2o:keep=0.5,window=16|think:prune=0.5|nf4|rans", "keydiff:keep=0.5|think:prune=0.25|cachegen"}) {
    INFO(spec);
    check_views_300(encode(spec, kv, encode_options{.chunk_tokens = 96}).data);
  }
  // the block formats' rows span the heads: a usage error that says so; so is think with another transform
  for (const std::string spec : {"think|q8_0", "think:prune=0.5|iq4_nl", "think|hadamard|kivi"}) {
    INFO(spec);
    CHECK(emulated_usage_error(encode(spec, kv, encode_options{.chunk_tokens = 96}).data, 300).find("think") != std::string::npos);
  }
}

TEST_CASE("batch decode (emulated) of token-dropped containers equals decode_into: ragged kept sets - every quantizer but the block formats - transforms - dtypes - views - token ranges") {
  kv_cache kv = test::random_cache(2, 4, 300, 16, dtype::f16);
  kv.metadata["rope"] = "rotate-half";
  kv.metadata["rope_theta"] = "10000";
  kv_extras ex = extras_of(kv);
  ex.cache = nullptr;
  ex.kept = test::ragged_kept(2);
  const test::host_dest src = test::host_source(kv, dtype::f16, false);
  for (const std::string spec : {"cachegen-quant:kbins=32,klayers=-,kaxis=channel|rans:tables=chunk", "cachegen-quant:kaxis=token,vaxis=channel|rans:lanes=0", "cachegen", "raw", "raw:dtype=f32", "fp8", "fp8:scale=head",
                                 "fp8:scale=token", "uniform:bits=3", "uniform:bits=4,kaxis=channel,group=8|rans", "kivi:bits=2", "kivi:bits=4,group=16,residual=40|rans",
                                 "kivi:bits=3,residual=64", "nf4:group=4", "nf4|rans", "kmeans:bits=3", "derope|kivi:bits=4|rans", "hadamard|cachegen-quant|rans:tables=chunk", "derope|cachegen",
                                 "kivi:bits=2,outliers=2,residual=40|rans", "uniform:bits=3,outliers=1", "cachegen-paper", "cachegen-quant|ac:pred=prev",
                                 "cachegen-quant|rans:pred=linear,tables=chunk", "kivi:bits=4|rans:pred=anchor"}) {
    INFO(spec);
    codec c = make_codec(spec);
    check_views_300(encode(cpu::par, c, const_kv_view(src.view), encode_options{.chunk_tokens = 96}, ex).data);
  }
  // drop stages: the kept sets they choose
  for (const std::string spec : {"knorm:keep=0.4|cachegen-quant|rans:tables=chunk,lanes=0", "streamingllm:keep=0.3,sink=4|cachegen", "knorm:keep=0.5|nf4|rans"}) {
    INFO(spec);
    const encoded e = encode(spec, kv, encode_options{.chunk_tokens = 96});
    check_decode(e.data, dtype::bf16, true, 0, 300, true);
  }
  // the kept tokens the plan reports are decode_into's
  codec c = make_codec("kivi:bits=4|rans");
  const encoded e = encode(cpu::par, c, const_kv_view(src.view), encode_options{.chunk_tokens = 96}, ex);
  const opened o(e.data);
  std::vector<std::size_t> segs;
  for (std::size_t i = 0; i < o.v.header.segments.size(); ++i)
    if (o.v.header.segments[i].t1 > 50 && o.v.header.segments[i].t0 < 260) segs.push_back(i);
  const kept_rows_plan kp = plan_kept_rows(o.dec, segs, o.bytes_of(), 50, 210);
  dest d(o.v.header.shape, 210, dtype::f16, false);
  decode_options opt;
  opt.token_begin = 50;
  opt.token_end = 260;
  CHECK(decode_into(cpu::par, e.data, d.view, opt).kept == kp.kept);
  // a planner without the kept rows' layout, and a block format: usage errors
  CHECK_THROWS_AS((void)plan_affine_batch(o.dec, segs, o.bytes_of(), 50, 210), error);
  codec g = make_codec("q8_0");
  kv_cache wide = test::random_cache(2, 4, 300, 32, dtype::f16);
  const test::host_dest wsrc = test::host_source(wide, dtype::f16, false);
  kv_extras wex = extras_of(wide);
  wex.cache = nullptr;
  wex.kept = test::ragged_kept(2);
  CHECK(emulated_usage_error(encode(cpu::par, g, const_kv_view(wsrc.view), encode_options{.chunk_tokens = 96}, wex).data, 300).find("token-dropped") !=
        std::string::npos);
}

}  // namespace kvcodec_test_pipeline_batch
