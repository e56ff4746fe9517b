// kvcodec/core/ac_batch.hpp — decoding a batch of CacheGen range-coded streams (cpu/ac.hpp's format,
// core/range_coder.hpp's coder, bytes unchanged) on a GPU: the lane logic of cuda/ac.cuh's two kernels
// and their host emulation, which the CPU tests compare with the CPU decoder.
//
// rows kernel (LMCache's design): one thread per stream, its contexts' CDFs read from global memory,
//   its symbols written to a symbol array that the quantizer's element step then dequantizes.
// tiled kernel (fused, for cachegen-quant|ac with one stream per row, as the `cachegen` preset codes):
//   a CUDA block takes a group of up to ac_tile_rows consecutive rows of one block. The rows of a block
//   all use column c's CDF for their c-th symbol, so the block walks the columns in tiles of T: it stages
//   the tile's CDFs in shared memory (each CDF read from global memory once per group, not once per
//   row), each thread decodes its row's T symbols into a shared tile, and the block dequantizes the tile
//   straight into the destination view (core/cachegen.hpp's cachegen_batch_put; consecutive threads
//   store consecutive columns of one row). No symbol goes through global memory.
// Both check every stream as the CPU decoder does (rc_dec_ok: no read past its bytes, none left, code
// below range); a failed stream's status is 1, and its rows' values are unspecified.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcodec/core/cachegen.hpp"
#include "kvcodec/core/config.hpp"
#include "kvcodec/core/range_coder.hpp"

