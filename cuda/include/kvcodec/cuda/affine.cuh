// kvcodec/cuda/affine.cuh — the affine quantizers `uniform` and `kivi` decoded on the GPU, mirroring
// cpu/uniform.hpp and cpu/kivi.hpp: one thread per value runs core/affine.hpp's affine_batch_op (its
// group's parameters, affine::dequantize_value, or kivi's exact residual rows) into the view. The
// symbols come from the rANS batch kernel (cuda/rans.cuh) or are unpacked in place from a pack plane.
// Blocks come from pipeline/batch.hpp's plan_affine_batch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/affine.hpp"
#include "kvcodec/cuda/batch.cuh"

namespace kvcodec::cuda {

/// Decodes `count` blocks (device array) into `d` on p.stream: symbols at `sym` (u16, rans) or in
/// `bytes` (pack), parameters and exact rows in `bytes`; `bad` flags blocks with a symbol of 2^bits or more.
inline void affine_store(const affine_batch_block* blocks, std::size_t count, std::uint64_t max_items, const std::uint16_t* sym, const std::uint8_t* bytes,
                         const kv_batch_dest& d, std::uint32_t* bad, const par_t& p) {
  run_batch(blocks, count, max_items, affine_batch_op{sym, bytes, d}, bad, p);
}

}  // namespace kvcodec::cuda
