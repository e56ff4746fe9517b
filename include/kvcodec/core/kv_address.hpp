// kvcodec/core/kv_address.hpp — where row (head h, token t) of one layer's K or V lives in a strided or
// paged (vLLM-style) layout: the address math of tensor/kv_view.hpp as a host/device function over a
// flat, trivially copyable descriptor, so CPU code and GPU kernels address a view the same way; and
// kv_batch_dest / kv_batch_put, where the batch decoders (pipeline/batch.hpp, cuda/) store one value,
// and kv_batch_src / kv_load, where the batch encoders read one.
//   strided: h*s_head + t*s_token                 (element offsets from the layer's base)
//   paged:   block_table[t / block_size]*s_block + (t % block_size)*s_token + h*s_head
#pragma once

#include <cstdint>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/scalar/half.hpp"

namespace kvcodec {

struct kv_layout_desc {
  std::int64_t s_head = 0, s_token = 0, s_dim = 1;
  std::int64_t block_size = 0;  ///< 0 = strided
  std::int64_t s_block = 0;
  const std::int32_t* block_table = nullptr;  ///< paged: in the memory space of the code that reads it
};

/// Element offset of (h, t, channel 0) from the layer's base.
KVCODEC_HD inline std::int64_t kv_row_offset(const kv_layout_desc& L, std::int64_t h, std::int64_t t) noexcept {
  if (L.block_size > 0) return static_cast<std::int64_t>(L.block_table[t / L.block_size]) * L.s_block + (t % L.block_size) * L.s_token + h * L.s_head;
  return h * L.s_head + t * L.s_token;
}

/// Channel ch of row (h, t) of a layer based at `base` (dtype code 0 f32, 1 f16, 2 bf16) as f32 (f16
/// and bf16 widen exactly, as the CPU encoder's blocks do).
KVCODEC_HD inline float kv_load(const void* base, const kv_layout_desc& L, std::uint32_t dtype_code, std::int64_t h, std::int64_t t, std::int64_t ch) noexcept {
  const std::int64_t off = kv_row_offset(L, h, t) + ch * L.s_dim;
  if (dtype_code == 0) return static_cast<const float*>(base)[off];
  const std::uint16_t bits = static_cast<const std::uint16_t*>(base)[off];
  return dtype_code == 2 ? bf16_bits_to_f32(bits) : f16_bits_to_f32(bits);
}

/// What a batch encoder reads: per-layer K and V bases and the layout of one sequence.
struct kv_batch_src {
  const void* const* k = nullptr;  ///< per layer (in the reader's memory space)
  const void* const* v = nullptr;
  kv_layout_desc layout;
  std::int32_t head_dim = 0;
  std::uint32_t dtype_code = 1;  ///< 0 f32, 1 f16, 2 bf16
};

KVCODEC_HD inline float kv_batch_get(const kv_batch_src& s, bool key, std::int32_t layer, std::int64_t h, std::int64_t t, std::int64_t ch) noexcept {
  return kv_load((key ? s.k : s.v)[layer], s.layout, s.dtype_code, h, t, ch);
}

/// Where a batch decoder writes: per-layer K and V bases and the layout of one sequence.
struct kv_batch_dest {
  void* const* k = nullptr;  ///< per layer (in the writer's memory space)
  void* const* v = nullptr;
  kv_layout_desc layout;
  std::int32_t head_dim = 0;
  std::uint32_t dtype_code = 1;  ///< 0 f32, 1 f16, 2 bf16 (tensor/dtype.hpp's codes)
  std::int32_t key_head_dim = 0;  ///< think's containers: the key rows' coded width (their first channels; the stride stays head_dim); 0 = head_dim
};

/// The width of the rows a batch decoder's element steps write: key rows of a think container are
/// narrower (kv_finish_op puts their channels back in place).
KVCODEC_HD inline std::uint64_t kv_batch_width(const kv_batch_dest& d, bool key) noexcept {
  return static_cast<std::uint64_t>(key && d.key_head_dim > 0 ? d.key_head_dim : d.head_dim);
}

/// Stores value x at (layer, K or V, head h, destination token t, channel ch) in the destination's
/// dtype, rounding to nearest even as the CPU's conversions do.
KVCODEC_HD inline void kv_batch_put(const kv_batch_dest& d, bool key, std::int32_t layer, std::int64_t h, std::int64_t t, std::int64_t ch, float x) noexcept {
  const std::int64_t off = kv_row_offset(d.layout, h, t) + ch * d.layout.s_dim;
  void* base = (key ? d.k : d.v)[layer];
  if (d.dtype_code == 0)
    static_cast<float*>(base)[off] = x;
  else
    static_cast<std::uint16_t*>(base)[off] = d.dtype_code == 2 ? f32_to_bf16_bits(x) : f32_to_f16_bits(x);
}

/// One (layer, K or V) of a token-dropped cache gathered into a compact buffer: its `rows` kept rows
/// (entries [entry_first, entry_first + rows) of kv_gather_op's head/token lists) land as rows
/// [out_row, out_row + rows) of `head_dim` elements. The batch encoder quantizes the compact buffer, so
/// that every element step reads kept rows as a dense range.
struct kv_gather_block {
  std::uint64_t entry_first = 0, rows = 0, out_row = 0;
  std::int32_t layer = 0;
  std::uint32_t key = 1;
};

/// Element step: element i (row i / head_dim, channel i % head_dim) of a kv_gather_block, copied bit
/// for bit (f32: 4 bytes, f16/bf16: 2) from the source view into `out`, whose element type is the
/// source's.
struct kv_gather_op {
  kv_batch_src s;
  const std::int32_t* head = nullptr;   ///< per entry
  const std::int32_t* token = nullptr;  ///< per entry
  void* out = nullptr;
  KVCODEC_HD std::uint64_t count(const kv_gather_block& b) const noexcept { return b.rows * static_cast<std::uint64_t>(s.head_dim); }
  KVCODEC_HD bool operator()(const kv_gather_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), r = i / D, e = b.entry_first + r;
    const std::int64_t off = kv_row_offset(s.layout, head[e], token[e]) + static_cast<std::int64_t>(i % D) * s.layout.s_dim;
    const void* base = (b.key != 0 ? s.k : s.v)[b.layer];
    const std::uint64_t at = (b.out_row + r) * D + i % D;
    if (s.dtype_code == 0) static_cast<std::uint32_t*>(out)[at] = static_cast<const std::uint32_t*>(base)[off];
    else static_cast<std::uint16_t*>(out)[at] = static_cast<const std::uint16_t*>(base)[off];
    return true;
  }
};

/// One value a batch decoder writes after a block's element step, at (layer, K or V, head h, destination
/// token t, channel ch): an outlier's exact value (uniform and kivi with outliers > 0), resolved on the host.
struct kv_put_entry {
  float x = 0.0f;
  std::int32_t layer = 0, h = 0, ch = 0;
  std::uint32_t key = 1;
  std::int64_t t = 0;
};
/// A run of kv_put_entry: entries [first, first + count).
struct kv_put_block {
  std::uint64_t first = 0, count = 0;
  std::int32_t layer = 0;
  std::uint32_t key = 1;
};
/// Element step: entry i of a kv_put_block stored through kv_batch_put (rounded to the destination's dtype).
struct kv_put_op {
  const kv_put_entry* e = nullptr;
  kv_batch_dest d;
  KVCODEC_HD std::uint64_t count(const kv_put_block& b) const noexcept { return b.count; }
  KVCODEC_HD bool operator()(const kv_put_block& b, std::uint64_t i) const noexcept {
    const kv_put_entry& x = e[b.first + i];
    kv_batch_put(d, x.key != 0, x.layer, x.h, x.t, x.ch, x.x);
    return true;
  }
};

}  // namespace kvcodec
