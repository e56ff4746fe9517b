// bench_cuda: the CUDA backend on a synthetic f16 cache (Llama-8B-shaped, >= 1 GB by default), every
// figure against a device-to-device cudaMemcpy of the same f16 bytes in the same run.
//   bench_cuda [SIZE_MB=1024] [SPEC=kvc:level=5] [REPS=10]       (scripts/gpu-check runs it on a GPU)
//   bench_cuda SIZE_MB drop:METHOD [REPS]     a GPU drop selection against a memcpy of the keys
//   bench_cuda SIZE_MB encode:SPEC [REPS]     cuda::encode end to end (drop stages on the GPU, queries given)
// What it times: for rANS containers, the rANS batch decode (cuda/rans.cuh) of every stream alone
// (symbols out; GB/s of the f16 cache the symbols stand for, 2 bytes per symbol), its symbols checked
// against the CPU decoder's for every stream; then, for every container cuda::decode_into takes (kvc
// levels, cachegen-quant|rans, q8_0 .. iq4_nl, fp8, raw), the decode into an f16 device view: the
// kernels alone (cuda::view_decoder::launch) and end to end from the host container (parse, plan, H2D,
// kernels), the view checked byte for byte against the CPU's decode_into. Exits 77 without a GPU.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench_cuda.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/kvcodec.hpp"
#include "kvcodec/pipeline/batch.hpp"

using namespace kvcodec;

