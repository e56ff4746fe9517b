// Speed and coder overhead of the kvc levels and CacheGen on a synthetic cache (eval/synth.hpp,
// f16, default 8 layers x 8 KV heads x 8192 tokens x head_dim 128 = 268 MB of f16), one core
// (cpu::seq), against memcpy and ZSTD_decompress (level 3) of the same cache's raw f16 bytes in the
// same run. Throughput = f16 bytes of the cache / process CPU time (best of 3; CPU time because the
// build machine is shared, and every codec here runs on one thread).
// Build: g++ -std=c++20 -O2 -march=native -Iinclude -I/usr/include/eigen3 bench/bench_entropy.cpp -lzstd -lxxhash -lz -pthread
// Usage: bench_entropy [tokens] [spec ...]   (default specs: kvc:level=1..9 and cachegen)
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kvcodec/eval/synth.hpp"
#include "kvcodec/kvcodec.hpp"

using namespace kvcodec;

template <class F>
double best_of(int n, F&& f) {
  double best = 1e30;
  for (int i = 0; i < n; ++i) {
    timespec a{}, b{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    f();
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    best = std::min(best, static_cast<double>(b.tv_sec - a.tv_sec) + 1e-9 * static_cast<double>(b.tv_nsec - a.tv_nsec));
  }
  return best;
}

int main(int argc, char** argv) {
  eval::synth_options so;
  so.layers = 8;
  so.kv_heads = 8;
  so.q_heads = 0;
  so.head_dim = 128;
  so.tokens = argc > 1 ? std::stoll(argv[1]) : 8192;
  std::vector<std::string> specs;
  for (int i = 2; i < argc; ++i) specs.push_back(argv[i]);
  if (specs.empty()) {
    for (int l = 1; l <= 9; ++l) specs.push_back("kvc:level=" + std::to_string(l));
    specs.push_back("cachegen");
  }
  const kv_cache kv = eval::synth_cache(so);
  const std::size_t n = kv.shape.kv_elements();
  const double f16_bytes = static_cast<double>(n) * 2.0;
  std::vector<std::uint16_t> raw;
  raw.reserve(n);
  for (int l = 0; l < so.layers; ++l)
    for (const auto* t : {&kv.keys[static_cast<std::size_t>(l)], &kv.values[static_cast<std::size_t>(l)]})
      for (float x : *t) raw.push_back(f32_to_f16_bits(x));
  std::vector<std::uint16_t> copy(n);
  const double t_memcpy = best_of(3, [&] { std::memcpy(copy.data(), raw.data(), f16_bytes); });
  std::vector<std::uint8_t> z(ZSTD_compressBound(static_cast<std::size_t>(f16_bytes)));
  const std::size_t zn = ZSTD_compress(z.data(), z.size(), raw.data(), static_cast<std::size_t>(f16_bytes), 3);
  const double t_zstd = best_of(3, [&] { ZSTD_decompress(copy.data(), static_cast<std::size_t>(f16_bytes), z.data(), zn); });
  std::printf("synth %lld tokens, %d layers, %d kv heads, head_dim %d: %.1f MB f16\n", static_cast<long long>(so.tokens), so.layers, so.kv_heads,
              so.head_dim, f16_bytes / 1e6);
  std::printf("memcpy %.2f GB/s; zstd-3 of raw f16: %.3f bits/elem, decompress %.2f GB/s\n", f16_bytes / t_memcpy / 1e9,
              static_cast<double>(zn) * 8.0 / static_cast<double>(n), f16_bytes / t_zstd / 1e9);
  std::printf("%-12s %8s %8s %8s %8s %9s %9s %9s %9s %9s\n", "codec", "bits/el", "payload", "bound", "side", "ovh%", "enc GB/s", "dec GB/s",
              "dec/zstd", "dec/memcpy");
  for (const auto& spec : specs) {
    encoded e;
    const double te = best_of(2, [&] {
      codec c = make_codec(spec);
      e = encode(cpu::seq, c, kv);
    });
    kv_cache out;
    const double td = best_of(3, [&] { out = decode(cpu::seq, e.data); });
    const auto& s = e.report.stats;
    const double el = static_cast<double>(n);
    std::printf("%-12s %8.3f %8.3f %8.3f %8.4f %9.3f %9.3f %9.3f %9.2f %9.3f\n", spec.c_str(), e.report.bits_per_element, s.payload_bits / el,
                s.entropy_bound_bits / el, (s.side_info_bits + 8.0 * static_cast<double>(e.report.state_bytes)) / el,
                100.0 * (s.payload_bits / s.entropy_bound_bits - 1.0), f16_bytes / te / 1e9, f16_bytes / td / 1e9, t_zstd / td, t_memcpy / td);
    std::fflush(stdout);
  }
}
