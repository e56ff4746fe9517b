// Speed and coder overhead of the kvc levels and CacheGen on a synthetic cache (eval/synth.hpp,
// f16, default 32 layers x 8 KV heads x 2048 tokens x head_dim 128 = 268 MB of f16), one core
// (cpu::seq), against memcpy and ZSTD_decompress (level 3) of the same cache's raw f16 bytes in the
// same run. Throughput = f16 bytes of the cache / process CPU time (best of 3 after one untimed warm-up encode; CPU time because the
// build machine is shared, and every codec here runs on one thread).
// Two decode columns: `dec` is the library's decode() (container -> f32 kv_cache), `f16 dec` is the
// codec's own decode path (container -> entropy decode -> CacheGen dequantization straight to f16
// bits, block after block into one buffer; stage state loading included).
// Build (plain -O3, no -march: the vector paths are picked at run time):
//   g++ -std=c++20 -O3 -Iinclude -I/usr/include/eigen3 bench/bench_entropy.cpp -lzstd -lxxhash -lz -pthread -o bench_entropy
// Usage: bench_entropy [tokens] [layers] [spec ...]   (default 2048 32, specs kvc:level=1..9 and cachegen)
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kvcodec/eval/synth.hpp"
#include "kvcodec/cpu/cachegen.hpp"
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

/// The codec's decode path to f16: every segment's K and V blocks, entropy decode then CacheGen
/// dequantization to f16 bits, written block after block (block order) into out.
void decode_f16(const std::vector<std::uint8_t>& file, std::uint16_t* out, std::size_t n) {
  const kvc_view v = parse_kvc(file, "bench");
  const kvc_header& h = v.header;
  codec c = make_codec(h.codec);
  const cache_info info{h.shape, h.source_dtype, h.metadata};
  auto stages = c.all();
  for (std::size_t si = 0; si < stages.size(); ++si) {
    std::span<const std::uint8_t> st;
    for (std::size_t i = 0; i < h.states.size(); ++i)
      if (h.states[i].stage == si) st = v.state_bytes(i);
    stages[si]->load_state(st, info);
  }
  const auto* q = dynamic_cast<const cpu::cachegen_quant*>(c.quant.get());
  if (q == nullptr || !c.transforms.empty() || c.drop) throw_usage("bench decode_f16: codec is not quant=cachegen-quant without transforms");
  std::size_t at = 0;
  for (std::size_t i = 0; i < h.segments.size(); ++i) {
    const auto& se = h.segments[i];
    byte_reader r(v.segment_bytes(i), "segment");
    for (int kvi = 0; kvi < 2; ++kvi) {
      const block b = detail::block_skeleton(h.shape, se.layer, kvi == 0, se.t0, se.t1, nullptr);
      const symbols sy = c.entropy->decode(r.get_blob("stream"), b);
      const std::size_t m = b.rows() * static_cast<std::size_t>(h.shape.head_dim);
      if (at + m > n) throw_usage("bench decode_f16: more values than the cache");
      q->decode_f16(sy, b, out + at);
      at += m;
    }
  }
}

int main(int argc, char** argv) {
  eval::synth_options so;
  so.layers = argc > 2 ? std::stoi(argv[2]) : 32;
  so.kv_heads = 8;
  so.q_heads = 0;
  so.head_dim = 128;
  so.tokens = argc > 1 ? std::stoll(argv[1]) : 2048;
  std::vector<std::string> specs;
  for (int i = 3; i < argc; ++i) specs.push_back(argv[i]);
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
  std::printf("%-12s %8s %8s %8s %8s %7s %8s %8s %8s %9s %9s %9s\n", "codec", "bits/el", "payload", "bound", "side", "ovh%", "enc GB/s",
              "dec GB/s", "dec/zstd", "f16 GB/s", "f16/zstd", "f16/memcpy");
  {  // warm-up: the first encode of a run pays the process's first page faults on every buffer
    codec c = make_codec(specs.front());
    (void)encode(cpu::seq, c, kv);
  }
  for (const auto& spec : specs) {
    encoded e;
    const double te = best_of(3, [&] {
      codec c = make_codec(spec);
      e = encode(cpu::seq, c, kv);
    });
    kv_cache out;
    const double td = best_of(3, [&] { out = decode(cpu::seq, e.data); });
    double tf = 0;
    if (spec.rfind("kvc", 0) == 0 || spec.rfind("cachegen", 0) == 0) {
      std::vector<std::uint16_t> f16(n);
      tf = best_of(3, [&] { decode_f16(e.data, f16.data(), n); });
      std::size_t bad = 0;  // the f16 path must equal the f32 decode rounded to f16
      std::size_t at = 0;
      const kvc_view v = parse_kvc(e.data, "bench");
      for (const auto& se : v.header.segments)
        for (const auto* t : {&out.keys[static_cast<std::size_t>(se.layer)], &out.values[static_cast<std::size_t>(se.layer)]})
          for (int h = 0; h < so.kv_heads; ++h)
            for (std::int64_t tk = se.t0; tk < se.t1; ++tk)
              for (int d = 0; d < so.head_dim; ++d)
                bad += f16[at++] != f32_to_f16_bits((*t)[(static_cast<std::size_t>(h) * static_cast<std::size_t>(so.tokens) +
                                                         static_cast<std::size_t>(tk)) * static_cast<std::size_t>(so.head_dim) + static_cast<std::size_t>(d)]);
      if (bad) std::printf("ERROR: %zu f16 values differ from the f32 decode\n", bad);
    }
    const auto& s = e.report.stats;
    const double el = static_cast<double>(n);
    std::printf("%-12s %8.3f %8.3f %8.3f %8.4f %7.3f %8.3f %8.3f %8.2f %9.3f %9.2f %9.3f\n", spec.c_str(), e.report.bits_per_element,
                s.payload_bits / el, s.entropy_bound_bits / el, (s.side_info_bits + 8.0 * static_cast<double>(e.report.state_bytes)) / el,
                100.0 * (s.payload_bits / s.entropy_bound_bits - 1.0), f16_bytes / te / 1e9, f16_bytes / td / 1e9, t_zstd / td,
                tf > 0 ? f16_bytes / tf / 1e9 : 0.0, tf > 0 ? t_zstd / tf : 0.0, tf > 0 ? t_memcpy / tf : 0.0);
    std::fflush(stdout);
  }
}
