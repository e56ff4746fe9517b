// kvcodec/core/x86/ggml_blocks.hpp — AVX2 / F16C kernels of the ggml row functions: quantize (eight
// blocks at a time where the batch kernel accepts them), dequantize, dequantize to f16. They write
// exactly the bytes / values of the per-block scalar functions of core/scalar/ggml_blocks.hpp.
// Compiled only where core/simd.hpp can dispatch; core/ggml_blocks.hpp picks.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvcodec/core/endian.hpp"
#include "kvcodec/core/scalar/ggml_blocks.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/core/x86/floats.hpp"

#if KVCODEC_X86_DISPATCH
namespace kvcodec::ggml::detail {

KVCODEC_TARGET_AVX2 inline float hmax8(__m256 v) noexcept {
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h);
}
KVCODEC_TARGET_AVX2 inline float hmin8(__m256 v) noexcept {
  __m128 h = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_min_ps(h, _mm_movehl_ps(h, h));
  h = _mm_min_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h);
}
KVCODEC_TARGET_AVX2 inline float f16_at(const std::uint8_t* p) noexcept {
  return _cvtsh_ss(kvcodec::detail::load_le16(p));
}
KVCODEC_TARGET_AVX2 inline void put_f16_avx2(std::uint8_t* p, float v) noexcept {
  kvcodec::detail::store_le16(p, static_cast<std::uint16_t>(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
}

/// The 32 values of a block with non-finite ones replaced by +0 (finite_or_zero).
KVCODEC_TARGET_AVX2 inline void load_block_fz(const float* x, __m256 v[4]) noexcept {
  const __m256i em = _mm256_set1_epi32(0x7f800000);
  for (int k = 0; k < 4; ++k) {
    const __m256 a = _mm256_loadu_ps(x + 8 * k);
    const __m256i fin = _mm256_xor_si256(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(a), em), em), _mm256_set1_epi32(-1));
    v[k] = _mm256_and_ps(a, _mm256_castsi256_ps(fin));
  }
}
KVCODEC_TARGET_AVX2 inline __m256 abs8(__m256 v) noexcept {
  return _mm256_andnot_ps(_mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u))), v);
}
/// signed_absmax on finite_or_zero values: the first value of largest magnitude (+0 when all are 0).
KVCODEC_TARGET_AVX2 inline float signed_absmax8x4(const __m256 v[4], float* amax_out) noexcept {
  const __m256 a = _mm256_max_ps(_mm256_max_ps(abs8(v[0]), abs8(v[1])), _mm256_max_ps(abs8(v[2]), abs8(v[3])));
  const float amax = hmax8(a);
  if (amax_out) *amax_out = amax;
  if (!(amax > 0.0f)) return 0.0f;
  const __m256 am = _mm256_set1_ps(amax);
  std::uint32_t bits = 0;
  for (int k = 0; k < 4; ++k)
    bits |= static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(abs8(v[k]), am, _CMP_EQ_OQ))) << (8 * k);
  alignas(32) float t[32];
  for (int k = 0; k < 4; ++k) _mm256_store_ps(t + 8 * k, v[k]);
  return t[__builtin_ctz(bits)];
}
/// min_max on finite_or_zero values, with the sign of a zero extreme taken from its first occurrence.
KVCODEC_TARGET_AVX2 inline void min_max8x4(const __m256 v[4], float* mn, float* mx) noexcept {
  float lo = hmin8(_mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3])));
  float hi = hmax8(_mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3])));
  if (lo == 0.0f || hi == 0.0f) {
    alignas(32) float t[32];
    for (int k = 0; k < 4; ++k) _mm256_store_ps(t + 8 * k, v[k]);
    for (std::size_t j = 0; j < qk; ++j)
      if (t[j] == 0.0f) {
        if (lo == 0.0f) lo = t[j];
        if (hi == 0.0f) hi = t[j];
        break;
      }
  }
  *mn = lo;
  *mx = hi;
}
/// trunc_sat(v, 0, hi, nan_code) per lane.
KVCODEC_TARGET_AVX2 inline __m256i trunc_sat8(__m256 v, float hi, int nan_code) noexcept {
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  const __m256 c = _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(hi));
  return _mm256_blendv_epi8(_mm256_cvttps_epi32(c), _mm256_set1_epi32(nan_code), _mm256_castps_si256(nan));
}
/// Bytes q[j] | q[j + 16] << 4 (j < 16) of the four 8-lane code vectors of a block.
KVCODEC_TARGET_AVX2 inline void store_nibbles(const __m256i q[4], std::uint8_t* out) noexcept {
  const __m256i m = _mm256_set1_epi32(0x0f);
  const __m256i c0 = _mm256_or_si256(_mm256_and_si256(q[0], m), _mm256_slli_epi32(_mm256_and_si256(q[2], m), 4));
  const __m256i c1 = _mm256_or_si256(_mm256_and_si256(q[1], m), _mm256_slli_epi32(_mm256_and_si256(q[3], m), 4));
  const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(c0, c1), 0xd8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1)));
}
KVCODEC_TARGET_AVX2 inline std::uint32_t high_bits(const __m256i q[4]) noexcept {
  std::uint32_t h = 0;
  for (int k = 0; k < 4; ++k)
    h |= static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(q[k], 27)))) << (8 * k);
  return h;
}

