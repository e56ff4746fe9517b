// kvcodec/tensor/kv_view.hpp — non-owning views of a KV cache in the caller's memory.
//
// A view names, per layer, where K and V live and how to step through them: element (head h,
// token t, channel d) of layer l's K is at
//
//   strided: k[l] + h*s_head + t*s_token + d*s_dim
//   paged:   k[l] + block_table[t / block_size]*s_block + (t % block_size)*s_token + h*s_head + d*s_dim
//
// (strides in elements of `dt`: f32, f16 or bf16). That covers Hugging Face `[B, H, T, D]` and `[H, T, D]`
// tensors, the `stacked [L, 2, H, T, D]` dump, transposed `[T, H, D]` buffers, and vLLM's paged pools
// (`[num_blocks, block_size, H, D]` per layer, K and V separate or interleaved — interleaving is two base
// pointers into one pool — plus the sequence's block table). `space` tags host or device memory; the
// CPU backend refuses device views. A view never owns the cache memory (the block table is copied: it
// is one int per block). validate() refuses strides that overlap or run past the buffer the caller
// declared, negative strides, block-table entries outside the pool or repeated, and K/V regions of
// different layers that overlap.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/core/kv_address.hpp"
#include "kvcodec/tensor/dtype.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec {

enum class memory_space : std::uint8_t { host = 0, device = 1 };

inline constexpr std::string_view memory_space_name(memory_space m) noexcept { return m == memory_space::host ? "host" : "device"; }

template <class Byte>
struct basic_kv_view {
  static_assert(std::is_same_v<std::remove_const_t<Byte>, std::byte>);
  std::int32_t layers = 0, kv_heads = 0, head_dim = 0;
  std::int64_t tokens = 0;
  dtype dt = dtype::f16;
  memory_space space = memory_space::host;
  std::vector<Byte*> k, v;                        ///< per layer: address of element (0, 0, 0) (paged: of block 0, slot 0)
  std::int64_t s_head = 0, s_token = 0, s_dim = 1;  ///< element strides (paged: s_token steps a slot within a block)
  std::int64_t block_size = 0;                    ///< 0 = strided layout; > 0 = paged
  std::int64_t s_block = 0, num_blocks = 0;       ///< paged: stride between blocks, blocks in the pool
  std::vector<std::int32_t> block_table;          ///< paged: pool block of the sequence's i-th block
  std::int64_t extent = -1;                       ///< elements each base pointer may address (-1 = not declared)

  bool paged() const noexcept { return block_size > 0; }
  kv_shape shape() const noexcept { return kv_shape{layers, kv_heads, 0, head_dim, tokens}; }
  std::size_t elem_size() const noexcept { return dtype_size(dt); }
  /// Channels of a row are adjacent (the fast paths copy rows with memcpy).
  bool rows_contiguous() const noexcept { return s_dim == 1; }
  Byte* base(int layer, bool key) const noexcept { return (key ? k : v)[static_cast<std::size_t>(layer)]; }
  /// Element offset of (h, t, 0) from the layer's base.
  std::int64_t offset(int h, std::int64_t t) const noexcept { return kv_row_offset(layout(), h, t); }
  /// The flat address descriptor (core/kv_address.hpp); its block table points into this view's.
  kv_layout_desc layout() const noexcept { return {s_head, s_token, s_dim, block_size, s_block, block_table.data()}; }
  /// Address of row (layer, K/V, head h, token t), channel 0.
  Byte* row(int layer, bool key, int h, std::int64_t t) const noexcept {
    return base(layer, key) + offset(h, t) * static_cast<std::int64_t>(elem_size());
  }
  basic_kv_view() = default;
  /// A mutable view converts to a read-only one.
  template <class B, class = std::enable_if_t<std::is_const_v<Byte> && !std::is_const_v<B>>>
  basic_kv_view(const basic_kv_view<B>& o)  // NOLINT(google-explicit-constructor)
      : layers(o.layers), kv_heads(o.kv_heads), head_dim(o.head_dim), tokens(o.tokens), dt(o.dt), space(o.space), k(o.k.begin(), o.k.end()),
        v(o.v.begin(), o.v.end()), s_head(o.s_head), s_token(o.s_token), s_dim(o.s_dim), block_size(o.block_size), s_block(o.s_block),
        num_blocks(o.num_blocks), block_table(o.block_table), extent(o.extent) {}
  /// The tokens [t0, t1) of this view as a view of t1 - t0 tokens (no copy).
  basic_kv_view slice_tokens(std::int64_t t0, std::int64_t t1) const {
    if (t0 < 0 || t1 > tokens || t0 > t1)
      throw_usage("kv view: token slice " + std::to_string(t0) + ".." + std::to_string(t1) + " is not within 0.." + std::to_string(tokens));
    basic_kv_view s = *this;
    s.tokens = t1 - t0;
    if (paged()) {
      if (t0 % block_size != 0) throw_usage("kv view: a paged view can only be sliced at block boundaries (block_size " + std::to_string(block_size) + ")");
      s.block_table.assign(block_table.begin() + t0 / block_size, block_table.begin() + (t1 + block_size - 1) / block_size);
    } else {
      for (auto& p : s.k) p += t0 * s_token * static_cast<std::int64_t>(elem_size());
      for (auto& p : s.v) p += t0 * s_token * static_cast<std::int64_t>(elem_size());
      if (extent >= 0) s.extent = extent - t0 * s_token;
    }
    return s;
  }

