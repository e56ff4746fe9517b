// kvcodec/cuda/drop/pyramidkv.cuh — the `pyramidkv` stage's selection on the GPU, mirroring cpu/drop/pyramidkv.hpp:
// snapkv's scores with PyramidKV's per-layer budgets (pyramid_budgets: decreasing with depth, summing
// to layers x b).
// Window attention and the selection: cuda/drop/window_attention.cuh.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/window_attention.hpp"
#include "kvcodec/cuda/drop/window_attention.cuh"
#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

/// kept (device, layers x heads x b tokens in all): layer l's heads keep pyramid_budgets(b, n, layers, beta)[l]
/// tokens each, head after head, the layers one after another. `s` holds device pointers. Two-phase: temp == nullptr sets temp_bytes. Queued on p.stream.
inline void pyramidkv_select(void* temp, std::size_t& temp_bytes, const drop_window_source& s, std::int64_t window, std::int64_t kernel, double beta, std::int64_t b, std::int32_t* kept, const par_t& p) {
  drop_window_params w;
  w.kind = wattn_score::snapkv;
  w.b = b;
  w.window = window;
  w.kernel = kernel;
  w.pyramid = true;
  w.beta = beta;
  window_select(temp, temp_bytes, plan_drop_window(s, w), kept, p);
}

}  // namespace kvcodec::cuda
