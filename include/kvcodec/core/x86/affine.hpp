// kvcodec/core/x86/affine.hpp — AVX2 / F16C kernels of the bulk affine quantizer: runs of contiguous
// groups (8 groups' parameters at a time), strided groups of 8 channels, and 2/4/8-bit packing.
//
// Each kernel equals its scalar reference in core/scalar/affine.hpp bit for bit: the codes use the
// same double arithmetic (or an f32 shortcut only where it provably gives the same code), the
// parameters the same f16 rounding (F16C equals f32_to_f16_bits on every f32), and a zero minimum
// keeps the sign of its first occurrence. Compiled only where core/simd.hpp can dispatch;
// core/affine.hpp picks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvcodec/core/scalar/affine.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/core/x86/floats.hpp"

#if KVCODEC_X86_DISPATCH
namespace kvcodec::affine::detail {

/// round_param with F16C (the same result as f32_to_f16_bits' round-to-nearest-even, checked on every float).
struct round_param_f16c {
  KVCODEC_TARGET_AVX2 float operator()(float v, param_dtype pd) const noexcept {
    if (pd == param_dtype::f32) return v;
    unsigned short h = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if ((h & 0x7fffu) == 0x7c00u) h = static_cast<unsigned short>((h & 0x8000u) | 0x7bffu);
    return _cvtsh_ss(h);
  }
};
// flatten: the F16C rounding is inlined here (it cannot be inlined into the generic template body).
KVCODEC_TARGET_AVX2 __attribute__((flatten)) inline params params_from_range_avx2(float lo, float hi, int bits, param_dtype pd) noexcept {
  return params_from_range(lo, hi, bits, pd, round_param_f16c{});
}
KVCODEC_TARGET_AVX2 __attribute__((flatten)) inline params params_from_amax_avx2(float amax, int bits, param_dtype pd) noexcept {
  return params_from_amax(amax, bits, pd, round_param_f16c{});
}
KVCODEC_TARGET_AVX2 inline void store_params_avx2(const params& p, mode m, param_dtype pd, std::uint8_t* out) noexcept {
  if (pd == param_dtype::f32) {
    std::memcpy(out, &p.scale, 4);
    if (m == mode::asymmetric) std::memcpy(out + 4, &p.min, 4);
    return;
  }
  const unsigned short a = _cvtss_sh(p.scale, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  std::memcpy(out, &a, 2);
  if (m == mode::asymmetric) {
    const unsigned short b = _cvtss_sh(p.min, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    std::memcpy(out + 2, &b, 2);
  }
}
KVCODEC_TARGET_AVX2 inline params load_params_avx2(const std::uint8_t* in, mode m, param_dtype pd) noexcept {
  params p;
  if (pd == param_dtype::f32) {
    std::memcpy(&p.scale, in, 4);
    if (m == mode::asymmetric) std::memcpy(&p.min, in + 4, 4);
  } else {
    unsigned short a;
    std::memcpy(&a, in, 2);
    p.scale = _cvtsh_ss(a);
    if (m == mode::asymmetric) {
      std::memcpy(&a, in + 2, 2);
      p.min = _cvtsh_ss(a);
    }
  }
  return p;
}

KVCODEC_TARGET_AVX2 inline __m256i finite_mask8(__m256 v) noexcept {
  const __m256i em = _mm256_set1_epi32(0x7f800000);
  return _mm256_xor_si256(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(v), em), em), _mm256_set1_epi32(-1));
}

/// Per-lane parameters of 8 groups for codes8: scale and min as doubles (two halves) and as floats,
/// the f32 reciprocal of the scale, the lanes whose scale is not > 0, and whether the f32 reciprocal is
/// finite wherever the scale is > 0 (else the exact path is always taken).
struct lanes8 {
  __m256d sc0, sc1, mn0, mn1;
  __m256 mnf, rcf;
  __m256i zl;
  bool fast;
};
KVCODEC_TARGET_AVX2 inline lanes8 make_lanes8(__m256 scv, __m256 mnv) noexcept {
  lanes8 p;
  p.sc0 = _mm256_cvtps_pd(_mm256_castps256_ps128(scv));
  p.sc1 = _mm256_cvtps_pd(_mm256_extractf128_ps(scv, 1));
  p.mn0 = _mm256_cvtps_pd(_mm256_castps256_ps128(mnv));
  p.mn1 = _mm256_cvtps_pd(_mm256_extractf128_ps(mnv, 1));
  p.mnf = mnv;
  p.rcf = _mm256_div_ps(_mm256_set1_ps(1.0f), scv);
  const __m256 pos = _mm256_cmp_ps(scv, _mm256_setzero_ps(), _CMP_GT_OQ);
  p.zl = _mm256_castps_si256(_mm256_cmp_ps(scv, _mm256_setzero_ps(), _CMP_NGT_UQ));
  const __m256 rinf = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), p.rcf), _mm256_set1_ps(__builtin_inff()), _CMP_EQ_OQ);
  p.fast = _mm256_movemask_ps(_mm256_and_ps(pos, rinf)) == 0;
  return p;
}

