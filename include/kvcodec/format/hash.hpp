// kvcodec/format/hash.hpp — the XXH3 hashes behind every checksum and store key.
//
// On x86-64, libxxhash's runtime dispatch (xxh_x86dispatch.h, shipped by Debian's libxxhash-dev and
// exported by libxxhash.so) picks the widest vector unit of the running CPU: 66 GB/s with AVX-512 on
// the build machine against 16.5 GB/s for the SSE2 code that plain XXH3_64bits runs in the shared
// library (tests/format/test_hash.cpp checks that both give the same values). Elsewhere, or without
// that header, the plain functions. The values are XXH3's in every case: files and keys do not change.
#pragma once

#include <xxhash.h>

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) && __has_include(<xxh_x86dispatch.h>)
#ifndef XXH_DISPATCH_DISABLE_REPLACE
#define XXH_DISPATCH_DISABLE_REPLACE  // no macros renaming XXH3_* in the includer's code
#define KVCODEC_XXH_UNDEF_DISABLE_REPLACE
#endif
#include <xxh_x86dispatch.h>
#ifdef KVCODEC_XXH_UNDEF_DISABLE_REPLACE
#undef XXH_DISPATCH_DISABLE_REPLACE
#undef KVCODEC_XXH_UNDEF_DISABLE_REPLACE
#endif
#define KVCODEC_XXH_DISPATCH 1
#else
#define KVCODEC_XXH_DISPATCH 0
#endif

namespace kvcodec {

/// XXH3-64 of n bytes.
inline std::uint64_t xxh3_64(const void* p, std::size_t n) noexcept {
#if KVCODEC_XXH_DISPATCH
  return XXH3_64bits_dispatch(p, n);
#else
  return XXH3_64bits(p, n);
#endif
}

/// XXH3-64 of n bytes with a seed.
inline std::uint64_t xxh3_64(const void* p, std::size_t n, std::uint64_t seed) noexcept {
#if KVCODEC_XXH_DISPATCH
  return XXH3_64bits_withSeed_dispatch(p, n, seed);
#else
  return XXH3_64bits_withSeed(p, n, seed);
#endif
}

/// XXH3-128 of n bytes.
inline XXH128_hash_t xxh3_128(const void* p, std::size_t n) noexcept {
#if KVCODEC_XXH_DISPATCH
  return XXH3_128bits_dispatch(p, n);
#else
  return XXH3_128bits(p, n);
#endif
}

}  // namespace kvcodec