  /// Checks the view against itself and its declared buffer; throws bad_input naming `where` and the field.
  void validate(const std::string& where = "kv view") const {
    const auto num = [](auto x) { return std::to_string(x); };
    if (layers <= 0) throw_bad_input(where, "layers", "> 0", num(layers));
    if (kv_heads <= 0) throw_bad_input(where, "kv_heads", "> 0", num(kv_heads));
    if (head_dim <= 0) throw_bad_input(where, "head_dim", "> 0", num(head_dim));
    if (tokens < 0) throw_bad_input(where, "tokens", ">= 0", num(tokens));
    if (dt != dtype::f32 && dt != dtype::f16 && dt != dtype::bf16) throw_bad_input(where, "dtype", "f32, f16 or bf16", std::string(dtype_name(dt)));
    if (k.size() != static_cast<std::size_t>(layers) || v.size() != static_cast<std::size_t>(layers))
      throw_bad_input(where, "k/v", num(layers) + " K and V base pointers", num(k.size()) + " K and " + num(v.size()) + " V");
    for (std::size_t l = 0; l < k.size(); ++l)
      if (k[l] == nullptr || v[l] == nullptr) throw_bad_input(where, "k/v[" + num(l) + "]", "non-null base pointers", "a null pointer");
    if (s_head < 0 || s_token < 0 || s_dim < 0 || s_block < 0)
      throw_bad_input(where, "strides", "non-negative element strides", "head " + num(s_head) + ", token " + num(s_token) + ", dim " + num(s_dim) + ", block " + num(s_block));
    // Inner dims (one block for a paged view, the whole tensor for a strided one) must not overlap:
    // sorted by stride, each stride covers the span of the smaller ones.
    const std::int64_t inner_tokens = paged() ? std::min(block_size, std::max<std::int64_t>(tokens, 1)) : std::max<std::int64_t>(tokens, 1);
    std::array<std::pair<std::int64_t, std::int64_t>, 3> dims{{{s_dim, head_dim}, {s_head, kv_heads}, {s_token, inner_tokens}}};
    std::sort(dims.begin(), dims.end());
    std::int64_t span = 1;  // elements spanned by the dims so far
    for (const auto& [st, n] : dims) {
      if (n > 1 && st < span)
        throw_bad_input(where, "strides", "non-overlapping strides (each at least the span " + num(span) + " of the smaller ones)",
                        "head " + num(s_head) + ", token " + num(s_token) + ", dim " + num(s_dim));
      span += (n - 1) * st;
    }
    std::int64_t reach = span;  // elements addressed from a base, exclusive
    if (paged()) {
      const std::int64_t need = (tokens + block_size - 1) / block_size;
      if (static_cast<std::int64_t>(block_table.size()) < need)
        throw_bad_input(where, "block_table", num(need) + " entries for " + num(tokens) + " tokens of block size " + num(block_size), num(block_table.size()));
      if (num_blocks <= 0) throw_bad_input(where, "num_blocks", "> 0 (the pool's block count)", num(num_blocks));
      if (num_blocks > 1 && s_block < span) throw_bad_input(where, "s_block", ">= " + num(span) + " (one block's span)", num(s_block));
      std::vector<std::int32_t> used(block_table.begin(), block_table.begin() + need);
      for (std::size_t i = 0; i < used.size(); ++i)
        if (used[i] < 0 || used[i] >= num_blocks)
          throw_bad_input(where, "block_table[" + num(i) + "]", "a block of the pool, 0.." + num(num_blocks - 1), num(used[i]));
      std::sort(used.begin(), used.end());
      if (std::adjacent_find(used.begin(), used.end()) != used.end())
        throw_bad_input(where, "block_table", "distinct blocks (two token blocks would share memory)", "block " + num(*std::adjacent_find(used.begin(), used.end())) + " twice");
      reach = (num_blocks - 1) * s_block + span;
    }
    if (extent >= 0 && reach > extent)
      throw_bad_input(where, "extent", "strides that stay within the declared " + num(extent) + " elements", num(reach) + " elements addressed");
    // K and V regions of all layers must not overlap each other (interleaved pools are fine: their
    // regions are disjoint only element-wise, so this check is skipped when the caller declared no
    // extent and two regions start within one another's span; a declared interleaving uses s_block).
    if (!paged()) {
      std::vector<std::pair<const std::byte*, const std::byte*>> regions;
      const std::int64_t bytes = reach * static_cast<std::int64_t>(elem_size());
      for (std::size_t l = 0; l < k.size(); ++l) {
        regions.emplace_back(k[l], k[l] + bytes);
        regions.emplace_back(v[l], v[l] + bytes);
      }
      std::sort(regions.begin(), regions.end());
      for (std::size_t i = 1; i < regions.size(); ++i)
        if (regions[i].first < regions[i - 1].second && tokens > 0)
          throw_bad_input(where, "k/v", "disjoint K and V regions for every layer", "two regions that overlap");
    }
  }

