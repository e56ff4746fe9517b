// CUDA backend tests. CI compiles this file with nvcc (no GPU there: it exits 77, skipped); on a GPU
// it checks every kernel against the CPU codec byte for byte:
//  - f32 <-> f16/bf16 conversions over every bit-pattern class;
//  - the rANS batch decoder against the CPU decoder and the host emulation (tests/core/test_rans_batch.cpp
//    runs the same lane logic on the CPU in CI): lane counts 32..1024, 1..1024 columns, lengths around a
//    step, mixed lane counts in one batch, compact and 64-bit entries, corrupt streams (the same status as
//    the emulation, no read outside the stream: run under compute-sanitizer by scripts/gpu-check), and two
//    batches queued on one CUDA stream before either is waited for;
//  - kvcodec::cuda::decode_into (the seam) against the CPU's decode_into: kvc levels, f16/bf16/f32, HF and
//    paged device views, token ranges, and the usage error for a container outside its scope;
//  - kvcodec::cuda::knorm_select (the GPU knorm scorer and CUB top-k) against the CPU's select_knorm;
//  - the window scorers (snapkv, pyramidkv, h2o, tova) and adakv over them against the CPU's kept sets
//    (equal but for near-ties, tests/support/window_cases.hpp);
//  - cuda::compare_attention (the eval metrics on the GPU) against eval::compare_attention;
//  - cuda::encode of token-dropped caches (drop stage on the GPU, kept rows gathered and quantized
//    there) and with the transforms hadamard and derope, against the CPU encoder's container;
//  - cuda::decode_into of token-dropped containers (ragged kept sets, a head keeping nothing in a chunk,
//    a fully kept chunk), CPU-encoded and GPU-encoded, against the CPU's decode_into and kept sets;
//  - cuda::decode_into of think containers (key rows at their coded width, the kept channels put back),
//    dense and token-dropped, both kernel variants, and GPU-encoded think containers decoded on the GPU.
#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/cpu/drop/keydiff.hpp"
#include "kvcodec/cpu/drop/knorm.hpp"
#include "kvcodec/cuda/decode.cuh"
#include "kvcodec/cuda/encode.cuh"
#include "kvcodec/cuda/drop_select.cuh"
#include "kvcodec/cpu/drop/criticalkv.hpp"
#include "kvcodec/cpu/drop/random.hpp"
#include "kvcodec/cuda/drop/keydiff.cuh"
#include "kvcodec/cuda/drop/knorm.cuh"
#include "kvcodec/cpu/drop/streamingllm.hpp"
#include "kvcodec/cuda/drop/random.cuh"
#include "kvcodec/cuda/drop/streamingllm.cuh"
#include "kvcodec/cpu/drop/adakv.hpp"
#include "kvcodec/cuda/drop/adakv.cuh"
#include "kvcodec/cuda/drop/h2o.cuh"
#include "kvcodec/cpu/drop/lagkv.hpp"
#include "kvcodec/cpu/drop/expected_attention.hpp"
#include "kvcodec/cuda/drop/expected_attention.cuh"
#include "kvcodec/cpu/drop/chunkkv.hpp"
#include "kvcodec/cuda/drop/chunkkv.cuh"
#include "kvcodec/cuda/drop/lagkv.cuh"
#include "kvcodec/cuda/eval/attention.cuh"
#include "kvcodec/cuda/think.cuh"
#include "kvcodec/cuda/drop/pyramidkv.cuh"
#include "kvcodec/cuda/drop/snapkv.cuh"
#include "kvcodec/cuda/drop/tova.cuh"
#include "kvcodec/cuda/kvcodec_cuda.cuh"
#include "kvcodec/kvcodec.hpp"
#include "kvcodec/tensor/dtype.hpp"
#include "../support/random_cache.hpp"
#include "../support/rans_batch_cases.hpp"
#include "../support/test_views.hpp"
#include "../support/small_synth.hpp"
#include "../support/window_cases.hpp"

namespace {

using namespace kvcodec;
using namespace kvcodec::test_support;

int failures = 0, checks = 0;
bool quick = false;  // --quick (scripts/gpu-check's compute-sanitizer run): the largest sweeps on one view kind

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

void test_conversions() {
  std::mt19937 rng(5);
  std::vector<float> x(1 << 20);
  for (auto& v : x) v = std::bit_cast<float>(static_cast<std::uint32_t>(rng()));  // every bit pattern class
  for (dtype t : {dtype::f16, dtype::bf16}) {
    kvcodec::cuda::device_buffer<float> d_x{std::span<const float>(x)}, d_back{x.size()};
    kvcodec::cuda::device_buffer<std::uint16_t> d_h{x.size()};
    kvcodec::cuda::encode_floats(kvcodec::cuda::par, d_x.data(), x.size(), t, d_h.data());
    kvcodec::cuda::decode_floats(kvcodec::cuda::par, d_h.data(), x.size(), t, d_back.data());
    const auto h = d_h.download();
    const auto back = d_back.download();
    std::vector<std::uint8_t> cpu(x.size() * 2);
    encode_floats(x.data(), x.size(), t, cpu.data());
    std::vector<float> cpu_back(x.size());
    decode_floats(cpu.data(), x.size(), t, cpu_back.data());
    std::size_t bad = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      std::uint16_t c;
      std::memcpy(&c, cpu.data() + 2 * i, 2);
      if (c != h[i] || std::bit_cast<std::uint32_t>(cpu_back[i]) != std::bit_cast<std::uint32_t>(back[i])) ++bad;
    }
    expect(bad == 0, std::string("conversions ") + (t == dtype::f16 ? "f16" : "bf16") + ": " + std::to_string(bad) + " mismatches");
  }
}

/// The builder's arrays on the device, decoded there: symbols and statuses.
template <class Entry>
struct device_batch {
  kvcodec::cuda::device_buffer<rans_batch_stream> streams;
  kvcodec::cuda::device_buffer<std::uint8_t> data;
  kvcodec::cuda::device_buffer<Entry> entries;
  kvcodec::cuda::device_buffer<std::uint32_t> col_off;
  kvcodec::cuda::device_buffer<std::uint16_t> out;
  kvcodec::cuda::device_buffer<std::uint8_t> temp;
  std::size_t count = 0;

  explicit device_batch(const rans_batch_builder<Entry>& b)
      : streams(std::span<const rans_batch_stream>(b.streams)),
        data(std::span<const std::uint8_t>(b.data)),
        entries(std::span<const Entry>(b.entries)),
        col_off(std::span<const std::uint32_t>(b.col_off)),
        out(b.out_symbols),
        count(b.streams.size()) {}
  /// Queues the decode on p (no wait).
  void launch(const rans_batch_builder<Entry>& b, const kvcodec::cuda::par_t& p) {
    const rans_batch_args<Entry> a{streams.data(), count, b.max_lanes, data.data(), entries.data(), col_off.data(), out.data()};
    std::size_t bytes = 0;
    kvcodec::cuda::rans_decode_batch(nullptr, bytes, a, p);
    temp = kvcodec::cuda::device_buffer<std::uint8_t>(bytes);
    kvcodec::cuda::rans_decode_batch(temp.data(), bytes, a, p);
  }
  std::vector<rans_batch_status> statuses(const kvcodec::cuda::par_t& p) const { return kvcodec::cuda::rans_batch_statuses(temp.data(), count, p); }
};

template <class Entry>
void check_batch(const std::vector<case_data>& cases, const std::vector<std::vector<std::uint8_t>>& bytes, const std::string& label) {
  rans_batch_builder<Entry> b;
  for (std::size_t k = 0; k < cases.size(); ++k) add(b, cases[k], std::span<const std::uint8_t>(bytes[k]));
  std::vector<std::uint16_t> emu(b.out_symbols);
  std::vector<rans_batch_status> emu_st(cases.size());
  rans_decode_batch_emulated(b.host_args(emu.data()), emu_st.data());
  device_batch<Entry> d(b);
  d.launch(b, kvcodec::cuda::par);
  const auto st = d.statuses(kvcodec::cuda::par);
  const auto out = d.out.download();
  std::size_t off = 0;
  for (std::size_t k = 0; k < cases.size(); ++k) {
    const std::string what = label + " stream " + std::to_string(k) + " (lanes " + std::to_string(cases[k].lanes) + ", n " +
                             std::to_string(cases[k].symbols.size()) + ")";
    expect(st[k] == emu_st[k], what + ": status " + std::to_string(static_cast<int>(st[k])) + ", emulation " + std::to_string(static_cast<int>(emu_st[k])));
    if (st[k] == rans_batch_status::ok && bytes[k] == cases[k].bytes)
      expect(std::equal(cases[k].symbols.begin(), cases[k].symbols.end(), out.begin() + static_cast<std::ptrdiff_t>(off)), what + ": symbols differ from the CPU encoder's input");
    off += cases[k].symbols.size();
  }
}

