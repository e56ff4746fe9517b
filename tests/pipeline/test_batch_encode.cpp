// Tests of kvcodec/pipeline/batch_encode.hpp: the batch encoder (the CUDA encoder's element steps, run
// by the host executor) writes the CPU encoder's container byte for byte, for the llama.cpp block
// formats, fp8 and raw, from f32 / f16 / bf16 views in HF and paged layouts, and token-dropped (drop
// stages or given kept sets) with raw, fp8, uniform, kivi and nf4; codecs and inputs outside its scope
// are usage errors.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kvcodec/kvcodec.hpp"
#include "kvcodec/pipeline/batch_encode.hpp"
#include "../support/random_cache.hpp"
#include "../support/test_views.hpp"

namespace kvcodec_test_pipeline_batch_encode {

using namespace kvcodec;

namespace {

kv_extras extras(const kv_cache& kv) {
  kv_extras ex = extras_of(kv);
  ex.cache = nullptr;
  return ex;
}

/// The kind of error the batch encoder gives for `spec` over view v (io: none).
error_kind batch_encode_kind(const std::string& spec, const kv_extras& ex, const const_kv_view& v) {
  codec c = make_codec(spec);
  host_batch_executor x;
  try {
    (void)encode_batch(x, cpu::par, c, v, {}, ex);
  } catch (const error& e) {
    return e.kind();
  }
  return error_kind::io;
}

}  // namespace

TEST_CASE("batch encode (emulated) writes the CPU encoder's container: kvc levels - cachegen - ggml block formats - fp8 - raw - uniform - kivi - f32 f16 bf16 views - HF and paged") {
  // head_dim 32 (ggml blocks within a head) and 8 heads x head_dim 20 (blocks span heads); 600 and
  // 300 tokens with chunks of 256 and 128 (a short last chunk)
  const kv_cache a = test::random_cache(3, 2, 600, 32, dtype::f16);
  const kv_cache b = test::random_cache(2, 8, 300, 20, dtype::bf16);
  for (const std::string spec : {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "fp8", "fp8:format=e5m2,scale=head", "fp8:scale=token", "raw",
                                 "raw:dtype=f16", "raw:dtype=bf16", "raw:dtype=f32", "kivi:bits=2", "kivi:bits=4,group=32,residual=200,scale=f32",
                                 "kivi:bits=3,residual=0", "uniform", "uniform:bits=3,mode=sym,kaxis=token,group=4",
                                 "uniform:bits=8,kaxis=channel,vaxis=channel,group=10", "uniform:bits=2,kaxis=channel", "kvc:level=5", "kvc:level=1",
                                 "cachegen", "cachegen-quant:kaxis=token,vaxis=channel,scale=bf16|rans:lanes=0", "cachegen-quant:kbins=600,klayers=-,vbins=300,vlayers=-|rans:prob_bits=14",
                                 "q8_0|zstd", "kivi:bits=4|rans", "kvc:level=9,values=channel", "fp8|rans", "fp8:scale=token|rans:tables=shared,lanes=0",
                                 "kivi:bits=2|rans:tables=shared,lanes=0", "uniform:bits=3|rans:ctx=auto,model=auto,lanes=96",
                                 "cachegen-quant|rans:tables=chunk,ctx=auto,prob_bits=12", "cachegen-quant|rans:pred=prev", "kivi:bits=4,residual=0|rans:tables=shared",
                                 "nf4", "nf4:group=4,scale=f32", "nf4|rans", "nf4:group=4|rans:tables=shared,lanes=0", "kmeans",
                                 "kmeans:bits=3,sample=1000|rans", "kmeans:bits=8,iters=5|rans:tables=shared,lanes=0", "kivi:bits=2,outliers=1",
                                 "kivi:bits=4,outliers=2.5,residual=200|rans", "uniform:bits=3,outliers=1,kaxis=channel,group=4",
                                 "uniform:bits=4,mode=sym,outliers=0.5|rans:tables=shared,lanes=0"})
    for (const kv_cache* kv : {&a, &b})
      for (dtype t : {dtype::f32, dtype::f16, dtype::bf16})
        for (bool paged : {false, true}) {
          INFO(spec << " head_dim " << kv->shape.head_dim << " " << dtype_name(t) << (paged ? " paged" : " hf"));
          const test::host_dest src = test::host_source(*kv, t, paged);
          const encode_options opt{.chunk_tokens = kv->shape.head_dim == 32 ? 256 : 128};
          codec c1 = make_codec(spec), c2 = make_codec(spec);
          const encoded want = encode(cpu::par, c1, const_kv_view(src.view), opt, extras(*kv));
          host_batch_executor x;
          const encoded got = encode_batch(x, cpu::par(2), c2, const_kv_view(src.view), opt, extras(*kv));
          CHECK(got.data == want.data);
          CHECK(got.report.bits_per_element == want.report.bits_per_element);
          // rANS without prediction codes where the symbols are (the executor's kernel), anything else on the host
          const bool here = spec.find("rans") != std::string::npos || spec.rfind("kvc", 0) == 0;
          CHECK(x.rans_batches == (here && spec.find("pred=") == std::string::npos ? 1u : 0u));
        }
}

TEST_CASE("batch encode (emulated): kivi's residual rows fall back to f32 as on the CPU when a value does not fit the source dtype") {
  // f32 values declared as an f16 source: some residual values do not survive a round trip through f16
  const kv_cache kv = test::random_cache(2, 2, 300, 32, dtype::f32);
  const test::host_dest src = test::host_source(kv, dtype::f32, false);
  kv_extras ex = extras(kv);
  ex.source_dtype = dtype::f16;
  for (const std::string spec : {"kivi:bits=2", "kivi:bits=4,residual=40"}) {
    INFO(spec);
    codec c1 = make_codec(spec), c2 = make_codec(spec);
    const encoded want = encode(cpu::par, c1, const_kv_view(src.view), {}, ex);
    host_batch_executor x;
    CHECK(encode_batch(x, cpu::par, c2, const_kv_view(src.view), {}, ex).data == want.data);
  }
}

TEST_CASE("batch encode (emulated) selects uniform and kivi outliers as the CPU: non-finite values always - ties to the lower index - budgets over several selection batches") {
  const kv_cache kv = test::outlier_cache();
  for (const std::string spec : {"kivi:bits=2,outliers=3", "kivi:bits=4,outliers=40,residual=70|rans", "uniform:bits=3,outliers=1,kaxis=channel",
                                 "uniform:bits=2,mode=sym,outliers=100", "uniform:bits=4,outliers=0.01"})
    for (dtype t : {dtype::f32, dtype::f16}) {
      INFO(spec << " " << dtype_name(t));
      const test::host_dest src = test::host_source(kv, t, false);
      const encode_options opt{.chunk_tokens = 64};
      codec c1 = make_codec(spec), c2 = make_codec(spec);
      const encoded want = encode(cpu::par, c1, const_kv_view(src.view), opt, extras(kv));
      host_batch_executor x;
      CHECK(encode_batch(x, cpu::par, c2, const_kv_view(src.view), opt, extras(kv)).data == want.data);
    }
}

TEST_CASE("batch encode (emulated): the outlier selection's segments - stable ties - budgets of 0 and of the whole segment") {
  const std::vector<std::uint64_t> key = {5, 9, 5, 0xffffffffu, 9, 1, /* segment 1 */ 3, 3, 3, /* segment 2 (empty) */ /* segment 3 */ 7};
  const std::vector<std::uint32_t> pos = {0, 1, 2, 3, 4, 5, 0, 1, 2, 0};
  const std::vector<std::int64_t> seg = {0, 6, 9, 9, 10}, take = {0, 4, 6, 6, 6};
  std::vector<std::uint32_t> sel(6, 99);
  affine_outlier_select_emulated(key.data(), pos.data(), seg, take, sel.data());
  CHECK(sel == std::vector<std::uint32_t>{0, 1, 3, 4, 0, 1});  // 0xffffffff, 9, 9, then the first 5; two of the three 3s
  CHECK(cpu::qc::outlier_budget(100, 3, 2.0) == 5);
  CHECK(cpu::qc::outlier_budget(10, 9, 50.0) == 10);  // fewer finite values than the budget
  CHECK(cpu::qc::outlier_budget(0, 0, 5.0) == 0);
}

TEST_CASE("batch encode (emulated): outliers selected over several batches of blocks are those of one batch") {
  // 3 layers x K/V of 2 heads x 40 tokens x 8 channels in f32, blocks of 20 tokens (the parts of one head each)
  const int L = 3, H = 2, T = 40, D = 8;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<std::vector<float>> rows(2 * L, std::vector<float>(static_cast<std::size_t>(H * T * D)));
  for (auto& r : rows)
    for (auto& v : r) v = std::round(nd(rng) * 4.0f) / 4.0f;
  const auto run = [&](std::uint64_t batch, std::vector<std::vector<float>>& data) {
    data = rows;
    std::vector<const void*> kp, vp;
    for (int l = 0; l < L; ++l) {
      kp.push_back(data[static_cast<std::size_t>(2 * l)].data());
      vp.push_back(data[static_cast<std::size_t>(2 * l + 1)].data());
    }
    kv_batch_src src{kp.data(), vp.data(), {T * D, D, 1}, D, 0};
    std::vector<std::vector<affine_outlier_part>> blocks;
    for (int t0 = 0; t0 < T; t0 += 20)
      for (int l = 0; l < L; ++l)
        for (std::uint32_t key : {1u, 0u}) {
          auto& b = blocks.emplace_back();
          for (int h = 0; h < H; ++h) b.push_back({l, key, 1, 20u - static_cast<std::uint32_t>(h) * 5u, static_cast<std::int64_t>(h) * T + t0});
        }
    host_batch_executor x;
    return detail::take_batch_outliers(x, src, src, blocks, 7.0, dtype::f32, batch);
  };
  std::vector<std::vector<float>> one, many;
  const auto want = run(detail::outlier_batch_values, one);
  for (std::uint64_t batch : {1u, 200u, 700u}) {
    INFO("batch " << batch);
    CHECK(run(batch, many) == want);
    bool same = true;
    for (std::size_t i = 0; i < one.size(); ++i)
      for (std::size_t j = 0; j < one[i].size(); ++j) same &= std::isnan(one[i][j]) == std::isnan(many[i][j]);
    CHECK(same);
  }
  CHECK(want.size() == 12);
  CHECK(want[0][0] == (20 * 8 + 15 * 8) * 7 / 100);  // the count, a one-byte varint
}

TEST_CASE("batch encode (emulated): a NaN or an infinity is bad input for cachegen-quant as on the CPU") {
  kv_cache kv = test::random_cache(2, 2, 300, 32, dtype::f32);
  kv.values[1][4000] = std::numeric_limits<float>::infinity();
  const test::host_dest src = test::host_source(kv, dtype::f32, false);
  for (const std::string spec : {"kvc:level=5", "cachegen"}) {
    INFO(spec);
    codec c1 = make_codec(spec), c2 = make_codec(spec);
    error_kind want = error_kind::io, got = error_kind::io;
    try {
      (void)encode(cpu::par, c1, const_kv_view(src.view), {}, extras(kv));
    } catch (const error& e) {
      want = e.kind();
    }
    host_batch_executor x;
    try {
      (void)encode_batch(x, cpu::par, c2, const_kv_view(src.view), {}, extras(kv));
    } catch (const error& e) {
      got = e.kind();
    }
    CHECK(want == error_kind::bad_input);
    CHECK(got == want);
  }
}

TEST_CASE("batch encode (emulated) of a token-dropped cache writes the CPU encoder's container: drop stages and given kept sets - raw fp8 uniform kivi nf4 - with and without rans") {
  // 4 kv heads whose kept tokens differ per chunk (the parts are ragged); chunks of 96 tokens over 300
  const kv_cache kv = test::query_cache(2, 4, 300, 16, dtype::f16);
  const std::vector<std::string> quants = {"raw", "raw:dtype=f32", "fp8", "fp8:scale=head", "fp8:scale=token|rans", "uniform:bits=3",
                                           "uniform:bits=4,kaxis=channel,group=8|rans", "kivi:bits=2", "kivi:bits=4,group=16,residual=40",
                                           "kivi:bits=2,residual=64|rans:tables=shared,lanes=0", "kivi:bits=4|rans", "nf4:group=4", "nf4|rans",
                                           "kivi:bits=2,outliers=2,residual=40|rans", "uniform:bits=3,outliers=1"};
  for (const std::string drop : {"knorm:keep=0.4", "snapkv:keep=0.5,window=16", "streamingllm:keep=0.3,sink=4", "h2o:keep=0.25,window=16|random:keep=0.8",
                                 "keydiff:tokens=50,obs_end=280"})
    for (const std::string& q : quants)
      for (dtype t : {dtype::f16, dtype::f32})
        for (bool paged : {false, true}) {
          const std::string spec = drop + "|" + q;
          INFO(spec << " " << dtype_name(t) << (paged ? " paged" : " hf"));
          const test::host_dest src = test::host_source(kv, t, paged);
          kv_extras ex = extras(kv);
          ex.cache = &kv;  // the drop stages score it (with its queries) on both paths
          const encode_options opt{.chunk_tokens = 96};
          codec c1 = make_codec(spec), c2 = make_codec(spec);
          const encoded want = encode(cpu::par, c1, const_kv_view(src.view), opt, ex);
          host_batch_executor x;
          const encoded got = encode_batch(x, cpu::par(2), c2, const_kv_view(src.view), opt, ex);
          CHECK(got.data == want.data);
          CHECK(got.report.mask_bytes == want.report.mask_bytes);
          CHECK(got.report.mask_bytes > 0);
          CHECK(x.rans_batches == (q.find("rans") != std::string::npos ? 1u : 0u));
        }
  // kept sets given with the input (no drop stage): every head keeps a different subset, one head
  // keeps nothing in a chunk
  kv_extras ex = extras(kv);
  ex.kept.assign(2, std::vector<std::vector<std::int32_t>>(4));
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 4; ++h)
      for (int t = 0; t < 300; ++t)
        if ((t * (h + 2) + l) % 5 < 2 + h % 2 && !(h == 3 && t >= 96 && t < 192)) ex.kept[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)].push_back(t);
  for (const std::string& q : quants) {
    INFO(q << " (given kept sets)");
    const test::host_dest src = test::host_source(kv, dtype::bf16, false);
    const encode_options opt{.chunk_tokens = 96};
    codec c1 = make_codec(q), c2 = make_codec(q);
    const encoded want = encode(cpu::par, c1, const_kv_view(src.view), opt, ex);
    host_batch_executor x;
    CHECK(encode_batch(x, cpu::par, c2, const_kv_view(src.view), opt, ex).data == want.data);
  }
}