/// Codes of 8 values with per-lane parameters; `zl` lanes get code 0 (asymmetric, scale not > 0) or the
/// zero point (symmetric). Mirrors quantize_value with its double arithmetic.
KVCODEC_TARGET_AVX2 inline __m256i codes8_exact(__m256 v, const lanes8& p, int bits, mode m) noexcept {
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  const __m256d half = _mm256_set1_pd(0.5);
  __m128i q0, q1;
  if (m == mode::asymmetric) {
    v = _mm256_andnot_ps(nan, v);
    const __m256d top = _mm256_set1_pd(static_cast<double>(max_code(bits)));
    const __m256d t0 = _mm256_div_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), p.mn0), p.sc0);
    const __m256d t1 = _mm256_div_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), p.mn1), p.sc1);
    const __m256d r0 = _mm256_and_pd(_mm256_cmp_pd(t0, _mm256_setzero_pd(), _CMP_GT_OQ),
                                     _mm256_min_pd(_mm256_floor_pd(_mm256_add_pd(t0, half)), top));
    const __m256d r1 = _mm256_and_pd(_mm256_cmp_pd(t1, _mm256_setzero_pd(), _CMP_GT_OQ),
                                     _mm256_min_pd(_mm256_floor_pd(_mm256_add_pd(t1, half)), top));
    q0 = _mm256_cvttpd_epi32(r0);
    q1 = _mm256_cvttpd_epi32(r1);
    return _mm256_andnot_si256(p.zl, _mm256_set_m128i(q1, q0));
  }
  const int zp = static_cast<int>(sym_zero(bits));
  const __m256d lim = _mm256_set1_pd(static_cast<double>(zp - 1)), nlim = _mm256_set1_pd(-static_cast<double>(zp - 1));
  const __m256 vz = _mm256_andnot_ps(nan, v);
  __m256d t0 = _mm256_div_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(vz)), p.sc0);
  __m256d t1 = _mm256_div_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(vz, 1)), p.sc1);
  t0 = _mm256_max_pd(_mm256_min_pd(t0, lim), nlim);
  t1 = _mm256_max_pd(_mm256_min_pd(t1, lim), nlim);
  q0 = _mm256_cvttpd_epi32(_mm256_floor_pd(_mm256_add_pd(t0, half)));
  q1 = _mm256_cvttpd_epi32(_mm256_floor_pd(_mm256_add_pd(t1, half)));
  const __m256i q = _mm256_add_epi32(_mm256_set_m128i(q1, q0), _mm256_set1_epi32(zp));
  return _mm256_blendv_epi8(q, _mm256_set1_epi32(zp), _mm256_or_si256(p.zl, _mm256_castps_si256(nan)));
}