void test_rans_batch() {
  std::uint64_t seed = 1;
  for (int lanes : {32, 64, 96, 1024}) {
    const std::size_t N = static_cast<std::size_t>(lanes);
    std::vector<case_data> cases;
    for (std::size_t cols : {std::size_t{1}, std::size_t{3}, std::size_t{1024}})
      for (std::size_t n : {std::size_t{0}, std::size_t{1}, N - 1, N, N + 1, 5 * N + 7, 40 * N}) {
        cases.push_back(make_case(n, cols, cols == 1 ? 1 : 16, 48, 10 + static_cast<int>(seed % 3), lanes, seed));
        ++seed;
      }
    std::vector<std::vector<std::uint8_t>> bytes;
    for (const auto& c : cases) bytes.push_back(c.bytes);
    check_batch<std::uint32_t>(cases, bytes, "lanes " + std::to_string(lanes) + " compact");
    check_batch<std::uint64_t>(cases, bytes, "lanes " + std::to_string(lanes) + " 64-bit");
  }
  {  // mixed lane counts in one batch
    std::vector<case_data> cases;
    for (int lanes : {32, 1024, 64, 96})
      for (std::size_t n : {std::size_t{777}, std::size_t{262144}}) {
        cases.push_back(make_case(n, 1024, 16, 64, 10, lanes, seed));
        ++seed;
      }
    std::vector<std::vector<std::uint8_t>> bytes;
    for (const auto& c : cases) bytes.push_back(c.bytes);
    check_batch<std::uint32_t>(cases, bytes, "mixed lanes");
  }
  {  // corrupt streams: the emulation's status, no out-of-bounds access (compute-sanitizer)
    const case_data c = make_case(3000, 1024, 8, 48, 10, 64, 77);
    std::vector<std::vector<std::uint8_t>> bytes;
    auto cut = c.bytes;
    cut.resize(cut.size() - 2);
    bytes.push_back(cut);
    auto pad = c.bytes;
    pad.insert(pad.end(), {0, 0});
    bytes.push_back(pad);
    auto low = c.bytes;
    low[22] = low[23] = 0;
    bytes.push_back(low);
    auto odd = c.bytes;
    odd.push_back(1);
    bytes.push_back(odd);
    bytes.emplace_back(c.bytes.begin(), c.bytes.begin() + 100);
    std::mt19937_64 rng(5);
    for (int k = 0; k < 200; ++k) {
      auto f = c.bytes;
      f[256 + rng() % (f.size() - 256)] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
      bytes.push_back(f);
    }
    std::vector<case_data> cases(bytes.size(), c);
    check_batch<std::uint32_t>(cases, bytes, "corrupt");
  }
  {  // two batches queued on one stream before either is waited for
    std::vector<case_data> a, b;
    for (int k = 0; k < 8; ++k) {
      a.push_back(make_case(100000, 1024, 16, 64, 10, 64, 500 + k));
      b.push_back(make_case(70000, 1024, 16, 64, 10, 64, 600 + k));
    }
    rans_batch_builder<std::uint32_t> ba, bb;
    for (const auto& c : a) add(ba, c, std::span<const std::uint8_t>(c.bytes));
    for (const auto& c : b) add(bb, c, std::span<const std::uint8_t>(c.bytes));
    cudaStream_t s;
    kvcodec::cuda::check(cudaStreamCreate(&s), "cudaStreamCreate");
    device_batch<std::uint32_t> da(ba), db(bb);
    da.launch(ba, kvcodec::cuda::par.on(s));
    db.launch(bb, kvcodec::cuda::par.on(s));
    const auto sa = da.statuses(kvcodec::cuda::par.on(s)), sb = db.statuses(kvcodec::cuda::par.on(s));
    const auto oa = da.out.download(), ob = db.out.download();
    std::vector<std::uint16_t> ea, eb;
    for (const auto& c : a) ea.insert(ea.end(), c.symbols.begin(), c.symbols.end());
    for (const auto& c : b) eb.insert(eb.end(), c.symbols.begin(), c.symbols.end());
    bool ok = oa == ea && ob == eb;
    for (auto v : sa) ok = ok && v == rans_batch_status::ok;
    for (auto v : sb) ok = ok && v == rans_batch_status::ok;
    expect(ok, "two batches queued on one stream");
    kvcodec::cuda::check(cudaStreamDestroy(s), "cudaStreamDestroy");
  }
}

/// Device buffers for a test view (tests/support/test_views.hpp), filled with 0x5a.
struct device_dest {
  std::vector<kvcodec::cuda::device_buffer<std::byte>> k, v;
  kv_view view;
  device_dest(const kv_shape& s, std::int64_t tokens, dtype t, bool paged) {
    const std::size_t per = test::test_view_bytes(s, tokens, t, paged);
    std::vector<std::byte*> kp, vp;
    for (int l = 0; l < s.layers; ++l)
      for (auto* side : {&k, &v}) {
        side->emplace_back(per);
        kvcodec::cuda::check(cudaMemset(side->back().data(), 0x5a, per), "memset");
        (side == &k ? kp : vp).push_back(side->back().data());
      }
    view = test::test_view(kp, vp, s, tokens, t, paged);
    view.space = memory_space::device;
  }
  /// The rows read back from the device.
  std::vector<std::byte> rows() const {
    std::vector<std::vector<std::byte>> hk, hv;
    for (const auto& b : k) hk.push_back(b.download());
    for (const auto& b : v) hv.push_back(b.download());
    return test::view_rows(view, [&](int l, bool key) { return (key ? hk : hv)[static_cast<std::size_t>(l)].data(); });
  }
};

std::vector<std::byte> host_rows(const kv_cache& c, dtype t, std::int64_t tb, std::int64_t te) {
  std::vector<std::byte> out;
  const std::size_t D = static_cast<std::size_t>(c.shape.head_dim), es = dtype_size(t);
  std::vector<std::uint8_t> row(D * es);
  for (int l = 0; l < c.shape.layers; ++l)
    for (int kv = 0; kv < 2; ++kv)
      for (int h = 0; h < c.shape.kv_heads; ++h)
        for (std::int64_t tok = tb; tok < te; ++tok) {
          const float* x = (kv == 0 ? c.keys : c.values)[static_cast<std::size_t>(l)].data() + (static_cast<std::size_t>(h) * static_cast<std::size_t>(c.shape.tokens) + static_cast<std::size_t>(tok)) * D;
          encode_floats(x, D, t, row.data());
          const std::byte* r = reinterpret_cast<const std::byte*>(row.data());
          out.insert(out.end(), r, r + D * es);
        }
  return out;
}

/// Whether cuda::decode_into refuses `file` (every token, into an HF f16 device view of shape s) with a
/// usage error.
bool decode_usage(const bytes& file, const kv_shape& s) {
  device_dest d(s, s.tokens, dtype::f16, false);
  try {
    kvcodec::cuda::decode_into(kvcodec::cuda::par, file, d.view);
  } catch (const error& err) {
    return err.kind() == error_kind::usage;
  }
  return false;
}

void test_decode_into() {
  kv_cache kv = test::random_cache(3, 2, 600, 32, dtype::f16);
  kv.metadata["rope"] = "rotate-half", kv.metadata["rope_theta"] = "500000";  // for derope
  for (const std::string spec : {"kvc:level=5", "kvc:level=9", "cachegen-quant:kaxis=token,scale=bf16|rans:lanes=0"}) {
    const encoded e = encode(spec, kv, encode_options{.chunk_tokens = 256});
    for (dtype t : {dtype::f16, dtype::bf16, dtype::f32})
      for (bool paged : {false, true})
        for (auto [tb, te] : {std::pair<std::int64_t, std::int64_t>{0, 600}, {256, 512}, {100, 300}}) {
          if (paged && tb % 16 != 0) continue;
          decode_options opt;
          opt.token_begin = tb;
          opt.token_end = te;
          const kv_cache want = decode(cpu::par, e.data, opt);
          for (auto variant : {kvcodec::cuda::batch_variant::best, kvcodec::cuda::batch_variant::unfused}) {
            device_dest d(kv.shape, te - tb, t, paged);
            kvcodec::cuda::view_decoder vd(kvcodec::cuda::par, e.data, d.view, opt, variant);
            vd.launch();
            vd.finish();
            expect(d.rows() == host_rows(want, t, 0, te - tb), "decode_into " + spec + (variant == kvcodec::cuda::batch_variant::best ? " (fused) " : " (unfused) ") +
                                                                std::string(dtype_name(t)) + (paged ? " paged" : " hf") + " tokens " + std::to_string(tb) +
                                                                ".." + std::to_string(te));
          }
        }
  }
  // pack-coded: the ggml block formats, fp8, raw; uniform and kivi with rans or pack (head_dim 32, and
  // 8 heads x head_dim 20 where ggml blocks span heads)
  kv_cache narrow = test::random_cache(2, 8, 300, 20, dtype::bf16);
  narrow.metadata["rope"] = "interleaved-pairs", narrow.metadata["rope_theta"] = "10000";  // for derope
  using kvcodec::cuda::batch_variant;
  // Each spec on both caches (chunks of 128 tokens), every dtype, HF and paged, three token ranges, with
  // the given kernel variants, against the CPU's decode_into.
  const auto check_specs = [&](std::initializer_list<const char*> specs, std::initializer_list<batch_variant> variants) {
    for (const std::string spec : specs)
      for (const kv_cache* c : {&kv, &narrow}) {
        const encoded e = encode(spec, *c, encode_options{.chunk_tokens = 128});
        const std::int64_t T = c->shape.tokens;
        for (const batch_variant variant : variants)
          for (dtype t : {dtype::f16, dtype::bf16, dtype::f32})
            for (bool paged : {false, true})
              for (auto [tb, te] : {std::pair<std::int64_t, std::int64_t>{0, T}, {128, 256}, {100, 290}}) {
                if (paged && tb % 16 != 0) continue;
                decode_options opt;
                opt.token_begin = tb;
                opt.token_end = te;
                test::host_dest want(c->shape, te - tb, t, paged);
                decode_into(cpu::par, e.data, want.view, opt);
                device_dest d(c->shape, te - tb, t, paged);
                kvcodec::cuda::view_decoder vd(kvcodec::cuda::par, e.data, d.view, opt, variant);
                vd.launch();
                vd.finish();
                expect(d.rows() == want.rows(), "decode_into " + spec + (variant == batch_variant::best ? " (best)" : " (unfused)") + " head_dim " +
                                                    std::to_string(c->shape.head_dim) + " " + std::string(dtype_name(t)) + (paged ? " paged" : " hf") +
                                                    " tokens " + std::to_string(tb) + ".." + std::to_string(te));
              }
      }
  };
  check_specs({"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "fp8", "fp8:format=e5m2,scale=head", "fp8:scale=token", "raw", "raw:dtype=bf16",
               "raw:dtype=f32", "kivi:bits=4|rans", "kivi:bits=2,group=32,residual=200|pack", "uniform:bits=3,mode=sym,kaxis=token,group=4|pack",
               "uniform:bits=8,kaxis=channel,vaxis=channel,group=10|rans", "nf4", "nf4:group=4,scale=f32|rans", "kmeans", "kmeans:bits=3|rans",
               "kmeans:bits=8|pack", "kivi:bits=2,outliers=1|rans", "uniform:bits=3,outliers=2,kaxis=channel,group=4", "kivi:bits=4|rans:pred=prev",
               "nf4|rans:pred=linear,tables=chunk", "cachegen-quant|rans:pred=anchor,group=10", "cachegen-quant|rans:pred=linear"},
              {batch_variant::best});
  // cachegen-quant|ac (the cachegen preset): the fused tiled kernel and LMCache's rows kernel
  check_specs({"cachegen", "cachegen-quant|ac:ctx=pooled", "cachegen-quant|ac:streams=block", "cachegen-quant:kbins=600,klayers=-,vbins=300,vlayers=-|ac",
               "cachegen-paper", "cachegen-quant|ac:pred=prev,group=5",
               "cachegen-quant:kaxis=token,vaxis=channel,scale=bf16|ac"},
              {batch_variant::best, batch_variant::unfused});
  // the transforms hadamard and derope: decoded into an f32 scratch view, then inverted into the view
  check_specs({"hadamard|q8_0", "derope|kvc:level=5", "derope|hadamard:target=v|cachegen", "hadamard:seed=4|kivi:bits=4|rans", "derope|fp8:scale=head",
               "hadamard|nf4|rans", "derope|raw", "kvw", "weighted-quant:derope=off|rans"},
              {batch_variant::best});
  // outside its scope (a block format on a token-dropped container): a usage error
  expect(decode_usage(encode("knorm:keep=0.5|q8_0", kv).data, kv.shape), "decode_into knorm:keep=0.5|q8_0: usage error");
}

