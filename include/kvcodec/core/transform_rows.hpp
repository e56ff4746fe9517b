// kvcodec/core/transform_rows.hpp — the row transforms `hadamard` and `derope` as host/device steps over
// one head row, for the batch encoder's source preparation (pipeline/batch_encode.hpp; cuda/encode.cuh
// runs it on the GPU) and the batch decoder's last step (kv_finish_op: pipeline/batch.hpp,
// cuda/decode.cuh): kv_prepare_op reads a row of the view (or a kept row of a token-dropped cache),
// widens it to f32 as the CPU encoder's blocks do, runs the codec's transforms in order and writes it
// to a compact f32 buffer the quantizer's element steps read. The arithmetic is the CPU stages':
// core/hadamard.hpp's rotation (float, the same bits on both sides) and derope's rotation from cos/sin
// tables the host computes with the CPU stage's expression (cpu/derope.hpp's trig table: double
// cos/sin of -rope_angle(p, i)), so the GPU's libm never enters and the rows are the CPU's bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/hadamard.hpp"
#include "kvcodec/core/kv_address.hpp"

namespace kvcodec {

/// The widest head row the prepared path transforms (a row is widened into registers/local memory).
inline constexpr int transform_max_head_dim = 512;

/// One transform of a codec, as its step over a row.
struct row_transform {
  std::uint32_t kind = 0;                   ///< 0 hadamard, 1 derope, 2 a quantizer's RoPE on its decoded keys (decode only)
  std::uint32_t keys = 1, values = 1;       ///< the tensors it changes
  std::uint64_t seed = 0;                   ///< hadamard's signs
  std::uint32_t interleaved = 1;            ///< derope, kind 2: interleaved pairs (1) or rotate-half (0)
  const double* cs = nullptr;               ///< derope: cos of (position p, pair i) at [p * (head_dim / 2) + i]; kind 2: the f32 factor c of (p, channel d) at [p * head_dim + d]
  const double* sn = nullptr;               ///< derope: sin, the same shape; kind 2: the factor s
};

/// A codec's transforms in order (the batch encoder takes at most four), and, for `think` (the codec's only
/// transform), its kept key channels: a key row of (layer, head) becomes channels[(layer x heads + head)
/// x width + i] for i < width (increasing channels), zeros after them; the row keeps its stride, and the
/// quantizer's steps read the first `width` values (decode: kv_finish_op puts them back in place).
struct row_transforms {
  static constexpr std::uint32_t max = 4;
  row_transform t[max];
  std::uint32_t n = 0;
  const std::int32_t* channels = nullptr;
  std::int32_t width = 0, heads = 0;
  bool any() const noexcept { return n > 0 || channels != nullptr; }
};

/// Runs the transforms on row x (D values) of a key (or value) row at token position `pos`: in order
/// (encode), or inverted in reverse order (decode: hadamard_inverse, and derope's tables then hold the
/// angles of rope_apply).
KVCODEC_HD inline void apply_row_transforms(const row_transforms& ts, bool key, float* x, std::int64_t D, std::int64_t pos, bool inverse = false) noexcept {
  for (std::uint32_t j = 0; j < ts.n; ++j) {
    const row_transform& t = ts.t[inverse ? ts.n - 1 - j : j];
    if ((key ? t.keys : t.values) == 0) continue;
    if (t.kind == 0) {
      if (inverse) hadamard_inverse(x, static_cast<std::size_t>(D), t.seed);
      else hadamard_forward(x, static_cast<std::size_t>(D), t.seed);
    } else if (t.kind == 2) {
      // weighted-quant derope=on: its decoded keys rotated forward by rope_factors_run's f32 factors
      // (held as doubles, exactly): core/weighted_quant.hpp's rope_rotated, two products and one sum
      float y[transform_max_head_dim];
      const double* c = t.cs + pos * D;
      const double* s = t.sn + pos * D;
      for (std::int64_t d = 0; d < D; ++d) {
        const std::int64_t q = t.interleaved != 0 ? (d ^ 1) : (d < D / 2 ? d + D / 2 : d - D / 2);
        const float a = x[d] * static_cast<float>(c[d]);
        const float b = x[q] * static_cast<float>(s[d]);
        y[d] = a + b;
      }
      for (std::int64_t d = 0; d < D; ++d) x[d] = y[d];
    } else if (D >= 2) {
      const std::int64_t half = D / 2;
      const double* cs = t.cs + pos * half;
      const double* sn = t.sn + pos * half;
      for (std::int64_t i = 0; i < half; ++i) {
        const std::int64_t i0 = t.interleaved != 0 ? 2 * i : i, i1 = t.interleaved != 0 ? 2 * i + 1 : i + half;
        const double x0 = x[i0], x1 = x[i1];
        x[i0] = static_cast<float>(x0 * cs[i] - x1 * sn[i]);
        x[i1] = static_cast<float>(x0 * sn[i] + x1 * cs[i]);
      }
    }
  }
}

/// Element step of the source preparation: row r of a kv_gather_block (entry entry_first + r: head
/// head[e] at token token[e], or, when head is null, head r / tokens at token r % tokens of a dense
/// layer) read from `s`, widened to f32, transformed, written as row out_row + r of `out` (f32).
struct kv_prepare_op {
  kv_batch_src s;
  const std::int32_t* head = nullptr;   ///< per entry (null: dense)
  const std::int32_t* token = nullptr;  ///< per entry
  std::int64_t tokens = 0;              ///< dense: tokens per head
  row_transforms ts;
  float* out = nullptr;
  KVCODEC_HD std::uint64_t count(const kv_gather_block& b) const noexcept { return b.rows; }
  KVCODEC_HD bool operator()(const kv_gather_block& b, std::uint64_t r) const noexcept {
    const std::int64_t D = s.head_dim;
    std::int64_t h = 0, t = 0;
    if (head != nullptr) {
      h = head[b.entry_first + r];
      t = token[b.entry_first + r];
    } else {
      h = static_cast<std::int64_t>(r) / tokens;
      t = static_cast<std::int64_t>(r) % tokens;
    }
    float* o = out + (b.out_row + r) * static_cast<std::uint64_t>(D);
    if (ts.channels != nullptr && b.key != 0) {  // think: the kept channels of the head, in order
      const std::int32_t* ch = ts.channels + (static_cast<std::int64_t>(b.layer) * ts.heads + h) * ts.width;
      for (std::int64_t i = 0; i < D; ++i) o[i] = i < ts.width ? kv_batch_get(s, true, b.layer, h, t, ch[i]) : 0.0f;
      return true;
    }
    if (ts.n == 0) {  // widened only (the outlier encoders' f32 copy, think's values): rows of any width
      for (std::int64_t c = 0; c < D; ++c) o[c] = kv_batch_get(s, b.key != 0, b.layer, h, t, c);
      return true;
    }
    float x[transform_max_head_dim];
    for (std::int64_t c = 0; c < D; ++c) x[c] = kv_batch_get(s, b.key != 0, b.layer, h, t, c);
    apply_row_transforms(ts, b.key != 0, x, D, t);
    for (std::int64_t c = 0; c < D; ++c) o[c] = x[c];
    return true;
  }
};

/// Decode side: row r of a kv_gather_block (head r / tokens, destination token r % tokens) of an f32
/// scratch `s` (dense: what the quantizer's batch decoder wrote) with the transforms inverted (token
/// position base + the destination token), stored into the destination through kv_batch_put (rounded
/// to its dtype as the CPU decoder converts). Token-dropped containers (row_of set): the row is read
/// from row row_of[layer x rows + r] of the compact buffer `s` (head 0), or, where that is -1 (a
/// dropped token), written as zeros without transforms, as the CPU decoder writes dropped tokens.
/// think (ts.channels set): a key row's first ts.width values go to its head's kept channels, the
/// others are written as zeros (cpu/think.hpp's inverse).
struct kv_finish_op {
  kv_batch_src s;
  kv_batch_dest d;
  std::int64_t tokens = 0, base = 0;
  row_transforms ts;
  const std::int64_t* row_of = nullptr;  ///< token-dropped: per (layer, head, destination token), its compact row or -1
  KVCODEC_HD std::uint64_t count(const kv_gather_block& b) const noexcept { return b.rows; }
  KVCODEC_HD bool operator()(const kv_gather_block& b, std::uint64_t r) const noexcept {
    const std::int64_t D = s.head_dim, h = static_cast<std::int64_t>(r) / tokens, t = static_cast<std::int64_t>(r) % tokens;
    std::int64_t sh = h, st = t;
    if (row_of != nullptr) {
      sh = 0;
      st = row_of[static_cast<std::uint64_t>(b.layer) * b.rows + r];
      if (st < 0) {
        for (std::int64_t c = 0; c < D; ++c) kv_batch_put(d, b.key != 0, b.layer, h, t, c, 0.0f);
        return true;
      }
    }
    if (ts.channels != nullptr && b.key != 0) {  // think: the row's first `width` values back to the head's kept channels, zeros elsewhere
      const std::int32_t* ch = ts.channels + (static_cast<std::int64_t>(b.layer) * ts.heads + h) * ts.width;
      std::int64_t c = 0;
      for (std::int64_t i = 0; i < ts.width; ++i, ++c) {
        for (; c < ch[i]; ++c) kv_batch_put(d, true, b.layer, h, t, c, 0.0f);
        kv_batch_put(d, true, b.layer, h, t, c, kv_batch_get(s, true, b.layer, sh, st, i));
      }
      for (; c < D; ++c) kv_batch_put(d, true, b.layer, h, t, c, 0.0f);
      return true;
    }
    if (ts.n == 0) {  // a token-dropped container's rows, moved (any head_dim); think's value rows
      for (std::int64_t c = 0; c < D; ++c) kv_batch_put(d, b.key != 0, b.layer, h, t, c, kv_batch_get(s, b.key != 0, b.layer, sh, st, c));
      return true;
    }
    float x[transform_max_head_dim];
    for (std::int64_t c = 0; c < D; ++c) x[c] = kv_batch_get(s, b.key != 0, b.layer, sh, st, c);
    apply_row_transforms(ts, b.key != 0, x, D, base + t, true);
    for (std::int64_t c = 0; c < D; ++c) kv_batch_put(d, b.key != 0, b.layer, h, t, c, x[c]);
    return true;
  }
};

}  // namespace kvcodec
