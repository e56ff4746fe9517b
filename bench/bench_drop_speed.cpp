// bench/bench_drop_speed.cpp — single-thread scoring + selection time and peak-memory growth of every
// token-dropping stage, as a multiple of memcpy of the keys, on a 268 MB synthetic cache with queries.
//
// Data: kvcodec::eval::synth_cache 32 layers x 8 kv heads x 32 q heads x 128 head_dim x 2048 tokens,
// f16, seed 0 (K = 67,108,864 elements: 134 MB as f16, 268 MB as the f32 the library reads).
// Each stage is built with kvcodec::make_codec("<name>:keep=0.5").drop. The one-thread time runs the
// stage's own selector, cpu::drop_select(kv, stage.params().cfg(), 1) (select() itself uses every
// hardware thread); select() is then run once and must return the same kept sets.
// keys_memcpy = memcpy of all K as f16 bytes (134 MB); x_keys = stage time / keys_memcpy time, so 2.0
// is "two passes over the keys at memcpy speed". Peak memory: VmHWM is reset through
// /proc/self/clear_refs (value 5) before each stage; growth = VmHWM after - VmRSS before.
// Query-aware stages also report GMAC = the multiply-adds of their Q K^T (window x keys per query
// head; h2o without a window: the causal triangle) and GMAC/s = GMAC / cpu_s; the compute floor of
// a stage is GMAC / the core's peak (docs/codecs/drop.md, "Speed").
// Usage: bench_drop_speed [reps] [filter]   (default 3; a stage slower than 5 s runs once; filter: a
// comma-separated list of method names, run only the specs starting with one of them). A second build with -march=native writes
// bench/results/drop_speed_native.txt (k_command_native).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <string>
#include <sys/resource.h>
#include <thread>
#include <vector>

#include <Eigen/Core>

#include "kvcodec/core/simd.hpp"
#include "kvcodec/cpu/drop_stages.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/pipeline/encode.hpp"

namespace {

constexpr const char* k_command =
    "g++ -std=c++20 -O3 -Iinclude -I/usr/include/eigen3 bench/bench_drop_speed.cpp -lzstd -lxxhash -lz -pthread "
    "-o /tmp/bench_drop_speed && /tmp/bench_drop_speed 3 > bench/results/drop_speed.txt";
constexpr const char* k_command_native =
    "g++ -std=c++20 -O3 -march=native -Iinclude -I/usr/include/eigen3 bench/bench_drop_speed.cpp -lzstd -lxxhash -lz -pthread "
    "-o /tmp/bench_drop_speed_native && /tmp/bench_drop_speed_native 3 > bench/results/drop_speed_native.txt";
#if defined(__AVX2__)
constexpr bool k_native = true;
#else
constexpr bool k_native = false;
#endif

/// Multiply-adds of Q K^T of a stage on the bench cache (0 for the stages that read no queries).
double macs_of(const kvcodec::drop::config& c, const kvcodec::kv_cache& kv) {
  using m = kvcodec::drop::method;
  const double L = kv.shape.layers, HQ = kv.shape.q_heads, D = kv.shape.head_dim, n = static_cast<double>(kv.shape.tokens);
  const m x = c.m == m::adakv ? c.scorer : c.m;
  if (x == m::snapkv || x == m::pyramidkv) return L * HQ * static_cast<double>(c.window) * n * D;
  if (x == m::h2o) return c.window > 0 ? L * HQ * static_cast<double>(c.window) * n * D : L * HQ * n * (n + 1) / 2 * D;
  if (x == m::tova) return L * HQ * n * D;
  if (x == m::expected_attention) return L * HQ * (n - static_cast<double>(c.sink)) * D;
  return 0;
}

double thread_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
double process_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
double wall_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string s;
  std::getline(f, s);
  return s;
}
/// A "VmXXX:   123 kB" field of /proc/self/status, in MB (-1 if absent).
double status_mb(const std::string& field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(field + ":", 0) == 0) return std::atof(line.c_str() + field.size() + 1) / 1024.0;
  return -1;
}
bool reset_peak() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

template <class D>
bool cfg_of(const kvcodec::drop_stage* s, kvcodec::drop::config& c) {
  if (const auto* p = dynamic_cast<const kvcodec::cpu::drop_impl<D>*>(s)) {
    c = p->params().cfg();
    return true;
  }
  return false;
}
kvcodec::drop::config config_of(const kvcodec::drop_stage* s) {
  namespace d = kvcodec::drop;
  d::config c;
  if (cfg_of<d::random>(s, c) || cfg_of<d::streamingllm>(s, c) || cfg_of<d::knorm>(s, c) || cfg_of<d::keydiff>(s, c) ||
      cfg_of<d::h2o>(s, c) || cfg_of<d::snapkv>(s, c) || cfg_of<d::tova>(s, c) || cfg_of<d::expected_attention>(s, c) ||
      cfg_of<d::pyramidkv>(s, c) || cfg_of<d::adakv>(s, c))
    return c;
  std::fprintf(stderr, "unknown drop stage implementation\n");
  std::exit(2);
}

volatile std::uint8_t g_sink = 0;

}  // namespace