/// cuda::decode_into (view_decoder, each kernel variant of `variants`) of a 300-token container into every
/// dtype, HF and paged, tokens 0..300, 96..256 and 100..290 (HF only), against the CPU's decode_into: the
/// same rows and kept sets. --quick: the first variant, HF f16 only.
void check_ranges(const bytes& file, const kv_shape& s, std::initializer_list<kvcodec::cuda::batch_variant> variants, const std::string& name) {
  for (const kvcodec::cuda::batch_variant variant : variants)
    for (dtype t : {dtype::f16, dtype::bf16, dtype::f32})
      for (bool paged : {false, true})
        for (auto [tb, te] : {std::pair<std::int64_t, std::int64_t>{0, 300}, {96, 256}, {100, 290}}) {
          if ((paged && tb % 16 != 0) || (quick && (t != dtype::f16 || paged || variant != *variants.begin()))) continue;
          decode_options opt;
          opt.token_begin = tb;
          opt.token_end = te;
          test::host_dest want(s, te - tb, t, paged);
          const decode_result wr = decode_into(cpu::par, file, want.view, opt);
          device_dest d(s, te - tb, t, paged);
          kvcodec::cuda::view_decoder vd(kvcodec::cuda::par, file, d.view, opt, variant);
          vd.launch();
          vd.finish();
          const std::string what = name + (variant == kvcodec::cuda::batch_variant::best ? " (best) " : " (unfused) ") + std::string(dtype_name(t)) +
                                   (paged ? " paged" : " hf") + " tokens " + std::to_string(tb) + ".." + std::to_string(te);
          expect(d.rows() == want.rows(), what);
          expect(vd.result().kept == wr.kept, what + ": kept sets");
        }
}

/// cuda::decode_into of token-dropped containers: the CPU encoder's containers over ragged kept sets
/// (tests/support/random_cache.hpp), every quantizer family with a CUDA decode but the block formats,
/// the transforms, every dtype, HF and paged, token ranges; equal to the CPU's decode_into, dropped
/// tokens written as zeros, the same kept sets reported.
void test_decode_dropped() {
  kv_cache kv = test::random_cache(2, 4, 300, 16, dtype::f16);
  kv.metadata["rope"] = "rotate-half", kv.metadata["rope_theta"] = "10000";
  kv_extras ex = extras_of(kv);
  ex.cache = nullptr;
  ex.kept = test::ragged_kept(2);
  const test::host_dest src = test::host_source(kv, dtype::f16, false);
  for (const std::string spec : {"cachegen-quant:kbins=32,klayers=-,kaxis=channel|rans:tables=chunk", "cachegen-quant:kaxis=token,vaxis=channel|rans:lanes=0",
                                 "cachegen", "raw", "raw:dtype=f32", "fp8", "fp8:scale=head", "fp8:scale=token", "uniform:bits=3",
                                 "uniform:bits=4,kaxis=channel,group=8|rans", "kivi:bits=2", "kivi:bits=4,group=16,residual=40|rans", "nf4:group=4", "nf4|rans",
                                 "kmeans:bits=3", "derope|kivi:bits=4|rans", "hadamard|cachegen-quant|rans:tables=chunk", "derope|cachegen",
                                 "kivi:bits=2,outliers=2,residual=40|rans", "uniform:bits=3,outliers=1"}) {
    codec c = make_codec(spec);
    check_ranges(encode(cpu::par, c, const_kv_view(src.view), encode_options{.chunk_tokens = 96}, ex).data, kv.shape,
                 {kvcodec::cuda::batch_variant::best}, "decode_into (token-dropped) " + spec);
  }
}

/// cuda::decode_into of think containers (CPU-encoded, dense and token-dropped): the key rows decode at
/// their coded width and go back to their kept channels, zeros in the pruned ones; every quantizer family
/// with a CUDA decode but the block formats, both kernel variants, every dtype, HF and paged, token
/// ranges; equal to the CPU's decode_into. think before a block format: a usage error.
void test_decode_think() {
  const kv_cache kv = test::query_cache(2, 4, 300, 32, dtype::bf16);
  using kvcodec::cuda::batch_variant;
  for (const std::string spec : {"think:prune=0.5|raw", "think:prune=0.25|raw:dtype=f32", "think|fp8:scale=token", "think:prune=0.25|kivi:bits=4|rans",
                                 "think:prune=0.5|kivi:bits=2,residual=40", "think:prune=0.25|uniform:bits=3,outliers=1", "think:prune=0.5|nf4|rans",
                                 "think|kmeans:bits=3", "think:prune=0.5|kvc:level=5", "think:prune=0.25|cachegen", "think|cachegen-quant|ac:pred=prev",
                                 "knorm:keep=0.5|think|kivi:bits=4,residual=40|rans", "snapkv:keep=0.4,window=16|think:prune=0.25|fp8",
                                 "knorm:keep=0.4|think|cachegen-quant|rans:tables=chunk", "h2o:keep=0.5,window=16|think:prune=0.5|nf4|rans"}) {
    check_ranges(encode(spec, kv, encode_options{.chunk_tokens = 96}).data, kv.shape, {batch_variant::best, batch_variant::unfused}, "decode_into (think) " + spec);
  }
  expect(decode_usage(encode("think|q8_0", kv).data, kv.shape), "decode_into think|q8_0: usage error");
}