/// codes8_exact, computed in f32 with the reciprocal when that provably gives the same codes: the f32
/// quotient t' is within 3·2^-24·|t| <= 2^-14 (|t| <= 256 after clamping) of the exact one, so unless t'
/// (clamped) + 0.5 lies within 2^-12 of an integer, floor(t' + 0.5) is the reference's code. Lanes near
/// such a boundary, an overflowing f32 difference (v - min), or a non-finite reciprocal send the
/// whole vector to codes8_exact. A NaN quotient (scale 0: 0·Inf) clamps to the lower bound, never flags.
KVCODEC_TARGET_AVX2 inline __m256i codes8(__m256 v, const lanes8& p, int bits, mode m) noexcept {
  if (!p.fast) return codes8_exact(v, p, bits, m);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  const __m256 vz = _mm256_andnot_ps(nan, v);
  const __m256 half = _mm256_set1_ps(0.5f), eps = _mm256_set1_ps(0x1p-12f), oneeps = _mm256_set1_ps(1.0f - 0x1p-12f);
  if (m == mode::asymmetric) {
    const __m256 d = _mm256_sub_ps(vz, p.mnf);
    const __m256 t = kvcodec::detail::mul_ps_rn(d, p.rcf);
    const __m256 u = _mm256_add_ps(_mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps(static_cast<float>(max_code(bits)))), half);
    const __m256 fl = _mm256_floor_ps(u), f = _mm256_sub_ps(u, fl);
    const __m256 flag = _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(f, eps, _CMP_LT_OQ), _mm256_cmp_ps(f, oneeps, _CMP_GT_OQ)),
                                     _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), d), _mm256_set1_ps(__builtin_inff()), _CMP_EQ_OQ));
    if (_mm256_movemask_ps(flag)) return codes8_exact(v, p, bits, m);
    return _mm256_andnot_si256(p.zl, _mm256_cvttps_epi32(fl));
  }
  const int zp = static_cast<int>(sym_zero(bits));
  const __m256 lim = _mm256_set1_ps(static_cast<float>(zp - 1));
  const __m256 t = kvcodec::detail::mul_ps_rn(vz, p.rcf);
  const __m256 u = _mm256_add_ps(_mm256_max_ps(_mm256_min_ps(t, lim), _mm256_sub_ps(_mm256_setzero_ps(), lim)), half);
  const __m256 fl = _mm256_floor_ps(u), f = _mm256_sub_ps(u, fl);
  if (_mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(f, eps, _CMP_LT_OQ), _mm256_cmp_ps(f, oneeps, _CMP_GT_OQ))))
    return codes8_exact(v, p, bits, m);
  const __m256i q = _mm256_add_epi32(_mm256_cvttps_epi32(fl), _mm256_set1_epi32(zp));
  return _mm256_blendv_epi8(q, _mm256_set1_epi32(zp), _mm256_or_si256(p.zl, _mm256_castps_si256(nan)));
}

template <class Sym>
KVCODEC_TARGET_AVX2 inline void store_codes8(__m256i q, Sym* out) noexcept {
  const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(q, q), 0x08);
  if constexpr (sizeof(Sym) == 2) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(p));
  } else {
    const __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_castsi256_si128(p));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out), b);
  }
}
template <class Sym>
KVCODEC_TARGET_AVX2 inline __m256 load_codes8(const Sym* in) noexcept {
  if constexpr (sizeof(Sym) == 2)
    return _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in))));
  else
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(in))));
}

