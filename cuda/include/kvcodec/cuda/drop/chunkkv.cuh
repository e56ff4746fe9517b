// kvcodec/cuda/drop/chunkkv.cuh — the `chunkkv` stage on the GPU, mirroring cpu/drop/chunkkv.hpp: a
// scorer's selection with its coder wrapped by core/chunkkv.hpp's drop_chunk_coder, so every token
// carries its chunk's mean score and whole chunks are kept or dropped together. Over the window scorers
// (snapkv, h2o, tova: kept sets equal the CPU's but for near-ties), lagkv, expected-attention, knorm and
// keydiff (equal bit for bit).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvcodec/core/chunkkv.hpp"
#include "kvcodec/cuda/drop/expected_attention.cuh"
#include "kvcodec/cuda/drop/keydiff.cuh"
#include "kvcodec/cuda/drop/knorm.cuh"
#include "kvcodec/cuda/drop/lagkv.cuh"
#include "kvcodec/cuda/drop/window_attention.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

namespace detail {
inline drop_chunk_wrap chunk_wrap(std::int64_t chunk, std::int64_t n) {
  if (chunk < 1) throw_usage("cuda chunkkv_select: chunk must be >= 1, got " + std::to_string(chunk));
  return {chunk, n};
}
}  // namespace detail

/// chunkkv over a window scorer (plan_drop_window: snapkv, h2o or tova, uniform budget): window_select's
/// kept sets with chunks of `chunk` tokens.
inline void chunkkv_select(void* temp, std::size_t& temp_bytes, const drop_window_plan& plan, std::int64_t chunk, std::int32_t* kept, const par_t& p) {
  window_select(temp, temp_bytes, plan, kept, p, detail::chunk_wrap(chunk, plan.a.n));
}

/// chunkkv over lagkv: lagkv_select's kept sets with chunks of `chunk` tokens.
inline void chunkkv_select(void* temp, std::size_t& temp_bytes, const lagkv_args& a, std::int64_t b, std::int64_t chunk, std::int32_t* kept, const par_t& p) {
  lagkv_select(temp, temp_bytes, a, b, kept, p, detail::chunk_wrap(chunk, a.n));
}

/// chunkkv over knorm (keydiff false) or keydiff: their selection's kept sets with chunks of `chunk` tokens.
inline void chunkkv_select(void* temp, std::size_t& temp_bytes, bool keydiff, const drop_source& src, int layers, int heads, std::int64_t n, std::int64_t b,
                           std::int64_t chunk, std::int32_t* kept, const par_t& p) {
  if (keydiff) keydiff_select(temp, temp_bytes, src, layers, heads, n, b, kept, p, detail::chunk_wrap(chunk, n));
  else knorm_select(temp, temp_bytes, src, layers, heads, n, b, kept, p, detail::chunk_wrap(chunk, n));
}

/// chunkkv over expected-attention: expected_attention_select's kept sets with chunks of `chunk` tokens.
inline void chunkkv_select(void* temp, std::size_t& temp_bytes, const expected_args& a, const expected_prep& ep, std::int64_t b, std::int64_t chunk,
                           std::int32_t* kept, const par_t& p) {
  expected_attention_select(temp, temp_bytes, a, ep, b, kept, p, detail::chunk_wrap(chunk, a.n));
}

}  // namespace kvcodec::cuda
