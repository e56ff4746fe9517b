// kvcodec/cuda/drop/random.cuh — the `random` stage on the GPU, mirroring cpu/drop/random.hpp: every
// token's code is core/drop_topk.hpp's drop_random_coder (the CPU's hash of (seed, layer, kv head,
// token)), then cuda/drop/select.cuh keeps each head's b best. Kept sets equal the CPU's select_random
// over tokens [0, n); no key is read.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/drop_topk.hpp"
#include "kvcodec/cuda/drop/select.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

/// kept[(l * heads + h) * b + i] (device): `random:seed=seed` over tokens [0, n), increasing.
/// Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
inline void random_select(void* temp, std::size_t& temp_bytes, std::uint64_t seed, int layers, int heads, std::int64_t n, std::int64_t b, std::int32_t* kept,
                          const par_t& p) {
  select_by_codes(temp, temp_bytes, drop_random_coder{seed}, layers, heads, n, b, kept, p);
}

}  // namespace kvcodec::cuda