template <bool Max>
KVCODEC_TARGET_AVX2 inline __m256 minmax_ps(__m256 a, __m256 b) noexcept {
  if constexpr (Max)
    return _mm256_max_ps(a, b);
  else
    return _mm256_min_ps(a, b);
}
/// Lane g of the result is the min (max) over the 8 lanes of a[g].
template <bool Max>
KVCODEC_TARGET_AVX2 inline __m256 reduce8x8(const __m256 a[8]) noexcept {
  __m256 t[4];
  for (int k = 0; k < 4; ++k)
    t[k] = minmax_ps<Max>(_mm256_unpacklo_ps(a[2 * k], a[2 * k + 1]), _mm256_unpackhi_ps(a[2 * k], a[2 * k + 1]));
  const __m256 u0 = minmax_ps<Max>(_mm256_shuffle_ps(t[0], t[1], 0x44), _mm256_shuffle_ps(t[0], t[1], 0xee));
  const __m256 u1 = minmax_ps<Max>(_mm256_shuffle_ps(t[2], t[3], 0x44), _mm256_shuffle_ps(t[2], t[3], 0xee));
  return minmax_ps<Max>(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
/// round_param per lane.
KVCODEC_TARGET_AVX2 inline __m256 round_param8(__m256 v, param_dtype pd) noexcept {
  if (pd == param_dtype::f32) return v;
  __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m128i inf = _mm_cmpeq_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7fff)), _mm_set1_epi16(0x7c00));
  h = _mm_blendv_epi8(h, _mm_or_si128(_mm_and_si128(h, _mm_set1_epi16(static_cast<short>(0x8000))), _mm_set1_epi16(0x7bff)), inf);
  return _mm256_cvtph_ps(h);
}
/// params_from_range per lane (lo, hi finite).
KVCODEC_TARGET_AVX2 inline void params_from_range8(__m256 lo, __m256 hi, int bits, param_dtype pd, __m256* sc, __m256* mn) noexcept {
  const __m256 mv = round_param8(lo, pd);
  const __m256d top = _mm256_set1_pd(static_cast<double>(max_code(bits)));
  const __m128 r0 = _mm256_cvtpd_ps(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(hi)), _mm256_cvtps_pd(_mm256_castps256_ps128(mv))));
  const __m128 r1 = _mm256_cvtpd_ps(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(hi, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(mv, 1))));
  const __m128 s0 = _mm256_cvtpd_ps(_mm256_div_pd(_mm256_cvtps_pd(r0), top));
  const __m128 s1 = _mm256_cvtpd_ps(_mm256_div_pd(_mm256_cvtps_pd(r1), top));
  __m256 s = _mm256_and_ps(_mm256_set_m128(s1, s0), _mm256_cmp_ps(_mm256_set_m128(r1, r0), _mm256_setzero_ps(), _CMP_GT_OQ));
  s = round_param8(s, pd);
  const __m256i em = _mm256_set1_epi32(0x7f800000);
  const __m256 nf = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(s), em), em));
  *sc = _mm256_blendv_ps(s, _mm256_set1_ps(pd == param_dtype::f16 ? 65504.0f : 3.4028234663852886e38f), nf);
  *mn = mv;
}
/// store_params of 8 consecutive groups (lanes) at out, out + pb, ...
KVCODEC_TARGET_AVX2 inline void store_params8(__m256 sc, __m256 mn, mode m, param_dtype pd, std::uint8_t* out) noexcept {
  if (pd == param_dtype::f16) {
    const __m128i hs = _mm256_cvtps_ph(sc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if (m == mode::asymmetric) {
      const __m128i hm = _mm256_cvtps_ph(mn, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_unpacklo_epi16(hs, hm));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm_unpackhi_epi16(hs, hm));
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), hs);
    }
  } else if (m == mode::asymmetric) {
    const __m256 a = _mm256_unpacklo_ps(sc, mn), b = _mm256_unpackhi_ps(sc, mn);
    _mm256_storeu_ps(reinterpret_cast<float*>(out), _mm256_permute2f128_ps(a, b, 0x20));
    _mm256_storeu_ps(reinterpret_cast<float*>(out + 32), _mm256_permute2f128_ps(a, b, 0x31));
  } else {
    _mm256_storeu_ps(reinterpret_cast<float*>(out), sc);
  }
}