TEST_CASE("batch encode (emulated) runs the transforms hadamard - derope - think as the CPU encoder: dense and token-dropped - every quantizer family - f32 f16 bf16 - HF and paged") {
  kv_cache kv = test::query_cache(2, 4, 300, 32, dtype::bf16);
  kv.metadata["rope"] = "interleaved-pairs";
  kv.metadata["rope_theta"] = "500000";
  for (const std::string spec : {"hadamard|kivi:bits=4|rans", "hadamard:target=k,seed=5|q8_0", "derope|kvc:level=5", "derope|hadamard:target=v|fp8:scale=head",
                                 "hadamard|nf4|rans", "hadamard:seed=2|kmeans:bits=3", "derope:style=rotate-half,theta=10000|uniform:bits=3",
                                 "derope|cachegen", "knorm:keep=0.5|derope|kivi:bits=4|rans", "snapkv:keep=0.4,window=16|hadamard|fp8",
                                 "streamingllm:keep=0.3|derope|hadamard|raw:dtype=f32",
                                 // think: masks from the queries, key rows narrower
                                 "think:prune=0.5|raw", "think:prune=0.25|kivi:bits=4|rans", "think:prune=0.5|kvc:level=5", "think|fp8:scale=token|rans",
                                 "think:prune=0.25|uniform:bits=3,outliers=1", "think:prune=0.5|nf4|rans", "think:prune=0.25|cachegen",
                                 "knorm:keep=0.5|think|kivi:bits=4,residual=40|rans", "snapkv:keep=0.4,window=16|think:prune=0.25|fp8",
                                 "streamingllm:keep=0.5|think:prune=0.75|kivi:bits=2,outliers=2"})
    for (dtype t : {dtype::f32, dtype::f16, dtype::bf16})
      for (bool paged : {false, true}) {
        INFO(spec << " " << dtype_name(t) << (paged ? " paged" : " hf"));
        const test::host_dest src = test::host_source(kv, t, paged);
        kv_extras ex = extras(kv);
        ex.cache = &kv;
        const encode_options opt{.chunk_tokens = 128};
        codec c1 = make_codec(spec), c2 = make_codec(spec);
        const encoded want = encode(cpu::par, c1, const_kv_view(src.view), opt, ex);
        host_batch_executor x;
        CHECK(encode_batch(x, cpu::par(2), c2, const_kv_view(src.view), opt, ex).data == want.data);
      }
}