/// cuda::rans_encode_batch writes the CPU encoder's streams (laid out by the host gather of
/// tests/support): lanes 32..1024, 1..1024 columns, lengths around a step, bytes and 16-bit symbols,
/// mixed lane counts in one batch; a symbol without a code is flagged as the emulation flags it.
void test_rans_encode() {
  std::uint64_t seed = 500;
  std::vector<std::vector<case_data>> batches;
  for (int lanes : {32, 64, 96, 1024}) {
    const std::size_t N = static_cast<std::size_t>(lanes);
    auto& cases = batches.emplace_back();
    for (std::size_t cols : {std::size_t{1}, std::size_t{3}, std::size_t{1024}})
      for (std::size_t n : {std::size_t{0}, std::size_t{1}, N - 1, N, N + 1, 5 * N + 7, 40 * N}) {
        cases.push_back(make_case(n, cols, cols == 1 ? 1 : 16, 48, 10 + static_cast<int>(seed % 6), lanes, seed));
        ++seed;
      }
  }
  {
    auto& cases = batches.emplace_back();
    for (int lanes : {32, 1024, 64, 96}) cases.push_back(make_case(262144 + 13, 1024, 16, 300, 14, lanes, seed++));
  }
  {
    auto& cases = batches.emplace_back();
    cases.push_back(make_case(500, 4, 2, 40, 10, 32, seed++));
    cases.push_back(make_case(500, 4, 2, 40, 10, 64, seed++));
    cases[1].symbols[250] = 41;  // outside every table
  }
  for (std::size_t bi = 0; bi < batches.size(); ++bi)
    for (bool wide : {false, true}) {
      const auto& cases = batches[bi];
      const encode_layout L = make_encode_layout(cases, wide);
      std::vector<std::uint16_t> ew;
      std::vector<std::uint32_t> es, ebad;
      std::vector<std::uint64_t> ecount;
      rans_encode_batch_emulated(L.host_args(ew, es, ecount, ebad));
      using kvcodec::cuda::device_buffer;
      device_buffer<rans_encode_stream> streams{std::span<const rans_encode_stream>(L.streams)};
      device_buffer<std::uint8_t> sym{std::span<const std::uint8_t>(L.sym)};
      device_buffer<rans_enc_symbol> tables{std::span<const rans_enc_symbol>(L.tables)};
      device_buffer<std::uint32_t> col_tab{std::span<const std::uint32_t>(L.col_tab)}, col_alpha{std::span<const std::uint32_t>(L.col_alpha)};
      device_buffer<std::uint16_t> words(static_cast<std::size_t>(L.words) + 1);
      device_buffer<std::uint32_t> states(static_cast<std::size_t>(L.states)), bad(cases.size());
      device_buffer<std::uint64_t> count(cases.size());
      const rans_encode_args a{streams.data(), cases.size(), L.max_lanes, sym.data(), tables.data(), col_tab.data(), col_alpha.data(),
                               words.data(), states.data(), count.data(), bad.data()};
      kvcodec::cuda::rans_encode_batch(a, kvcodec::cuda::par);
      kvcodec::cuda::check(cudaDeviceSynchronize(), "rans_encode_batch");
      auto w = words.download();
      w.resize(static_cast<std::size_t>(L.words));
      const auto st = states.download();
      const auto cnt = count.download();
      const auto bd = bad.download();
      for (std::size_t k = 0; k < cases.size(); ++k) {
        const std::string what = "rans encode batch " + std::to_string(bi) + (wide ? " 16-bit" : " bytes") + " stream " + std::to_string(k) +
                                 " (lanes " + std::to_string(cases[k].lanes) + ", n " + std::to_string(cases[k].symbols.size()) + ")";
        expect(bd[k] == ebad[k], what + ": bad flag differs from the emulation's");
        if (bd[k] == 0) expect(L.stream_bytes(k, w, st, cnt) == cases[k].bytes, what + ": bytes differ from the CPU encoder's");
      }
    }
}

/// kvcodec::cuda::encode from device views (f32/f16/bf16, HF and paged) writes the CPU encoder's
/// container byte for byte: the kvc levels, cachegen, the ggml block formats, fp8, raw, uniform, kivi.
void test_encode() {
  const kv_cache a = test::random_cache(3, 2, 600, 32, dtype::f16);
  const kv_cache b = test::random_cache(2, 8, 300, 20, dtype::bf16);
  for (const std::string spec : {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "fp8", "fp8:format=e5m2,scale=head", "fp8:scale=token", "raw",
                                 "raw:dtype=f16", "raw:dtype=bf16", "raw:dtype=f32", "kivi:bits=2", "kivi:bits=4,group=32,residual=200,scale=f32",
                                 "uniform", "uniform:bits=3,mode=sym,kaxis=token,group=4", "uniform:bits=8,kaxis=channel,vaxis=channel,group=10",
                                 "kvc:level=5", "kvc:level=1", "kvc:level=9,values=channel", "cachegen", "cachegen-quant:kaxis=token,vaxis=channel,scale=bf16|rans:lanes=0",
                                 "cachegen-quant:kbins=600,klayers=-,vbins=300,vlayers=-|rans:prob_bits=14", "kivi:bits=4|rans", "fp8|rans",
                                 "fp8:scale=token|rans:tables=shared,lanes=0", "kivi:bits=2|rans:tables=shared,lanes=0",
                                 "uniform:bits=3|rans:ctx=auto,model=auto,lanes=96", "cachegen-quant|rans:tables=chunk,ctx=auto,prob_bits=12",
                                 "cachegen-quant|rans:pred=prev", "nf4", "nf4:group=4,scale=f32", "nf4|rans", "nf4:group=4|rans:tables=shared,lanes=0",
                                 "kmeans", "kmeans:bits=3,sample=1000|rans", "kivi:bits=2,outliers=1", "kivi:bits=4,outliers=2.5,residual=200|rans",
                                 "uniform:bits=3,outliers=1,kaxis=channel,group=4", "uniform:bits=4,mode=sym,outliers=0.5|rans:tables=shared,lanes=0"})
    for (const kv_cache* kv : {&a, &b})
      for (dtype t : {dtype::f32, dtype::f16, dtype::bf16})
        for (bool paged : {false, true}) {
          const test::host_dest src = test::host_source(*kv, t, paged);
          device_dest dsrc(kv->shape, kv->shape.tokens, t, paged);
          for (std::size_t l = 0; l < src.k.size(); ++l) {
            dsrc.k[l].upload(std::span<const std::byte>(src.k[l]));
            dsrc.v[l].upload(std::span<const std::byte>(src.v[l]));
          }
          kv_extras ex = extras_of(*kv);
          ex.cache = nullptr;
          const encode_options opt{.chunk_tokens = kv->shape.head_dim == 32 ? 256 : 128};
          codec c1 = make_codec(spec), c2 = make_codec(spec);
          const encoded want = encode(cpu::par, c1, const_kv_view(src.view), opt, ex);
          const encoded got = kvcodec::cuda::encode(kvcodec::cuda::par, c2, const_kv_view(dsrc.view), opt, ex);
          expect(got.data == want.data, "encode " + spec + " head_dim " + std::to_string(kv->shape.head_dim) + " " + std::string(dtype_name(t)) +
                                            (paged ? " paged" : " hf") + ": container differs from the CPU's");
        }
}

/// uniform / kivi outliers chosen on the GPU (cuda::affine_outlier_select) as the CPU chooses them: values
/// on a coarse grid (equal magnitudes of both signs: ties to the lower index), NaN and infinities
/// (always outliers), a head of -0 only; and the selection itself against its host emulation over
/// segments with ties, an empty one and budgets of 0 and of the whole segment.
void test_encode_outliers() {
  const kv_cache kv = test::outlier_cache();
  for (const std::string spec : {"kivi:bits=2,outliers=3", "kivi:bits=4,outliers=40,residual=70|rans", "uniform:bits=3,outliers=1,kaxis=channel",
                                 "uniform:bits=2,mode=sym,outliers=100", "uniform:bits=4,outliers=0.01"})
    for (dtype t : {dtype::f32, dtype::f16})
      for (bool paged : {false, true}) {
        const test::host_dest src = test::host_source(kv, t, paged);
        device_dest dsrc(kv.shape, kv.shape.tokens, t, paged);
        for (std::size_t l = 0; l < src.k.size(); ++l) {
          dsrc.k[l].upload(std::span<const std::byte>(src.k[l]));
          dsrc.v[l].upload(std::span<const std::byte>(src.v[l]));
        }
        kv_extras ex = extras_of(kv);
        ex.cache = nullptr;
        const encode_options opt{.chunk_tokens = 64};
        codec c1 = make_codec(spec), c2 = make_codec(spec);
        const encoded want = encode(cpu::par, c1, const_kv_view(src.view), opt, ex);
        const encoded got = kvcodec::cuda::encode(kvcodec::cuda::par, c2, const_kv_view(dsrc.view), opt, ex);
        expect(got.data == want.data, "encode " + spec + " " + std::string(dtype_name(t)) + (paged ? " paged" : " hf") + " (outliers): container differs from the CPU's");
      }
  // the selection alone: random keys from a small range (many ties), segments of 0 .. 5000 entries
  std::mt19937 rng(5);
  std::vector<std::uint64_t> key;
  std::vector<std::uint32_t> pos;
  std::vector<std::int64_t> seg(1, 0), take(1, 0);
  for (int i = 0; i < 40; ++i) {
    const std::int64_t n = i == 3 ? 0 : static_cast<std::int64_t>(rng() % 5000);
    for (std::int64_t j = 0; j < n; ++j) {
      key.push_back(i % 2 ? rng() % 7 : (rng() % 50 == 0 ? 0xffffffffu : rng()));
      pos.push_back(static_cast<std::uint32_t>(j));
    }
    seg.push_back(seg.back() + n);
    take.push_back(take.back() + (i == 5 ? 0 : i == 6 ? n : static_cast<std::int64_t>(rng() % (n + 1))));
  }
  std::vector<std::uint32_t> want(static_cast<std::size_t>(take.back()));
  affine_outlier_select_emulated(key.data(), pos.data(), seg, take, want.data());
  kvcodec::cuda::device_batch_executor x(kvcodec::cuda::par);
  auto* dk = reinterpret_cast<std::uint64_t*>(x.bytes(key.size() * 8));
  auto* dp = reinterpret_cast<std::uint32_t*>(x.bytes(pos.size() * 4));
  auto* ds = reinterpret_cast<std::uint32_t*>(x.bytes(want.size() * 4));
  x.put(dk, key.data(), key.size() * 8);
  x.put(dp, pos.data(), pos.size() * 4);
  x.outlier_select(dk, dp, seg, take, ds);
  std::vector<std::uint32_t> got(want.size());
  x.get(got.data(), ds, got.size() * 4);
  expect(got == want, "affine_outlier_select: the chosen indices differ from the host emulation's");
}