/// Codes of one group of G (a multiple of 8) values with parameters p.
template <class Sym>
KVCODEC_TARGET_AVX2 inline void group_codes_avx2(const float* xg, std::size_t G, float scale, float min, int bits, mode m, Sym* q) noexcept {
  const lanes8 p = make_lanes8(_mm256_set1_ps(scale), _mm256_set1_ps(min));
  for (std::size_t i = 0; i < G; i += 8) store_codes8(codes8(_mm256_loadu_ps(xg + i), p, bits, m), q + i);
}

/// 8 consecutive groups of G contiguous values (G a multiple of 8), parameters computed 8 at a time.
template <class Sym>
KVCODEC_TARGET_AVX2 inline void quantize_groups8_avx2(const float* x, std::size_t G, int bits, mode m, param_dtype pd, std::uint8_t* side,
                                                      Sym* q) noexcept {
  __m256 sc, mn;
  if (m == mode::asymmetric) {
    const __m256 pinf = _mm256_set1_ps(__builtin_inff()), ninf = _mm256_set1_ps(-__builtin_inff());
    __m256 lo[8], hi[8];
    for (int g = 0; g < 8; ++g) {
      const float* xg = x + static_cast<std::size_t>(g) * G;
      __m256 l = pinf, h = ninf;
      for (std::size_t i = 0; i < G; i += 8) {
        const __m256 v = _mm256_loadu_ps(xg + i);
        const __m256 fin = _mm256_castsi256_ps(finite_mask8(v));
        l = _mm256_min_ps(l, _mm256_blendv_ps(pinf, v, fin));
        h = _mm256_max_ps(h, _mm256_blendv_ps(ninf, v, fin));
      }
      lo[g] = l;
      hi[g] = h;
    }
    __m256 l = reduce8x8<false>(lo), h = reduce8x8<true>(hi);
    const __m256 ok = _mm256_cmp_ps(l, h, _CMP_LE_OQ);
    l = _mm256_and_ps(l, ok);
    h = _mm256_and_ps(h, ok);
    if (int zm = _mm256_movemask_ps(_mm256_cmp_ps(l, _mm256_setzero_ps(), _CMP_EQ_OQ))) {
      alignas(32) float lz[8];
      _mm256_store_ps(lz, l);
      for (; zm != 0; zm &= zm - 1) {
        const int g = __builtin_ctz(static_cast<unsigned>(zm));
        const float* xg = x + static_cast<std::size_t>(g) * G;
        for (std::size_t i = 0; i < G; ++i)
          if (xg[i] == 0.0f) {
            lz[g] = xg[i];
            break;
          }
      }
      l = _mm256_load_ps(lz);
    }
    params_from_range8(l, h, bits, pd, &sc, &mn);
  } else {
    const __m256i absm = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    __m256 am[8];
    for (int g = 0; g < 8; ++g) {
      const float* xg = x + static_cast<std::size_t>(g) * G;
      __m256i a = _mm256_setzero_si256();
      for (std::size_t i = 0; i < G; i += 8) {
        const __m256i b = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + i)), absm);
        a = _mm256_max_epi32(a, _mm256_and_si256(b, _mm256_cmpgt_epi32(inf, b)));
      }
      am[g] = _mm256_castsi256_ps(a);
    }
    sc = round_param8(_mm256_div_ps(reduce8x8<true>(am), _mm256_set1_ps(static_cast<float>(sym_zero(bits) - 1u))), pd);
    mn = _mm256_setzero_ps();
  }
  store_params8(sc, mn, m, pd, side);
  alignas(32) float s8[8], m8[8];
  _mm256_store_ps(s8, sc);
  _mm256_store_ps(m8, mn);
  for (int g = 0; g < 8; ++g)
    group_codes_avx2(x + static_cast<std::size_t>(g) * G, G, s8[g], m8[g], bits, m, q + static_cast<std::size_t>(g) * G);
}

