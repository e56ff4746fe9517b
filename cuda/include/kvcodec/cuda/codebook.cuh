// kvcodec/cuda/codebook.cuh — the codebook quantizers `nf4` and `kmeans` on the GPU, mirroring
// cpu/codebook.hpp. Decode: one thread per value runs core/codebook.hpp's codebook_batch_op (nf4's code
// times its group's stored absmax, or kmeans' codeword) into the view; the symbols come from the rANS
// batch kernel (cuda/rans.cuh) or are unpacked in place from a pack plane (pipeline/batch.hpp's
// plan_codebook_batch). Encode, driven by pipeline/batch_encode.hpp through cuda/encode.cuh: nf4 runs
// nf4_absmax_op per group, then nf4_code_op per value; kmeans gathers each (layer, K/V)'s strided sample
// (kmeans_sample_op), fits the codebooks on the host (kmeans_quant::fit_samples), then kmeans_code_op.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/codebook.hpp"
#include "kvcodec/cuda/batch.cuh"

namespace kvcodec::cuda {

/// Decodes `count` blocks (device array) into `d` on p.stream: symbols at `sym` (u16, rans) or in
/// `bytes` (pack), nf4's absmax scales in `bytes`, kmeans' codebooks in `books`; `bad` flags blocks with
/// a symbol of 2^bits or more.
inline void codebook_store(const codebook_batch_block* blocks, std::size_t count, std::uint64_t max_items, const std::uint16_t* sym,
                           const std::uint8_t* bytes, const float* books, const kv_batch_dest& d, std::uint32_t* bad, const par_t& p) {
  run_batch(blocks, count, max_items, codebook_batch_op{sym, bytes, books, d}, bad, p);
}

}  // namespace kvcodec::cuda