  // ---- factories -----------------------------------------------------------------------------

  /// Contiguous `[kv_heads, tokens, head_dim]` per layer (Hugging Face `[1, H, T, D]` or `[H, T, D]`).
  static basic_kv_view hf(std::vector<Byte*> keys, std::vector<Byte*> values, dtype t, std::int32_t kv_heads, std::int64_t tokens,
                          std::int32_t head_dim) {
    basic_kv_view w;
    w.layers = static_cast<std::int32_t>(keys.size());
    w.kv_heads = kv_heads, w.tokens = tokens, w.head_dim = head_dim, w.dt = t;
    w.k = std::move(keys), w.v = std::move(values);
    w.s_dim = 1, w.s_token = head_dim, w.s_head = tokens * head_dim;
    w.extent = static_cast<std::int64_t>(kv_heads) * tokens * head_dim;
    return w;
  }
  /// One `[layers, 2, kv_heads, tokens, head_dim]` tensor (the `stacked` dump layout).
  static basic_kv_view stacked(Byte* p, dtype t, std::int32_t layers, std::int32_t kv_heads, std::int64_t tokens, std::int32_t head_dim) {
    const std::int64_t per = static_cast<std::int64_t>(kv_heads) * tokens * head_dim * static_cast<std::int64_t>(dtype_size(t));
    std::vector<Byte*> ks, vs;
    for (std::int32_t l = 0; l < layers; ++l) {
      ks.push_back(p + (2 * l) * per);
      vs.push_back(p + (2 * l + 1) * per);
    }
    return hf(std::move(ks), std::move(vs), t, kv_heads, tokens, head_dim);
  }
  /// vLLM-style paged pool: per layer `[num_blocks, block_size, kv_heads, head_dim]` for K and for V
  /// (separate pools), and the sequence's block table.
  static basic_kv_view paged_pool(std::vector<Byte*> keys, std::vector<Byte*> values, dtype t, std::int32_t kv_heads, std::int32_t head_dim,
                                  std::int64_t block_size, std::int64_t num_blocks, std::vector<std::int32_t> table, std::int64_t tokens) {
    basic_kv_view w;
    w.layers = static_cast<std::int32_t>(keys.size());
    w.kv_heads = kv_heads, w.tokens = tokens, w.head_dim = head_dim, w.dt = t;
    w.k = std::move(keys), w.v = std::move(values);
    w.s_dim = 1, w.s_head = head_dim, w.s_token = static_cast<std::int64_t>(kv_heads) * head_dim;
    w.block_size = block_size, w.s_block = block_size * w.s_token, w.num_blocks = num_blocks;
    w.block_table = std::move(table);
    w.extent = num_blocks * w.s_block;
    return w;
  }
};