KVCODEC_TARGET_AVX2 inline void quantize_q8_0_avx2(const float* x, std::uint8_t* out) noexcept {
  __m256 v[4];
  load_block_fz(x, v);
  const float amax = hmax8(_mm256_max_ps(_mm256_max_ps(abs8(v[0]), abs8(v[1])), _mm256_max_ps(abs8(v[2]), abs8(v[3]))));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16_avx2(out, d);
  const __m256 idv = _mm256_set1_ps(id), half = _mm256_set1_ps(0.5f);
  const __m256 signm = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
  __m256i q[4];
  for (int k = 0; k < 4; ++k) {
    const __m256 w = kvcodec::detail::mul_ps_rn(v[k], idv);
    __m256 r = _mm256_round_ps(w, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 up = _mm256_cmp_ps(abs8(_mm256_sub_ps(w, r)), half, _CMP_GE_OQ);
    r = _mm256_add_ps(r, _mm256_and_ps(up, _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(w, signm))));
    r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
    r = _mm256_andnot_ps(_mm256_cmp_ps(w, w, _CMP_UNORD_Q), r);
    q[k] = _mm256_cvttps_epi32(r);
  }
  const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2), _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

/// q4_0 (NB = 4) and q5_0 (NB = 5).
template <int NB>
KVCODEC_TARGET_AVX2 inline void quantize_x_0_avx2(const float* x, std::uint8_t* out) noexcept {
  constexpr int zp = 1 << (NB - 1);
  __m256 v[4];
  load_block_fz(x, v);
  const float mx = signed_absmax8x4(v, nullptr);
  const float d = mx / -static_cast<float>(zp);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16_avx2(out, d);
  const __m256 idv = _mm256_set1_ps(id), off = _mm256_set1_ps(static_cast<float>(zp) + 0.5f);
  __m256i q[4];
  for (int k = 0; k < 4; ++k) q[k] = trunc_sat8(_mm256_add_ps(kvcodec::detail::mul_ps_rn(v[k], idv), off), static_cast<float>(2 * zp - 1), zp);
  if constexpr (NB == 4) {
    store_nibbles(q, out + 2);
  } else {
    kvcodec::detail::store_le32(out + 2, high_bits(q));
    store_nibbles(q, out + 6);
  }
}

