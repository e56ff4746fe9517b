// kvcodec/store/store.hpp — a KV-cache store keyed by token prefixes (LMCache's scheme) on any backend.
//
// Chunks. A context of T tokens is cut into chunks of `chunk_tokens` (default 256; the last may be
// shorter). Chunk k is keyed by a chain hash of the whole prefix up to its end:
//   h_0 = XXH3-128(namespace),  h_{k+1} = XXH3-128(h_k || tokens of chunk k as little-endian int32)
// where the namespace text names the key format, the model, the shape (layers, kv heads, head dim),
// the chunk size and the codec's canonical spec: a chunk can only be found by a context with the
// same tokens up to its end, for the same model, shape and spec. Each chunk's value is an
// independently decodable .kvc container of its tokens (one segment per layer) whose header records
// the chunk's tokens and, in its metadata, the model and the chain key; get() checks all of them, and
// every checksum, before it decodes a byte — a value stored under the wrong key, for another model,
// spec or shape, or damaged, is never served.
//
// Visibility. put() writes the chunks first (skipping the ones already stored: shared prefixes are
// stored once), waits for replicas when the backend is asked to (sync), then writes one small marker
// per chunk boundary, in order. Marker k says "chunks 0..k were complete when I was written"; get()
// looks for the longest prefix with a marker, so an entry becomes visible only once all its chunks
// are stored, and a put that dies midway leaves no visible entry (its chunks are orphans, invisible).
// The marker of a context's last chunk is its entry (`final`, with the list of its chunk keys):
// entries(), entry(), remove(). Removing an entry removes its chunks, which a context sharing its
// prefix loses too (it then gets a shorter prefix or a miss, never wrong data).
//
// Pipelining. get() fetches chunk k+1 (on a worker thread with its own connection) while chunk k
// decodes into the caller's view; put() encodes chunk k+1 while chunk k is written.
//
// Key space:  kvc:v1:c:<h>  chunk,  kvc:v1:m:<h>  marker,  kvc:v1:s:<model hash>  specs stored for a
// model and shape (get tries each). No hash tags: in a Redis Cluster the chunks spread over the masters.
// A kv_store is used by one thread at a time (open one per thread; they may share the storage).
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcodec/format/hash.hpp"
#include "kvcodec/pipeline/codec.hpp"
#include "kvcodec/pipeline/decode.hpp"
#include "kvcodec/pipeline/encode.hpp"
#include "kvcodec/store/backend.hpp"
#include "kvcodec/tensor/kv_view.hpp"