using kv_view = basic_kv_view<std::byte>;
using const_kv_view = basic_kv_view<const std::byte>;

/// A view of an owning cache's f32 K/V (the cache must outlive the view).
inline kv_view view_of(kv_cache& c) {
  std::vector<std::byte*> ks, vs;
  for (auto& x : c.keys) ks.push_back(reinterpret_cast<std::byte*>(x.data()));
  for (auto& x : c.values) vs.push_back(reinterpret_cast<std::byte*>(x.data()));
  return kv_view::hf(std::move(ks), std::move(vs), dtype::f32, c.shape.kv_heads, c.shape.tokens, c.shape.head_dim);
}
inline const_kv_view view_of(const kv_cache& c) {
  std::vector<const std::byte*> ks, vs;
  for (const auto& x : c.keys) ks.push_back(reinterpret_cast<const std::byte*>(x.data()));
  for (const auto& x : c.values) vs.push_back(reinterpret_cast<const std::byte*>(x.data()));
  return const_kv_view::hf(std::move(ks), std::move(vs), dtype::f32, c.shape.kv_heads, c.shape.tokens, c.shape.head_dim);
}

/// Reads `n` channels of one row (stride s_dim elements) as f32.
inline void load_row(const std::byte* src, dtype t, std::int64_t s_dim, std::size_t n, float* out) {
  if (s_dim == 1) return decode_floats(reinterpret_cast<const std::uint8_t*>(src), n, t, out);
  const std::size_t es = dtype_size(t);
  for (std::size_t d = 0; d < n; ++d) decode_floats(reinterpret_cast<const std::uint8_t*>(src) + d * static_cast<std::size_t>(s_dim) * es, 1, t, out + d);
}
/// Writes `n` f32 channels into one row (stride s_dim elements) in dtype t.
inline void store_row(const float* in, std::size_t n, dtype t, std::int64_t s_dim, std::byte* dst) {
  if (s_dim == 1) return encode_floats(in, n, t, reinterpret_cast<std::uint8_t*>(dst));
  const std::size_t es = dtype_size(t);
  for (std::size_t d = 0; d < n; ++d) encode_floats(in + d, 1, t, reinterpret_cast<std::uint8_t*>(dst) + d * static_cast<std::size_t>(s_dim) * es);
}

/// Copies a view into a new owning f32 cache (for stages that need the whole cache, e.g. drop scoring).
inline kv_cache to_cache(const const_kv_view& w) {
  kv_cache c = kv_cache::zeros(w.shape(), w.dt);
  const std::size_t D = static_cast<std::size_t>(w.head_dim), T = static_cast<std::size_t>(w.tokens);
  for (int l = 0; l < w.layers; ++l)
    for (int kv = 0; kv < 2; ++kv) {
      float* dst = (kv == 0 ? c.keys : c.values)[static_cast<std::size_t>(l)].data();
      for (int h = 0; h < w.kv_heads; ++h)
        for (std::size_t t = 0; t < T; ++t)
          load_row(w.row(l, kv == 0, h, static_cast<std::int64_t>(t)), w.dt, w.s_dim, D, dst + (static_cast<std::size_t>(h) * T + t) * D);
    }
  return c;
}

}  // namespace kvcodec