TEST_CASE("batch encode: think needs the queries - and is batch-encoded as the only transform before the quantizers that take its rows") {
  const kv_cache kv = test::query_cache(2, 4, 300, 32, dtype::bf16);
  const test::host_dest src = test::host_source(kv, dtype::f16, false);
  const auto kind = [&](const std::string& spec, const kv_extras& ex) { return batch_encode_kind(spec, ex, src.view); };
  kv_extras with = extras(kv);
  with.cache = &kv;
  CHECK(kind("think|kivi", extras(kv)) == error_kind::bad_input);
  CHECK(kind("think|q8_0", with) == error_kind::usage);
  CHECK(kind("think|kmeans", with) == error_kind::usage);
  CHECK(kind("hadamard|think|kivi", with) == error_kind::usage);
  CHECK(kind("think|kivi", with) == error_kind::io);
}

TEST_CASE("batch encode: codecs and inputs outside its scope are usage errors") {
  const kv_cache kv = test::random_cache(2, 2, 300, 32, dtype::f16);
  const test::host_dest src = test::host_source(kv, dtype::f16, false);
  const auto kind = [](const std::string& spec, const kv_extras& ex, const const_kv_view& v) { return batch_encode_kind(spec, ex, v); };
  // quantizers whose rows span the heads (the ggml formats) or that fit on samples of the dense
  // cache (kmeans, cachegen-quant's kvc levels) are not batch-encoded token-dropped
  for (const std::string spec : {"think|q8_0", "knorm:keep=0.5|q8_0", "derope|kvc:level=5", "knorm:keep=0.5|kvc:level=5",
                                 "knorm:keep=0.5|kmeans", "hadamard|hadamard|hadamard|hadamard|hadamard|q8_0"}) {
    INFO(spec);
    CHECK(kind(spec, extras(kv), src.view) == error_kind::usage);
  }
  kv_extras dropped = extras(kv);
  dropped.kept.assign(2, std::vector<std::vector<std::int32_t>>(2, std::vector<std::int32_t>{0, 1, 2}));
  CHECK(kind("q8_0", dropped, src.view) == error_kind::usage);
  CHECK(kind("kvc:level=5", dropped, src.view) == error_kind::usage);
  CHECK(kind("raw", dropped, src.view) == error_kind::io);  // in scope: no error
  const_kv_view dev = src.view;
  dev.space = memory_space::device;
  CHECK(kind("q8_0", extras(kv), dev) == error_kind::usage);
  // a head width that is not a multiple of 32: the ggml formats' usage error, as on the CPU
  const kv_cache odd = test::random_cache(1, 1, 40, 20, dtype::f16);
  const test::host_dest osrc = test::host_source(odd, dtype::f16, false);
  CHECK(kind("q8_0", extras(odd), osrc.view) == error_kind::usage);
}

}  // namespace kvcodec_test_pipeline_batch_encode
