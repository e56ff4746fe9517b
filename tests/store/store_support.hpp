// tests/store/store_support.hpp — host KV buffers, a temporary directory and a backend wrapper with
// failure hooks, shared by the store suites.
#pragma once

#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/store/backend.hpp"
#include "kvcodec/tensor/kv_view.hpp"

namespace kvcodec::test {

/// A `[layers, 2, heads, tokens, head_dim]` cache in caller memory (the `stacked` layout).
struct host_kv {
  int L = 0, H = 0, D = 0;
  std::int64_t T = 0;
  dtype dt = dtype::f16;
  std::vector<std::byte> data;
  std::vector<std::int32_t> tokens;

  host_kv(int layers, int heads, std::int64_t tokens_, int head_dim, dtype t = dtype::f16)
      : L(layers), H(heads), D(head_dim), T(tokens_), dt(t), data(static_cast<std::size_t>(layers) * 2 * heads * tokens_ * head_dim * dtype_size(t)) {}
  kv_view view() { return kv_view::stacked(data.data(), dt, L, H, T, D); }
  const_kv_view cview() const { return const_kv_view::stacked(data.data(), dt, L, H, T, D); }
  /// N(0, 1) values and token ids drawn from `seed`.
  void fill_random(unsigned seed, int vocab = 1000) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n(0.f, 1.f);
    std::vector<float> f(data.size() / dtype_size(dt));
    for (auto& x : f) x = n(rng);
    encode_floats(f.data(), f.size(), dt, reinterpret_cast<std::uint8_t*>(data.data()));
    std::uniform_int_distribution<int> tok(0, vocab - 1);
    tokens.resize(static_cast<std::size_t>(T));
    for (auto& t : tokens) t = tok(rng);
  }
  /// Bytes of (layer, K/V, head) rows [t0, t1).
  const std::byte* rows(int l, int kv, int h, std::int64_t t0) const {
    return data.data() + ((((static_cast<std::int64_t>(l) * 2 + kv) * H + h) * T + t0) * D) * static_cast<std::int64_t>(dtype_size(dt));
  }
};

/// True when tokens [0, n) of a and b hold the same bytes (same shape and dtype).
inline bool same_prefix(const host_kv& a, const host_kv& b, std::int64_t n) {
  for (int l = 0; l < a.L; ++l)
    for (int kv = 0; kv < 2; ++kv)
      for (int h = 0; h < a.H; ++h)
        if (std::memcmp(a.rows(l, kv, h, 0), b.rows(l, kv, h, 0), static_cast<std::size_t>(n * a.D) * dtype_size(a.dt)) != 0) return false;
  return true;
}

/// A fresh directory under $TMPDIR, removed with its contents at scope exit.
struct temp_dir {
  std::string path;
  temp_dir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/kvcodec-store-XXXXXX";
    std::vector<char> b(tmpl.begin(), tmpl.end());
    b.push_back('\0');
    REQUIRE_MESSAGE(::mkdtemp(b.data()) != nullptr, "cannot create a temporary directory under " << tmpl);
    path = b.data();
  }
  ~temp_dir() {
    if (std::getenv("KVCODEC_KEEP_TMP")) return;
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

/// Wraps a backend; `on_get(n)` / `on_put(n)` run before the n-th get/put (counted over the wrapper and
/// its clones) and may kill a server or throw.
struct hooks {
  std::atomic<int> gets{0}, puts{0};
  std::function<void(int)> on_get, on_put;
};
class hooked_backend final : public store::forwarding_backend {
 public:
  hooked_backend(std::unique_ptr<store::backend> b, std::shared_ptr<hooks> h) : forwarding_backend(std::move(b)), h_(std::move(h)) {}
  std::unique_ptr<store::backend> clone() const override { return std::make_unique<hooked_backend>(inner().clone(), h_); }
  std::optional<store::byte_buffer> get(const std::string& k) override {
    const int n = ++h_->gets;
    if (h_->on_get) h_->on_get(n);
    return inner().get(k);
  }
  void put(const std::string& k, std::span<const std::uint8_t> v) override {
    const int n = ++h_->puts;
    if (h_->on_put) h_->on_put(n);
    inner().put(k, v);
  }

 private:
  std::shared_ptr<hooks> h_;
};

}  // namespace kvcodec::test