/// A kv_cache's K/V (or, with queries = true, its queries as the K side) in device memory.
struct device_cache {
  device_dest d;
  device_cache(const kv_cache& kv, dtype t, bool paged, bool queries = false) : d(shape_of(kv, queries), kv.shape.tokens, t, paged) {
    kv_cache src = kv;
    if (queries) {
      src.shape.kv_heads = kv.shape.q_heads;
      src.keys = kv.queries;
      src.values = kv.queries;
      src.queries.clear();
      src.shape.q_heads = 0;
    }
    const test::host_dest h = test::host_source(src, t, paged);
    for (std::size_t l = 0; l < h.k.size(); ++l) {
      d.k[l].upload(std::span<const std::byte>(h.k[l]));
      d.v[l].upload(std::span<const std::byte>(h.v[l]));
    }
  }
  static kv_shape shape_of(const kv_cache& kv, bool queries) {
    kv_shape s = kv.shape;
    if (queries) s.kv_heads = kv.shape.q_heads, s.q_heads = 0;
    return s;
  }
};

/// cuda::encode of token-dropped caches (the drop stage selecting on the GPU, cuda/drop_select.cuh;
/// the kept rows gathered and quantized there): byte for byte the CPU encoder's container for the
/// methods whose GPU kept sets are the CPU's exactly (knorm, keydiff, random, streamingllm, lagkv,
/// expected-attention); for the window scorers (snapkv, pyramidkv, h2o, tova, adakv) the kept sets may
/// differ on near-ties: equal containers when the kept sets are equal, else a container that decodes
/// to the GPU's kept sets. The block press and composed specs (stages after the first on a gathered
/// device sub-cache) too. A stage after adakv and a query-aware stage without queries are refused.
void test_encode_dropped() {
  for (std::uint32_t code : {0u, 1u}) {
    const dtype t = code == 0 ? dtype::f32 : dtype::f16;
    kv_cache kv = test::rounded(test::small_synth({.layers = 2, .kv_heads = 2, .q_heads = 8, .head_dim = 64, .tokens = 700, .seed = 21}), code);
    for (auto& layer : kv.values)
      for (auto& x : layer) x = test::round_to(x, code);
    for (bool paged : {false, true}) {
      if (quick && (code == 0 || paged)) continue;
      const device_cache dkv(kv, t, paged), dq(kv, t, false, true);
      const const_kv_view view(dkv.d.view), qview(dq.d.view);
      kv_extras ex = extras_of(kv);
      ex.cache = &kv;  // the CPU stage scores it (with its queries)
      const encode_options opt{.chunk_tokens = 256};
      for (const std::string drop : {"knorm:keep=0.4", "keydiff:keep=0.3", "random:keep=0.5,seed=3", "streamingllm:keep=0.3", "lagkv:keep=0.5,lag=64",
                                     "expected-attention:keep=0.4,window=32", "block:scorer=knorm,keep=0.3,block=100", "block:scorer=lagkv,keep=0.5,lag=32",
                                     "streamingllm:keep=0.6,obs_end=680|knorm:keep=0.5|random:keep=0.9", "snapkv:keep=0.5,window=32",
                                     "pyramidkv:keep=0.4,window=32", "h2o:keep=0.3,window=32", "tova:keep=0.3,obs_end=650", "adakv:keep=0.4,window=32",
                                     "block:scorer=snapkv,keep=0.4,window=16,block=128", "knorm:keep=0.6|h2o:keep=0.5,window=16",
                                     "criticalkv:keep=0.4,window=32", "criticalkv:scorer=h2o,keep=0.3,window=32,first=0.8",
                                     "chunkkv:scorer=lagkv,keep=0.5,chunk=16,lag=64", "chunkkv:keep=0.4,window=32,chunk=8",
                                     "criticaladakv:keep=0.4,window=32,alpha=0.3", "adakv:scorer=knorm,keep=0.4,alpha=0.2",
                                     "adakv:scorer=lagkv,keep=0.5,lag=64", "criticalkv:scorer=keydiff,keep=0.4", "criticalkv:scorer=lagkv,keep=0.3,lag=64,first=0.7",
                                     "criticaladakv:scorer=expected-attention,keep=0.4,window=32", "criticaladakv:scorer=knorm,keep=0.5",
                                     "chunkkv:scorer=knorm,keep=0.4,chunk=16", "chunkkv:scorer=keydiff,keep=0.5,chunk=8"})
      {
        // the kept sets once per drop spec, then the containers: every quantizer for f16 HF views, two elsewhere
        const codec c0 = make_codec(drop + "|raw");
        const kept_sets gpu = kvcodec::cuda::drop_stage_select(*c0.drop, view, &qview, kv.metadata, kv.positions, kvcodec::cuda::par);
        const kept_sets cpu_kept = c0.drop->select(kv);
        const std::string where = drop + " " + std::string(dtype_name(t)) + (paged ? " paged" : " hf");
        const bool other_scorer = drop.find("scorer=knorm") != std::string::npos || drop.find("scorer=keydiff") != std::string::npos ||
                                  drop.find("scorer=lagkv") != std::string::npos || drop.find("scorer=expected-attention") != std::string::npos;
        const bool exact = other_scorer || (drop.find("snapkv") == std::string::npos && drop.find("pyramidkv") == std::string::npos && drop.find("h2o") == std::string::npos &&
                                            drop.find("tova") == std::string::npos && drop.find("adakv") == std::string::npos && drop.find("criticalkv") == std::string::npos &&
                                            drop != "chunkkv:keep=0.4,window=32,chunk=8");  // criticaladakv: found by "adakv"
        if (exact || gpu == cpu_kept) {
          expect(gpu == cpu_kept, where + ": GPU kept sets differ from the CPU's");
        } else {
          std::size_t diff = 0;
          for (std::size_t l = 0; l < gpu.size(); ++l)
            for (std::size_t h = 0; h < gpu[l].size(); ++h) {
              std::vector<std::int32_t> d;
              std::set_symmetric_difference(gpu[l][h].begin(), gpu[l][h].end(), cpu_kept[l][h].begin(), cpu_kept[l][h].end(), std::back_inserter(d));
              diff += d.size();
            }
          std::printf("note: %s: %zu kept tokens differ from the CPU (near-ties)\n", where.c_str(), diff);
          expect(diff <= 8, where + ": " + std::to_string(diff) + " kept tokens differ from the CPU's");
        }
        const bool full = code == 1 && !paged;
        for (const std::string quant : {"kivi:bits=4|rans", "fp8:scale=head", "raw", "uniform:bits=3", "nf4|rans", "derope|hadamard|kivi:bits=2",
                                        "kivi:bits=2,outliers=2,residual=40|rans", "uniform:bits=3,outliers=1"}) {
          if (!full && quant != "kivi:bits=4|rans" && quant != "fp8:scale=head") continue;
          const std::string spec = drop + "|" + quant, what = "encode " + spec + " " + std::string(dtype_name(t)) + (paged ? " paged" : " hf");
          codec c1 = make_codec(spec), c2 = make_codec(spec);
          const encoded got = kvcodec::cuda::encode(kvcodec::cuda::par, c2, view, opt, ex, &qview);
          if (full) {  // and back on the GPU: the CPU's decode of the GPU's container
            test::host_dest want(kv.shape, kv.shape.tokens, t, paged);
            (void)decode_into(cpu::par, got.data, want.view);
            device_dest d(kv.shape, kv.shape.tokens, t, paged);
            (void)kvcodec::cuda::decode_into(kvcodec::cuda::par, got.data, d.view);
            expect(d.rows() == want.rows(), what + ": GPU decode differs from the CPU's");
          }
          if (gpu == cpu_kept) {
            const encoded want = encode(cpu::par, c1, const_kv_view(test::host_source(kv, t, paged).view), opt, ex);
            expect(got.data == want.data, what + ": container differs from the CPU's");
          } else {
            expect(decode(cpu::par, got.data).kept == gpu, what + ": the container's kept sets are not the GPU's");
          }
        }
      }
      // the transforms on dense caches (derope from the cache's RoPE metadata)
      // and think (its masks from the queries view on the GPU, the key rows compacted before the quantizer)
      for (const std::string spec : {"hadamard|q8_0", "derope|kvc:level=5", "derope|hadamard:target=v|fp8:scale=token|rans", "hadamard:seed=9|kmeans:bits=3",
                                     "think:prune=0.5|kivi:bits=4|rans", "think|kvc:level=5", "think:prune=0.25|uniform:bits=3,outliers=1|rans",
                                     "knorm:keep=0.4|think:prune=0.5|fp8:scale=head", "think:prune=0.75|nf4|rans"}) {
        codec c1 = make_codec(spec), c2 = make_codec(spec);
        const encoded want = encode(cpu::par, c1, const_kv_view(test::host_source(kv, t, paged).view), opt, ex);
        const encoded got = kvcodec::cuda::encode(kvcodec::cuda::par, c2, view, opt, ex, &qview);
        expect(got.data == want.data, "encode " + spec + " " + std::string(dtype_name(t)) + (paged ? " paged" : " hf") + ": container differs from the CPU's");
        if (spec.find("think") != std::string::npos) {  // and back on the GPU: the key channels in place again
          test::host_dest back(kv.shape, kv.shape.tokens, t, paged);
          (void)decode_into(cpu::par, want.data, back.view);
          device_dest d(kv.shape, kv.shape.tokens, t, paged);
          (void)kvcodec::cuda::decode_into(kvcodec::cuda::par, got.data, d.view);
          expect(d.rows() == back.rows(), "decode " + spec + " " + std::string(dtype_name(t)) + (paged ? " paged" : " hf") + ": GPU decode differs from the CPU's");
        }
      }
      // outside the GPU scope: a stage after adakv, a query-aware stage without queries, a block format
      const auto kind = [&](const std::string& spec, const const_kv_view* q) {
        codec c = make_codec(spec);
        try {
          (void)kvcodec::cuda::encode(kvcodec::cuda::par, c, view, opt, ex, q);
        } catch (const error& e) {
          return e.kind();
        }
        return error_kind::io;
      };
      expect(kind("adakv:keep=0.5,window=32|knorm:keep=0.5|raw", &qview) == error_kind::usage, "a stage after adakv (ragged counts): usage error");
      expect(kind("snapkv:keep=0.5|raw", nullptr) == error_kind::bad_input, "snapkv without queries: bad input");
      expect(kind("knorm:keep=0.5|q8_0", nullptr) == error_kind::usage, "knorm|q8_0: usage error");
      expect(kind("think|kivi", nullptr) == error_kind::bad_input, "think without queries: bad input");
      expect(kind("think|q8_0", &qview) == error_kind::usage, "think|q8_0: usage error");
    }
  }
}

