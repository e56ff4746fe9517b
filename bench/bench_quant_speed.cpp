// bench/bench_quant_speed.cpp — single-thread quantize / dequantize throughput of the core kernels and
// of the registered quant stages, as a ratio to memcpy of the same output bytes measured in the same run.
//
// Data: kvcodec::eval::synth_cache 32 layers x 8 kv heads x 128 head_dim x 2048 tokens, f16 (K+V =
// 134,217,728 elements = 268 MB as f16, 537 MB as the f32 the library computes on), generated once.
// Kernels run on the flat f32 K+V (all layers concatenated): ggml q8_0 / q4_0 blocks of 32,
// affine asym 4-bit and 2-bit groups of 32 with f16 scale+min (all groups' parameters, then the
// bit-packed codes), fp8 e4m3 with one f32 amax scale per 128-value row. Dequantize writes f32 and f16
// (the exact RNE conversion of the f32 values). All through the library's bulk row kernels, which pick
// AVX2/F16C at run time (core/simd.hpp; KVCODEC_NO_SIMD=1 forces the scalar reference). Stages run
// through kvcodec::encode / decode with cpu::seq (decode output: the f32 kv_cache).
// Timing: best of N of the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID; wall time also shown);
// memcpy of the kernel's output byte count is timed right before each kernel.
// x_mc_in: memcpy of the kernel's INPUT byte count (timed the same way) / kernel time; for quantize
// kernels, whose output is small, this is the bound that matters (the f32 input must be read).
// Usage: bench_quant_speed [reps [filter]]   (default 5; stages use max(2, reps/2); filter: only the
// rows whose name contains the substring)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "kvcodec/core/affine.hpp"
#include "kvcodec/core/fp8.hpp"
#include "kvcodec/core/ggml_blocks.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/pipeline/encode.hpp"

namespace {

constexpr const char* k_command =
    "g++ -std=c++20 -O3 -Iinclude -I/usr/include/eigen3 bench/bench_quant_speed.cpp -lzstd -lxxhash -lz -pthread "
    "-o /tmp/bench_quant_speed && /tmp/bench_quant_speed 3 > bench/results/quant_speed.txt";

double thread_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
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

struct timing {
  double cpu = 1e300, wall = 1e300;
};

timing best_of(int reps, const std::function<void()>& fn) {
  timing t;
  for (int r = 0; r < reps; ++r) {
    const double w0 = wall_s(), c0 = thread_cpu_s();
    fn();
    const double c1 = thread_cpu_s(), w1 = wall_s();
    t.cpu = std::min(t.cpu, c1 - c0);
    t.wall = std::min(t.wall, w1 - w0);
  }
  return t;
}

volatile std::uint8_t g_sink = 0;

/// memcpy of `n` bytes from src to dst, best of reps.
timing time_memcpy(int reps, const void* src, void* dst, std::size_t n) {
  return best_of(reps, [&] {
    std::memcpy(dst, src, n);
    g_sink = static_cast<const std::uint8_t*>(dst)[n / 2];
  });
}

// Not library code: q8_0 / q4_0 dequantization with a plain multiply instead of the volatile
// mul_rn, to show what the compiler does once the per-element store/reload is gone (same results on
// x86-64 without -march: SSE2 has no FMA to fuse into).
inline void dequant_q8_0_plain(const std::uint8_t* in, float* y) {
  const float d = kvcodec::ggml::detail::get_f16(in);
  for (std::size_t j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<std::int8_t>(in[2 + j])) * d;
}
inline void dequant_q4_0_plain(const std::uint8_t* in, float* y) {
  const float d = kvcodec::ggml::detail::get_f16(in);
  for (std::size_t j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((in[2 + j] & 0x0f) - 8) * d;
    y[j + 16] = static_cast<float>((in[2 + j] >> 4) - 8) * d;
  }
}

struct row {
  std::string name;
  double in_bytes, out_bytes;
  timing t, mc, mc_in;
  double err = -1;  ///< relative L2 error of the dequantized output (sanity check), -1 = not applicable
};

void print_row(const row& r) {
  const double gbs_out = r.out_bytes / r.t.cpu / 1e9, gbs_in = r.in_bytes / r.t.cpu / 1e9;
  const double mc_gbs = r.out_bytes / r.mc.cpu / 1e9;
  std::printf("%-50s %7.1f %7.1f %7.3f %7.3f %8.2f %8.2f %10.2f %8.3f %8.3f", r.name.c_str(), r.in_bytes / 1e6, r.out_bytes / 1e6,
              r.t.cpu, r.t.wall, gbs_in, gbs_out, mc_gbs, r.mc.cpu / r.t.cpu, r.mc_in.cpu / r.t.cpu);
  if (r.err >= 0) std::printf("  %.4f", r.err);
  std::printf("\n");
  std::fflush(stdout);
}

template <class Get>
double rel_err(const std::vector<float>& x, Get get) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double d = static_cast<double>(get(i)) - x[i];
    num += d * d;
    den += static_cast<double>(x[i]) * x[i];
  }
  return std::sqrt(num / den);
}