/// q4_1 (NB = 4) and q5_1 (NB = 5).
template <int NB>
KVCODEC_TARGET_AVX2 inline void quantize_x_1_avx2(const float* x, std::uint8_t* out) noexcept {
  constexpr int top = (1 << NB) - 1;
  __m256 v[4];
  load_block_fz(x, v);
  float mn, mx;
  min_max8x4(v, &mn, &mx);
  const float d = (mx - mn) / static_cast<float>(top);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16_avx2(out, d);
  put_f16_avx2(out + 2, mn);
  const __m256 idv = _mm256_set1_ps(id), mnv = _mm256_set1_ps(mn), half = _mm256_set1_ps(0.5f);
  __m256i q[4];
  for (int k = 0; k < 4; ++k) q[k] = trunc_sat8(_mm256_add_ps(kvcodec::detail::mul_ps_rn(_mm256_sub_ps(v[k], mnv), idv), half), static_cast<float>(top), 0);
  if constexpr (NB == 4) {
    store_nibbles(q, out + 4);
  } else {
    kvcodec::detail::store_le32(out + 4, high_bits(q));
    store_nibbles(q, out + 8);
  }
}

/// Lane g of the result = max (Max) or min over the 8 lanes of a[g].
template <bool Max>
KVCODEC_TARGET_AVX2 inline __m256 minmax8(__m256 u, __m256 v) noexcept {
  return Max ? _mm256_max_ps(u, v) : _mm256_min_ps(u, v);
}
template <bool Max>
KVCODEC_TARGET_AVX2 inline __m256 reduce8x8(const __m256 a[8]) noexcept {
  __m256 t[4];
  for (int k = 0; k < 4; ++k) t[k] = minmax8<Max>(_mm256_unpacklo_ps(a[2 * k], a[2 * k + 1]), _mm256_unpackhi_ps(a[2 * k], a[2 * k + 1]));
  const __m256 u0 = minmax8<Max>(_mm256_shuffle_ps(t[0], t[1], 0x44), _mm256_shuffle_ps(t[0], t[1], 0xee));
  const __m256 u1 = minmax8<Max>(_mm256_shuffle_ps(t[2], t[3], 0x44), _mm256_shuffle_ps(t[2], t[3], 0xee));
  return minmax8<Max>(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
/// d != 0 ? 1/d : 0 per lane.
KVCODEC_TARGET_AVX2 inline __m256 inv_or_zero8(__m256 d) noexcept {
  return _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), d), _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_NEQ_UQ));
}
/// True when every lane of a and b is finite.
KVCODEC_TARGET_AVX2 inline bool all_finite8(__m256 a, __m256 b) noexcept {
  const __m256 inf = _mm256_set1_ps(__builtin_inff());
  const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(abs8(a), inf, _CMP_LT_OQ), _mm256_cmp_ps(abs8(b), inf, _CMP_LT_OQ));
  return _mm256_movemask_ps(ok) == 0xff;
}
/// Codes of 32 values (4 x 8 int32 lanes; negative reads as 0) clamped to [0, top], as bytes in element order.
KVCODEC_TARGET_AVX2 inline __m256i codes_u8(const __m256i q[4], int top) noexcept {
  const __m256i p = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[3]));
  return _mm256_permutevar8x32_epi32(_mm256_min_epu8(p, _mm256_set1_epi8(static_cast<char>(top))), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
/// ggml nibble bytes (and, for 5-bit codes, qh) of 32 byte codes in element order.
template <int NB>
KVCODEC_TARGET_AVX2 inline void store_codes_u8(__m256i c, std::uint8_t* qs, std::uint8_t* qh) noexcept {
  const __m128i lo = _mm256_castsi256_si128(c), hi = _mm256_extracti128_si256(c, 1);
  if constexpr (NB == 4) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qs), _mm_or_si128(lo, _mm_slli_epi16(hi, 4)));
  } else {
    kvcodec::detail::store_le32(qh, static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_slli_epi16(c, 3))));
    const __m128i m = _mm_set1_epi8(0x0f);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qs), _mm_or_si128(_mm_and_si128(lo, m), _mm_slli_epi16(_mm_and_si128(hi, m), 4)));
  }
}

