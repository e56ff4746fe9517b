// bench/bench_cuda_kernels.cu — the device half of bench_cuda (see bench_cuda.cpp): uploads, launches
// and times with CUDA events; decodes containers into a device view through cuda/decode.cuh.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "bench_cuda.hpp"
#include "kvcodec/cuda/decode.cuh"
#include "kvcodec/cuda/encode.cuh"
#include "kvcodec/cuda/memory.cuh"
#include "kvcodec/cuda/rans.cuh"
#include "kvcodec/cuda/drop/adakv.cuh"
#include "kvcodec/cuda/drop/expected_attention.cuh"
#include "kvcodec/cuda/drop/h2o.cuh"
#include "kvcodec/cuda/drop/lagkv.cuh"
#include "kvcodec/cuda/drop/knorm.cuh"
#include "kvcodec/cuda/drop/pyramidkv.cuh"
#include "kvcodec/cuda/drop/snapkv.cuh"
#include "kvcodec/cuda/drop/tova.cuh"
#include "kvcodec/core/half.hpp"
#include "kvcodec/core/random.hpp"

namespace kvcodec_bench_cuda {

using namespace kvcodec;
namespace cuda = kvcodec::cuda;  // CUB (drop/*.cuh) declares a top-level namespace cuda too

std::string device_description() {
  if (cuda::device_count() == 0) return {};
  cudaDeviceProp p{};
  cuda::check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  return std::string(p.name) + ", sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " + std::to_string(p.multiProcessorCount) +
         " SMs, driver CUDA " + std::to_string(drv / 1000) + "." + std::to_string(drv % 1000 / 10) + ", runtime " + std::to_string(rt / 1000) +
         "." + std::to_string(rt % 1000 / 10) + ", nvcc " + std::to_string(__CUDACC_VER_MAJOR__) + "." + std::to_string(__CUDACC_VER_MINOR__);
}

namespace {
struct events {
  cudaEvent_t a{}, b{};
  events() {
    cuda::check(cudaEventCreate(&a), "cudaEventCreate");
    cuda::check(cudaEventCreate(&b), "cudaEventCreate");
  }
  ~events() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  template <class F>
  double time(F&& f) {
    cuda::check(cudaEventRecord(a), "cudaEventRecord");
    f();
    cuda::check(cudaEventRecord(b), "cudaEventRecord");
    cuda::check(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    cuda::check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    return ms;
  }
};
}  // namespace

rans_timing time_rans_batch(const rans_batch_builder<std::uint32_t>& b, std::size_t memcpy_bytes, int reps) {
  rans_timing r;
  cuda::device_buffer<rans_batch_stream> streams{std::span<const rans_batch_stream>(b.streams)};
  cuda::device_buffer<std::uint8_t> data(b.data.size());
  cuda::device_buffer<std::uint32_t> entries{std::span<const std::uint32_t>(b.entries)};
  cuda::device_buffer<std::uint32_t> col_off{std::span<const std::uint32_t>(b.col_off)};
  cuda::device_buffer<std::uint16_t> out(b.out_symbols);
  events ev;
  {  // the stream bytes from pinned host memory, as a loader would
    std::uint8_t* pinned = nullptr;
    cuda::check(cudaMallocHost(reinterpret_cast<void**>(&pinned), std::max<std::size_t>(b.data.size(), 1)), "cudaMallocHost");
    std::copy(b.data.begin(), b.data.end(), pinned);
    r.h2d_ms = 1e30;
    for (int i = 0; i < 3; ++i)
      r.h2d_ms = std::min(r.h2d_ms, ev.time([&] { cuda::check(cudaMemcpy(data.data(), pinned, b.data.size(), cudaMemcpyHostToDevice), "H2D"); }));
    cudaFreeHost(pinned);
  }
  const rans_batch_args<std::uint32_t> a{streams.data(), b.streams.size(), b.max_lanes, data.data(), entries.data(), col_off.data(), out.data()};
  std::size_t temp_bytes = 0;
  cuda::rans_decode_batch(nullptr, temp_bytes, a, cuda::par);
  cuda::device_buffer<std::uint8_t> temp(temp_bytes);
  cuda::rans_decode_batch(temp.data(), temp_bytes, a, cuda::par);  // warm-up
  cuda::check(cudaDeviceSynchronize(), "warm-up decode");
  for (int i = 0; i < reps; ++i) r.decode_ms.push_back(ev.time([&] { cuda::rans_decode_batch(temp.data(), temp_bytes, a, cuda::par); }));
  r.status = cuda::rans_batch_statuses(temp.data(), b.streams.size(), cuda::par);
  r.symbols = out.download();
  {
    cuda::device_buffer<std::uint8_t> src(memcpy_bytes), dst(memcpy_bytes);
    cuda::check(cudaMemset(src.data(), 1, memcpy_bytes), "cudaMemset");
    r.memcpy_ms = 1e30;
    for (int i = 0; i < reps; ++i)
      r.memcpy_ms = std::min(r.memcpy_ms, ev.time([&] { cuda::check(cudaMemcpy(dst.data(), src.data(), memcpy_bytes, cudaMemcpyDeviceToDevice), "D2D"); }));
  }
  return r;
}

view_timing time_view_decode(const std::vector<std::uint8_t>& container, int layers, int kv_heads, std::int64_t tokens, int head_dim, int reps,
                             const std::string& encode_spec, bool unfused) {
  view_timing r;
  const std::size_t per = static_cast<std::size_t>(kv_heads) * static_cast<std::size_t>(tokens) * static_cast<std::size_t>(head_dim) * 2;
  std::vector<cuda::device_buffer<std::uint8_t>> kb, vb;
  std::vector<std::byte*> kp, vp;
  for (int l = 0; l < layers; ++l) {
    kp.push_back(reinterpret_cast<std::byte*>(kb.emplace_back(per).data()));
    vp.push_back(reinterpret_cast<std::byte*>(vb.emplace_back(per).data()));
  }
  kv_view view = kv_view::hf(kp, vp, dtype::f16, kv_heads, tokens, head_dim);
  view.space = memory_space::device;
  events ev;
  {
    cuda::view_decoder d(cuda::par, container, view, {}, unfused ? cuda::batch_variant::unfused : cuda::batch_variant::best);
    d.launch();  // warm-up
    d.finish();
    for (int i = 0; i < reps; ++i) r.kernels_ms.push_back(ev.time([&] { d.launch(); }));
    d.finish();
  }
  for (int i = 0; i < std::min(reps, 3); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    cuda::decode_into(cuda::par, container, view);
    r.end_to_end_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  for (const auto& b : kb) r.k.push_back(b.download());
  for (const auto& b : vb) r.v.push_back(b.download());
  if (!encode_spec.empty())
    for (int i = 0; i < std::min(reps, 3); ++i) {
      codec c = make_codec(encode_spec);
      const auto t0 = std::chrono::steady_clock::now();
      encoded e = cuda::encode(cuda::par, c, const_kv_view(view));
      r.encode_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      r.encoded = std::move(e.data);
    }
  {
    const std::size_t n = per * 2 * static_cast<std::size_t>(layers);
    cuda::device_buffer<std::uint8_t> src(n), dst(n);
    cuda::check(cudaMemset(src.data(), 1, n), "cudaMemset");
    r.memcpy_ms = 1e30;
    for (int i = 0; i < reps; ++i)
      r.memcpy_ms = std::min(r.memcpy_ms, ev.time([&] { cuda::check(cudaMemcpy(dst.data(), src.data(), n, cudaMemcpyDeviceToDevice), "D2D"); }));
  }
  return r;
}

/// `count` f16 values: a normal value per element (splitmix64 + Box-Muller) times a per-channel scale
/// 1 + c / head_dim, the synthetic keys, values and queries of the drop and encode timings.
std::vector<std::uint16_t> normal_f16(std::size_t count, int head_dim, std::uint64_t& state) {
  std::vector<std::uint16_t> h(count);
  for (std::size_t i = 0; i < count; i += 2) {
    const double u1 = (static_cast<double>(splitmix64_next(state) >> 11) + 0.5) * 0x1.0p-53, u2 = static_cast<double>(splitmix64_next(state) >> 11) * 0x1.0p-53;
    const double rad = std::sqrt(-2.0 * std::log(u1)), c = 1.0 + static_cast<double>(i % static_cast<std::size_t>(head_dim)) / head_dim;
    h[i] = f32_to_f16_bits(static_cast<float>(rad * std::cos(6.283185307179586 * u2) * c));
    if (i + 1 < count) h[i + 1] = f32_to_f16_bits(static_cast<float>(rad * std::sin(6.283185307179586 * u2) * c));
  }
  return h;
}

drop_timing time_drop_select(const std::string& method, int layers, int kv_heads, int q_heads, std::int64_t tokens, int head_dim, std::int64_t window,
                             double keep, int reps) {
  drop_timing r;
  const std::size_t per_k = static_cast<std::size_t>(kv_heads) * static_cast<std::size_t>(tokens) * static_cast<std::size_t>(head_dim);
  const std::size_t per_q = static_cast<std::size_t>(q_heads) * static_cast<std::size_t>(tokens) * static_cast<std::size_t>(head_dim);
  r.key_bytes = per_k * 2 * static_cast<std::size_t>(layers);
  // f16 keys and queries (normal_f16)
  std::vector<cuda::device_buffer<std::uint16_t>> kb, qb, vb;
  std::vector<const void*> kp, qp, vp;
  std::uint64_t state = 12345;
  const auto fill = [&](std::size_t count) { return normal_f16(count, head_dim, state); };
  for (int l = 0; l < layers; ++l) {
    kb.emplace_back(std::span<const std::uint16_t>(fill(per_k)));
    qb.emplace_back(std::span<const std::uint16_t>(fill(per_q)));
    kp.push_back(kb.back().data());
    qp.push_back(qb.back().data());
    if (method == "lagkv" || method == "expected-attention") {
      vb.emplace_back(std::span<const std::uint16_t>(fill(per_k)));
      vp.push_back(vb.back().data());
    }
  }
  cuda::device_buffer<const void*> dk{std::span<const void* const>(kp)}, dq{std::span<const void* const>(qp)};
  cuda::device_buffer<const void*> dv{std::span<const void* const>(vp.empty() ? kp : vp)};
  drop_window_source src;
  src.k.k = dk.data(), src.q.k = dq.data();
  for (drop_source* d : {&src.k, &src.q}) {
    d->head_dim = head_dim, d->dtype_code = 1;
    d->layout.s_head = tokens * head_dim, d->layout.s_token = head_dim;
  }
  src.layers = layers, src.heads = kv_heads, src.group = q_heads / kv_heads, src.n = tokens;
  const std::int64_t b = std::max<std::int64_t>(1, std::llround(keep * static_cast<double>(tokens)));
  r.kept = static_cast<std::size_t>(b) * static_cast<std::size_t>(layers) * static_cast<std::size_t>(kv_heads);
  cuda::device_buffer<std::uint8_t> mask(method == "adakv" ? static_cast<std::size_t>(layers * kv_heads * tokens) : 1);
  drop_window_params wp;
  wp.b = b, wp.window = window;
  const drop_window_plan ada = plan_drop_window(src, wp);
  lagkv_args lag;
  lag.k = src.k, lag.v = dv.data(), lag.layers = layers, lag.heads = kv_heads, lag.n = tokens, lag.sink = 16, lag.lag = 128;
  expected_args ea;
  ea.k = src.k, ea.q = src.q, ea.v = dv.data(), ea.layers = layers, ea.heads = kv_heads, ea.group = q_heads / kv_heads, ea.n = tokens;
  ea.window = window, ea.sink = 4, ea.rope = true;
  const expected_prep ep = expected_tables(static_cast<std::size_t>(head_dim), tokens, window, 64, true, 10000.0, {});
  const auto run = [&](void* temp, std::size_t& bytes, std::int32_t* kept) {
    if (method == "lagkv") cuda::lagkv_select(temp, bytes, lag, b, kept, cuda::par);
    else if (method == "expected-attention") cuda::expected_attention_select(temp, bytes, ea, ep, b, kept, cuda::par);
    else if (method == "adakv") cuda::adakv_select(temp, bytes, ada, 0.2, mask.data(), cuda::par);
    else if (method == "snapkv") cuda::snapkv_select(temp, bytes, src, window, 5, b, kept, cuda::par);
    else if (method == "pyramidkv") cuda::pyramidkv_select(temp, bytes, src, window, 5, 20.0, b, kept, cuda::par);
    else if (method == "h2o") cuda::h2o_select(temp, bytes, src, window, 0.5, b, kept, cuda::par);
    else if (method == "tova") cuda::tova_select(temp, bytes, src, b, kept, cuda::par);
    else if (method == "knorm") cuda::knorm_select(temp, bytes, src.k, layers, kv_heads, tokens, b, kept, cuda::par);
    else throw_usage("bench_cuda drop: unknown method '" + method + "' (snapkv, pyramidkv, adakv, h2o, tova, knorm, lagkv, expected-attention)");
  };
  std::size_t bytes = 0;
  run(nullptr, bytes, nullptr);
  cuda::device_buffer<std::uint8_t> temp(bytes);
  cuda::device_buffer<std::int32_t> kept(r.kept);
  events ev;
  run(temp.data(), bytes, kept.data());
  cuda::check(cudaDeviceSynchronize(), "drop warm-up");
  for (int i = 0; i < reps; ++i) r.ms.push_back(ev.time([&] { run(temp.data(), bytes, kept.data()); }));
  cuda::device_buffer<std::uint8_t> a(r.key_bytes), c(r.key_bytes);
  r.memcpy_ms = 1e30;
  for (int i = 0; i < 5; ++i)
    r.memcpy_ms = std::min(r.memcpy_ms, ev.time([&] { cuda::check(cudaMemcpy(c.data(), a.data(), r.key_bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy"); }));
  return r;
}

encode_timing time_encode(const std::string& spec, int layers, int kv_heads, int q_heads, std::int64_t tokens, int head_dim, int reps) {
  encode_timing r;
  const std::size_t per_k = static_cast<std::size_t>(kv_heads) * static_cast<std::size_t>(tokens) * static_cast<std::size_t>(head_dim);
  const std::size_t per_q = static_cast<std::size_t>(q_heads) * static_cast<std::size_t>(tokens) * static_cast<std::size_t>(head_dim);
  r.cache_bytes = per_k * 2 * 2 * static_cast<std::size_t>(layers);
  // f16 keys, values and queries (normal_f16)
  std::uint64_t state = 777;
  const auto fill = [&](std::size_t count) { return normal_f16(count, head_dim, state); };
  std::vector<cuda::device_buffer<std::uint16_t>> kb, vb, qb;
  std::vector<std::byte*> kp, vp, qp;
  for (int l = 0; l < layers; ++l) {
    kb.emplace_back(std::span<const std::uint16_t>(fill(per_k)));
    vb.emplace_back(std::span<const std::uint16_t>(fill(per_k)));
    qb.emplace_back(std::span<const std::uint16_t>(fill(per_q)));
    kp.push_back(reinterpret_cast<std::byte*>(kb.back().data()));
    vp.push_back(reinterpret_cast<std::byte*>(vb.back().data()));
    qp.push_back(reinterpret_cast<std::byte*>(qb.back().data()));
  }
  kv_view view = kv_view::hf(kp, vp, dtype::f16, kv_heads, tokens, head_dim), qview = kv_view::hf(qp, qp, dtype::f16, q_heads, tokens, head_dim);
  view.space = qview.space = memory_space::device;
  const const_kv_view cview(view), cq(qview);
  for (int i = 0; i < reps + 1; ++i) {  // the first run warms up (allocations, module load)
    codec c = make_codec(spec);
    const auto t0 = std::chrono::steady_clock::now();
    const encoded e = cuda::encode(cuda::par, c, cview, {}, {}, &cq);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i > 0) r.ms.push_back(ms);
    r.container_bytes = e.data.size();
    r.mask_bytes = e.report.mask_bytes;
  }
  events ev;
  cuda::device_buffer<std::uint8_t> a(r.cache_bytes), b(r.cache_bytes);
  r.memcpy_ms = 1e30;
  for (int i = 0; i < 5; ++i)
    r.memcpy_ms = std::min(r.memcpy_ms, ev.time([&] { cuda::check(cudaMemcpy(b.data(), a.data(), r.cache_bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy"); }));
  return r;
}

}  // namespace kvcodec_bench_cuda