/// kvcodec::cuda::knorm_select on f16 / bf16 / f32 device keys against the CPU's select_knorm and the host
/// emulation: equal kept sets (ties and a NaN row included), sizes around a sort tile, two prefixes.
void test_knorm_select() {
  for (int T : {1, 37, 600, 2049})
    for (std::uint32_t code : {0u, 1u, 2u}) {
      kv_cache kv = test::random_cache(3, 2, T, 64, code == 0 ? dtype::f32 : code == 1 ? dtype::f16 : dtype::bf16, static_cast<unsigned>(T));
      const std::size_t D = 64, TT = static_cast<std::size_t>(T);
      if (T > 30)
        for (auto& layer : kv.keys)
          for (std::size_t h = 0; h < 2; ++h) {
            for (std::size_t c = 0; c < D; ++c) layer[(h * TT + 11) * D + c] = layer[(h * TT + 10) * D + c];
            layer[(h * TT + 20) * D + 5] = std::numeric_limits<float>::quiet_NaN();
          }
      std::vector<kvcodec::cuda::device_buffer<std::uint8_t>> layers;
      std::vector<const void*> host_ptrs, dev_ptrs;
      for (const auto& layer : kv.keys) {
        std::vector<std::uint8_t> bytes(layer.size() * (code == 0 ? 4 : 2));
        encode_floats(layer.data(), layer.size(), code == 0 ? dtype::f32 : code == 1 ? dtype::f16 : dtype::bf16, bytes.data());
        layers.emplace_back(std::span<const std::uint8_t>(bytes));
        dev_ptrs.push_back(layers.back().data());
      }
      kvcodec::cuda::device_buffer<const void*> d_ptrs{std::span<const void* const>(dev_ptrs)};
      drop_source src;
      src.k = d_ptrs.data();
      src.head_dim = 64;
      src.dtype_code = code;
      src.layout.s_head = static_cast<std::int64_t>(TT * D);
      src.layout.s_token = static_cast<std::int64_t>(D);
      for (std::int64_t n : {static_cast<std::int64_t>(T), static_cast<std::int64_t>(T) * 3 / 4 + 1})
        for (std::int64_t b : {std::int64_t{1}, n / 3 + 1, n}) {
          std::size_t bytes = 0;
          kvcodec::cuda::knorm_select(nullptr, bytes, src, 3, 2, n, b, nullptr, kvcodec::cuda::par);
          kvcodec::cuda::device_buffer<std::uint8_t> temp(bytes);
          kvcodec::cuda::device_buffer<std::int32_t> kept(static_cast<std::size_t>(6 * b));
          kvcodec::cuda::knorm_select(temp.data(), bytes, src, 3, 2, n, b, kept.data(), kvcodec::cuda::par);
          const auto got = kept.download();
          drop::knorm d;
          d.tokens = b;
          d.obs_end = n == T ? -1 : n;
          const kept_sets want = cpu::select_knorm(kv, d.cfg(), 1);
          std::vector<std::int32_t> flat;
          for (const auto& layer : want)
            for (const auto& h : layer) flat.insert(flat.end(), h.begin(), h.begin() + b);
          const std::string what = "knorm_select T " + std::to_string(T) + " dtype " + std::to_string(code) + " n " + std::to_string(n) + " b " + std::to_string(b);
          expect(got == flat, what + ": kept sets differ from the CPU's");
          drop::keydiff kd;
          kd.tokens = b;
          kd.obs_end = d.obs_end;
          std::size_t kbytes = 0;
          kvcodec::cuda::keydiff_select(nullptr, kbytes, src, 3, 2, n, b, nullptr, kvcodec::cuda::par);
          kvcodec::cuda::device_buffer<std::uint8_t> ktemp(kbytes);
          kvcodec::cuda::keydiff_select(ktemp.data(), kbytes, src, 3, 2, n, b, kept.data(), kvcodec::cuda::par);
          std::vector<std::int32_t> kflat;
          for (const auto& layer : cpu::select_keydiff(kv, kd.cfg(), 1))
            for (const auto& h : layer) kflat.insert(kflat.end(), h.begin(), h.begin() + b);
          expect(kept.download() == kflat, "keydiff_select" + what.substr(12) + ": kept sets differ from the CPU's");
        }
    }
}

/// cuda::random_select against the CPU's select_random.
void test_random_select() {
  const kv_cache kv = test::random_cache(2, 4, 3000, 8);
  for (std::uint64_t seed : {0u, 9u})
    for (std::int64_t b : {std::int64_t{1}, std::int64_t{1000}, std::int64_t{3000}}) {
      std::size_t bytes = 0;
      kvcodec::cuda::random_select(nullptr, bytes, seed, 2, 4, 3000, b, nullptr, kvcodec::cuda::par);
      kvcodec::cuda::device_buffer<std::uint8_t> temp(bytes);
      kvcodec::cuda::device_buffer<std::int32_t> kept(static_cast<std::size_t>(8 * b));
      kvcodec::cuda::random_select(temp.data(), bytes, seed, 2, 4, 3000, b, kept.data(), kvcodec::cuda::par);
      drop::random d;
      d.seed = static_cast<std::int64_t>(seed);
      d.tokens = b;
      std::vector<std::int32_t> flat;
      for (const auto& layer : cpu::select_random(kv, d.cfg(), 1))
        for (const auto& h : layer) flat.insert(flat.end(), h.begin(), h.begin() + b);
      expect(kept.download() == flat, "random_select seed " + std::to_string(seed) + " b " + std::to_string(b) + ": kept sets differ from the CPU's");
    }
}

/// cuda::streamingllm_select against the CPU's select_streamingllm.
void test_streamingllm_select() {
  const kv_cache kv = test::random_cache(2, 4, 700, 8);
  for (std::int64_t sink : {0, 4})
    for (std::int64_t b : {std::int64_t{2}, std::int64_t{300}}) {
      std::size_t bytes = 0;
      kvcodec::cuda::streamingllm_select(nullptr, bytes, sink, 2, 4, 700, b, nullptr, kvcodec::cuda::par);
      kvcodec::cuda::device_buffer<std::uint8_t> temp(bytes);
      kvcodec::cuda::device_buffer<std::int32_t> kept(static_cast<std::size_t>(8 * b));
      kvcodec::cuda::streamingllm_select(temp.data(), bytes, sink, 2, 4, 700, b, kept.data(), kvcodec::cuda::par);
      drop::streamingllm d;
      d.sink = sink;
      d.tokens = b;
      std::vector<std::int32_t> flat;
      for (const auto& layer : cpu::select_streamingllm(kv, d.cfg(), 1))
        for (const auto& h : layer) flat.insert(flat.end(), h.begin(), h.begin() + b);
      expect(kept.download() == flat, "streamingllm_select sink " + std::to_string(sink) + " b " + std::to_string(b) + ": kept sets differ from the CPU's");
    }
}

/// Per-layer device copies of [head][token][dim] tensors in dtype `code`, and the device array of their bases.
struct device_layers {
  std::vector<kvcodec::cuda::device_buffer<std::uint8_t>> layers;
  std::vector<const void*> ptrs;
  kvcodec::cuda::device_buffer<const void*> d_ptrs;
};

void upload_layers(const std::vector<std::vector<float>>& src, std::uint32_t code, device_layers& out) {
  for (const auto& layer : src) {
    std::vector<std::uint8_t> bytes(layer.size() * (code == 0 ? 4 : 2));
    encode_floats(layer.data(), layer.size(), code == 0 ? dtype::f32 : code == 1 ? dtype::f16 : dtype::bf16, bytes.data());
    out.layers.emplace_back(std::span<const std::uint8_t>(bytes));
    out.ptrs.push_back(out.layers.back().data());
  }
  out.d_ptrs = kvcodec::cuda::device_buffer<const void*>{std::span<const void* const>(out.ptrs)};
}