void header(const char* title) {
  std::printf("\n## %s\n", title);
  std::printf("%-50s %7s %7s %7s %7s %8s %8s %10s %8s %8s  %s\n", "kernel", "in_MB", "out_MB", "cpu_s", "wall_s", "in_GB/s", "out_GB/s",
              "memcpyGB/s", "x_memcpy", "x_mc_in", "rel_err");
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvcodec;
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
  const std::string filter = argc > 2 ? argv[2] : "";
  const auto want = [&](const std::string& name) { return name.find(filter) != std::string::npos; };
  std::printf("# command: %s\n", k_command);
  std::printf("# built with: g++ %s, -O3, no -march (baseline x86-64 SSE2); run-time kernels: %s\n", __VERSION__,
              simd::avx2() ? "AVX2+FMA+F16C (core/simd.hpp)" : "scalar reference (no AVX2 or KVCODEC_NO_SIMD set)");
  std::printf("# loadavg at start: %s (machine: %u hardware threads, shared)\n", loadavg().c_str(), std::thread::hardware_concurrency());
  std::printf("# one thread; times are best of %d (kernels) of the thread's CPU time; x_memcpy = memcpy time of the\n"
              "# same OUTPUT byte count / kernel time (both CPU time, same process, memcpy timed right before);\n"
              "# rel_err = ||dequantized - x|| / ||x|| over all K+V (sanity check of the timed kernel).\n",
              reps);

  eval::synth_options so;
  so.layers = 32, so.kv_heads = 8, so.q_heads = 0, so.head_dim = 128, so.tokens = 2048, so.dtype = dtype::f16, so.seed = 0;
  const double g0 = wall_s();
  const kv_cache kv = eval::synth_cache(so);
  const std::size_t per = kv.shape.layer_elements();
  const std::size_t n = kv.shape.kv_elements();
  std::printf("# synth_cache: layers 32, kv_heads 8, head_dim 128, tokens 2048, f16, seed 0: %zu K+V elements = %.1f MB f16 "
              "(generated in %.1f s)\n",
              n, static_cast<double>(n) * 2 / 1e6, wall_s() - g0);

  std::vector<float> x(n);
  for (int l = 0; l < kv.shape.layers; ++l) {
    std::memcpy(x.data() + 2 * static_cast<std::size_t>(l) * per, kv.keys[static_cast<std::size_t>(l)].data(), per * 4);
    std::memcpy(x.data() + (2 * static_cast<std::size_t>(l) + 1) * per, kv.values[static_cast<std::size_t>(l)].data(), per * 4);
  }
  std::vector<float> y(n, 0.0f);                // f32 dequant output (pre-faulted)
  std::vector<std::uint16_t> yh(n, 0);          // f16 dequant output
  std::vector<std::uint8_t> q(n * 34 / 32 + 64, 0);  // largest encoded size: q8_0 (fp8 rows: n + 4 n/128)
  const std::size_t nb = n / 32, nrow = n / 128;

  // ---- core kernels ----------------------------------------------------------------------------
  header("core kernels on the flat f32 K+V (537 MB in)");
  struct kernel {
    std::string name;
    std::size_t enc_bytes;
    std::function<void()> quant, deq, deq16, deq_plain;
  };
  using affine::mode;
  using affine::param_dtype;
  const auto affine_kernel = [&](int bits) {
    kernel k;
    k.name = "affine asym " + std::to_string(bits) + "-bit g32 f16 params+pack";
    k.enc_bytes = nb * 4 + affine::packed_bytes(n, bits);
    k.quant = [&, bits] { affine::quantize_groups_packed(x.data(), nb, 32, bits, mode::asymmetric, param_dtype::f16, q.data(), q.data() + nb * 4); };
    k.deq = [&, bits] { affine::dequantize_groups_packed(q.data() + nb * 4, q.data(), nb, 32, bits, mode::asymmetric, param_dtype::f16, y.data()); };
    k.deq16 = [&, bits] {
      affine::dequantize_groups_packed_f16(q.data() + nb * 4, q.data(), nb, 32, bits, mode::asymmetric, param_dtype::f16, yh.data());
    };
    return k;
  };
  const auto ggml_kernel = [&](ggml::block_type t) {
    kernel k;
    k.name = "ggml " + std::string(ggml::block_type_name(t));
    k.enc_bytes = ggml::row_bytes(t, n);
    k.quant = [&, t] { ggml::quantize_row(t, x.data(), n, q.data()); };
    k.deq = [&, t] { ggml::dequantize_row(t, q.data(), n, y.data()); };
    k.deq16 = [&, t] { ggml::dequantize_row_f16(t, q.data(), n, yh.data()); };
    return k;
  };
  std::vector<kernel> kernels;
  kernels.push_back(ggml_kernel(ggml::block_type::q8_0));
  kernels.back().deq_plain = [&] {
    for (std::size_t b = 0; b < nb; ++b) dequant_q8_0_plain(q.data() + b * 34, y.data() + b * 32);
  };
  kernels.push_back(ggml_kernel(ggml::block_type::q4_0));
  kernels.back().deq_plain = [&] {
    for (std::size_t b = 0; b < nb; ++b) dequant_q4_0_plain(q.data() + b * 18, y.data() + b * 32);
  };
  kernels.push_back(ggml_kernel(ggml::block_type::q4_1));
  kernels.push_back(ggml_kernel(ggml::block_type::q5_0));
  kernels.push_back(ggml_kernel(ggml::block_type::q5_1));
  kernels.push_back(affine_kernel(4));
  kernels.push_back(affine_kernel(2));
  {
    kernel k;
    k.name = "fp8 e4m3, f32 amax scale per 128 row";
    k.enc_bytes = nrow * (4 + 128);
    k.quant = [&] {
      for (std::size_t r = 0; r < nrow; ++r) {
        const float* xr = x.data() + r * 128;
        std::uint8_t* o = q.data() + r * 132;
        const float s = fp8_scale(finite_amax(xr, 128), fp8_kind::e4m3);
        std::memcpy(o, &s, 4);
        encode_fp8(fp8_kind::e4m3, xr, 128, s, o + 4);
      }
    };
    k.deq = [&] {
      for (std::size_t r = 0; r < nrow; ++r) {
        const std::uint8_t* in = q.data() + r * 132;
        float s;
        std::memcpy(&s, in, 4);
        decode_fp8(fp8_kind::e4m3, in + 4, 128, s, y.data() + r * 128);
      }
    };
    k.deq16 = [&] {
      for (std::size_t r = 0; r < nrow; ++r) {
        const std::uint8_t* in = q.data() + r * 132;
        float s;
        std::memcpy(&s, in, 4);
        decode_fp8_f16(fp8_kind::e4m3, in + 4, 128, s, yh.data() + r * 128);
      }
    };
    kernels.push_back(k);
  }

  const double in_f32 = static_cast<double>(n) * 4;
  std::vector<row> rows;
  for (const auto& k : kernels) {
    if (!want(k.name)) continue;
    row rq{k.name + " quantize (f32 in)", in_f32, static_cast<double>(k.enc_bytes), {}, {}};
    rq.mc = time_memcpy(reps, x.data(), q.data(), k.enc_bytes);
    rq.mc_in = time_memcpy(reps, x.data(), y.data(), n * 4);
    rq.t = best_of(reps, k.quant);
    print_row(rq);
    row rd{k.name + " dequantize -> f32", static_cast<double>(k.enc_bytes), in_f32, {}, {}};
    rd.mc = time_memcpy(reps, x.data(), y.data(), n * 4);
    rd.mc_in = time_memcpy(reps, q.data(), yh.data(), k.enc_bytes);
    rd.t = best_of(reps, k.deq);
    rd.err = rel_err(x, [&](std::size_t i) { return y[i]; });
    print_row(rd);
    row rh{k.name + " dequantize -> f16", static_cast<double>(k.enc_bytes), static_cast<double>(n) * 2, {}, {}};
    rh.mc = time_memcpy(reps, x.data(), yh.data(), n * 2);
    rh.mc_in = time_memcpy(reps, q.data(), yh.data(), k.enc_bytes);
    rh.t = best_of(reps, k.deq16);
    rh.err = rel_err(x, [&](std::size_t i) { return f16_bits_to_f32(yh[i]); });
    print_row(rh);
    if (k.deq_plain) {
      row rp{k.name + " deq->f32 plain mul, NOT library code", static_cast<double>(k.enc_bytes), in_f32, {}, {}};
      rp.mc = time_memcpy(reps, x.data(), y.data(), n * 4);
      rp.mc_in = time_memcpy(reps, q.data(), yh.data(), k.enc_bytes);
      rp.t = best_of(reps, k.deq_plain);
      rp.err = rel_err(x, [&](std::size_t i) { return y[i]; });
      print_row(rp);
    }
  }

  // ---- registered stages through the pipeline -----------------------------------------------------
  const int sreps = std::max(2, reps / 2);
  std::printf("\n## registered stages: kvcodec::encode / decode with cpu::seq on the kv_cache (best of %d)\n", sreps);
  std::printf("# encode in = the f32 kv_cache (537 MB; 268 MB as f16); decode out = the f32 kv_cache it allocates (537 MB,\n"
              "# zero-filled by kv_cache::zeros, page faults included). x_memcpy: memcpy of the same output bytes.\n");
  std::printf("%-50s %7s %7s %7s %7s %8s %8s %10s %8s %8s\n", "stage", "in_MB", "out_MB", "cpu_s", "wall_s", "in_GB/s", "out_GB/s",
              "memcpyGB/s", "x_memcpy", "x_mc_in");
  const std::vector<std::string> specs = {"q8_0", "q4_0", "kivi:bits=4", "kivi:bits=2", "fp8", "uniform:bits=4", "uniform:bits=2"};
  for (const auto& spec : specs) {
    if (!want(spec)) continue;
    codec c = make_codec(spec);
    encoded enc;
    const timing te = best_of(sreps, [&] { enc = encode(cpu::seq, c, kv); });
    row re{spec + " | pack  encode", in_f32, static_cast<double>(enc.data.size()), te, {}};
    re.mc = time_memcpy(reps, x.data(), q.data(), std::min(enc.data.size(), q.size()));
    re.mc_in = time_memcpy(reps, x.data(), y.data(), n * 4);
    print_row(re);
    const timing td = best_of(sreps, [&] {
      kv_cache out = decode(cpu::seq, enc.data);
      g_sink = static_cast<std::uint8_t>(out.keys[0][0] != 0.0f);
    });
    row rd{spec + " | pack  decode -> f32", static_cast<double>(enc.data.size()), in_f32, td, {}};
    rd.mc = time_memcpy(reps, x.data(), y.data(), n * 4);
    rd.mc_in = time_memcpy(reps, x.data(), q.data(), std::min(enc.data.size(), q.size()));
    print_row(rd);
    std::printf("%-50s bits/element %.4f (%s)\n", "", enc.report.bits_per_element, enc.report.spec.c_str());
  }
  std::printf("\n# loadavg at end: %s\n", loadavg().c_str());
  return 0;
}
