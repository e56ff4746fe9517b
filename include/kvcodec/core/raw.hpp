// kvcodec/core/raw.hpp — the `raw` stage's element steps for the batch decoders and encoders
// (cuda/raw.cuh and the host emulations of pipeline/batch.hpp): a stored f32/f16/bf16 value into a
// view, and a view's value into the stored dtype. The stage: cpu/raw.hpp.
#pragma once

#include <cstdint>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/kv_address.hpp"
#include "kvcodec/core/scalar/half.hpp"

namespace kvcodec {

/// One dense K or V block of a `raw` container for a batch decoder: heads x tokens rows of head_dim
/// little-endian values of dtype `stored` (0 f32, 1 f16, 2 bf16; a head's rows in token order) from
/// byte `first` of the batch's bytes.
struct raw_batch_block {
  std::uint64_t first = 0;
  std::uint32_t tokens = 0, heads = 0;
  std::int32_t layer = 0;
  std::uint32_t key = 1;
  std::uint32_t stored = 1;
  std::int64_t t_first = 0;  ///< destination token of a head's row 0
  std::int64_t t_end = 0;    ///< rows landing outside [0, t_end) are skipped
};

/// Element step of the raw batch decoders: value i of block b. The same dtype is copied bit for bit
/// (as cpu/raw.hpp's decode_rows copies rows); another goes through f32 (exact) and rounds to nearest
/// even. Never fails.
struct raw_batch_op {
  const std::uint8_t* bytes = nullptr;
  kv_batch_dest d;
  KVCODEC_HD std::uint64_t count(const raw_batch_block& b) const noexcept {
    return static_cast<std::uint64_t>(b.heads) * b.tokens * kv_batch_width(d, b.key != 0);
  }
  KVCODEC_HD bool operator()(const raw_batch_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t D = kv_batch_width(d, b.key != 0), r = i / D;
    const std::int64_t t = b.t_first + static_cast<std::int64_t>(r % b.tokens);
    if (t < 0 || t >= b.t_end) return true;
    const std::int64_t h = static_cast<std::int64_t>(r / b.tokens), ch = static_cast<std::int64_t>(i % D);
    if (b.stored == 0) {
      const std::uint32_t bits = kvcodec::detail::load_le32(bytes + b.first + 4 * i);
      if (d.dtype_code == 0) {
        const std::int64_t off = kv_row_offset(d.layout, h, t) + ch * d.layout.s_dim;
        static_cast<std::uint32_t*>((b.key != 0 ? d.k : d.v)[b.layer])[off] = bits;
      } else {
        kv_batch_put(d, b.key != 0, b.layer, h, t, ch, bit_cast_hd<float>(bits));
      }
      return true;
    }
    const std::uint16_t bits = kvcodec::detail::load_le16(bytes + b.first + 2 * i);
    if (d.dtype_code == b.stored) {
      const std::int64_t off = kv_row_offset(d.layout, h, t) + ch * d.layout.s_dim;
      static_cast<std::uint16_t*>((b.key != 0 ? d.k : d.v)[b.layer])[off] = bits;
    } else {
      kv_batch_put(d, b.key != 0, b.layer, h, t, ch, b.stored == 2 ? bf16_bits_to_f32(bits) : f16_bits_to_f32(bits));
    }
    return true;
  }
};

/// Element step of the raw batch encoders: value i of block b (b.first: where its bytes go in `out`,
/// b.t_first: the source token of a head's row 0) in the stored dtype, little-endian, rounded to
/// nearest even as the CPU's encode_floats.
struct raw_encode_op {
  kv_batch_src s;
  std::uint8_t* out = nullptr;
  KVCODEC_HD std::uint64_t count(const raw_batch_block& b) const noexcept {
    return static_cast<std::uint64_t>(b.heads) * b.tokens * static_cast<std::uint64_t>(s.head_dim);
  }
  KVCODEC_HD bool operator()(const raw_batch_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), r = i / D;
    const std::int64_t h = static_cast<std::int64_t>(r / b.tokens), t = b.t_first + static_cast<std::int64_t>(r % b.tokens);
    const float x = kv_batch_get(s, b.key != 0, b.layer, h, t, static_cast<std::int64_t>(i % D));
    if (b.stored == 0)
      kvcodec::detail::store_le32(out + b.first + 4 * i, bit_cast_hd<std::uint32_t>(x));
    else
      kvcodec::detail::store_le16(out + b.first + 2 * i, b.stored == 2 ? f32_to_bf16_bits(x) : f32_to_f16_bits(x));
    return true;
  }
};

/// One range of bytes to copy: n bytes from src_first to dst_first (the batch encoder gathers the
/// blocks' side bytes from its device buffer this way, so that only they come back to the host).
struct copy_block {
  std::uint64_t src_first = 0;
  std::uint64_t dst_first = 0;
  std::uint64_t n = 0;
};

/// Element step: byte i of a copy_block.
struct byte_copy_op {
  const std::uint8_t* src = nullptr;
  std::uint8_t* dst = nullptr;
  KVCODEC_HD std::uint64_t count(const copy_block& b) const noexcept { return b.n; }
  KVCODEC_HD bool operator()(const copy_block& b, std::uint64_t i) const noexcept {
    dst[b.dst_first + i] = src[b.src_first + i];
    return true;
  }
};

}  // namespace kvcodec
