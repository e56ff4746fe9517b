// kvcodec/core/config.hpp — compile-time configuration shared by host and device code.
//
// KVCODEC_HD marks per-element math that must compile for both the CPU and, under nvcc, the GPU.
// Such functions take explicit state and pointers: no allocation, no exceptions, no std::vector.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KVCODEC_HD __host__ __device__
#define KVCODEC_DEVICE_COMPILE 1
#else
#define KVCODEC_HD
#define KVCODEC_DEVICE_COMPILE 0
#endif

#define KVCODEC_VERSION_MAJOR 0
#define KVCODEC_VERSION_MINOR 1
#define KVCODEC_VERSION_PATCH 0
#define KVCODEC_VERSION_STRING "0.1.0"

namespace kvcodec {

/// Bit-level reinterpretation usable in host and device code (memcpy is the portable form).
template <class To, class From>
KVCODEC_HD inline To bit_cast_hd(const From& from) noexcept {
  static_assert(sizeof(To) == sizeof(From), "bit_cast_hd: sizes differ");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

}  // namespace kvcodec
