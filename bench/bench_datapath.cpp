// bench_datapath: the library's data path on a synthetic f16 cache, as a user calls it.
//   bench_datapath FILE.kvc RAW.safetensors [threads...]
// For the container FILE.kvc (made by `kvcodec encode` from RAW.safetensors): decode_into an f16
// view (the whole cache, best of 3, CPU time of the calling process) with 1 and 2 threads, against
// ZSTD_decompress of RAW's bytes compressed at level 1 in the same run; then a 256-token range decode
// through io::kvc_file: its time against the full decode, and the bytes it read against the header,
// index and two segments.
#include <zstd.h>

#include <chrono>
#include <cstdio>
#include <ctime>

#include "kvcodec/io/file.hpp"
#include "kvcodec/kvcodec.hpp"
#include "kvcodec/pipeline/decode_file.hpp"

using namespace kvcodec;

namespace {
double cpu_now() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}
double wall_now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
template <class F>
std::pair<double, double> best3(F&& f) {  // (cpu, wall)
  double bc = 1e30, bw = 1e30;
  for (int i = 0; i < 3; ++i) {
    const double c0 = cpu_now(), w0 = wall_now();
    f();
    bc = std::min(bc, cpu_now() - c0);
    bw = std::min(bw, wall_now() - w0);
  }
  return {bc, bw};
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_datapath FILE.kvc RAW.safetensors\n");
    return 1;
  }
  const bytes file = io::read_file(argv[1]);
  const bytes raw = io::read_file(argv[2]);
  const kvc_view v = parse_kvc(file, argv[1]);
  const kv_shape s = v.header.shape;
  const std::size_t n = s.kv_elements();
  std::vector<std::uint16_t> out(n);
  std::vector<std::byte*> ks, vs;
  const std::size_t per = n / 2 / static_cast<std::size_t>(s.layers);
  for (int l = 0; l < s.layers; ++l) {
    ks.push_back(reinterpret_cast<std::byte*>(out.data() + (2 * static_cast<std::size_t>(l)) * per));
    vs.push_back(reinterpret_cast<std::byte*>(out.data() + (2 * static_cast<std::size_t>(l) + 1) * per));
  }
  const kv_view dst = kv_view::hf(ks, vs, dtype::f16, s.kv_heads, s.tokens, s.head_dim);
  const double gb = static_cast<double>(n) * 2 / 1e9;
  // zstd -1 of the raw dump, decompressed in memory (the same bytes an f16 cache occupies, plus a header).
  bytes z(ZSTD_compressBound(raw.size()));
  z.resize(ZSTD_compress(z.data(), z.size(), raw.data(), raw.size(), 1));
  bytes unz(raw.size());
  const auto tz = best3([&] { ZSTD_decompress(unz.data(), unz.size(), z.data(), z.size()); });
  std::printf("cache: %d layers x %d kv heads x %lld tokens x %d head_dim, %.1f MB f16; container %s, %.3f bits/element\n", s.layers, s.kv_heads,
              static_cast<long long>(s.tokens), s.head_dim, gb * 1e3, v.header.codec.c_str(), static_cast<double>(file.size()) * 8 / static_cast<double>(n));
  std::printf("zstd -1 decompress of the raw f16 dump: %.3f s CPU, %.2f GB/s\n", tz.first, gb / tz.first);
  double t1 = 0, t1c = 0;
  for (int threads : {1, 2}) {
    const auto t = best3([&] { decode_into(cpu::par(threads), file, dst); });
    if (threads == 1) t1 = t.second, t1c = t.first;
    std::printf("decode_into f16 view, -j%d: %.3f s CPU, %.3f s wall, %.2f GB/s of f16 per core (CPU), %.2fx zstd -d; wall speed-up vs -j1 %.2fx\n", threads,
                t.first, t.second, gb / t.first, tz.first / t.first, t1 / t.second);
  }
  // Random access: 256 tokens from the middle, through the file.
  const io::kvc_file f(argv[1]);
  const std::int64_t mid = s.tokens / 2 / v.header.chunk_tokens * v.header.chunk_tokens;  // a chunk-aligned 256-token range
  const std::int64_t end = std::min<std::int64_t>(s.tokens, mid + 256);
  std::vector<std::uint16_t> part(static_cast<std::size_t>(end - mid) * n / static_cast<std::size_t>(s.tokens));
  std::vector<std::byte*> pk, pv;
  const std::size_t pper = part.size() / 2 / static_cast<std::size_t>(s.layers);
  for (int l = 0; l < s.layers; ++l) {
    pk.push_back(reinterpret_cast<std::byte*>(part.data() + (2 * static_cast<std::size_t>(l)) * pper));
    pv.push_back(reinterpret_cast<std::byte*>(part.data() + (2 * static_cast<std::size_t>(l) + 1) * pper));
  }
  const kv_view pdst = kv_view::hf(pk, pv, dtype::f16, s.kv_heads, end - mid, s.head_dim);
  const std::uint64_t before = f.bytes_read();
  const auto tr = best3([&] { decode_into(cpu::par(1), f, pdst, decode_options{.token_begin = mid, .token_end = end}); });
  const std::uint64_t read = (f.bytes_read() - before) / 3;
  std::uint64_t seg_max = 0;
  for (const auto& se : v.header.segments) seg_max = std::max(seg_max, se.size);
  const std::uint64_t hdr = static_cast<std::uint64_t>(file.size()) - [&] {
    std::uint64_t c = 0;
    for (const auto& se : v.header.segments) c += se.size + kvc_record_size;
    return c;
  }();
  const std::uint64_t open_read = f.bytes_read() - 3 * read;
  std::printf("range decode tokens %lld..%lld via kvc_file, -j1: %.4f s CPU (%.4fx the -j1 full decode's CPU time); read %llu bytes of segments per decode "
              "(%.2f x the largest segment x layers), %llu bytes at open (header, state and index: %llu bytes in the file outside segments)\n",
              static_cast<long long>(mid), static_cast<long long>(end), tr.first, tr.first / t1c, static_cast<unsigned long long>(read),
              static_cast<double>(read) / static_cast<double>(seg_max * static_cast<std::uint64_t>(s.layers)), static_cast<unsigned long long>(open_read),
              static_cast<unsigned long long>(hdr));
  return 0;
}
