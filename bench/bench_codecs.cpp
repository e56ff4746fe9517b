// Codec comparison harness (Google Benchmark). Every benchmark reports bytes processed (fp16-
// equivalent K+V bytes), bits per element and relative error, and the same run measures memcpy and
// zstd of the same raw f16 bytes as baselines. The cache: KVCODEC_BENCH_DUMP=path, else a synthetic
// cache of KVCODEC_BENCH_MB megabytes (default 64; use >= 256 for the speed numbers).
#include <benchmark/benchmark.h>
#include <zstd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kvcodec/eval/metrics.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/io/kv_dump.hpp"
#include "kvcodec/kvcodec.hpp"

namespace {

using namespace kvcodec;

const kv_cache& bench_cache() {
  static const kv_cache kv = [] {
    if (const char* p = std::getenv("KVCODEC_BENCH_DUMP")) return io::read_kv_dump(p).cache;
    eval::synth_options o;
    o.q_heads = 0;
    const double mb = std::getenv("KVCODEC_BENCH_MB") ? std::atof(std::getenv("KVCODEC_BENCH_MB")) : 64.0;
    o.tokens = std::max<std::int64_t>(16, static_cast<std::int64_t>(mb * 1e6 / (2.0 * o.layers * o.kv_heads * o.head_dim * 2.0)));
    return eval::synth_cache(o);
  }();
  return kv;
}

/// The cache's K+V as contiguous f16 bytes (the baseline's input).
const bytes& f16_bytes() {
  static const bytes b = [] {
    const kv_cache& kv = bench_cache();
    bytes out(kv.shape.kv_elements() * 2);
    std::size_t o = 0;
    for (int l = 0; l < kv.shape.layers; ++l)
      for (const auto* side : {&kv.keys[static_cast<std::size_t>(l)], &kv.values[static_cast<std::size_t>(l)]}) {
        encode_floats(side->data(), side->size(), dtype::f16, out.data() + o);
        o += side->size() * 2;
      }
    return out;
  }();
  return b;
}

void BM_memcpy(benchmark::State& st) {
  const bytes& src = f16_bytes();
  bytes dst(src.size());
  for (auto _ : st) {
    std::memcpy(dst.data(), src.data(), src.size());
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * src.size()));
  st.counters["bits_per_element"] = 16;
}

void BM_zstd_compress(benchmark::State& st) {
  const bytes& src = f16_bytes();
  bytes dst(ZSTD_compressBound(src.size()));
  std::size_t n = 0;
  for (auto _ : st) {
    n = ZSTD_compress(dst.data(), dst.size(), src.data(), src.size(), static_cast<int>(st.range(0)));
    benchmark::DoNotOptimize(n);
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * src.size()));
  st.counters["bits_per_element"] = static_cast<double>(n) * 16.0 / static_cast<double>(src.size());
}

void BM_zstd_decompress(benchmark::State& st) {
  const bytes& src = f16_bytes();
  bytes comp(ZSTD_compressBound(src.size()));
  comp.resize(ZSTD_compress(comp.data(), comp.size(), src.data(), src.size(), static_cast<int>(st.range(0))));
  bytes dst(src.size());
  for (auto _ : st) {
    const std::size_t n = ZSTD_decompress(dst.data(), dst.size(), comp.data(), comp.size());
    benchmark::DoNotOptimize(n);
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * src.size()));
  st.counters["bits_per_element"] = static_cast<double>(comp.size()) * 16.0 / static_cast<double>(src.size());
}

void codec_encode(benchmark::State& st, const std::string& spec, int threads) {
  const kv_cache& kv = bench_cache();
  encoded e;
  for (auto _ : st) {
    codec c = make_codec(spec);
    e = encode(cpu::par(threads), c, kv);
    benchmark::DoNotOptimize(e.data.data());
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * kv.shape.kv_elements() * 2));
  st.counters["bits_per_element"] = e.report.bits_per_element;
}

void codec_decode(benchmark::State& st, const std::string& spec, int threads) {
  const kv_cache& kv = bench_cache();
  codec c = make_codec(spec);
  const encoded e = encode(cpu::par(threads), c, kv);
  kv_cache back;
  for (auto _ : st) {
    back = decode(cpu::par(threads), e.data);
    benchmark::DoNotOptimize(back.keys.data());
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * kv.shape.kv_elements() * 2));
  st.counters["bits_per_element"] = e.report.bits_per_element;
  const auto m = eval::compare_kv(kv, back);
  st.counters["key_rel_err"] = m.key.rel_fro_error;
  st.counters["value_rel_err"] = m.value.rel_fro_error;
}

const int registered = [] {
  benchmark::RegisterBenchmark("baseline/memcpy_f16", BM_memcpy)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("baseline/zstd_compress_f16", BM_zstd_compress)->Arg(1)->Arg(3)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("baseline/zstd_decompress_f16", BM_zstd_decompress)->Arg(1)->Arg(3)->Unit(benchmark::kMillisecond)->UseRealTime();
  std::vector<std::string> specs = {"raw:dtype=f16", "zstd:level=1", "zstd:level=3"};
  if (const char* s = std::getenv("KVCODEC_BENCH_CODECS")) {
    specs.clear();
    std::string all = s;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= all.size(); ++i)
      if (i == all.size() || all[i] == ';') {
        if (i > start) specs.push_back(all.substr(start, i - start));
        start = i + 1;
      }
  }
  for (const auto& spec : specs)
    for (int threads : {1}) {
      benchmark::RegisterBenchmark(("encode/" + spec + "/threads:" + std::to_string(threads)).c_str(), codec_encode, spec, threads)
          ->Unit(benchmark::kMillisecond)->UseRealTime();
      benchmark::RegisterBenchmark(("decode/" + spec + "/threads:" + std::to_string(threads)).c_str(), codec_decode, spec, threads)
          ->Unit(benchmark::kMillisecond)->UseRealTime();
    }
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
