// kvcodec/cuda/drop/tova.cuh — the `tova` stage's selection on the GPU, mirroring cpu/drop/tova.hpp:
// the attention of the last query, averaged over every query head (so every head keeps the same
// tokens); the last token kept first.
// Window attention and the selection: cuda/drop/window_attention.cuh.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/window_attention.hpp"
#include "kvcodec/cuda/drop/window_attention.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

/// kept[(l * heads + h) * b + i] (device): each (layer, kv head)'s b tokens of [0, n), increasing. `s` holds device pointers. Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
inline void tova_select(void* temp, std::size_t& temp_bytes, const drop_window_source& s, std::int64_t b, std::int32_t* kept, const par_t& p) {
  drop_window_params w;
  w.kind = wattn_score::tova;
  w.b = b;
  window_select(temp, temp_bytes, plan_drop_window(s, w), kept, p);
}

}  // namespace kvcodec::cuda
