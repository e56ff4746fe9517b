// kvcodec/cuda/policy.cuh — the CUDA execution policy: `kvcodec::cuda::par.on(stream)`.
//
// Mirrors kvcodec::cpu::par. Device entry points follow CUB's two-phase temp-storage convention
// (call with d_temp == nullptr to ask for the size, then run); errors become kvcodec::error.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "kvcodec/core/error.hpp"

namespace kvcodec::cuda {

struct par_t {
  cudaStream_t stream = nullptr;
  par_t on(cudaStream_t s) const noexcept { return par_t{s}; }
};
inline constexpr par_t par{};

/// Throws kvcodec::error(unsupported) naming the call when a CUDA runtime call fails.
inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw error(error_kind::unsupported, std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

/// Number of visible CUDA devices (0 when there is no GPU or driver); never throws.
inline int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace kvcodec::cuda