/// The window scorers' kernels (snapkv, pyramidkv, h2o, tova through their cuda/drop/<name>.cuh entry
/// points) against the CPU's kept sets: equal but for near-ties; several row and key tiles, GQA and MHA,
/// f32 and f16, a prefix shorter than the cache, and two selections queued on one stream.
void test_window_select() {
  struct shape_case {
    int kv_heads, q_heads, head_dim;
    std::int64_t tokens, window;
  };
  for (const shape_case sh : {shape_case{2, 8, 64, 300, 64}, shape_case{3, 3, 128, 1000, 32}, shape_case{1, 2, 40, 70, 65}})
    for (std::uint32_t code : {0u, 1u})
      for (std::int64_t obs_end : {std::int64_t{-1}, sh.tokens - 3}) {
        const kv_cache kv = test::rounded(test::small_synth({.layers = 2, .kv_heads = sh.kv_heads, .q_heads = sh.q_heads, .head_dim = sh.head_dim, .tokens = sh.tokens, .seed = 5}), code);
        device_layers k, q;
        upload_layers(kv.keys, code, k);
        upload_layers(kv.queries, code, q);
        const std::int64_t n = obs_end < 0 ? sh.tokens : obs_end;
        drop_window_source src;
        src.k.k = k.d_ptrs.data();
        src.q.k = q.d_ptrs.data();
        for (drop_source* d : {&src.k, &src.q}) {
          d->head_dim = sh.head_dim;
          d->dtype_code = code;
          d->layout.s_head = sh.tokens * sh.head_dim;
          d->layout.s_token = sh.head_dim;
        }
        src.layers = 2, src.heads = sh.kv_heads, src.group = sh.q_heads / sh.kv_heads, src.n = n;
        for (const auto& m : test::methods(n / 3 + 1, obs_end, std::min(sh.window, n))) {
          const drop_window_plan plan = test::window_plan(m, src);
          const auto run = [&](void* temp, std::size_t& bytes, std::int32_t* kept) {
            const auto& c = m.cfg;
            switch (m.kind) {
              case wattn_score::h2o: kvcodec::cuda::h2o_select(temp, bytes, src, c.window, c.recent, c.tokens, kept, kvcodec::cuda::par); break;
              case wattn_score::tova: kvcodec::cuda::tova_select(temp, bytes, src, c.tokens, kept, kvcodec::cuda::par); break;
              default:
                if (m.pyramid) kvcodec::cuda::pyramidkv_select(temp, bytes, src, c.window, c.kernel, c.beta, c.tokens, kept, kvcodec::cuda::par);
                else kvcodec::cuda::snapkv_select(temp, bytes, src, c.window, c.kernel, c.tokens, kept, kvcodec::cuda::par);
            }
          };
          std::size_t bytes = 0;
          run(nullptr, bytes, nullptr);
          kvcodec::cuda::device_buffer<std::uint8_t> temp(bytes), temp2(bytes);
          kvcodec::cuda::device_buffer<std::int32_t> kept(drop_window_kept_size(plan)), kept2(drop_window_kept_size(plan));
          run(temp.data(), bytes, kept.data());
          run(temp2.data(), bytes, kept2.data());  // queued behind the first before either is read
          const auto got = kept.download();
          const std::string what = m.name + " heads " + std::to_string(sh.kv_heads) + "/" + std::to_string(sh.q_heads) + " D " + std::to_string(sh.head_dim) +
                                   " T " + std::to_string(sh.tokens) + " n " + std::to_string(n) + " dtype " + std::to_string(code);
          const test::kept_diff d = test::window_kept_diff(m, kv, plan, got);
          expect(d.bad.empty(), what + ": " + d.bad);
          expect(got == kept2.download(), what + ": two runs on one stream differ");
          if (d.tokens > 0) std::printf("note: %s: %zu tokens differ from the CPU (near-ties)\n", what.c_str(), d.tokens);
        }
        // adakv over each window scorer: the mask against the CPU's select_adakv
        for (const char* scorer : {"snapkv", "h2o", "tova"}) {
          drop::adakv ad;
          ad.tokens = n / 3 + 1, ad.alpha = 0.2, ad.scorer = scorer, ad.obs_end = obs_end, ad.window = std::min(sh.window, n);
          const test::method_case m{std::string("adakv:") + scorer, ad.cfg(),
                                    ad.scorer == "h2o" ? wattn_score::h2o : ad.scorer == "tova" ? wattn_score::tova : wattn_score::snapkv};
          const drop_window_plan plan = test::window_plan(m, src);
          std::size_t bytes = 0;
          kvcodec::cuda::adakv_select(nullptr, bytes, plan, ad.alpha, nullptr, kvcodec::cuda::par);
          kvcodec::cuda::device_buffer<std::uint8_t> temp(bytes), mask(static_cast<std::size_t>(2 * sh.kv_heads * n));
          kvcodec::cuda::adakv_select(temp.data(), bytes, plan, ad.alpha, mask.data(), kvcodec::cuda::par);
          const auto got = mask.download();
          std::size_t diff = 0, seg = 0;
          for (const auto& layer : cpu::select_adakv(kv, ad.cfg(), 1))
            for (const auto& h : layer) {
              std::vector<std::uint8_t> w(static_cast<std::size_t>(n), 0);
              for (auto t : h)
                if (t < n) w[static_cast<std::size_t>(t)] = 1;
              for (std::int64_t t = 0; t < n; ++t) diff += w[static_cast<std::size_t>(t)] != got[seg * static_cast<std::size_t>(n) + static_cast<std::size_t>(t)];
              ++seg;
            }
          expect(diff <= 2, m.name + " D " + std::to_string(sh.head_dim) + " T " + std::to_string(sh.tokens) + " n " + std::to_string(n) + " dtype " +
                                std::to_string(code) + ": " + std::to_string(diff) + " tokens differ from the CPU's select_adakv");
        }
      }
}

/// cuda::lagkv_select against the CPU's select_lagkv: equal kept sets (bit-exact scores), f16 and f32,
/// partition lengths around the prefix.
void test_lagkv_select() {
  for (std::uint32_t code : {0u, 1u}) {
    const dtype dt = code == 0 ? dtype::f32 : dtype::f16;
    const kv_cache kv = test::random_cache(3, 4, 1500, 64, dt, 11);
    device_layers k, v;
    upload_layers(kv.keys, code, k);
    upload_layers(kv.values, code, v);
    for (std::int64_t lag : {std::int64_t{2}, std::int64_t{128}, std::int64_t{700}})
      for (std::int64_t b : {std::int64_t{5}, std::int64_t{500}}) {
        lagkv_args a;
        a.k.k = k.d_ptrs.data();
        a.v = v.d_ptrs.data();
        a.k.head_dim = 64, a.k.dtype_code = code, a.k.layout.s_head = 1500 * 64, a.k.layout.s_token = 64;
        a.layers = 3, a.heads = 4, a.n = 1500, a.sink = 16, a.lag = lag;
        std::size_t bytes = 0;
        kvcodec::cuda::lagkv_select(nullptr, bytes, a, b, nullptr, kvcodec::cuda::par);
        kvcodec::cuda::device_buffer<std::uint8_t> temp(bytes);
        kvcodec::cuda::device_buffer<std::int32_t> kept(static_cast<std::size_t>(12 * b));
        kvcodec::cuda::lagkv_select(temp.data(), bytes, a, b, kept.data(), kvcodec::cuda::par);
        drop::lagkv d;
        d.sink = 16, d.lag = lag, d.tokens = b;
        std::vector<std::int32_t> flat;
        for (const auto& layer : cpu::select_lagkv(kv, d.cfg(), 1))
          for (const auto& h : layer) flat.insert(flat.end(), h.begin(), h.begin() + b);
        expect(kept.download() == flat, "lagkv_select dtype " + std::to_string(code) + " lag " + std::to_string(lag) + " b " + std::to_string(b) +
                                            ": kept sets differ from the CPU's");
      }
  }
}

/// cuda::expected_attention_select against the CPU's select_expected_attention: equal kept sets (bit-exact
/// scores), with and without RoPE (interleaved pairs, rotate-half) and the covariance term, f32 and f16, GQA.
void test_expected_attention_select() {
  for (std::uint32_t code : {0u, 1u})
    for (const char* rope : {"", "interleaved-pairs", "rotate-half"})
      for (bool cov : {false, true}) {
        kv_cache kv = test::rounded(test::small_synth({.layers = 2, .kv_heads = 2, .q_heads = 8, .head_dim = 64, .tokens = 900, .seed = 13}), code);
        for (auto& layer : kv.values)
          for (auto& x : layer) x = test::round_to(x, code);
        kv.metadata.erase("rope");
        if (*rope) kv.metadata["rope"] = rope, kv.metadata["rope_theta"] = "10000";
        device_layers k, v, q;
        upload_layers(kv.keys, code, k);
        upload_layers(kv.values, code, v);
        upload_layers(kv.queries, code, q);
        expected_args a;
        a.k.k = k.d_ptrs.data(), a.v = v.d_ptrs.data(), a.q.k = q.d_ptrs.data();
        for (drop_source* s : {&a.k, &a.q}) s->head_dim = 64, s->dtype_code = code, s->layout.s_head = 900 * 64, s->layout.s_token = 64;
        a.layers = 2, a.heads = 2, a.group = 4, a.n = 900, a.window = 64, a.sink = 4, a.cov = cov, a.vnorm = true, a.rope = *rope != 0;
        a.style = std::string(rope) == "rotate-half" ? rope_style::rotate_half : rope_style::interleaved_pairs;
        const expected_prep ep = expected_tables(64, 900, 64, 32, a.rope, 10000.0, kv.positions);
        const std::int64_t b = 300;
        std::size_t bytes = 0;
        kvcodec::cuda::expected_attention_select(nullptr, bytes, a, ep, b, nullptr, kvcodec::cuda::par);
        kvcodec::cuda::device_buffer<std::uint8_t> temp(bytes);
        kvcodec::cuda::device_buffer<std::int32_t> kept(static_cast<std::size_t>(4 * b));
        kvcodec::cuda::expected_attention_select(temp.data(), bytes, a, ep, b, kept.data(), kvcodec::cuda::par);
        drop::expected_attention d;
        d.tokens = b, d.window = 64, d.sink = 4, d.future = 32, d.cov = cov;
        std::vector<std::int32_t> flat;
        for (const auto& layer : cpu::select_expected_attention(kv, d.cfg(), 1))
          for (const auto& h : layer) flat.insert(flat.end(), h.begin(), h.begin() + b);
        expect(kept.download() == flat, std::string("expected_attention_select rope '") + rope + "' cov " + std::to_string(cov) + " dtype " +
                                            std::to_string(code) + ": kept sets differ from the CPU's");
      }
}