/// Eight q8_0 blocks; false (nothing written) when a value is not finite or some 1/d overflows.
KVCODEC_TARGET_AVX2 inline bool quantize8_q8_0_avx2(const float* x, std::uint8_t* out) noexcept {
  const __m256i absm = _mm256_set1_epi32(0x7fffffff);
  __m256 am[8];
  for (int g = 0; g < 8; ++g) {
    const float* xg = x + g * qk;
    __m256i a = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg)), absm);
    for (int k = 1; k < 4; ++k) a = _mm256_max_epi32(a, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + 8 * k)), absm));
    am[g] = _mm256_castsi256_ps(a);
  }
  __m256i top = _mm256_castps_si256(am[0]);
  for (int g = 1; g < 8; ++g) top = _mm256_max_epi32(top, _mm256_castps_si256(am[g]));
  if (!_mm256_testz_si256(_mm256_cmpgt_epi32(top, _mm256_set1_epi32(0x7f7fffff)), _mm256_set1_epi32(-1))) return false;
  const __m256 d = _mm256_div_ps(reduce8x8<true>(am), _mm256_set1_ps(127.0f));
  const __m256 id = inv_or_zero8(d);
  if (!all_finite8(d, id)) return false;
  alignas(16) std::uint16_t dh[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(dh), _mm256_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  alignas(32) float idl[8];
  _mm256_store_ps(idl, id);
  const __m256 signm = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
  const __m256 half = _mm256_set1_ps(0.5f), below_half = _mm256_set1_ps(0.49999997f);
  for (int g = 0; g < 8; ++g) {
    const float* xg = x + g * qk;
    std::uint8_t* o = out + g * 34;
    const __m256 idv = _mm256_set1_ps(idl[g]);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) {
      const __m256 w = kvcodec::detail::mul_ps_rn(_mm256_loadu_ps(xg + 8 * k), idv);
      // round half away from zero = trunc(w + copysign(0.5, w)), except |w| = 0.5 - 2^-25 where the sum rounds up
      const __m256i r = _mm256_cvttps_epi32(_mm256_add_ps(w, _mm256_or_ps(half, _mm256_and_ps(w, signm))));
      q[k] = _mm256_andnot_si256(_mm256_castps_si256(_mm256_cmp_ps(abs8(w), below_half, _CMP_EQ_OQ)), r);
    }
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    const __m256i c = _mm256_max_epi8(p, _mm256_set1_epi8(-127));
    std::memcpy(o, dh + g, 2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 2), _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
  return true;
}

/// Eight q4_0 (NB = 4) or q5_0 (NB = 5) blocks; false (nothing written) as quantize8_q8_0_avx2.
template <int NB>
KVCODEC_TARGET_AVX2 inline bool quantize8_x_0_avx2(const float* x, std::uint8_t* out) noexcept {
  constexpr int zp = 1 << (NB - 1);
  constexpr std::size_t bb = NB == 4 ? 18 : 22;
  __m256 hi[8], lo[8], s = _mm256_setzero_ps();
  for (int g = 0; g < 8; ++g) {
    const float* xg = x + g * qk;
    const __m256 v0 = _mm256_loadu_ps(xg), v1 = _mm256_loadu_ps(xg + 8), v2 = _mm256_loadu_ps(xg + 16), v3 = _mm256_loadu_ps(xg + 24);
    hi[g] = _mm256_max_ps(_mm256_max_ps(v0, v1), _mm256_max_ps(v2, v3));
    lo[g] = _mm256_min_ps(_mm256_min_ps(v0, v1), _mm256_min_ps(v2, v3));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
  }
  if (!all_finite8(s, s)) return false;  // a non-finite input makes s non-finite (huge finite sums only cost the fast path)
  const __m256 h = reduce8x8<true>(hi), l = reduce8x8<false>(lo);
  const __m256 nl = _mm256_xor_ps(l, _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u))));
  __m256 mx = _mm256_blendv_ps(l, h, _mm256_cmp_ps(h, nl, _CMP_GT_OQ));
  const __m256 tie = _mm256_cmp_ps(h, nl, _CMP_EQ_OQ);
  mx = _mm256_andnot_ps(_mm256_and_ps(tie, _mm256_cmp_ps(h, _mm256_setzero_ps(), _CMP_EQ_OQ)), mx);
  if (int tm = _mm256_movemask_ps(_mm256_andnot_ps(_mm256_cmp_ps(h, _mm256_setzero_ps(), _CMP_EQ_OQ), tie))) {
    alignas(32) float m8[8];
    _mm256_store_ps(m8, mx);
    for (; tm != 0; tm &= tm - 1) {
      const int g = __builtin_ctz(static_cast<unsigned>(tm));
      m8[g] = signed_absmax(x + g * qk, nullptr);
    }
    mx = _mm256_load_ps(m8);
  }
  const __m256 d = _mm256_div_ps(mx, _mm256_set1_ps(-static_cast<float>(zp)));
  const __m256 id = inv_or_zero8(d);
  if (!all_finite8(d, id)) return false;
  alignas(16) std::uint16_t dh[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(dh), _mm256_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  alignas(32) float idl[8];
  _mm256_store_ps(idl, id);
  const __m256 off = _mm256_set1_ps(static_cast<float>(zp) + 0.5f);
  for (int g = 0; g < 8; ++g) {
    const float* xg = x + g * qk;
    std::uint8_t* o = out + g * bb;
    const __m256 idv = _mm256_set1_ps(idl[g]);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) q[k] = _mm256_cvttps_epi32(_mm256_add_ps(kvcodec::detail::mul_ps_rn(_mm256_loadu_ps(xg + 8 * k), idv), off));
    std::memcpy(o, dh + g, 2);
    store_codes_u8<NB>(codes_u8(q, 2 * zp - 1), o + (NB == 4 ? 2 : 6), o + 2);
  }
  return true;
}

