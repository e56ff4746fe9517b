// Tests of kvcodec/registry/cuda_rows.hpp: every stage's CUDA row against what the CUDA seams do, through
// their host emulation (pipeline/batch.hpp, pipeline/batch_encode.hpp): a row that claims decode or
// encode must decode / encode every container of its default spec as the CPU does, byte for byte; a row
// that does not must be refused with a usage error that names the stages that have one.
#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <vector>

#include "kvcodec/kvcodec.hpp"
#include "kvcodec/pipeline/batch.hpp"
#include "kvcodec/pipeline/batch_encode.hpp"
#include "../support/random_cache.hpp"
#include "../support/test_views.hpp"

namespace kvcodec_test_registry_cuda_rows {

using namespace kvcodec;

namespace {

kv_extras extras(const kv_cache& kv, bool with_cache = false) {
  kv_extras ex = extras_of(kv);
  if (!with_cache) ex.cache = nullptr;  // with it: the queries, for think
  return ex;
}

/// The spec a row is tested with: the stage alone, or with the partner its limits name.
std::string spec_for(const stage_entry& e) {
  switch (e.kind) {
    case stage_kind::quant: return e.cuda.limits.find("with rans") != std::string::npos ? e.name + "|rans" : e.name;
    case stage_kind::entropy: return (e.cuda.limits.find("after cachegen-quant") != std::string::npos ? "cachegen-quant|" : "uniform|") + e.name;
    default: return e.name + "|q8_0";
  }
}

/// What the emulated CUDA encode did with `spec`: "same" (the CPU's container), "usage: <message>",
/// or "differs". rans_batches: the rANS batches it ran.
std::string try_encode(const std::string& spec, const kv_cache& kv, std::size_t& rans_batches, bool with_cache = false) {
  const test::host_dest src = test::host_source(kv, dtype::f16, false);
  codec c1 = make_codec(spec), c2 = make_codec(spec);
  host_batch_executor x;
  encoded got;
  try {
    got = encode_batch(x, cpu::par, c2, const_kv_view(src.view), {.chunk_tokens = 64}, extras(kv, with_cache));
  } catch (const error& e) {
    if (e.kind() == error_kind::usage) return std::string("usage: ") + e.what();
    throw;
  }
  rans_batches = x.rans_batches;
  const encoded want = encode(cpu::par, c1, const_kv_view(src.view), {.chunk_tokens = 64}, extras(kv, with_cache));
  return got.data == want.data ? "same" : "differs";
}

/// The CPU container of `spec`, or none when the CPU encoder cannot encode this cache with it (a stage
/// that needs a profile, queries or rope metadata the test cache does not have).
std::optional<bytes> cpu_container(const std::string& spec, const kv_cache& kv) {
  try {
    return encode(spec, kv, {.chunk_tokens = 64}).data;
  } catch (const error&) {
    return std::nullopt;
  }
}

/// What the emulated CUDA decode did with a CPU container of `spec`: "same", "usage: ...", "differs".
std::string try_decode(const bytes& file) {
  const kvc_view v = parse_kvc(file, "rows.kvc");
  const segment_decoder dec(v.header, [&](std::size_t i) { return v.state_bytes(i); }, "rows.kvc");
  const std::int64_t T = v.header.shape.tokens;
  test::host_dest want(v.header.shape, T, dtype::f16, false), got(v.header.shape, T, dtype::f16, false);
  decode_into(cpu::par, file, want.view);
  std::vector<std::size_t> segs;
  for (std::size_t i = 0; i < v.header.segments.size(); ++i) segs.push_back(i);
  try {
    decode_batch_emulated(dec, segs, [&](std::size_t i) { return v.segment_bytes(i); }, 0, T, got.view);
  } catch (const error& e) {
    if (e.kind() == error_kind::usage) return std::string("usage: ") + e.what();
    throw;
  }
  return want.rows() == got.rows() ? "same" : "differs";
}

}  // namespace

TEST_CASE("CUDA rows: every quantizer's and entropy stage's row says what the CUDA encode seam does") {
  kv_cache kv = test::random_cache(2, 2, 150, 32, dtype::f16);
  kv.metadata["rope"] = "rotate-half";  // weighted-quant's derope
  kv.metadata["rope_theta"] = "10000";
  const registry& r = builtin_registry();
  int claimed = 0;
  for (const auto& e : r.stages()) {
    if (e.kind != stage_kind::quant && e.kind != stage_kind::entropy) continue;
    const std::string spec = spec_for(e);
    INFO(e.name << " (" << spec << ")");
    if (!cpu_container(spec, kv)) {  // the CPU cannot encode this cache with it: no row may claim CUDA
      CHECK_FALSE(e.cuda.encode);
      CHECK_FALSE(e.cuda.decode);
      continue;
    }
    std::size_t rans = 0;
    const std::string got = try_encode(spec, kv, rans);
    if (e.kind == stage_kind::quant) {
      if (e.cuda.encode) {
        CHECK(got == "same");
        ++claimed;
      } else {
        CHECK(got.rfind("usage: ", 0) == 0);
        CHECK(got.find(e.name) != std::string::npos);
        CHECK(got.find("q8_0") != std::string::npos);  // the message names the quantizers that have one
      }
    } else {
      CHECK(got == "same");  // every entropy stage is taken: on the GPU, or on the host after the quantizer
      CHECK((rans > 0) == e.cuda.encode);
      claimed += e.cuda.encode ? 1 : 0;
    }
  }
  CHECK(claimed >= 11);  // raw, cachegen-quant, uniform, kivi, fp8, six block formats, rans
}

TEST_CASE("CUDA rows: every quantizer's and entropy stage's row says what the CUDA decode seam does") {
  kv_cache kv = test::random_cache(2, 2, 150, 32, dtype::f16);
  kv.metadata["rope"] = "rotate-half";  // weighted-quant's derope
  kv.metadata["rope_theta"] = "10000";
  const registry& r = builtin_registry();
  int claimed = 0;
  for (const auto& e : r.stages()) {
    if (e.kind != stage_kind::quant && e.kind != stage_kind::entropy) continue;
    const std::string spec = spec_for(e);
    INFO(e.name << " (" << spec << ")");
    const auto file = cpu_container(spec, kv);
    if (!file) {
      CHECK_FALSE(e.cuda.decode);
      continue;
    }
    const std::string got = try_decode(*file);
    if (e.cuda.decode) {
      CHECK(got == "same");
      ++claimed;
    } else {
      CHECK(got.rfind("usage: ", 0) == 0);
      CHECK(got.find("CUDA decode") != std::string::npos);
    }
  }
  CHECK(claimed >= 14);  // the quantizers above, weighted-quant, rans, ac and pack
}

TEST_CASE("CUDA rows: transforms - the seams run those their rows claim (hadamard - derope - think: both ways) - the others are refused") {
  kv_cache kv = test::random_cache(2, 2, 150, 32, dtype::f16);
  kv.metadata["rope"] = "rotate-half";  // derope's RoPE
  kv.metadata["rope_theta"] = "10000";
  kv.shape.q_heads = 4;  // think's queries
  const kv_cache q = test::random_cache(2, 4, 150, 32, dtype::f16, 9);
  kv.queries = q.keys;
  std::size_t claimed = 0;
  for (const auto& e : builtin_registry().stages()) {
    if (e.kind != stage_kind::transform) continue;
    const std::string spec = e.name + "|kivi";
    INFO(e.name << " (" << spec << ")");
    std::size_t rans = 0;
    const auto file = cpu_container(spec, kv);
    const std::string got = try_encode(spec, kv, rans, true);
    if (e.cuda.encode && file) {
      CHECK(got == "same");
      ++claimed;
    } else {
      CHECK(got.rfind("usage: ", 0) == 0);  // refused before it reads the cache
    }
    if (file) CHECK((e.cuda.decode ? try_decode(*file) == "same" : try_decode(*file).rfind("usage: ", 0) == 0));
  }
  CHECK(claimed == 3);
}

TEST_CASE("CUDA rows: drop stages - the encode seam runs them before the quantizers that code ragged heads - the decode seam takes their containers but for the block formats") {
  const kv_cache kv = test::random_cache(2, 2, 150, 32, dtype::f16);
  std::size_t ran = 0;
  for (const auto& e : builtin_registry().stages()) {
    if (e.kind != stage_kind::drop) continue;
    INFO(e.name);
    CHECK(e.cuda.decode);
    CHECK_FALSE(e.cuda.encode);
    std::size_t rans = 0;
    CHECK(try_encode(e.name + "|q8_0", kv, rans).rfind("usage: ", 0) == 0);  // the block formats span the heads: refused before any selection
    if (const auto file = cpu_container(e.name + "|kivi", kv)) {  // the stages that need no queries (this cache has none)
      CHECK(try_encode(e.name + "|kivi", kv, rans) == "same");    // the host executor selects with the CPU stage
      CHECK(try_decode(*file) == "same");
      CHECK(try_decode(*cpu_container(e.name + "|q8_0", kv)).rfind("usage: ", 0) == 0);
      ++ran;
    }
  }
  CHECK(ran >= 5);  // random, streamingllm, knorm, keydiff, lagkv
}

TEST_CASE("CUDA rows: the list names each stage with its limits - and set_cuda refuses an unknown stage") {
  const registry& r = builtin_registry();
  const std::string enc = r.cuda_stages(stage_kind::quant, true);
  CHECK(enc.find("kivi (decode: with pack or rans; outliers") != std::string::npos);
  CHECK(enc.find("nf4") != std::string::npos);
  CHECK(enc.find("klt") == std::string::npos);
  CHECK(r.cuda_stages(stage_kind::entropy, false).find("rans (encode: pred=none") != std::string::npos);
  CHECK(r.cuda_stages(stage_kind::transform, false).find("hadamard") != std::string::npos);
  CHECK(r.cuda_stages(stage_kind::transform, false).find("think (the codec's only transform; encode: ") != std::string::npos);
  CHECK(r.cuda_stages(stage_kind::transform, true).find("decode: before any quantizer but the block formats") != std::string::npos);
  registry mine = make_builtin_registry();
  CHECK_THROWS_AS(mine.set_cuda("no-such-stage", {true, true, "x.cuh", ""}), error);
}

}  // namespace kvcodec_test_registry_cuda_rows
