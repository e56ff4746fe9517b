// kvcodec/core/warp.hpp — the warp collectives that kernels use, behind small wrappers with a host
// implementation, so a kernel's lane logic also runs (and is tested) on the CPU.
//
// A kernel written against these wrappers is split at each collective into per-lane phases
// (KVCODEC_HD functions of the lane's own state). On the GPU every thread runs a phase for its lane
// and the collective is the hardware one; the host emulation runs the phase for lanes 0..31 of a warp
// in turn, then computes the collective from the 32 values exactly as the hardware defines it (bit i
// of a ballot is lane i's predicate). Tests compare the emulation with the CPU codec byte for byte.
#pragma once

#include <bit>
#include <cstdint>

#include "kvcodec/core/config.hpp"

namespace kvcodec::warp {

inline constexpr std::uint32_t size = 32;
inline constexpr std::uint32_t full_mask = 0xffffffffu;

/// Bits of the lanes below `lane` (CUDA's %lanemask_lt), lane in 0..31.
KVCODEC_HD inline std::uint32_t lanemask_lt(std::uint32_t lane) noexcept { return lane == 0 ? 0u : (full_mask >> (32u - lane)); }

/// Number of set bits.
KVCODEC_HD inline std::uint32_t popc(std::uint32_t m) noexcept {
#if defined(__CUDA_ARCH__)
  return static_cast<std::uint32_t>(__popc(m));
#else
  return static_cast<std::uint32_t>(std::popcount(m));
#endif
}

/// Exclusive rank of a lane among the lanes whose bit is set in `ballot` (the word a lane takes
/// when the lanes that need one take consecutive words in lane order).
KVCODEC_HD inline std::uint32_t rank_below(std::uint32_t ballot, std::uint32_t lane) noexcept { return popc(ballot & lanemask_lt(lane)); }

#if defined(__CUDACC__)
/// The hardware ballot of the whole warp (every lane must call it).
__device__ inline std::uint32_t ballot(bool pred) { return __ballot_sync(full_mask, pred); }
/// This thread's lane within its warp.
__device__ inline std::uint32_t lane_id() { return threadIdx.x & (size - 1); }
#endif

/// Host implementation of a ballot: bit i is pred[i] != 0 for the 32 lanes of one warp.
template <class T>
inline std::uint32_t ballot_host(const T* pred) noexcept {
  std::uint32_t m = 0;
  for (std::uint32_t i = 0; i < size; ++i) m |= (pred[i] ? 1u : 0u) << i;
  return m;
}

}  // namespace kvcodec::warp