/// Eight q4_1 (NB = 4) or q5_1 (NB = 5) blocks; false (nothing written) as quantize8_q8_0_avx2.
template <int NB>
KVCODEC_TARGET_AVX2 inline bool quantize8_x_1_avx2(const float* x, std::uint8_t* out) noexcept {
  constexpr int top = (1 << NB) - 1;
  constexpr std::size_t bb = NB == 4 ? 20 : 24;
  __m256 hi[8], lo[8], s = _mm256_setzero_ps();
  for (int g = 0; g < 8; ++g) {
    const float* xg = x + g * qk;
    const __m256 v0 = _mm256_loadu_ps(xg), v1 = _mm256_loadu_ps(xg + 8), v2 = _mm256_loadu_ps(xg + 16), v3 = _mm256_loadu_ps(xg + 24);
    hi[g] = _mm256_max_ps(_mm256_max_ps(v0, v1), _mm256_max_ps(v2, v3));
    lo[g] = _mm256_min_ps(_mm256_min_ps(v0, v1), _mm256_min_ps(v2, v3));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
  }
  if (!all_finite8(s, s)) return false;
  __m256 h = reduce8x8<true>(hi), l = reduce8x8<false>(lo);
  const __m256 zero = _mm256_setzero_ps();
  if (int zm = _mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(h, zero, _CMP_EQ_OQ), _mm256_cmp_ps(l, zero, _CMP_EQ_OQ)))) {
    alignas(32) float h8[8], l8[8];
    _mm256_store_ps(h8, h);
    _mm256_store_ps(l8, l);
    for (; zm != 0; zm &= zm - 1) {
      const int g = __builtin_ctz(static_cast<unsigned>(zm));
      min_max(x + g * qk, l8 + g, h8 + g);
    }
    h = _mm256_load_ps(h8);
    l = _mm256_load_ps(l8);
  }
  const __m256 d = _mm256_div_ps(_mm256_sub_ps(h, l), _mm256_set1_ps(static_cast<float>(top)));
  const __m256 id = inv_or_zero8(d);
  if (!all_finite8(d, id)) return false;
  alignas(16) std::uint16_t dh[8], mh[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(dh), _mm256_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  _mm_store_si128(reinterpret_cast<__m128i*>(mh), _mm256_cvtps_ph(l, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  alignas(32) float idl[8], mnl[8];
  _mm256_store_ps(idl, id);
  _mm256_store_ps(mnl, l);
  const __m256 half = _mm256_set1_ps(0.5f);
  for (int g = 0; g < 8; ++g) {
    const float* xg = x + g * qk;
    std::uint8_t* o = out + g * bb;
    const __m256 idv = _mm256_set1_ps(idl[g]), mnv = _mm256_set1_ps(mnl[g]);
    __m256i q[4];
    for (int k = 0; k < 4; ++k)
      q[k] = _mm256_cvttps_epi32(_mm256_add_ps(kvcodec::detail::mul_ps_rn(_mm256_sub_ps(_mm256_loadu_ps(xg + 8 * k), mnv), idv), half));
    std::memcpy(o, dh + g, 2);
    std::memcpy(o + 2, mh + g, 2);
    store_codes_u8<NB>(codes_u8(q, top), o + (NB == 4 ? 4 : 8), o + 4);
  }
  return true;
}

/// nb blocks of one type (K as in quantize_rows8_avx2), one at a time.
template <int K>
KVCODEC_TARGET_AVX2 inline void quantize_blocks_avx2(const float* x, std::size_t nb, std::uint8_t* out) noexcept {
  constexpr std::size_t bb = K == 0 ? 34 : K == 1 ? 18 : K == 2 ? 22 : K == 3 ? 20 : 24;
  for (std::size_t b = 0; b < nb; ++b) {
    if constexpr (K == 0) quantize_q8_0_avx2(x + b * qk, out + b * bb);
    else if constexpr (K <= 2) quantize_x_0_avx2<K + 3>(x + b * qk, out + b * bb);
    else quantize_x_1_avx2<K + 1>(x + b * qk, out + b * bb);
  }
}

/// nb blocks of one type (K: 0 q8_0, 1 q4_0, 2 q5_0, 3 q4_1, 4 q5_1), eight at a time where the batch
/// kernel accepts them, otherwise (and for the tail) one at a time.
template <int K>
KVCODEC_TARGET_AVX2 inline void quantize_rows8_avx2(const float* x, std::size_t nb, std::uint8_t* out) noexcept {
  constexpr std::size_t bb = K == 0 ? 34 : K == 1 ? 18 : K == 2 ? 22 : K == 3 ? 20 : 24;
  std::size_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    bool ok;
    if constexpr (K == 0) ok = quantize8_q8_0_avx2(x + b * qk, out + b * bb);
    else if constexpr (K <= 2) ok = quantize8_x_0_avx2<K + 3>(x + b * qk, out + b * bb);
    else ok = quantize8_x_1_avx2<K + 1>(x + b * qk, out + b * bb);
    if (!ok) quantize_blocks_avx2<K>(x + b * qk, 8, out + b * bb);
  }
  quantize_blocks_avx2<K>(x + b * qk, nb - b, out + b * bb);
}

KVCODEC_TARGET_AVX2 inline void quantize_row_avx2(block_type t, const float* x, std::size_t nb, std::uint8_t* out) noexcept {
  const std::size_t bb = block_bytes(t);
  switch (t) {
    case block_type::q8_0: quantize_rows8_avx2<0>(x, nb, out); break;
    case block_type::q4_0: quantize_rows8_avx2<1>(x, nb, out); break;
    case block_type::q5_0: quantize_rows8_avx2<2>(x, nb, out); break;
    case block_type::q4_1: quantize_rows8_avx2<3>(x, nb, out); break;
    case block_type::q5_1: quantize_rows8_avx2<4>(x, nb, out); break;
    case block_type::iq4_nl: for (std::size_t b = 0; b < nb; ++b) quantize_block_iq4_nl(x + b * qk, out + b * bb); break;
  }
}

/// The 32 codes of a 16-byte nibble array as 4 x 8 int32 lanes (elements 0..31).
KVCODEC_TARGET_AVX2 inline void nibbles_to_i32(const std::uint8_t* qs, __m256i q[4]) noexcept {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0f));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f));
  q[0] = _mm256_cvtepu8_epi32(lo);
  q[1] = _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8));
  q[2] = _mm256_cvtepu8_epi32(hi);
  q[3] = _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8));
}
KVCODEC_TARGET_AVX2 inline void add_high_bits(std::uint32_t qh, __m256i q[4]) noexcept {
  const __m256i h = _mm256_set1_epi32(static_cast<int>(qh));
  const __m256i sh = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int k = 0; k < 4; ++k) {
    const __m256i bit = _mm256_and_si256(_mm256_srlv_epi32(h, _mm256_add_epi32(sh, _mm256_set1_epi32(8 * k))), _mm256_set1_epi32(1));
    q[k] = _mm256_or_si256(q[k], _mm256_slli_epi32(bit, 4));
  }
}

