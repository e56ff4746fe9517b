// kvcodec/core/simd.hpp — runtime CPU-feature dispatch for the hand-vectorised host kernels.
//
// The library is header-only and users compile it with their own flags (often baseline x86-64), so
// the fast paths are functions compiled with GCC/Clang `target(...)` attributes and chosen at run
// time from CPUID. Invariant: every vector path produces exactly the bytes its scalar reference
// produces; the scalar path is always compiled and KVCODEC_NO_SIMD=1 in the environment (read once
// per process) forces it, which is how tests compare the two.
#pragma once

#include <cstdlib>

#if !defined(__CUDACC__) && defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define KVCODEC_X86_DISPATCH 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define KVCODEC_X86_DISPATCH 0
#endif

/// Attribute for a function body that may use AVX2, FMA and F16C instructions (x86 only).
#define KVCODEC_TARGET_AVX2 __attribute__((target("avx2,fma,f16c,bmi2,popcnt")))

namespace kvcodec::simd {

/// True when KVCODEC_NO_SIMD is set to a non-empty value other than "0".
inline bool disabled() {
  static const bool off = [] {
    const char* e = std::getenv("KVCODEC_NO_SIMD");
    return e != nullptr && *e != '\0' && !(e[0] == '0' && e[1] == '\0');
  }();
  return off;
}

#if KVCODEC_X86_DISPATCH
/// F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports does not accept "f16c", so the
/// bit is read directly (GCC and clang both ship <cpuid.h>).
inline bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c & (1u << 29)) != 0;
}
#endif

/// True when the AVX2 + FMA + F16C + BMI2 kernels may run on this CPU (and SIMD is not disabled).
inline bool avx2() {
#if KVCODEC_X86_DISPATCH
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c() &&
                         __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
  return ok && !disabled();
#else
  return false;
#endif
}

}  // namespace kvcodec::simd
