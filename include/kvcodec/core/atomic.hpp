// kvcodec/core/atomic.hpp — the one atomic that element steps use, with a host implementation, so a
// step that counts (rans_hist_op) runs on the GPU and, in CI, on the CPU.
#pragma once

#include <cstdint>

#include "kvcodec/core/config.hpp"

namespace kvcodec {

/// *p += v, atomically (relaxed: only the final value matters).
KVCODEC_HD inline void atomic_add(std::uint32_t* p, std::uint32_t v) noexcept {
#if defined(__CUDA_ARCH__)
  atomicAdd(p, v);
#else
  __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
#endif
}

}  // namespace kvcodec