/// Groups of G contiguous values, G a multiple of 8.
template <class Sym>
KVCODEC_TARGET_AVX2 inline void quantize_groups_avx2(const float* x, std::size_t ngroups, std::size_t G, int bits, mode m, param_dtype pd,
                                                     std::uint8_t* side, Sym* q) noexcept {
  const std::size_t pb = param_bytes(m, pd);
  const __m256 pinf = _mm256_set1_ps(__builtin_inff()), ninf = _mm256_set1_ps(-__builtin_inff());
  const __m256i absm = _mm256_set1_epi32(0x7fffffff);
  std::size_t g = 0;
  for (; g + 8 <= ngroups; g += 8) quantize_groups8_avx2(x + g * G, G, bits, m, pd, side + g * pb, q + g * G);
  for (; g < ngroups; ++g) {
    const float* xg = x + g * G;
    params p;
    if (m == mode::asymmetric) {
      __m256 lo = pinf, hi = ninf;
      for (std::size_t i = 0; i < G; i += 8) {
        const __m256 v = _mm256_loadu_ps(xg + i);
        const __m256 fin = _mm256_castsi256_ps(finite_mask8(v));
        lo = _mm256_min_ps(lo, _mm256_blendv_ps(pinf, v, fin));
        hi = _mm256_max_ps(hi, _mm256_blendv_ps(ninf, v, fin));
      }
      __m128 l = _mm_min_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps(lo, 1));
      l = _mm_min_ps(l, _mm_movehl_ps(l, l));
      l = _mm_min_ss(l, _mm_shuffle_ps(l, l, 1));
      __m128 h = _mm_max_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps(hi, 1));
      h = _mm_max_ps(h, _mm_movehl_ps(h, h));
      h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
      float lf = _mm_cvtss_f32(l), hf = _mm_cvtss_f32(h);
      if (!(lf <= hf)) {
        lf = hf = 0.0f;
      } else if (lf == 0.0f) {
        for (std::size_t i = 0; i < G; ++i)
          if (xg[i] == 0.0f) {
            lf = xg[i];
            break;
          }
      }
      p = params_from_range_avx2(lf, hf, bits, pd);
    } else {
      __m256i a = _mm256_setzero_si256();
      const __m256i inf = _mm256_set1_epi32(0x7f800000);
      for (std::size_t i = 0; i < G; i += 8) {
        const __m256i b = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + i)), absm);
        a = _mm256_max_epi32(a, _mm256_and_si256(b, _mm256_cmpgt_epi32(inf, b)));
      }
      __m128i h = _mm_max_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
      h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0x4e));
      h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0xb1));
      p = params_from_amax_avx2(bit_cast_hd<float>(static_cast<std::uint32_t>(_mm_cvtsi128_si32(h))), bits, pd);
    }
    store_params_avx2(p, m, pd, side + g * pb);
    group_codes_avx2(xg, G, p.scale, p.min, bits, m, q + g * G);
  }
}

template <class Sym>
KVCODEC_TARGET_AVX2 inline void dequantize_groups_avx2(const Sym* q, const std::uint8_t* side, std::size_t ngroups, std::size_t G, int bits,
                                                       mode m, param_dtype pd, float* y) noexcept {
  const std::size_t pb = param_bytes(m, pd);
  const __m256 zp = _mm256_set1_ps(m == mode::asymmetric ? 0.0f : static_cast<float>(sym_zero(bits)));
  for (std::size_t g = 0; g < ngroups; ++g) {
    const params p = load_params_avx2(side + g * pb, m, pd);
    const __m256 sc = _mm256_set1_ps(p.scale), mn = _mm256_set1_ps(p.min);
    if (m == mode::asymmetric) {
      for (std::size_t i = 0; i < G; i += 8)
        _mm256_storeu_ps(y + g * G + i, _mm256_add_ps(kvcodec::detail::mul_ps_rn(load_codes8(q + g * G + i), sc), mn));
    } else {
      for (std::size_t i = 0; i < G; i += 8)
        _mm256_storeu_ps(y + g * G + i, _mm256_mul_ps(_mm256_sub_ps(load_codes8(q + g * G + i), zp), sc));
    }
  }
}

