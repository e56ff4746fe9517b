// bench_store: the KV store's get against fetching the same bytes, on a running store (loopback Redis).
//   bench_store URL [tokens=2048] [reps=5] [threads=0]
// A Llama-8B-shaped synthetic cache (32 layers, 8 kv heads, head_dim 128, f16; eval::synth_cache) of
// `tokens` tokens is stored twice under one model: as kvc:level=5 and as raw:dtype=f16 (256-token
// chunks). Then, best of `reps` wall times (get: a new kv_store, so new connections, each time):
//   get      kv_store::get into an f16 host view (marker lookup, pipelined fetch + checks + decode)
//   fetch    GET of the kvc:level=5 chunk values alone, one after another on one connection
//   raw      GET of the raw f16 chunk values alone
// and the bars of issue 16: get / fetch <= 1.2, get / raw <= 0.5. bench/store.sh starts the server.
#include <malloc.h>

#include <chrono>
#include <cstdio>

#include "kvcodec/eval/synth.hpp"
#include "kvcodec/store/open.hpp"
#include "kvcodec/store/store.hpp"

using namespace kvcodec;

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_store URL [tokens=2048] [reps=5] [threads=0]\n");
    return 1;
  }
  // As the kvcodec command does (cli/main.cpp): chunk-sized buffers stay on the heap instead of being
  // mapped and faulted in again for every chunk.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  try {
    const std::string url = argv[1];
    const std::int64_t T = argc > 2 ? std::stoll(argv[2]) : 2048;
    const int reps = argc > 3 ? std::stoi(argv[3]) : 5;
    const int threads = argc > 4 ? std::stoi(argv[4]) : 0;
    eval::synth_options so;
    so.tokens = T;
    so.q_heads = 0;
    const kv_cache c = eval::synth_cache(so);
    const int L = so.layers, H = so.kv_heads, D = so.head_dim;
    // f16 copy in the Hugging Face [H, T, D] per layer layout.
    std::vector<std::vector<std::uint16_t>> k16(L), v16(L), ko(L), vo(L);
    std::vector<const std::byte*> ks, vs;
    std::vector<std::byte*> kd, vd;
    for (int l = 0; l < L; ++l) {
      k16[l].resize(c.keys[l].size());
      v16[l].resize(c.values[l].size());
      encode_floats(c.keys[l].data(), c.keys[l].size(), dtype::f16, reinterpret_cast<std::uint8_t*>(k16[l].data()));
      encode_floats(c.values[l].data(), c.values[l].size(), dtype::f16, reinterpret_cast<std::uint8_t*>(v16[l].data()));
      ko[l].assign(k16[l].size(), 0);
      vo[l].assign(v16[l].size(), 0);
      ks.push_back(reinterpret_cast<const std::byte*>(k16[l].data()));
      vs.push_back(reinterpret_cast<const std::byte*>(v16[l].data()));
      kd.push_back(reinterpret_cast<std::byte*>(ko[l].data()));
      vd.push_back(reinterpret_cast<std::byte*>(vo[l].data()));
    }
    const const_kv_view src = const_kv_view::hf(ks, vs, dtype::f16, H, T, D);
    const kv_view dst = kv_view::hf(kd, vd, dtype::f16, H, T, D);
    std::vector<std::int32_t> tokens(static_cast<std::size_t>(T));
    for (std::int64_t t = 0; t < T; ++t) tokens[static_cast<std::size_t>(t)] = static_cast<std::int32_t>((t * 7919 + 13) % 128000);

    store::store_options o;
    o.model = "llama-8b-shaped-synthetic";
    o.threads = threads;
    store::kv_store st(store::open_backend(url), o);
    const auto pk = st.put(tokens, src, "kvc:level=5");
    const auto pr = st.put(tokens, src, "raw:dtype=f16");
    const auto ek = st.entry(pk.entry_key), er = st.entry(pr.entry_key);
    if (!ek || !er) throw std::runtime_error("entries not found after put");
    std::size_t kbytes = 0, rbytes = 0;
    auto fetch_all = [&](const std::vector<std::string>& keys, std::size_t& bytes) {
      auto b = st.storage().clone();
      const double t0 = now();
      bytes = 0;
      for (const auto& k : keys) bytes += b->get(k)->size();
      return now() - t0;
    };
    double best_get = 1e30, best_fetch = 1e30, best_raw = 1e30;
    store::get_result last;
    for (int r = 0; r < reps; ++r) {
      store::kv_store g(store::open_backend(url), o);
      const double t0 = now();
      last = g.get(tokens, dst);
      best_get = std::min(best_get, now() - t0);
      if (last.tokens != T) throw std::runtime_error("get served " + std::to_string(last.tokens) + " tokens, expected " + std::to_string(T));
      best_fetch = std::min(best_fetch, fetch_all(ek->chunk_keys, kbytes));
      best_raw = std::min(best_raw, fetch_all(er->chunk_keys, rbytes));
    }
    std::printf("cache: %d layers x %d kv heads x %lld tokens x head_dim %d, f16 (%.1f MB); %lld chunks of %lld tokens; %s\n", L, H,
                static_cast<long long>(T), D, static_cast<double>(rbytes) / 1e6, static_cast<long long>(pk.chunks),
                static_cast<long long>(o.chunk_tokens), st.storage().url().c_str());
    std::printf("kvc:level=5 chunks: %zu bytes (%.3f bits/element); raw f16 chunks: %zu bytes\n", kbytes,
                8.0 * static_cast<double>(kbytes) / (2.0 * L * H * static_cast<double>(T) * D), rbytes);
    std::printf("get into an f16 host view:          %.4f s  (last run: fetch %.4f s on the worker, decode %.4f s)\n", best_get,
                last.fetch_seconds, last.decode_seconds);
    std::printf("fetch the kvc:level=5 chunks alone: %.4f s  (%.2f GB/s)\n", best_fetch, static_cast<double>(kbytes) / best_fetch / 1e9);
    std::printf("fetch the raw f16 chunks alone:     %.4f s  (%.2f GB/s)\n", best_raw, static_cast<double>(rbytes) / best_raw / 1e9);
    std::printf("get / fetch compressed = %.2fx (bar <= 1.2x: %s)\n", best_get / best_fetch, best_get / best_fetch <= 1.2 ? "met" : "NOT met");
    std::printf("get / fetch raw f16    = %.2fx (bar <= 0.5x: %s)\n", best_get / best_raw, best_get / best_raw <= 0.5 ? "met" : "NOT met");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_store: %s\n", e.what());
    return 2;
  }
}
