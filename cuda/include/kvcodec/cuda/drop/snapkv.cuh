// kvcodec/cuda/drop/snapkv.cuh — the `snapkv` stage's selection on the GPU, mirroring cpu/drop/snapkv.hpp:
// the mean attention of the last `window` queries of each GQA group, average-pooled with `kernel`; the
// window itself kept first.
// Window attention and the selection: cuda/drop/window_attention.cuh.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/window_attention.hpp"
#include "kvcodec/cuda/drop/window_attention.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

/// kept[(l * heads + h) * b + i] (device): each (layer, kv head)'s b tokens of [0, n), increasing. `s` holds device pointers. Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
inline void snapkv_select(void* temp, std::size_t& temp_bytes, const drop_window_source& s, std::int64_t window, std::int64_t kernel, std::int64_t b, std::int32_t* kept, const par_t& p) {
  drop_window_params w;
  w.kind = wattn_score::snapkv;
  w.b = b;
  w.window = window;
  w.kernel = kernel;
  window_select(temp, temp_bytes, plan_drop_window(s, w), kept, p);
}

}  // namespace kvcodec::cuda