/// Columns c0..c0+7 of a strided block (8 groups at once); parameters go to side + (c - c0)·pb.
template <class Sym>
KVCODEC_TARGET_AVX2 inline void quantize_cols8_avx2(const float* x, std::size_t n, std::size_t ld, int bits, mode m, param_dtype pd,
                                                    std::uint8_t* side, Sym* q) noexcept {
  const std::size_t pb = param_bytes(m, pd);
  alignas(32) float sc[8], mn[8];
  if (m == mode::asymmetric) {
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    __m256i any = _mm256_setzero_si256();
    for (std::size_t i = 0; i < n; ++i) {
      const __m256 v = _mm256_loadu_ps(x + i * ld);
      const __m256i fin = finite_mask8(v);
      const __m256 first = _mm256_castsi256_ps(_mm256_andnot_si256(any, fin));
      const __m256 upd = _mm256_and_ps(_mm256_castsi256_ps(_mm256_and_si256(any, fin)), _mm256_cmp_ps(v, lo, _CMP_LT_OQ));
      const __m256 updh = _mm256_and_ps(_mm256_castsi256_ps(_mm256_and_si256(any, fin)), _mm256_cmp_ps(v, hi, _CMP_GT_OQ));
      lo = _mm256_blendv_ps(lo, v, _mm256_or_ps(first, upd));
      hi = _mm256_blendv_ps(hi, v, _mm256_or_ps(first, updh));
      any = _mm256_or_si256(any, fin);
    }
    alignas(32) float l[8], h[8];
    _mm256_store_ps(l, lo);
    _mm256_store_ps(h, hi);
    for (int c = 0; c < 8; ++c) {
      const params p = params_from_range_avx2(l[c], h[c], bits, pd);
      store_params_avx2(p, m, pd, side + static_cast<std::size_t>(c) * pb);
      sc[c] = p.scale;
      mn[c] = p.min;
    }
  } else {
    __m256i a = _mm256_setzero_si256();
    const __m256i absm = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    for (std::size_t i = 0; i < n; ++i) {
      const __m256i b = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i * ld)), absm);
      a = _mm256_max_epi32(a, _mm256_and_si256(b, _mm256_cmpgt_epi32(inf, b)));
    }
    alignas(32) float am[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(am), a);
    for (int c = 0; c < 8; ++c) {
      const params p = params_from_amax_avx2(am[c], bits, pd);
      store_params_avx2(p, m, pd, side + static_cast<std::size_t>(c) * pb);
      sc[c] = p.scale;
      mn[c] = 0.0f;
    }
  }
  const lanes8 p = make_lanes8(_mm256_load_ps(sc), _mm256_load_ps(mn));
  for (std::size_t i = 0; i < n; ++i) store_codes8(codes8(_mm256_loadu_ps(x + i * ld), p, bits, m), q + i * ld);
}