namespace kvcodec::store {

inline constexpr const char* key_prefix = "kvc:v1:";
inline constexpr const char* meta_model = "kvcodec.store.model";
inline constexpr const char* meta_key = "kvcodec.store.key";
/// The spec the chunk was stored under (the key's): a container's own codec names what its stages
/// resolved for the cache (raw:dtype=auto -> raw:dtype=f16), so the key's spec is kept beside it.
inline constexpr const char* meta_spec = "kvcodec.store.spec";

struct store_options {
  std::string model;                ///< the model's name: part of the key space
  std::int64_t chunk_tokens = 256;  ///< tokens per stored chunk
  int threads = 0;                  ///< encode/decode threads (0 = all cores)
  std::size_t pipeline_depth = 2;   ///< chunks fetched ahead of the decoder (encoded ahead of the writer)
};

/// A 128-bit chain hash.
struct chain_hash {
  std::uint64_t hi = 0, lo = 0;
  std::string hex() const {
    char b[33];
    std::snprintf(b, sizeof b, "%016llx%016llx", static_cast<unsigned long long>(hi), static_cast<unsigned long long>(lo));
    return b;
  }
  bool operator==(const chain_hash&) const = default;
};

inline chain_hash hash_bytes(const void* p, std::size_t n) {
  const XXH128_hash_t h = xxh3_128(p, n);
  return {h.high64, h.low64};
}

/// The shape part of the key space.
struct store_shape {
  std::int32_t layers = 0, kv_heads = 0, head_dim = 0;
};

/// The namespace text of (model, shape, chunk size) and, when `spec` is not empty, of a spec.
inline std::string namespace_text(const std::string& model, const store_shape& s, std::int64_t chunk_tokens, const std::string& spec) {
  std::string t = "kvcodec-store v1\nmodel=" + model + "\nlayers=" + std::to_string(s.layers) + "\nkv_heads=" + std::to_string(s.kv_heads) +
                  "\nhead_dim=" + std::to_string(s.head_dim) + "\nchunk_tokens=" + std::to_string(chunk_tokens) + "\n";
  if (!spec.empty()) t += "spec=" + spec + "\n";
  return t;
}

/// Chain hashes of every chunk boundary of `tokens`: element k covers tokens [0, min((k+1)C, T)).
inline std::vector<chain_hash> chain_hashes(const std::string& ns, std::span<const std::int32_t> tokens, std::int64_t chunk_tokens) {
  std::vector<chain_hash> out;
  chain_hash h = hash_bytes(ns.data(), ns.size());
  std::vector<std::uint8_t> buf;
  const std::int64_t T = static_cast<std::int64_t>(tokens.size());
  for (std::int64_t t0 = 0; t0 < T; t0 += chunk_tokens) {
    const std::int64_t t1 = std::min(T, t0 + chunk_tokens);
    buf.clear();
    for (int i = 0; i < 8; ++i) buf.push_back(static_cast<std::uint8_t>(h.hi >> (56 - 8 * i)));
    for (int i = 0; i < 8; ++i) buf.push_back(static_cast<std::uint8_t>(h.lo >> (56 - 8 * i)));
    for (std::int64_t t = t0; t < t1; ++t) {
      const auto v = static_cast<std::uint32_t>(tokens[static_cast<std::size_t>(t)]);
      for (int i = 0; i < 4; ++i) buf.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    }
    h = hash_bytes(buf.data(), buf.size());
    out.push_back(h);
  }
  return out;
}

inline std::string chunk_key(const chain_hash& h) { return std::string(key_prefix) + "c:" + h.hex(); }
inline std::string marker_key(const chain_hash& h) { return std::string(key_prefix) + "m:" + h.hex(); }
inline std::string specs_key(const std::string& model, const store_shape& s, std::int64_t chunk_tokens) {
  return std::string(key_prefix) + "s:" + [&] {
    const std::string t = namespace_text(model, s, chunk_tokens, "");
    return hash_bytes(t.data(), t.size()).hex();
  }();
}

struct put_result {
  std::string spec;                  ///< canonical spec stored
  std::string entry_key;             ///< the context's entry (marker of its last chunk)
  std::int64_t tokens = 0, chunks = 0;
  std::int64_t chunks_written = 0;   ///< encoded and stored by this put
  std::int64_t chunks_present = 0;   ///< already stored (a shared prefix): skipped
  std::size_t bytes_written = 0;
  double seconds = 0;
};

struct get_result {
  std::int64_t tokens = 0;           ///< tokens served: view rows [0, tokens) hold the stored KV
  std::int64_t chunks = 0;
  std::string spec;                  ///< spec of the served chunks (empty on a miss)
  std::size_t bytes = 0;             ///< compressed bytes fetched
  std::vector<std::string> problems; ///< chunks found damaged, mismatched or missing (served prefix stops there)
  double fetch_seconds = 0, decode_seconds = 0, seconds = 0;
  bool hit() const noexcept { return tokens > 0; }
};

struct store_stats {
  std::uint64_t puts = 0, chunks_written = 0, chunks_skipped = 0, bytes_written = 0;
  std::uint64_t gets = 0, hits = 0, misses = 0, tokens_served = 0, chunks_read = 0, bytes_read = 0;
  std::uint64_t rejected_chunks = 0;  ///< damaged or mismatched values detected (never served)
};

/// One stored context (its final marker).
struct entry_info {
  std::string key, model, spec;
  std::int64_t tokens = 0, chunks = 0, chunk_tokens = 0;
  std::int32_t layers = 0, kv_heads = 0, head_dim = 0;
  std::vector<std::string> chunk_keys;
  std::size_t bytes = 0;  ///< compressed bytes of the chunks this entry's put wrote
  bool final = false;
};

namespace detail {

/// Runs produce(i) for i in [0, n) on a worker thread, at most `depth` ahead of consume(i, item) on
/// the calling thread; consume returns false to stop early. A producer exception reaches the caller
/// when the consumer gets to that item; a consumer exception stops the worker before it propagates.
template <class T, class Produce, class Consume>
void pipelined(std::size_t n, std::size_t depth, Produce&& produce, Consume&& consume) {
  std::mutex m;
  std::condition_variable cv;
  std::deque<T> q;
  std::exception_ptr err;
  bool stop = false, done = false;
  std::thread worker([&] {
    for (std::size_t i = 0; i < n; ++i) {
      {
        std::unique_lock<std::mutex> l(m);
        cv.wait(l, [&] { return stop || q.size() < std::max<std::size_t>(depth, 1); });
        if (stop) break;
      }
      try {
        T item = produce(i);
        std::lock_guard<std::mutex> l(m);
        q.push_back(std::move(item));
      } catch (...) {
        std::lock_guard<std::mutex> l(m);
        err = std::current_exception();
        break;
      }
      cv.notify_all();
    }
    std::lock_guard<std::mutex> l(m);
    done = true;
    cv.notify_all();
  });
  struct joiner {
    std::mutex& m;
    std::condition_variable& cv;
    bool& stop;
    std::thread& t;
    ~joiner() {
      {
        std::lock_guard<std::mutex> l(m);
        stop = true;
      }
      cv.notify_all();
      t.join();
    }
  } join{m, cv, stop, worker};
  for (std::size_t i = 0; i < n; ++i) {
    T item;
    {
      std::unique_lock<std::mutex> l(m);
      cv.wait(l, [&] { return !q.empty() || done; });
      if (q.empty()) {
        if (err) std::rethrow_exception(err);
        return;
      }
      item = std::move(q.front());
      q.pop_front();
    }
    cv.notify_all();
    if (!consume(i, std::move(item))) return;
  }
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace detail

class kv_store {
 public:
  kv_store(std::unique_ptr<backend> b, store_options o) : b_(std::move(b)), o_(std::move(o)) {
    if (!b_) throw_usage("kv_store: no backend");
    if (o_.chunk_tokens < 1) throw_usage("kv_store: chunk_tokens must be >= 1, found " + std::to_string(o_.chunk_tokens));
  }

  backend& storage() noexcept { return *b_; }
  const store_options& options() const noexcept { return o_; }
  const store_stats& stats() const noexcept { return st_; }

  /// Stores the KV of `tokens` (view token i = tokens[i]) encoded with `spec`.
  put_result put(std::span<const std::int32_t> tokens, const const_kv_view& view, std::string_view spec) {
    const auto t_start = std::chrono::steady_clock::now();
    view.validate("store put: KV view");
    if (view.space != memory_space::host) throw_usage("store put: the view is in device memory; the store encodes host memory");
    if (tokens.empty()) throw_usage("store put: no tokens (the tokens are the key)");
    if (static_cast<std::int64_t>(tokens.size()) != view.tokens)
      throw_bad_input("store put", "tokens", std::to_string(view.tokens) + " ids (one per token of the view)", std::to_string(tokens.size()));
    codec c = make_codec(spec);
    if (c.drop) throw_usage("store put: spec '" + std::string(spec) + "' drops tokens; a stored prefix must hold every token");
    put_result res;
    res.spec = c.spec();
    const store_shape sh{view.layers, view.kv_heads, view.head_dim};
    const auto hs = chain_hashes(namespace_text(o_.model, sh, o_.chunk_tokens, res.spec), tokens, o_.chunk_tokens);
    const std::size_t n = hs.size();
    res.tokens = view.tokens;
    res.chunks = static_cast<std::int64_t>(n);
    std::vector<std::string> ckeys, mkeys;
    for (const auto& h : hs) {
      ckeys.push_back(chunk_key(h));
      mkeys.push_back(marker_key(h));
    }
    const auto have = b_->exists(ckeys);
    std::vector<std::size_t> todo;
    for (std::size_t k = 0; k < n; ++k)
      if (!have[k]) todo.push_back(k);
    res.chunks_present = static_cast<std::int64_t>(n - todo.size());
    // Encode on a worker (codec state is per put: each chunk gets a fresh codec), write here.
    detail::pipelined<byte_buffer>(
        todo.size(), o_.pipeline_depth,
        [&](std::size_t j) {
          const std::size_t k = todo[j];
          const std::int64_t t0 = static_cast<std::int64_t>(k) * o_.chunk_tokens, t1 = std::min(view.tokens, t0 + o_.chunk_tokens);
          codec cc = make_codec(res.spec);
          encode_options eo;
          eo.chunk_tokens = o_.chunk_tokens;
          kv_extras ex;
          ex.source_dtype = view.dt;
          ex.tokens.assign(tokens.begin() + t0, tokens.begin() + t1);
          ex.metadata[meta_model] = o_.model;
          ex.metadata[meta_key] = hs[k].hex();
          ex.metadata[meta_spec] = res.spec;
          byte_buffer out;
          memory_sink sink(out);
          encode_to(cpu::par(o_.threads), cc, view.slice_tokens(t0, t1), sink, eo, ex);
          return out;
        },
        [&](std::size_t j, byte_buffer&& value) {
          b_->put(ckeys[todo[j]], value);
          res.bytes_written += value.size();
          ++res.chunks_written;
          return true;
        });
    b_->sync();  // chunks on the replicas asked for before any marker names them
    b_->set_add(specs_key(o_.model, sh, o_.chunk_tokens), res.spec);
    // Markers in order; an existing marker of a shorter context is kept (it may be that context's entry).
    const auto marked = b_->exists(mkeys);
    for (std::size_t k = 0; k < n; ++k) {
      const bool last = k + 1 == n;
      if (marked[k] && !last) continue;
      nlohmann::json j{{"format", "kvcodec-store-marker"}, {"version", 1},           {"model", o_.model},
                       {"spec", res.spec},                 {"chunk_tokens", o_.chunk_tokens}, {"layers", sh.layers},
                       {"kv_heads", sh.kv_heads},           {"head_dim", sh.head_dim},          {"chunks", k + 1},
                       {"tokens", std::min<std::int64_t>(view.tokens, static_cast<std::int64_t>(k + 1) * o_.chunk_tokens)},
                       {"final", last}};
      if (last) {
        j["chunk_keys"] = ckeys;
        j["bytes"] = res.bytes_written;
      }
      const std::string text = j.dump();
      b_->put(mkeys[k], std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
    }
    b_->sync();
    res.entry_key = mkeys.back();
    res.seconds = detail::seconds_since(t_start);
    ++st_.puts;
    st_.chunks_written += static_cast<std::uint64_t>(res.chunks_written);
    st_.chunks_skipped += static_cast<std::uint64_t>(res.chunks_present);
    st_.bytes_written += res.bytes_written;
    return res;
  }

  /// Tokens of the longest stored prefix of `tokens` (markers only: no chunk is read), and its spec.
  std::pair<std::int64_t, std::string> contains(std::span<const std::int32_t> tokens, const store_shape& sh) {
    const auto [k, spec] = longest_marked(tokens, sh);
    return {k == 0 ? 0 : std::min<std::int64_t>(static_cast<std::int64_t>(tokens.size()), k * o_.chunk_tokens), spec};
  }

  /// Decodes the longest stored prefix of `tokens` into `view` (a view of tokens.size() tokens); rows
  /// past the result's `tokens` are left unspecified.
  get_result get(std::span<const std::int32_t> tokens, const kv_view& view) {
    const auto t_start = std::chrono::steady_clock::now();
    view.validate("store get: destination view");
    if (view.space != memory_space::host) throw_usage("store get: the destination view is in device memory; the store decodes into host memory");
    if (static_cast<std::int64_t>(tokens.size()) != view.tokens)
      throw_bad_input("store get", "tokens", std::to_string(view.tokens) + " ids (one per token of the view)", std::to_string(tokens.size()));
    ++st_.gets;
    get_result res;
    const store_shape sh{view.layers, view.kv_heads, view.head_dim};
    const auto lm = longest_marked(tokens, sh);  // (not a structured binding: lambdas below use it)
    const std::int64_t marked = lm.first;
    const std::string spec = lm.second;
    if (marked > 0) {
      res.spec = spec;
      const auto hs = chain_hashes(namespace_text(o_.model, sh, o_.chunk_tokens, spec), tokens, o_.chunk_tokens);
      if (!worker_) worker_ = b_->clone();
      backend& fetcher = *worker_;
      double fetch_s = 0;
      detail::pipelined<std::optional<byte_buffer>>(
          static_cast<std::size_t>(marked), o_.pipeline_depth,
          [&](std::size_t k) {
            const auto t0 = std::chrono::steady_clock::now();
            auto v = fetcher.get(chunk_key(hs[k]));
            fetch_s += detail::seconds_since(t0);
            return v;
          },
          [&](std::size_t k, std::optional<byte_buffer>&& value) {
            const std::string key = chunk_key(hs[k]);
            if (!value) {
              res.problems.push_back(key + ": missing (removed or evicted since its marker was written)");
              return false;
            }
            const auto t0 = std::chrono::steady_clock::now();
            const std::int64_t c0 = static_cast<std::int64_t>(k) * o_.chunk_tokens;
            const std::int64_t c1 = std::min(view.tokens, c0 + o_.chunk_tokens);
            try {
              check_and_decode(*value, key, hs[k], spec, sh, tokens.subspan(static_cast<std::size_t>(c0), static_cast<std::size_t>(c1 - c0)),
                               view.slice_tokens(c0, c1));
            } catch (const error& e) {
              if (e.kind() == error_kind::io) throw;
              ++st_.rejected_chunks;
              res.problems.push_back(e.what());
              return false;
            }
            res.decode_seconds += detail::seconds_since(t0);
            res.bytes += value->size();
            res.tokens = c1;
            ++res.chunks;
            return true;
          });
      res.fetch_seconds = fetch_s;
    }
    res.seconds = detail::seconds_since(t_start);
    if (res.hit()) ++st_.hits;
    else ++st_.misses;
    st_.tokens_served += static_cast<std::uint64_t>(res.tokens);
    st_.chunks_read += static_cast<std::uint64_t>(res.chunks);
    st_.bytes_read += res.bytes;
    return res;
  }

  /// Removes the context of `tokens` (every spec it is stored with): its markers, then its chunks.
  /// Returns the number of keys removed.
  std::size_t remove(std::span<const std::int32_t> tokens, const store_shape& sh) {
    std::size_t removed = 0;
    for (const auto& spec : b_->set_members(specs_key(o_.model, sh, o_.chunk_tokens))) {
      const auto hs = chain_hashes(namespace_text(o_.model, sh, o_.chunk_tokens, spec), tokens, o_.chunk_tokens);
      for (const auto& h : hs) removed += b_->remove(marker_key(h)) ? 1 : 0;
      for (const auto& h : hs) removed += b_->remove(chunk_key(h)) ? 1 : 0;
    }
    return removed;
  }
  /// Removes the entry under `key` (a final marker), its prefix markers and its chunks; returns the keys removed.
  std::size_t remove_entry(const std::string& key) {
    const auto e = entry(key);
    if (!e) return 0;
    // Markers first (the entry and its prefixes stop being visible), then the chunks.
    std::size_t removed = b_->remove(key) ? 1 : 0;
    const std::string cp = std::string(key_prefix) + "c:";
    for (const auto& c : e->chunk_keys)
      if (c.rfind(cp, 0) == 0) removed += b_->remove(std::string(key_prefix) + "m:" + c.substr(cp.size())) ? 1 : 0;
    for (const auto& c : e->chunk_keys) removed += b_->remove(c) ? 1 : 0;
    return removed;
  }

  /// The entry (or prefix marker) stored under `key`; nullopt when there is none. A marker that does
  /// not parse is bad_input naming the key.
  std::optional<entry_info> entry(const std::string& key) {
    const auto v = b_->get(key);
    if (!v) return std::nullopt;
    return parse_marker(key, *v);
  }
  /// Every context stored (final markers), or every prefix marker when `all`.
  std::vector<entry_info> entries(bool all = false) {
    std::vector<entry_info> out;
    for (const auto& k : b_->list(std::string(key_prefix) + "m:")) {
      const auto v = b_->get(k);
      if (!v) continue;  // removed meanwhile
      auto e = parse_marker(k, *v);
      if (all || e.final) out.push_back(std::move(e));
    }
    return out;
  }

  static entry_info parse_marker(const std::string& key, std::span<const std::uint8_t> v) {
    entry_info e;
    e.key = key;
    try {
      const auto j = nlohmann::json::parse(v.begin(), v.end());
      if (j.value("format", "") != "kvcodec-store-marker") throw std::runtime_error("not a kvcodec-store-marker");
      e.model = j.at("model").get<std::string>();
      e.spec = j.at("spec").get<std::string>();
      e.tokens = j.at("tokens").get<std::int64_t>();
      e.chunks = j.at("chunks").get<std::int64_t>();
      e.chunk_tokens = j.at("chunk_tokens").get<std::int64_t>();
      e.layers = j.at("layers").get<std::int32_t>();
      e.kv_heads = j.at("kv_heads").get<std::int32_t>();
      e.head_dim = j.at("head_dim").get<std::int32_t>();
      e.final = j.at("final").get<bool>();
      if (j.contains("chunk_keys")) e.chunk_keys = j.at("chunk_keys").get<std::vector<std::string>>();
      if (j.contains("bytes")) e.bytes = j.at("bytes").get<std::size_t>();
    } catch (const std::exception& x) {
      throw_bad_input("store marker '" + key + "'", "", "a kvcodec-store-marker JSON object", std::string("a value that is not one (") + x.what() + ")");
    }
    return e;
  }

 private:
  /// (chunks of the longest marked prefix, its spec) over every spec stored for the model and shape.
  std::pair<std::int64_t, std::string> longest_marked(std::span<const std::int32_t> tokens, const store_shape& sh) {
    std::int64_t best = 0;
    std::string best_spec;
    if (tokens.empty()) return {0, {}};
    auto specs = b_->set_members(specs_key(o_.model, sh, o_.chunk_tokens));
    std::sort(specs.begin(), specs.end());  // ties go to the same spec every time
    for (const auto& spec : specs) {
      const auto hs = chain_hashes(namespace_text(o_.model, sh, o_.chunk_tokens, spec), tokens, o_.chunk_tokens);
      std::vector<std::string> mk;
      for (const auto& h : hs) mk.push_back(marker_key(h));
      const auto have = b_->exists(mk);
      for (std::int64_t k = static_cast<std::int64_t>(hs.size()); k > best; --k)
        if (have[static_cast<std::size_t>(k - 1)]) {
          best = k;
          best_spec = spec;
          break;
        }
    }
    return {best, best_spec};
  }

  /// Checks a chunk's container against what the key promises, then decodes it into `dst`.
  void check_and_decode(std::span<const std::uint8_t> value, const std::string& key, const chain_hash& h, const std::string& spec,
                        const store_shape& sh, std::span<const std::int32_t> toks, const kv_view& dst) {
    const kvc_view v = parse_kvc(value, key);
    const kvc_header& hd = v.header;
    const auto mismatch = [&](const std::string& field, const std::string& want, const std::string& got) {
      throw_corrupt(key, "stored chunk does not belong under this key: " + field + " is " + got + ", expected " + want);
    };
    // The codec: the key's spec, either as the container names it or (a spec its stages resolve per cache,
    // e.g. raw:dtype=auto) as the chunk's metadata records it.
    const auto ms = hd.metadata.find(meta_spec);
    const std::string stored_spec = ms != hd.metadata.end() ? ms->second : hd.codec;
    if (stored_spec != spec) mismatch("codec", "'" + spec + "'", "'" + stored_spec + "'");
    if (hd.shape.layers != sh.layers || hd.shape.kv_heads != sh.kv_heads || hd.shape.head_dim != sh.head_dim)
      mismatch("shape", std::to_string(sh.layers) + "x" + std::to_string(sh.kv_heads) + "x" + std::to_string(sh.head_dim),
               std::to_string(hd.shape.layers) + "x" + std::to_string(hd.shape.kv_heads) + "x" + std::to_string(hd.shape.head_dim));
    if (hd.shape.tokens != static_cast<std::int64_t>(toks.size()))
      mismatch("tokens", std::to_string(toks.size()), std::to_string(hd.shape.tokens));
    if (hd.sparse) mismatch("layout", "dense", "sparse (token-dropped)");
    if (!std::equal(hd.tokens.begin(), hd.tokens.end(), toks.begin(), toks.end())) mismatch("token ids", "the requested prefix's", "other ids");
    const auto mm = hd.metadata.find(meta_model), mk = hd.metadata.find(meta_key);
    if (mm == hd.metadata.end() || mm->second != o_.model) mismatch("model", "'" + o_.model + "'", mm == hd.metadata.end() ? "absent" : "'" + mm->second + "'");
    if (mk == hd.metadata.end() || mk->second != h.hex()) mismatch("chain key", h.hex(), mk == hd.metadata.end() ? "absent" : mk->second);
    for (std::size_t i = 0; i < hd.states.size(); ++i) v.state_bytes(i);
    for (std::size_t i = 0; i < hd.segments.size(); ++i) v.segment_bytes(i);  // every checksum before any row is written
    decode_options dopt;
    dopt.name = key;
    decode_into(cpu::par(o_.threads), v, dst, dopt, builtin_registry(), /*segments_checked=*/true);  // not parsed or hashed twice
  }

  std::unique_ptr<backend> b_, worker_;
  store_options o_;
  store_stats st_;
};

}  // namespace kvcodec::store