int main(int argc, char** argv) {
  const double size_mb = argc > 1 ? std::atof(argv[1]) : 1024.0;
  const std::string spec = argc > 2 ? argv[2] : "kvc:level=5";
  const int reps = argc > 3 ? std::max(1, std::atoi(argv[3])) : 10;
  const std::string dev = kvcodec_bench_cuda::device_description();
  if (dev.empty()) {
    std::printf("SKIP: no CUDA device\n");
    return 77;
  }
  try {
    if (spec.rfind("drop:", 0) == 0) {  // a GPU drop selection: scoring + top-k against a memcpy of the keys
      const std::string method = spec.substr(5);
      const int layers = 32, kv_heads = 8, q_heads = 32, head_dim = 128;
      const std::int64_t tokens = std::max<std::int64_t>(128, static_cast<std::int64_t>(size_mb * 1e6 / (2.0 * layers * kv_heads * head_dim) + 0.5));
      const auto r = kvcodec_bench_cuda::time_drop_select(method, layers, kv_heads, q_heads, tokens, head_dim, 64, 0.5, reps);
      auto ms = r.ms;
      std::sort(ms.begin(), ms.end());
      std::printf("device: %s\n", dev.c_str());
      std::printf("drop %s: %d layers x %d kv heads (%d query heads) x %lld tokens x %d head_dim, f16 keys %.1f MB, window 64, keep 0.5\n", method.c_str(), layers,
                  kv_heads, q_heads, static_cast<long long>(tokens), head_dim, static_cast<double>(r.key_bytes) / 1e6);
      std::printf("scoring + selection, %d runs: best %.3f ms, median %.3f ms; device memcpy D2D of the keys: best %.3f ms = %.1f GB/s; "
                  "ratio %.2fx the memcpy (bar for snapkv/pyramidkv/adakv/h2o: <= 2x)\n",
                  reps, ms.front(), ms[ms.size() / 2], r.memcpy_ms, static_cast<double>(r.key_bytes) / r.memcpy_ms / 1e6, ms.front() / r.memcpy_ms);
      return 0;
    }
    if (spec.rfind("encode:", 0) == 0) {  // cuda::encode end to end, drop stages selecting on the GPU
      const std::string es = spec.substr(7);
      const int layers = 32, kv_heads = 8, q_heads = 32, head_dim = 128;
      const std::int64_t tokens = std::max<std::int64_t>(128, static_cast<std::int64_t>(size_mb * 1e6 / (4.0 * layers * kv_heads * head_dim) + 0.5));
      const auto r = kvcodec_bench_cuda::time_encode(es, layers, kv_heads, q_heads, tokens, head_dim, reps);
      auto ms = r.ms;
      std::sort(ms.begin(), ms.end());
      const double kv_bytes = static_cast<double>(r.cache_bytes);
      std::printf("device: %s\n", dev.c_str());
      std::printf("cuda::encode %s: %d layers x %d kv heads (%d query heads) x %lld tokens x %d head_dim, f16 K+V %.1f MB (HF layout, device)\n", es.c_str(),
                  layers, kv_heads, q_heads, static_cast<long long>(tokens), head_dim, kv_bytes / 1e6);
      std::printf("container %.1f MB (%.3f bits per cache element; masks %.1f MB)\n", static_cast<double>(r.container_bytes) / 1e6,
                  8.0 * static_cast<double>(r.container_bytes) / (kv_bytes / 2.0), static_cast<double>(r.mask_bytes) / 1e6);
      std::printf("cuda::encode end to end (drop selection, gather, quantize, rANS on the GPU; container written on the host), %zu runs: best %.1f ms, "
                  "median %.1f ms = %.1f GB/s of f16 (best); device memcpy D2D of K+V: best %.3f ms = %.1f GB/s; ratio %.1fx the memcpy\n",
                  ms.size(), ms.front(), ms[ms.size() / 2], kv_bytes / ms.front() / 1e6, r.memcpy_ms, kv_bytes / r.memcpy_ms / 1e6, ms.front() / r.memcpy_ms);
      return 0;
    }
    const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    eval::synth_options o;
    o.q_heads = spec.find("think") != std::string::npos ? o.kv_heads : 0;  // think fits its channels from the queries (one per kv head: the least host memory)
    o.dtype = dtype::f16;
    o.tokens = std::max<std::int64_t>(1, static_cast<std::int64_t>(size_mb * 1e6 / (2.0 * o.layers * o.kv_heads * o.head_dim * 2) + 0.5));
    const auto t0 = std::chrono::steady_clock::now();
    const kv_cache kv = eval::synth_cache(o);
    codec c = make_codec(spec);
    const encoded e = encode(cpu::par(threads), c, kv);
    const double f16_bytes = static_cast<double>(kv.shape.kv_elements()) * 2.0;
    const kvc_view v = parse_kvc(e.data, "bench.kvc");
    const segment_decoder dec(v.header, [&](std::size_t i) { return v.state_bytes(i); }, "bench.kvc");
    const double prep_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("device: %s\n", dev.c_str());
    std::printf("cache: %d layers x %d kv heads x %lld tokens x %d head_dim, f16, %.1f MB; container %s: %.1f MB, %.3f bits/element, %zu segments "
                "(prepared on the CPU in %.1f s: synth, encode with %d threads)\n",
                kv.shape.layers, kv.shape.kv_heads, static_cast<long long>(kv.shape.tokens), kv.shape.head_dim, f16_bytes / 1e6, spec.c_str(),
                static_cast<double>(e.data.size()) / 1e6, 8.0 * static_cast<double>(e.data.size()) / static_cast<double>(kv.shape.kv_elements()),
                v.header.segments.size(), prep_s, threads);
    std::size_t bad_streams = 0;
    if (dynamic_cast<const cpu::rans_entropy*>(dec.stages().entropy.get()) != nullptr) {
      std::vector<std::size_t> all(v.header.segments.size());
      for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
      const auto plan = plan_rans_batch<std::uint32_t>(dec, all, [&](std::size_t i) { return v.segment_bytes(i); });
      const auto r = kvcodec_bench_cuda::time_rans_batch(plan.builder, static_cast<std::size_t>(f16_bytes), reps);
      // the CPU decoder's symbols, block by block
      std::size_t streams = 0;
      for (auto st : r.status) bad_streams += st != rans_batch_status::ok;
      for (const auto& bb : plan.blocks) {
        byte_reader rd(v.segment_bytes(bb.segment), "segment");
        if (v.header.sparse) (void)dec.read_kept(rd, v.header.segments[bb.segment]);
        const auto ks = rd.get_blob("K stream");
        const auto vs = rd.get_blob("V stream");
        const symbols want = dec.stages().entropy->decode(bb.key ? ks : vs, bb.skeleton);
        for (std::size_t k = 0; k < bb.plane.size(); ++k, ++streams) {
          const auto& w = want.planes[bb.plane[k]].sym;
          if (!std::equal(w.begin(), w.end(), r.symbols.begin() + static_cast<std::ptrdiff_t>(bb.first[k]))) ++bad_streams;
        }
      }
      auto ms = r.decode_ms;
      std::sort(ms.begin(), ms.end());
      const double best = ms.front(), median = ms[ms.size() / 2];
      const double sym_bytes = 2.0 * static_cast<double>(plan.builder.out_symbols);
      std::printf("rANS batch: %zu streams, %llu symbols, %zu tables' entries, max %u lanes\n", plan.builder.streams.size(),
                  static_cast<unsigned long long>(plan.builder.out_symbols), plan.builder.entries.size(), plan.builder.max_lanes);
      std::printf("rANS batch decode (entropy stage only, symbols out), %d runs: best %.3f ms, median %.3f ms = %.1f GB/s of f16 (best), %.1f (median)\n", reps,
                  best, median, sym_bytes / best / 1e6, sym_bytes / median / 1e6);
      std::printf("device memcpy D2D of the %.1f MB f16 cache: best %.3f ms = %.1f GB/s; rANS decode / memcpy speed: %.3fx\n", f16_bytes / 1e6, r.memcpy_ms,
                  f16_bytes / r.memcpy_ms / 1e6, r.memcpy_ms / best * sym_bytes / f16_bytes);
      std::printf("H2D of the %.1f MB of streams (pinned): best %.3f ms = %.1f GB/s; H2D + decode: %.3f ms = %.1f GB/s of f16\n",
                  static_cast<double>(plan.builder.data.size()) / 1e6, r.h2d_ms, static_cast<double>(plan.builder.data.size()) / r.h2d_ms / 1e6,
                  r.h2d_ms + best, sym_bytes / (r.h2d_ms + best) / 1e6);
      std::printf("GPU symbols vs the CPU decoder: %zu of %zu streams differ or failed\n", bad_streams, streams);
    }
    // decode into an f16 device view (cuda::decode_into), against the CPU's decode_into
    const std::string& qn = dec.stages().quant->spec().name;  // cuda::encode's scope (cuda/encode.cuh)
    const bool packed = dec.stages().transforms.empty() && (qn == "cachegen-quant" || ggml::parse_block_type(qn).has_value() || qn == "fp8" ||
                                                            qn == "raw" || qn == "uniform" || qn == "kivi");
    const auto vt = kvcodec_bench_cuda::time_view_decode(e.data, kv.shape.layers, kv.shape.kv_heads, kv.shape.tokens, kv.shape.head_dim, reps,
                                                         packed ? spec : std::string());
    const std::size_t per = static_cast<std::size_t>(kv.shape.kv_heads) * static_cast<std::size_t>(kv.shape.tokens) * static_cast<std::size_t>(kv.shape.head_dim) * 2;
    std::vector<std::vector<std::byte>> hk(static_cast<std::size_t>(kv.shape.layers), std::vector<std::byte>(per)), hv = hk;
    std::vector<std::byte*> kp, vp;
    for (int l = 0; l < kv.shape.layers; ++l) {
      kp.push_back(hk[static_cast<std::size_t>(l)].data());
      vp.push_back(hv[static_cast<std::size_t>(l)].data());
    }
    decode_into(cpu::par(threads), e.data, kv_view::hf(kp, vp, dtype::f16, kv.shape.kv_heads, kv.shape.tokens, kv.shape.head_dim));
    int bad_layers = 0;
    for (std::size_t l = 0; l < hk.size(); ++l)
      bad_layers += std::memcmp(hk[l].data(), vt.k[l].data(), per) != 0 || std::memcmp(hv[l].data(), vt.v[l].data(), per) != 0;
    auto km = vt.kernels_ms, em = vt.end_to_end_ms;
    std::sort(km.begin(), km.end());
    std::sort(em.begin(), em.end());
    std::printf("decode into an f16 device view, kernels alone (cuda::view_decoder::launch), %d runs: best %.3f ms, median %.3f ms = %.1f GB/s of f16 "
                "(best) = %.3fx device memcpy (bar for kvc:level=5: >= 300 GB/s and >= 0.1x; q8_0/q4_0/fp8: >= 0.5x)\n",
                reps, km.front(), km[km.size() / 2], f16_bytes / km.front() / 1e6, vt.memcpy_ms / km.front());
    std::printf("cuda::decode_into end to end from the host container (parse, plan, pageable H2D, kernels), best of %zu: %.1f ms = %.1f GB/s of f16\n",
                em.size(), em.front(), f16_bytes / em.front() / 1e6);
    std::printf("device memcpy D2D of the view's %.1f MB: best %.3f ms = %.1f GB/s\n", f16_bytes / 1e6, vt.memcpy_ms, f16_bytes / vt.memcpy_ms / 1e6);
    std::printf("GPU view vs the CPU's decode_into: %d of %d layers differ\n", bad_layers, kv.shape.layers);
    bad_streams += static_cast<std::size_t>(bad_layers);
    if (const auto kind = batch_kind_of(dec.stages()); kind == batch_kind::cachegen_ac || kind == batch_kind::cachegen) {
      // the same container unfused: symbols in memory, then dequantize (for ac: LMCache's one thread per row)
      const auto rt = kvcodec_bench_cuda::time_view_decode(e.data, kv.shape.layers, kv.shape.kv_heads, kv.shape.tokens, kv.shape.head_dim, reps, {}, true);
      int bad_rows = 0;
      for (std::size_t l = 0; l < hk.size(); ++l)
        bad_rows += std::memcmp(hk[l].data(), rt.k[l].data(), per) != 0 || std::memcmp(hv[l].data(), rt.v[l].data(), per) != 0;
      auto rm = rt.kernels_ms;
      std::sort(rm.begin(), rm.end());
      std::printf("%s, %d runs: best %.3f ms = %.1f GB/s of f16; the fused kernel above is %.2fx faster%s; its view vs the CPU's: %d of %d layers differ\n",
                  kind == batch_kind::cachegen_ac ? "ac decode with one thread per row (LMCache's design: rows kernel, CDFs from global memory, then dequantize)"
                                                  : "rANS decode unfused (symbols to memory, then the dequantize kernel)",
                  reps, rm.front(), f16_bytes / rm.front() / 1e6, rm.front() / km.front(), kind == batch_kind::cachegen_ac ? " (bar: > 1x)" : "", bad_rows,
                  kv.shape.layers);
      bad_streams += static_cast<std::size_t>(bad_rows);
    }
    if (!vt.encode_ms.empty()) {  // cuda::encode of the decoded f16 view, against the CPU's encode of the same values
      auto en = vt.encode_ms;
      std::sort(en.begin(), en.end());
      codec cc = make_codec(spec);
      const encoded want = encode(cpu::par(threads), cc, const_kv_view(kv_view::hf(kp, vp, dtype::f16, kv.shape.kv_heads, kv.shape.tokens, kv.shape.head_dim)));
      const bool same = want.data == vt.encoded;
      std::printf("cuda::encode of the f16 device view (quantizer kernels; rANS without prediction on the GPU too, else the symbols back to the host for the entropy stage; container written on the host), best of %zu: %.1f ms = %.1f GB/s "
                  "of f16; container equals the CPU's encode of the same view: %s\n",
                  en.size(), en.front(), f16_bytes / en.front() / 1e6, same ? "yes" : "NO");
      bad_streams += same ? 0 : 1;
    }
    return bad_streams == 0 ? 0 : 1;
  } catch (const std::exception& ex) {
    std::printf("bench_cuda: %s\n", ex.what());
    return 1;
  }
}