/// The 32 dequantized values of one block.
KVCODEC_TARGET_AVX2 inline void dequantize_block_avx2(block_type t, const std::uint8_t* in, __m256 y[4]) noexcept {
  __m256i q[4];
  const __m256 d = _mm256_set1_ps(f16_at(in));
  switch (t) {
    case block_type::q8_0:
      for (int k = 0; k < 4; ++k)
        y[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(in + 2 + 8 * k)))), d);
      return;
    case block_type::q4_0:
      nibbles_to_i32(in + 2, q);
      for (int k = 0; k < 4; ++k) y[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q[k], _mm256_set1_epi32(8))), d);
      return;
    case block_type::q4_1: {
      const __m256 m = _mm256_set1_ps(f16_at(in + 2));
      nibbles_to_i32(in + 4, q);
      for (int k = 0; k < 4; ++k) y[k] = _mm256_add_ps(m, kvcodec::detail::mul_ps_rn(_mm256_cvtepi32_ps(q[k]), d));
      return;
    }
    case block_type::q5_0:
      nibbles_to_i32(in + 6, q);
      add_high_bits(kvcodec::detail::load_le32(in + 2), q);
      for (int k = 0; k < 4; ++k) y[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q[k], _mm256_set1_epi32(16))), d);
      return;
    case block_type::q5_1: {
      const __m256 m = _mm256_set1_ps(f16_at(in + 2));
      nibbles_to_i32(in + 8, q);
      add_high_bits(kvcodec::detail::load_le32(in + 4), q);
      for (int k = 0; k < 4; ++k) y[k] = _mm256_add_ps(m, kvcodec::detail::mul_ps_rn(_mm256_cvtepi32_ps(q[k]), d));
      return;
    }
    case block_type::iq4_nl: {
      const __m128i lut = _mm_setr_epi8(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2));
      const __m128i lo = _mm_shuffle_epi8(lut, _mm_and_si128(b, _mm_set1_epi8(0x0f)));
      const __m128i hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f)));
      const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
      for (int k = 0; k < 4; ++k) y[k] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[k])));
      return;
    }
  }
  for (int k = 0; k < 4; ++k) y[k] = _mm256_setzero_ps();
}

KVCODEC_TARGET_AVX2 inline void dequantize_row_avx2(block_type t, const std::uint8_t* in, std::size_t nb, float* y) noexcept {
  const std::size_t bb = block_bytes(t);
  for (std::size_t b = 0; b < nb; ++b) {
    __m256 v[4];
    dequantize_block_avx2(t, in + b * bb, v);
    for (int k = 0; k < 4; ++k) _mm256_storeu_ps(y + b * qk + 8 * k, v[k]);
  }
}

KVCODEC_TARGET_AVX2 inline void dequantize_row_f16_avx2(block_type t, const std::uint8_t* in, std::size_t nb, std::uint16_t* y) noexcept {
  const std::size_t bb = block_bytes(t);
  for (std::size_t b = 0; b < nb; ++b) {
    __m256 v[4];
    dequantize_block_avx2(t, in + b * bb, v);
    for (int k = 0; k < 4; k += 2) {
      const __m128i a = _mm256_cvtps_ph(v[k], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m128i c = _mm256_cvtps_ph(v[k + 1], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + b * qk + 8 * k), _mm256_set_m128i(c, a));
    }
  }
}

}  // namespace kvcodec::ggml::detail
#endif
