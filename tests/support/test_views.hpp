// tests/support/test_views.hpp — destination views for decode tests, over per-layer buffers the test
// owns (host vectors or device buffers): Hugging Face [H, T, D], or a vLLM-style paged pool with a
// shuffled block table (16-token blocks, three spare blocks), and a view's rows read back in order;
// host_dest owns host buffers for such a view; host_source fills one with a cache's values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcodec/tensor/kv_view.hpp"

namespace kvcodec::test {

inline constexpr std::int64_t test_block_size = 16;

/// Bytes of one layer's K (or V) buffer for a test view of `tokens` tokens.
inline std::size_t test_view_bytes(const kv_shape& s, std::int64_t tokens, dtype t, bool paged) {
  const std::int64_t nb = (tokens + test_block_size - 1) / test_block_size + 3;
  const std::int64_t elems = (paged ? nb * test_block_size : tokens) * s.kv_heads * s.head_dim;
  return static_cast<std::size_t>(elems) * dtype_size(t);
}

/// The view over the per-layer buffers kp / vp (each test_view_bytes long).
inline kv_view test_view(std::vector<std::byte*> kp, std::vector<std::byte*> vp, const kv_shape& s, std::int64_t tokens, dtype t, bool paged) {
  if (!paged) return kv_view::hf(std::move(kp), std::move(vp), t, s.kv_heads, tokens, s.head_dim);
  const std::int64_t nb = (tokens + test_block_size - 1) / test_block_size + 3;
  std::vector<std::int32_t> table;
  for (std::int64_t i = 0; i < (tokens + test_block_size - 1) / test_block_size; ++i) table.push_back(static_cast<std::int32_t>((i * 5 + 2) % nb));
  return kv_view::paged_pool(std::move(kp), std::move(vp), t, s.kv_heads, s.head_dim, test_block_size, nb, std::move(table), tokens);
}

/// Every row of `view` as bytes in (layer, K/V, head, token) order, reading each layer from base(l, key)
/// (a host copy of what view.base(l, key) points to).
template <class Base>
std::vector<std::byte> view_rows(const kv_view& view, Base&& base) {
  std::vector<std::byte> out;
  const std::size_t rb = static_cast<std::size_t>(view.head_dim) * view.elem_size();
  for (int l = 0; l < view.layers; ++l)
    for (int kv = 0; kv < 2; ++kv)
      for (int h = 0; h < view.kv_heads; ++h)
        for (std::int64_t t = 0; t < view.tokens; ++t) {
          const std::byte* r = base(l, kv == 0) + view.offset(h, t) * static_cast<std::int64_t>(view.elem_size());
          out.insert(out.end(), r, r + rb);
        }
  return out;
}

/// Owning host buffers (filled with 0x5a, so rows a decoder leaves unwritten show) and their test view.
struct host_dest {
  std::vector<std::vector<std::byte>> k, v;
  kv_view view;
  host_dest(const kv_shape& s, std::int64_t tokens, dtype t, bool paged) {
    std::vector<std::byte*> kp, vp;
    for (int l = 0; l < s.layers; ++l) {
      kp.push_back(k.emplace_back(test_view_bytes(s, tokens, t, paged), std::byte{0x5a}).data());
      vp.push_back(v.emplace_back(test_view_bytes(s, tokens, t, paged), std::byte{0x5a}).data());
    }
    view = test_view(kp, vp, s, tokens, t, paged);
  }
  std::vector<std::byte> rows() const { return view_rows(view, [&](int l, bool key) { return view.base(l, key); }); }
};

/// A cache's values in a test view of dtype t (HF or paged), over host buffers it owns: the input of
/// encoders that read views.
inline host_dest host_source(const kv_cache& kv, dtype t, bool paged) {
  host_dest d(kv.shape, kv.shape.tokens, t, paged);
  const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim), T = static_cast<std::size_t>(kv.shape.tokens);
  for (int l = 0; l < kv.shape.layers; ++l)
    for (int kvi = 0; kvi < 2; ++kvi)
      for (int h = 0; h < kv.shape.kv_heads; ++h)
        for (std::size_t tok = 0; tok < T; ++tok) {
          const float* x = (kvi == 0 ? kv.keys : kv.values)[static_cast<std::size_t>(l)].data() + (static_cast<std::size_t>(h) * T + tok) * D;
          store_row(x, D, t, d.view.s_dim, d.view.row(l, kvi == 0, h, static_cast<std::int64_t>(tok)));
        }
  return d;
}

}  // namespace kvcodec::test
