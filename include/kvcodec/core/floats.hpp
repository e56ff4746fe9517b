// kvcodec/core/floats.hpp — f32 helpers shared by the quantizers (core/scalar/floats.hpp: finiteness,
// unfused products, finite max-abs) and finite_amax over a run, which runs the AVX2 kernel of
// core/x86/floats.hpp when core/simd.hpp allows (same value as the scalar reference).
#pragma once

#include <cstddef>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/scalar/floats.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/core/x86/floats.hpp"

namespace kvcodec {

/// max |x| over the finite values of x[0], x[stride], ... (0 if none).
KVCODEC_HD inline float finite_amax(const float* x, std::size_t n, std::size_t stride = 1) noexcept {
#if KVCODEC_X86_DISPATCH
  if (stride == 1 && simd::avx2()) return detail::finite_amax_avx2(x, n);
#endif
  return detail::finite_amax_ref(x, n, stride);
}

}  // namespace kvcodec
