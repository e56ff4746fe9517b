// Throughput of the interleaved rANS coder on 16M 8-bit symbols from a discretised Laplace source,
// against memcpy and ZSTD_decompress (level 3) of the same symbol bytes in the same run.
// bytes_per_second counts symbol bytes (one byte per symbol) for every benchmark.
// Build: g++ -std=c++20 -O3 -march=native -Iinclude bench/bench_rans.cpp -lbenchmark -lpthread -lzstd
#include "kvcodec/cpu/rans_codec.hpp"

#include <benchmark/benchmark.h>
#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr size_t kSymbols = size_t{16} << 20;

const std::vector<uint8_t>& source() {
  static const std::vector<uint8_t> s = [] {
    std::mt19937_64 rng(42);
    std::exponential_distribution<double> ex(1.0 / 6.0);
    std::bernoulli_distribution sign(0.5);
    std::vector<uint8_t> v(kSymbols);
    for (auto& x : v) x = static_cast<uint8_t>(std::clamp(std::lround(128 + (sign(rng) ? 1 : -1) * ex(rng)), 0l, 255l));
    return v;
  }();
  return s;
}

kvcodec::freq_table table_for(int prob_bits) {
  const auto& s = source();
  return kvcodec::normalize_freqs(kvcodec::histogram(s.data(), s.size(), 256), prob_bits);
}

void report(benchmark::State& state, size_t compressed) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(kSymbols));
  state.counters["bits_per_symbol"] = 8.0 * static_cast<double>(compressed) / kSymbols;
}

void BM_rans_encode(benchmark::State& state) {
  const int lanes = static_cast<int>(state.range(0));
  const auto& s = source();
  const auto enc = kvcodec::make_encode_table(table_for(static_cast<int>(state.range(1))));
  size_t size = 0;
  for (auto _ : state) {
    auto bytes = kvcodec::rans_encode(s.data(), s.size(), enc, lanes);
    size = bytes.size();
    benchmark::DoNotOptimize(bytes.data());
  }
  report(state, size);
}

void BM_rans_decode(benchmark::State& state) {
  const int lanes = static_cast<int>(state.range(0));
  const auto& s = source();
  const auto t = table_for(static_cast<int>(state.range(1)));
  const auto bytes = kvcodec::rans_encode(s.data(), s.size(), t, lanes);
  const auto dec = kvcodec::make_decode_table(t);
  std::vector<uint8_t> out(s.size());
  for (auto _ : state) {
    kvcodec::rans_decode(bytes.data(), bytes.size(), dec, lanes, out.data(), out.size());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  if (out != s) state.SkipWithError("rans round trip mismatch");
  report(state, bytes.size());
}

void BM_memcpy(benchmark::State& state) {
  const auto& s = source();
  std::vector<uint8_t> out(s.size());
  for (auto _ : state) {
    std::memcpy(out.data(), s.data(), s.size());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report(state, s.size());
}

void BM_zstd3_decompress(benchmark::State& state) {
  const auto& s = source();
  std::vector<uint8_t> comp(ZSTD_compressBound(s.size()));
  const size_t csize = ZSTD_compress(comp.data(), comp.size(), s.data(), s.size(), 3);
  if (ZSTD_isError(csize)) {
    state.SkipWithError("ZSTD_compress failed");
    return;
  }
  std::vector<uint8_t> out(s.size());
  for (auto _ : state) {
    const size_t r = ZSTD_decompress(out.data(), out.size(), comp.data(), csize);
    benchmark::DoNotOptimize(r);
    benchmark::ClobberMemory();
  }
  if (out != s) state.SkipWithError("zstd round trip mismatch");
  report(state, csize);
}

void BM_zstd3_compress(benchmark::State& state) {
  const auto& s = source();
  std::vector<uint8_t> comp(ZSTD_compressBound(s.size()));
  size_t csize = 0;
  for (auto _ : state) {
    csize = ZSTD_compress(comp.data(), comp.size(), s.data(), s.size(), 3);
    benchmark::DoNotOptimize(csize);
  }
  report(state, csize);
}

}  // namespace

BENCHMARK(BM_memcpy)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_zstd3_decompress)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_zstd3_compress)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_rans_decode)->ArgNames({"lanes", "prob_bits"})->Args({32, 12})->Args({32, 11})->Args({64, 12})->Args({128, 12})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_rans_encode)->ArgNames({"lanes", "prob_bits"})->Args({32, 12})->Args({128, 12})->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
