// kvcodec/cuda/drop/streamingllm.cuh — the `streamingllm` stage on the GPU, mirroring
// cpu/drop/streamingllm.hpp: the first `sink` tokens, then the most recent, as protected codes in that
// priority (core/drop_topk.hpp's drop_streamingllm_coder), kept by cuda/drop/select.cuh. Kept sets
// equal the CPU's select_streamingllm over tokens [0, n); no key is read.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/drop_topk.hpp"
#include "kvcodec/cuda/drop/select.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

/// kept[(l * heads + h) * b + i] (device): `streamingllm:sink=sink` over tokens [0, n), increasing.
/// Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
inline void streamingllm_select(void* temp, std::size_t& temp_bytes, std::int64_t sink, int layers, int heads, std::int64_t n, std::int64_t b,
                                std::int32_t* kept, const par_t& p) {
  if (sink < 0) throw_usage("cuda streamingllm_select: sink must be >= 0");
  select_by_codes(temp, temp_bytes, drop_streamingllm_coder{sink, n}, layers, heads, n, b, kept, p);
}

}  // namespace kvcodec::cuda