template <class Sym>
KVCODEC_TARGET_AVX2 inline void dequantize_cols8_avx2(const Sym* q, const std::uint8_t* side, std::size_t n, std::size_t ld, int bits, mode m,
                                                      param_dtype pd, float* y) noexcept {
  const std::size_t pb = param_bytes(m, pd);
  alignas(32) float sc[8], mn[8];
  for (int c = 0; c < 8; ++c) {
    const params p = load_params_avx2(side + static_cast<std::size_t>(c) * pb, m, pd);
    sc[c] = p.scale;
    mn[c] = p.min;
  }
  const __m256 scv = _mm256_load_ps(sc), mnv = _mm256_load_ps(mn);
  if (m == mode::asymmetric) {
    for (std::size_t i = 0; i < n; ++i) _mm256_storeu_ps(y + i * ld, _mm256_add_ps(kvcodec::detail::mul_ps_rn(load_codes8(q + i * ld), scv), mnv));
  } else {
    const __m256 zp = _mm256_set1_ps(static_cast<float>(sym_zero(bits)));
    for (std::size_t i = 0; i < n; ++i) _mm256_storeu_ps(y + i * ld, _mm256_mul_ps(_mm256_sub_ps(load_codes8(q + i * ld), zp), scv));
  }
}

KVCODEC_TARGET_AVX2 inline void pack_bits_avx2(const std::uint8_t* sym, std::size_t n, int bits, std::uint8_t* out) noexcept {
  std::size_t i = 0;
  if (bits == 4) {
    const __m256i mask = _mm256_set1_epi8(0x0f), mul = _mm256_set1_epi16(0x1001);
    for (; i + 32 <= n; i += 32) {
      const __m256i v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sym + i)), mask);
      const __m256i w = _mm256_maddubs_epi16(v, mul);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i / 2), _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
    }
  } else if (bits == 2) {
    const __m256i mask = _mm256_set1_epi8(0x03), mul = _mm256_set1_epi16(0x0401), mul2 = _mm256_set1_epi32(0x00100001);
    for (; i + 64 <= n; i += 64) {
      const __m256i a = _mm256_madd_epi16(
          _mm256_maddubs_epi16(_mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sym + i)), mask), mul), mul2);
      const __m256i b = _mm256_madd_epi16(
          _mm256_maddubs_epi16(_mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sym + i + 32)), mask), mul), mul2);
      const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i / 4), _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1)));
    }
  } else if (bits == 8) {
    std::memcpy(out, sym, n);
    return;
  }
  if (i < n) pack_bits(sym + i, n - i, bits, out + i * static_cast<std::size_t>(bits) / 8u);
}

KVCODEC_TARGET_AVX2 inline void unpack_bits_avx2(const std::uint8_t* in, std::size_t n, int bits, std::uint8_t* sym) noexcept {
  std::size_t i = 0;
  if (bits == 4) {
    const __m128i mask = _mm_set1_epi8(0x0f);
    for (; i + 32 <= n; i += 32) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i / 2));
      const __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(sym + i), _mm_unpacklo_epi8(lo, hi));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(sym + i + 16), _mm_unpackhi_epi8(lo, hi));
    }
  } else if (bits == 2) {
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i lut_a = _mm_setr_epi8(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
    const __m128i lut_b = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for (; i + 64 <= n; i += 64) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i / 4));
      const __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
      const __m128i s0 = _mm_shuffle_epi8(lut_a, lo), s1 = _mm_shuffle_epi8(lut_b, lo);
      const __m128i s2 = _mm_shuffle_epi8(lut_a, hi), s3 = _mm_shuffle_epi8(lut_b, hi);
      const __m128i p01l = _mm_unpacklo_epi8(s0, s1), p01h = _mm_unpackhi_epi8(s0, s1);
      const __m128i p23l = _mm_unpacklo_epi8(s2, s3), p23h = _mm_unpackhi_epi8(s2, s3);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(sym + i), _mm_unpacklo_epi16(p01l, p23l));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(sym + i + 16), _mm_unpackhi_epi16(p01l, p23l));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(sym + i + 32), _mm_unpacklo_epi16(p01h, p23h));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(sym + i + 48), _mm_unpackhi_epi16(p01h, p23h));
    }
  } else if (bits == 8) {
    std::memcpy(sym, in, n);
    return;
  }
  if (i < n) unpack_bits(in + i * static_cast<std::size_t>(bits) / 8u, n - i, bits, sym + i);
}

}  // namespace kvcodec::affine::detail
#endif
