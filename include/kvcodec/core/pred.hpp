// kvcodec/core/pred.hpp — symbol-domain token prediction (the `rans` and `ac` stages' pred=prev|anchor|
// linear, cpu/entropy_model.hpp) as host/device steps: the residual arithmetic, and the batch decoders'
// restore step (pred_restore_op) that merges a plane's decoded sub-planes, the anchor rows then the
// residual rows in plane order, back into the plane's symbols. pipeline/batch.hpp plans it; the CUDA
// decoder (cuda/decode.cuh) runs it on cuda/batch.cuh's kernel and the host emulation on the CPU.
#pragma once

#include <cstdint>

#include "kvcodec/core/config.hpp"

namespace kvcodec {

/// The residual of symbol s against its reference ref (alphabet A), centred at A / 2.
KVCODEC_HD inline std::uint16_t pred_residual(std::uint32_t s, std::uint32_t ref, std::uint32_t A) {
  return static_cast<std::uint16_t>((s + A + A / 2 - ref) % A);
}
/// The symbol of residual r against ref: the inverse of pred_residual.
KVCODEC_HD inline std::uint16_t pred_restore(std::uint32_t r, std::uint32_t ref, std::uint32_t A) {
  return static_cast<std::uint16_t>((r + ref + A - A / 2) % A);
}

/// pred=linear's reference: clamp(m + floor((k (prev - m) + 8) / 16), 0, A - 1), integer only.
KVCODEC_HD inline std::uint32_t linear_ref(std::uint32_t prev, std::uint32_t m, std::uint32_t k, std::uint32_t A) {
  const std::int32_t d = static_cast<std::int32_t>(k) * (static_cast<std::int32_t>(prev) - static_cast<std::int32_t>(m)) + 8;
  const std::int32_t r = static_cast<std::int32_t>(m) + (d >> 4);  // C++20: arithmetic shift = floor(d / 16)
  return static_cast<std::uint32_t>(r < 0 ? 0 : r >= static_cast<std::int32_t>(A) ? static_cast<std::int32_t>(A) - 1 : r);
}

/// One predicted plane of a batch: its decoded sub-planes from symbol `raw` (the `anchors` anchor rows,
/// then the residual rows, each in plane order), restored into rows x cols symbols from `out`.
/// kind: 1 prev (row r from row r - 1), 2 anchor (row r from the first row of its group of `group`),
/// 3 linear (row r from row r - 1 through column c's centre and coefficient, from `coef` of the op's arrays).
struct pred_batch_block {
  std::uint64_t raw = 0, out = 0, coef = 0;
  std::uint32_t rows = 0, cols = 0, alphabet = 1, anchors = 0, group = 1, kind = 2;
  std::int32_t layer = 0;
  std::uint32_t key = 1;
};

/// Element step of the restore: pred=anchor, item i = symbol i of the plane (rows are independent);
/// prev and linear, item c = column c, its rows in order (each from the one before). Never fails: a
/// restored symbol is below the alphabet.
struct pred_restore_op {
  std::uint16_t* sym = nullptr;           ///< the batch's symbols (raw sub-planes in, plane out)
  const std::uint16_t* centre = nullptr;  ///< linear: per column of each linear plane
  const std::uint8_t* coefs = nullptr;
  KVCODEC_HD std::uint64_t count(const pred_batch_block& b) const noexcept {
    return b.kind == 2 ? static_cast<std::uint64_t>(b.rows) * b.cols : b.cols;
  }
  KVCODEC_HD bool operator()(const pred_batch_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t C = b.cols, resid = b.raw + static_cast<std::uint64_t>(b.anchors) * C;
    if (b.kind == 2) {
      const std::uint64_t r = i / C, c = i % C, g = r / b.group;
      const std::uint32_t ref = sym[b.raw + g * C + c];
      sym[b.out + i] = r % b.group == 0 ? static_cast<std::uint16_t>(ref) : pred_restore(sym[resid + (r - g - 1) * C + c], ref, b.alphabet);
      return true;
    }
    if (b.rows == 0) return true;
    std::uint32_t prev = sym[b.raw + i];  // row 0, the anchor
    sym[b.out + i] = static_cast<std::uint16_t>(prev);
    for (std::uint64_t r = 1; r < b.rows; ++r) {
      const std::uint32_t ref = b.kind == 3 ? linear_ref(prev, centre[b.coef + i], coefs[b.coef + i], b.alphabet) : prev;
      prev = pred_restore(sym[resid + (r - 1) * C + i], ref, b.alphabet);
      sym[b.out + r * C + i] = static_cast<std::uint16_t>(prev);
    }
    return true;
  }
};

}  // namespace kvcodec