namespace kvcodec {

/// One range-coded stream of a batch. Offsets are into the batch's arrays.
struct ac_batch_stream {
  std::uint64_t data = 0;  ///< first byte in the batch's data
  std::uint64_t size = 0;  ///< bytes
  std::uint64_t out = 0;   ///< first output symbol (rows kernel)
  std::uint64_t cdf = 0;   ///< first entry of its contexts' CDFs (alphabet + 1 entries each)
  std::uint32_t n = 0;     ///< symbols
  std::uint32_t cols = 1;  ///< symbol i uses context (pooled ? 0 : i % cols)
  std::uint32_t alphabet = 1;
  std::uint32_t pooled = 0;
};

/// Rows per CUDA block of the tiled kernel (its threads), and the shared memory its CDF tile may take.
inline constexpr std::uint32_t ac_tile_rows = 64;
inline constexpr std::uint32_t ac_tile_cdf_bytes = 32 * 1024;
inline constexpr std::uint32_t ac_tile_max_cols = 32;

/// A group of consecutive rows of one cachegen block, for the tiled kernel: rows streams from
/// stream_first (row row0 of block `block` first), each of `cols` symbols with the same CDFs.
struct ac_tile_group {
  std::uint64_t stream_first = 0;
  std::uint32_t rows = 0;
  std::uint32_t block = 0;
  std::uint32_t row0 = 0;
};

/// The tile width for CDFs of `alphabet` symbols: how many columns' CDFs fit ac_tile_cdf_bytes (at most
/// ac_tile_max_cols; 0 when not even one does, and the tiled kernel cannot run).
KVCODEC_HD inline std::uint32_t ac_tile_width(std::uint32_t max_alphabet) noexcept {
  const std::uint32_t w = ac_tile_cdf_bytes / (4u * (max_alphabet + 1u));
  return w < ac_tile_max_cols ? w : ac_tile_max_cols;
}

namespace detail {

/// Decodes one symbol with a CDF of A + 1 entries (cpu/ac.hpp's loop body).
KVCODEC_HD inline std::uint32_t ac_lane_decode(rc_decoder& d, const std::uint32_t* cdf, std::uint32_t A) noexcept {
  std::uint32_t r;
  const std::uint32_t t = rc_decode_target(d, r);
  const std::uint32_t s = rc_cdf_find(cdf, A, t);
  rc_decode_update(d, r, cdf[s], cdf[s + 1] - cdf[s]);
  return s;
}

/// The rows kernel's work for one stream: decodes it whole into out; false when it does not decode exactly.
KVCODEC_HD inline bool ac_decode_stream(const ac_batch_stream& s, const std::uint8_t* data, const std::uint32_t* cdfs, std::uint16_t* out) noexcept {
  rc_decoder d;
  rc_dec_init(d, data + s.data, static_cast<std::size_t>(s.size));
  const std::uint32_t* base = cdfs + s.cdf;
  std::uint32_t c = 0;
  for (std::uint32_t i = 0; i < s.n; ++i) {
    out[s.out + i] = static_cast<std::uint16_t>(ac_lane_decode(d, base + static_cast<std::uint64_t>(s.pooled != 0 ? 0 : c) * (s.alphabet + 1), s.alphabet));
    c = c + 1 == s.cols ? 0 : c + 1;
  }
  return rc_dec_ok(d);
}

}  // namespace detail

/// The batch's arrays (device pointers for the kernels, host pointers for the emulation).
struct ac_batch_args {
  const ac_batch_stream* streams = nullptr;
  std::size_t count = 0;
  const std::uint8_t* data = nullptr;
  const std::uint32_t* cdfs = nullptr;
  std::uint32_t* status = nullptr;  ///< per stream: 0 ok, 1 does not decode exactly
};

/// Host emulation of the rows kernel: every stream into `out` (its symbols from stream.out).
inline void ac_decode_rows_emulated(const ac_batch_args& a, std::uint16_t* out) {
  for (std::size_t k = 0; k < a.count; ++k) a.status[k] = detail::ac_decode_stream(a.streams[k], a.data, a.cdfs, out) ? 0u : 1u;
}

/// The tiled kernel's fused work for one group (core of both its CUDA form and the emulation): the
/// group's rows are lanes 0 .. g.rows - 1. Phases per tile, each followed by a barrier on the GPU:
///   stage  (ac_tile_stage):  the tile's CDFs into cdf_tile, item by item;
///   decode (ac_tile_decode): lane j decodes its row's symbols of the tile into sym_tile[j * T + k];
///   store  (ac_tile_store):  item by item, the tile's symbols dequantized into the view.
KVCODEC_HD inline std::uint32_t ac_tile_stage_items(const ac_batch_stream& s, std::uint32_t c0, std::uint32_t T) noexcept {
  const std::uint32_t w = s.cols - c0 < T ? s.cols - c0 : T;
  return (s.pooled != 0 ? 1u : w) * (s.alphabet + 1);
}
KVCODEC_HD inline void ac_tile_stage(const ac_batch_stream& s, const std::uint32_t* cdfs, std::uint32_t c0, std::uint32_t item, std::uint32_t* cdf_tile) noexcept {
  const std::uint64_t first = s.cdf + (s.pooled != 0 ? 0 : static_cast<std::uint64_t>(c0) * (s.alphabet + 1));
  cdf_tile[item] = cdfs[first + item];
}
KVCODEC_HD inline void ac_tile_decode(rc_decoder& d, const ac_batch_stream& s, std::uint32_t c0, std::uint32_t T, const std::uint32_t* cdf_tile,
                                      std::uint16_t* sym_row) noexcept {
  const std::uint32_t w = s.cols - c0 < T ? s.cols - c0 : T;
  for (std::uint32_t k = 0; k < w; ++k)
    sym_row[k] = static_cast<std::uint16_t>(detail::ac_lane_decode(d, cdf_tile + (s.pooled != 0 ? 0 : k * (s.alphabet + 1)), s.alphabet));
}
/// Item `item` of the store phase (rows x tile width items, row-major): false for a symbol above 2*MAX.
KVCODEC_HD inline bool ac_tile_store(const ac_tile_group& g, const cachegen_batch_block& b, const ac_batch_stream& s, std::uint32_t c0, std::uint32_t T,
                                     std::uint32_t item, const std::uint16_t* sym_tile, const float* steps, const kv_batch_dest& d) noexcept {
  const std::uint32_t w = s.cols - c0 < T ? s.cols - c0 : T;
  const std::uint32_t j = item / w, k = item % w;
  return cachegen_batch_put(b, sym_tile[j * T + k], steps, d, g.row0 + j, c0 + k);
}

/// Host emulation of the tiled kernel over `groups`, with tile width T: the same phases in the same
/// order (lanes one after another between barriers). bad[block] is set for a symbol above 2*MAX.
inline void ac_decode_tiled_emulated(const ac_batch_args& a, const ac_tile_group* groups, std::size_t count, std::uint32_t T,
                                     const cachegen_batch_block* blocks, const float* steps, const kv_batch_dest& d, std::uint32_t* bad) {
  std::vector<std::uint32_t> cdf_tile;
  std::vector<std::uint16_t> sym_tile(static_cast<std::size_t>(ac_tile_rows) * T);
  std::vector<rc_decoder> dec(ac_tile_rows);
  for (std::size_t gi = 0; gi < count; ++gi) {
    const ac_tile_group& g = groups[gi];
    const ac_batch_stream s0 = a.streams[g.stream_first];
    for (std::uint32_t j = 0; j < g.rows; ++j) {
      const ac_batch_stream& s = a.streams[g.stream_first + j];
      rc_dec_init(dec[j], a.data + s.data, static_cast<std::size_t>(s.size));
    }
    cdf_tile.assign(static_cast<std::size_t>(T) * (s0.alphabet + 1), 0);
    for (std::uint32_t c0 = 0; c0 < s0.cols; c0 += T) {
      const std::uint32_t ni = ac_tile_stage_items(s0, c0, T);
      for (std::uint32_t i = 0; i < ni; ++i) ac_tile_stage(s0, a.cdfs, c0, i, cdf_tile.data());
      for (std::uint32_t j = 0; j < g.rows; ++j) ac_tile_decode(dec[j], s0, c0, T, cdf_tile.data(), sym_tile.data() + static_cast<std::size_t>(j) * T);
      const std::uint32_t w = s0.cols - c0 < T ? s0.cols - c0 : T;
      for (std::uint32_t i = 0; i < g.rows * w; ++i)
        if (!ac_tile_store(g, blocks[g.block], s0, c0, T, i, sym_tile.data(), steps, d)) bad[g.block] = 1;
    }
    for (std::uint32_t j = 0; j < g.rows; ++j) a.status[g.stream_first + j] = rc_dec_ok(dec[j]) ? 0u : 1u;
  }
}

}  // namespace kvcodec