/// cuda::chunkkv_select over lagkv (equal kept sets) and over snapkv (equal but for near-ties) against
/// the CPU's select_chunkkv.
/// kvcodec::cuda::think_fit from device keys and queries (f32/f16/bf16, HF and paged): the CPU stage's
/// state bit for bit, over every token and over a drop stage's kept rows; a host view is refused.
void test_think_fit() {
  kv_cache base = test::small_synth({.layers = 2, .kv_heads = 2, .q_heads = 8, .head_dim = 64, .tokens = 300, .seed = 5});
  for (std::size_t t = 0; t < 300; ++t) base.keys[0][(300 + t) * 64 + 9] = base.keys[0][(300 + t) * 64 + 4];  // equal key energies
  for (std::uint32_t code : {0u, 1u, 2u})
    for (bool paged : {false, true}) {
      const dtype t = code == 0 ? dtype::f32 : code == 1 ? dtype::f16 : dtype::bf16;
      const kv_cache kv = test::rounded(base, code);
      const device_cache dkv(kv, t, paged), dq(kv, t, paged, true);
      for (const std::string spec : {"think:prune=0.5|raw", "think:prune=0.25|kivi:bits=4", "knorm:keep=0.4|think:prune=0.5|raw"}) {
        codec c = make_codec(spec);
        const encoded e = encode(cpu::par, c, view_of(kv), {}, extras_of(kv));
        const kept_sets kept = decode(cpu::par, e.data).kept;
        const cpu::think_transform* th = nullptr;
        for (const auto& s : c.transforms)
          if (!th) th = dynamic_cast<const cpu::think_transform*>(s.get());
        const double prune = std::stod(spec.substr(spec.find("prune=") + 6));
        const bytes want = cpu::think_transform::state_of(th->masks(), 64, th->kept_width(64));
        const bytes got = kvcodec::cuda::think_fit(kvcodec::cuda::par, prune, const_kv_view(dkv.d.view), const_kv_view(dq.d.view), kept.empty() ? nullptr : &kept);
        expect(got == want, "think_fit " + spec + " " + std::string(dtype_name(t)) + (paged ? " paged" : " hf") + ": state differs from the CPU stage's");
      }
    }
  const test::host_dest host = test::host_source(base, dtype::f32, false);
  bool refused = false;
  try {
    (void)kvcodec::cuda::think_fit(kvcodec::cuda::par, 0.5, const_kv_view(host.view), const_kv_view(host.view));
  } catch (const error& e) {
    refused = e.kind() == error_kind::usage;
  }
  expect(refused, "think_fit of a host view: usage error");
}

void test_chunkkv_select() {
  const kv_cache kv = test::small_synth({.layers = 2, .kv_heads = 2, .q_heads = 4, .head_dim = 64, .tokens = 700, .seed = 19});
  device_layers k, v, q;
  upload_layers(kv.keys, 0, k);
  upload_layers(kv.values, 0, v);
  upload_layers(kv.queries, 0, q);
  for (const char* scorer : {"lagkv", "snapkv"})
    for (std::int64_t chunk : {std::int64_t{1}, std::int64_t{10}}) {
      drop::chunkkv d;
      d.scorer = scorer, d.chunk = chunk, d.tokens = 250, d.window = 64, d.lag = 64;
      const drop::config c = d.cfg();
      std::size_t bytes = 0;
      kvcodec::cuda::device_buffer<std::int32_t> kept(static_cast<std::size_t>(4 * 250));
      const auto run = [&](void* temp, std::int32_t* out) {
        if (std::string(scorer) == "lagkv") {
          lagkv_args a;
          a.k.k = k.d_ptrs.data(), a.v = v.d_ptrs.data(), a.k.head_dim = 64, a.k.dtype_code = 0, a.k.layout.s_head = 700 * 64, a.k.layout.s_token = 64;
          a.layers = 2, a.heads = 2, a.n = 700, a.sink = c.sink, a.lag = c.lag;
          kvcodec::cuda::chunkkv_select(temp, bytes, a, 250, chunk, out, kvcodec::cuda::par);
        } else {
          drop_window_source src;
          src.k.k = k.d_ptrs.data(), src.q.k = q.d_ptrs.data();
          for (drop_source* s : {&src.k, &src.q}) s->head_dim = 64, s->dtype_code = 0, s->layout.s_head = 700 * 64, s->layout.s_token = 64;
          src.layers = 2, src.heads = 2, src.group = 2, src.n = 700;
          drop_window_params wp;
          wp.b = 250, wp.window = 64, wp.kernel = c.kernel;
          kvcodec::cuda::chunkkv_select(temp, bytes, plan_drop_window(src, wp), chunk, out, kvcodec::cuda::par);
        }
      };
      run(nullptr, nullptr);
      kvcodec::cuda::device_buffer<std::uint8_t> temp(bytes);
      run(temp.data(), kept.data());
      std::vector<std::int32_t> flat;
      for (const auto& layer : cpu::select_chunkkv(kv, c, 1))
        for (const auto& h : layer) flat.insert(flat.end(), h.begin(), h.begin() + 250);
      const auto got = kept.download();
      std::size_t diff = 0;
      for (std::size_t i = 0; i < flat.size(); ++i) diff += got[i] != flat[i];
      expect(std::string(scorer) == "lagkv" ? diff == 0 : diff <= static_cast<std::size_t>(2 * chunk),
             std::string("chunkkv_select over ") + scorer + " chunk " + std::to_string(chunk) + ": " + std::to_string(diff) + " kept tokens differ from the CPU's");
    }
}

/// cuda::compare_attention against the CPU's eval::compare_attention: a lossy reconstruction (several
/// row and key tiles, head widths across chunks, GQA), windows and row sampling, a token-dropped one,
/// and an exact one (error and KL exactly 0).
void test_compare_attention() {
  struct shape_case {
    int kv_heads, q_heads, head_dim;
    std::int64_t tokens;
  };
  for (const shape_case sh : {shape_case{2, 8, 128, 700}, shape_case{1, 3, 40, 150}}) {
    const kv_cache kv = test::small_synth({.layers = 2, .kv_heads = sh.kv_heads, .q_heads = sh.q_heads, .head_dim = sh.head_dim, .tokens = sh.tokens, .seed = 3});
    kv_cache rec = kv;
    std::uint64_t st = 5;
    for (auto* t : {&rec.keys, &rec.values})
      for (auto& layer : *t)
        for (auto& x : layer) x = static_cast<float>(x * (1.0 + 0.03 * (static_cast<double>(splitmix64_next(st) >> 11) * 0x1.0p-53 - 0.5)));
    kv_cache dropped = rec;
    dropped.kept.assign(2, std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(sh.kv_heads)));
    for (auto& layer : dropped.kept)
      for (std::size_t g = 0; g < layer.size(); ++g)
        for (std::int32_t t = 0; t < sh.tokens; ++t)
          if ((t + static_cast<std::int32_t>(g)) % 3 != 0) layer[g].push_back(t);
    for (const kv_cache* r : std::initializer_list<const kv_cache*>{&rec, &dropped, &kv})
      for (std::int64_t max_rows : {std::int64_t{0}, std::int64_t{100}}) {
        eval::attention_options o;
        o.max_rows = max_rows;
        o.query_begin = max_rows == 0 ? 0 : sh.tokens / 2;
        const auto want = eval::compare_attention(kv, *r, o);
        const auto got = kvcodec::cuda::compare_attention(kvcodec::cuda::par, kv, *r, o);
        const std::string what = "compare_attention D " + std::to_string(sh.head_dim) + " T " + std::to_string(sh.tokens) + (r == &kv ? " exact" : r == &rec ? " lossy" : " dropped") +
                                 " max_rows " + std::to_string(max_rows);
        const auto close = [](double x, double y, double tol) { return std::abs(x - y) <= tol * std::max(std::abs(y), 1e-300) || x == y; };
        expect(got.rows == want.rows && got.empty_rows == want.empty_rows, what + ": row counts differ");
        expect(close(got.rel_error, want.rel_error, 1e-9), what + ": rel_error " + std::to_string(got.rel_error) + " vs the CPU's " + std::to_string(want.rel_error));
        expect(close(got.kl, want.kl, 1e-7), what + ": kl " + std::to_string(got.kl) + " vs the CPU's " + std::to_string(want.kl));
        expect(close(got.dropped_mass, want.dropped_mass, 1e-9), what + ": dropped_mass differs");
        if (r == &kv) expect(got.rel_error == 0.0 && got.kl == 0.0, what + ": not exactly 0");
      }
  }
}

}  // namespace

int main(int argc, char** argv) {
  quick = argc > 1 && std::string(argv[1]) == "--quick";
  if (kvcodec::cuda::device_count() == 0) {
    std::printf("SKIP: no CUDA device; compile-only check passed\n");
    return 77;
  }
  try {
    test_conversions();
    test_rans_batch();
    test_rans_encode();
    test_decode_into();
    test_encode();
    test_encode_outliers();
    test_encode_dropped();
    test_decode_dropped();
    test_decode_think();
    test_knorm_select();
    test_random_select();
    test_streamingllm_select();
    test_window_select();
    test_lagkv_select();
    test_expected_attention_select();
    test_chunkkv_select();
    test_think_fit();
    test_compare_attention();
  } catch (const std::exception& e) {
    std::printf("FAIL: exception: %s\n", e.what());
    ++failures;
  }
  std::printf("%d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