int main(int argc, char** argv) {
  using namespace kvcodec;
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 3;
  const std::string filter = argc > 2 ? argv[2] : "";
  std::printf("# command: %s\n", k_native ? k_command_native : k_command);
  std::printf("# built with: g++ %s, -O3, %s; library AVX2 kernels (runtime dispatch): %s; Eigen SIMD: %s\n", __VERSION__,
              k_native ? "-march=native" : "no -march", simd::avx2() ? "on" : "off", Eigen::SimdInstructionSetsInUse());
  std::printf("# loadavg at start: %s (machine: %u hardware threads, shared)\n", loadavg().c_str(), std::thread::hardware_concurrency());

  eval::synth_options so;
  so.layers = 32, so.kv_heads = 8, so.q_heads = 32, so.head_dim = 128, so.tokens = 2048, so.dtype = dtype::f16, so.seed = 0;
  const double g0 = wall_s();
  const kv_cache kv = eval::synth_cache(so);
  const std::size_t per = kv.shape.layer_elements();
  const std::size_t nk = per * static_cast<std::size_t>(kv.shape.layers);
  std::printf("# synth_cache: layers 32, kv_heads 8, q_heads 32, head_dim 128, tokens 2048, f16, seed 0 (%.1f s); "
              "K+V %.1f MB as f16, K alone %.1f MB as f16 (%.1f MB as f32 in memory), queries %.1f MB f32\n",
              wall_s() - g0, static_cast<double>(2 * nk) * 2 / 1e6, static_cast<double>(nk) * 2 / 1e6,
              static_cast<double>(nk) * 4 / 1e6, static_cast<double>(4 * nk) * 4 / 1e6);

  // All K as f16 bytes: the reference memcpy.
  std::vector<std::uint16_t> kh(nk), kh2(nk, 0);
  for (int l = 0; l < kv.shape.layers; ++l) {
    const auto& K = kv.keys[static_cast<std::size_t>(l)];
    for (std::size_t i = 0; i < per; ++i) kh[static_cast<std::size_t>(l) * per + i] = f32_to_f16_bits(K[i]);
  }
  const auto time_memcpy = [&] {
    double best = 1e300;
    for (int r = 0; r < 5; ++r) {
      const double c0 = thread_cpu_s();
      std::memcpy(kh2.data(), kh.data(), nk * 2);
      g_sink = static_cast<std::uint8_t>(kh2[nk / 2]);
      best = std::min(best, thread_cpu_s() - c0);
    }
    return best;
  };
  const bool can_reset = reset_peak();
  std::printf("# peak-RSS reset via /proc/self/clear_refs: %s\n", can_reset ? "yes" : "NO (growth column is an upper bound)");
  std::printf("# one thread (cpu::drop_select(kv, cfg, 1)); cpu_s = best of %d of the thread's CPU time (a stage slower than 5 s "
              "runs once);\n# x_keys = cpu_s / memcpy time of all K as f16 (measured before each stage); rss+ = peak RSS growth "
              "during the stage;\n# sel_wall/sel_cpu = one call of the stage's select() (all %u hardware threads), wall and process "
              "CPU; same = identical kept sets.\n",
              reps, std::thread::hardware_concurrency());
  std::printf("%-40s %8s %8s %9s %8s %8s %9s %9s %5s %8s %8s %8s\n", "stage", "cpu_s", "wall_s", "memcpy_s", "x_keys", "rss+MB",
              "sel_wall", "sel_cpu", "same", "kept%", "GMAC", "GMAC/s");

  const std::vector<std::string> specs = {"random:keep=0.5", "streamingllm:keep=0.5", "knorm:keep=0.5", "keydiff:keep=0.5",
                                          "snapkv:keep=0.5", "tova:keep=0.5", "expected-attention:keep=0.5",
                                          "pyramidkv:keep=0.5", "adakv:keep=0.5", "adakv:scorer=knorm,keep=0.5",
                                          "h2o:keep=0.5,window=64", "h2o:keep=0.5"};
  for (const auto& spec : specs) {
    if (!filter.empty()) {
      bool hit = false;
      for (std::size_t a = 0; a <= filter.size();) {
        const std::size_t e = std::min(filter.find(',', a), filter.size());
        hit = hit || spec.rfind(filter.substr(a, e - a) + ":", 0) == 0;
        a = e + 1;
      }
      if (!hit) continue;
    }
    codec c = make_codec(spec);
    const drop::config cfg = config_of(c.drop.get());
    const double mc = time_memcpy();
    const double rss0 = status_mb("VmRSS");
    reset_peak();
    double best_cpu = 1e300, best_wall = 1e300;
    kept_sets one;
    for (int r = 0; r < reps; ++r) {
      const double w0 = wall_s(), c0 = thread_cpu_s();
      one = cpu::drop_select(kv, cfg, 1);
      const double c1 = thread_cpu_s(), w1 = wall_s();
      best_cpu = std::min(best_cpu, c1 - c0);
      best_wall = std::min(best_wall, w1 - w0);
      if (c1 - c0 > 5.0) break;
    }
    const double peak = status_mb("VmHWM");
    const double sw0 = wall_s(), sc0 = process_cpu_s();
    const kept_sets viaselect = c.drop->select(kv);
    const double sc1 = process_cpu_s(), sw1 = wall_s();
    std::size_t kept = 0;
    for (const auto& l : one)
      for (const auto& h : l) kept += h.size();
    const double gmac = macs_of(cfg, kv) / 1e9;
    std::printf("%-40s %8.3f %8.3f %9.4f %8.2f %8.1f %9.3f %9.3f %5s %8.2f %8.2f %8.1f\n", spec.c_str(), best_cpu, best_wall, mc, best_cpu / mc,
                peak - rss0, sw1 - sw0, sc1 - sc0, viaselect == one ? "yes" : "NO",
                100.0 * static_cast<double>(kept) / static_cast<double>(kv.shape.layers * kv.shape.kv_heads * kv.shape.tokens), gmac,
                gmac / best_cpu);
    std::fflush(stdout);
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("\n# getrusage ru_maxrss (whole run, never reset): %.1f MB; VmRSS now %.1f MB\n", static_cast<double>(ru.ru_maxrss) / 1024.0,
              status_mb("VmRSS"));
  std::printf("# loadavg at end: %s\n", loadavg().c_str());
  return 0;
}
