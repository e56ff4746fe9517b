// kvcodec/cpu/cachegen.hpp — stage `cachegen-quant`: CacheGen's max-abs quantizer (LMCache's
// torch_quant) on blocks, with the per-element math as host/device functions.
//
// Side bytes: the scales as little-endian u16 (f16 or bf16 bits), one per token (axis=token) or one
// per column (axis=channel), in row/column order. Decoding checks the plane's shape, alphabet,
// symbol range and the side length against the block before writing anything.
#pragma once

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/cachegen.hpp"
#include "kvcodec/tensor/dtype.hpp"


namespace kvcodec {

/// Symbol of x for a stored scale s (> 0) and MAX = bins/2 - 1: clamp(round(x * MAX / s)) + MAX,
/// rounding half to even. Clamping first is exact (the bounds are integers) and leaves |q| < 2^22,
/// where adding and subtracting 1.5 * 2^23 rounds to nearest-even with no libm call.
KVCODEC_HD inline std::uint16_t cachegen_quantize(float x, float inv_step, int max) {
  const float m = static_cast<float>(max);
  float q = x * inv_step;
  q = q < -m ? -m : q;
  q = q > m ? m : q;
  constexpr float round_magic = 12582912.0f;
  q = (q + round_magic) - round_magic;
  return static_cast<std::uint16_t>(static_cast<int>(q) + max);
}

KVCODEC_HD inline float cachegen_dequantize(std::uint16_t s, float step, int max) {
  return static_cast<float>(static_cast<int>(s) - max) * step;
}

/// The scale as stored (f16 or bf16 rounding of max-abs, saturated to the finite range).
KVCODEC_HD inline std::uint16_t cachegen_scale_bits(float m, bool bf16) {
  if (bf16) {
    const std::uint16_t b = f32_to_bf16_bits(m);
    return (b & 0x7f80u) == 0x7f80u ? static_cast<std::uint16_t>(0x7f7fu) : b;
  }
  const std::uint16_t h = f32_to_f16_bits(m);
  return (h & 0x7c00u) == 0x7c00u ? static_cast<std::uint16_t>(0x7bffu) : h;
}

KVCODEC_HD inline float cachegen_scale_value(std::uint16_t bits, bool bf16) {
  return bf16 ? bf16_bits_to_f32(bits) : f16_bits_to_f32(bits);
}

}  // namespace kvcodec

namespace kvcodec::cpu {

class cachegen_quant final : public stage_impl<quant::cachegen, quant_stage> {
 public:
  explicit cachegen_quant(quant::cachegen p) : stage_impl(std::move(p)) {}
  bool lossless() const override { return false; }
  bool fit_uses_blocks() const override { return false; }

  static std::uint32_t alphabet_for(int bins) { return bins <= 32 ? 32u : static_cast<std::uint32_t>(bins - 1); }

  void encode(const block& b, const cache_info&, symbols& out) const override {
    const int bins = p_.bins_for(b.layer, b.key);
    const int MAX = bins / 2 - 1;
    const bool bf = p_.scale == "bf16";
    const bool by_token = (b.key ? p_.kaxis : p_.vaxis) == "token";
    const bool dense = b.dense();
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    const std::size_t R = dense ? static_cast<std::size_t>(b.t1 - b.t0) : b.rows();
    const std::size_t C = dense ? H * D : D;
    out.planes.assign(1, symbol_plane{});
    symbol_plane& p = out.planes[0];
    p.alphabet = alphabet_for(bins);
    p.rows = static_cast<std::uint32_t>(R);
    p.cols = static_cast<std::uint32_t>(C);
    p.sym.resize(R * C);
    // element (r, c) of the plane lives at data[src(r, c)]
    auto src = [&](std::size_t r, std::size_t c) -> std::size_t {
      return dense ? ((c / D) * R + r) * D + c % D : r * D + c;
    };
    const std::size_t nscales = by_token ? R : (dense ? C : H * D);
    std::vector<std::uint16_t> sc(nscales, 0);
    std::vector<float> m(nscales, 0.0f);
    std::vector<std::size_t> head_of_row;
    if (!dense && !by_token) {
      head_of_row.resize(R);
      std::size_t r = 0;
      for (std::size_t h = 0; h < H; ++h)
        for (std::uint32_t k = 0; k < b.count[h]; ++k) head_of_row[r++] = h;
    }
    auto sidx = [&](std::size_t r, std::size_t c) { return by_token ? r : dense ? c : head_of_row[r] * D + c; };
    if (dense) {
#if KVCODEC_X86_DISPATCH
      const bool vec = simd::avx2();
#endif
      for (std::size_t h = 0; h < H; ++h)
        for (std::size_t r = 0; r < R; ++r) {
          const float* x = b.data.data() + (h * R + r) * D;
          std::size_t d0 = 0;
          if (by_token) {
            float mm = m[r];
#if KVCODEC_X86_DISPATCH
            if (vec) d0 = absmax_avx2(x, D, mm);
#endif
            for (std::size_t d = d0; d < D; ++d) mm = std::max(mm, std::fabs(x[d]));
            m[r] = mm;
          } else {
            float* mc = m.data() + h * D;
#if KVCODEC_X86_DISPATCH
            if (vec) d0 = absmax_cols_avx2(x, D, mc);
#endif
            for (std::size_t d = d0; d < D; ++d) mc[d] = std::max(mc[d], std::fabs(x[d]));
          }
        }
      bool finite = true;
      for (float x : b.data) finite &= std::fabs(x) <= 3.4028235e38f;
      if (!finite) m.assign(nscales, std::numeric_limits<float>::quiet_NaN());
    } else {
      for (std::size_t r = 0; r < R; ++r)
        for (std::size_t c = 0; c < C; ++c) {
          const float a = std::fabs(b.data[src(r, c)]);
          float& mm = m[sidx(r, c)];
          if (a > mm || a != a) mm = a;
        }
    }
    std::vector<float> inv(nscales);
    for (std::size_t i = 0; i < nscales; ++i) {
      if (!std::isfinite(m[i]))
        throw_bad_input("cachegen-quant (layer " + std::to_string(b.layer) + ")", "data", "finite values", "a NaN or infinity");
      sc[i] = cachegen_scale_bits(m[i], bf);
      const float s = cachegen_scale_value(sc[i], bf);
      inv[i] = s > 0 ? static_cast<float>(MAX) / s : 0.0f;
    }
    if (dense) {
#if KVCODEC_X86_DISPATCH
      const bool vec = simd::avx2();
#endif
      for (std::size_t h = 0; h < H; ++h)
        for (std::size_t r = 0; r < R; ++r) {
          const float* x = b.data.data() + (h * R + r) * D;
          std::uint16_t* o = p.sym.data() + r * C + h * D;
          std::size_t d0 = 0;
          if (by_token) {
            const float iv = inv[r];
#if KVCODEC_X86_DISPATCH
            if (vec) d0 = quantize_avx2(x, &iv, true, MAX, o, D);
#endif
            for (std::size_t d = d0; d < D; ++d) o[d] = cachegen_quantize(x[d], iv, MAX);
          } else {
            const float* iv = inv.data() + h * D;
#if KVCODEC_X86_DISPATCH
            if (vec) d0 = quantize_avx2(x, iv, false, MAX, o, D);
#endif
            for (std::size_t d = d0; d < D; ++d) o[d] = cachegen_quantize(x[d], iv[d], MAX);
          }
        }
    } else {
      for (std::size_t r = 0; r < R; ++r)
        for (std::size_t c = 0; c < C; ++c) p.sym[r * C + c] = cachegen_quantize(b.data[src(r, c)], inv[sidx(r, c)], MAX);
    }
    out.side.resize(2 * nscales);
    for (std::size_t i = 0; i < nscales; ++i) {
      out.side[2 * i] = static_cast<std::uint8_t>(sc[i]);
      out.side[2 * i + 1] = static_cast<std::uint8_t>(sc[i] >> 8);
    }
  }

  void decode(const symbols& in, const cache_info&, block& b) const override {
    b.data.resize(b.rows() * static_cast<std::size_t>(b.head_dim));
    float* out = b.data.data();
    const std::size_t D = static_cast<std::size_t>(b.head_dim);
    decode_to(in, b, [out, D](std::size_t r) { return out + r * D; }, [](float v) { return v; });
  }

  bool decode_rows(const symbols& in, const cache_info&, const block& b, dtype t, std::byte* const* rows) const override {
    if (t == dtype::f32) {
      decode_to(in, b, [rows](std::size_t r) { return reinterpret_cast<float*>(rows[r]); }, [](float v) { return v; });
    } else if (t == dtype::f16) {
      auto row = [rows](std::size_t r) { return reinterpret_cast<std::uint16_t*>(rows[r]); };
#if KVCODEC_X86_DISPATCH
      if (simd::avx2()) {
        decode_to(in, b, row, [](float v) { return f32_to_f16_bits(v); }, [](const std::uint16_t* s, const float* st, bool bcast, int max, std::uint16_t* o, std::size_t n) {
          return dequant_f16_f16c(s, st, bcast, max, o, n);
        });
        return true;
      }
#endif
      decode_to(in, b, row, [](float v) { return f32_to_f16_bits(v); });
    } else if (t == dtype::bf16) {
      decode_to(in, b, [rows](std::size_t r) { return reinterpret_cast<std::uint16_t*>(rows[r]); }, [](float v) { return f32_to_bf16_bits(v); });
    } else {
      return false;
    }
    return true;
  }

  /// Decodes straight to f16 bits in decode()'s value order (b.rows() x head_dim values, block
  /// order); value i equals f32_to_f16_bits(decode()'s value i). Same checks and errors as decode.
  void decode_f16(const symbols& in, const block& b, std::uint16_t* out) const {
    const std::size_t D = static_cast<std::size_t>(b.head_dim);
#if KVCODEC_X86_DISPATCH
    if (simd::avx2()) {
      decode_to(in, b, [out, D](std::size_t r) { return out + r * D; }, [](float v) { return f32_to_f16_bits(v); }, [](const std::uint16_t* s, const float* st, bool bcast, int max, std::uint16_t* o, std::size_t n) {
        return dequant_f16_f16c(s, st, bcast, max, o, n);
      });
      return;
    }
#endif
    decode_to(in, b, [out, D](std::size_t r) { return out + r * D; }, [](float v) { return f32_to_f16_bits(v); });
  }

 private:
#if KVCODEC_X86_DISPATCH
  /// o[d] = f16 of (s[d] - max) * step (step = st[0] when bcast, else st[d]) for the largest
  /// multiple of 8 of n; returns how many were done. F16C's round-to-nearest-even conversion equals
  /// f32_to_f16_bits on the finite values produced here.
  __attribute__((target("avx2,f16c"))) static std::size_t dequant_f16_f16c(const std::uint16_t* s, const float* st, bool bcast, int max,
                                                                           std::uint16_t* o, std::size_t n) {
    const __m256i mx = _mm256_set1_epi32(max);
    const __m256 b = _mm256_set1_ps(st[0]);
    std::size_t d = 0;
    for (; d + 8 <= n; d += 8) {
      const __m256i q = _mm256_sub_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + d))), mx);
      const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(q), bcast ? b : _mm256_loadu_ps(st + d));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + d), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    return d;
  }
#endif

#if KVCODEC_X86_DISPATCH
  /// mm = max(mm, |x[d]|) over the largest multiple of 8 of n (NaN never enters: the caller's
  /// finiteness check rejects such blocks); returns how many were done.
  KVCODEC_TARGET_AVX2 static std::size_t absmax_avx2(const float* x, std::size_t n, float& mm) {
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 a = _mm256_set1_ps(mm);
    std::size_t d = 0;
    for (; d + 8 <= n; d += 8) a = _mm256_max_ps(a, _mm256_and_ps(_mm256_loadu_ps(x + d), abs));
    __m128 v = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    v = _mm_max_ps(v, _mm_movehl_ps(v, v));
    v = _mm_max_ss(v, _mm_shuffle_ps(v, v, 1));
    mm = _mm_cvtss_f32(v);
    return d;
  }
  /// mc[d] = max(mc[d], |x[d]|) for the largest multiple of 8 of n.
  KVCODEC_TARGET_AVX2 static std::size_t absmax_cols_avx2(const float* x, std::size_t n, float* mc) {
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    std::size_t d = 0;
    for (; d + 8 <= n; d += 8)
      _mm256_storeu_ps(mc + d, _mm256_max_ps(_mm256_loadu_ps(mc + d), _mm256_and_ps(_mm256_loadu_ps(x + d), abs)));
    return d;
  }
  /// o[d] = cachegen_quantize(x[d], iv (bcast) or iv[d], max) for the largest multiple of 8 of n:
  /// the same multiply, clamp and magic-number rounding, in the same order.
  KVCODEC_TARGET_AVX2 static std::size_t quantize_avx2(const float* x, const float* iv, bool bcast, int max, std::uint16_t* o,
                                                       std::size_t n) {
    const __m256 hi = _mm256_set1_ps(static_cast<float>(max)), lo = _mm256_set1_ps(-static_cast<float>(max));
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    const __m256i mx = _mm256_set1_epi32(max);
    const __m256 b = _mm256_set1_ps(iv[0]);
    std::size_t d = 0;
    for (; d + 8 <= n; d += 8) {
      __m256 q = _mm256_mul_ps(_mm256_loadu_ps(x + d), bcast ? b : _mm256_loadu_ps(iv + d));
      q = _mm256_max_ps(q, lo);  // q < -m ? -m : q, then q > m ? m : q (finite inputs)
      q = _mm256_min_ps(q, hi);
      q = _mm256_sub_ps(_mm256_add_ps(q, magic), magic);
      const __m256i k = _mm256_add_epi32(_mm256_cvttps_epi32(q), mx);
      const __m256i p16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(k, k), 0x88);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + d), _mm256_castsi256_si128(p16));
    }
    return d;
  }
#endif

  /// The largest of s[0..n) (0 when n = 0).
  static std::uint32_t max_symbol(const std::uint16_t* s, std::size_t n) {
#if KVCODEC_X86_DISPATCH
    if (simd::avx2()) return max_symbol_avx2(s, n);
#endif
    std::uint16_t m = 0;
    for (std::size_t i = 0; i < n; ++i) m = s[i] > m ? s[i] : m;
    return m;
  }
#if KVCODEC_X86_DISPATCH
  KVCODEC_TARGET_AVX2 static std::uint32_t max_symbol_avx2(const std::uint16_t* s, std::size_t n) {
    __m256i a = _mm256_setzero_si256(), b = a;
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32) {
      a = _mm256_max_epu16(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
      b = _mm256_max_epu16(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 16)));
    }
    a = _mm256_max_epu16(a, b);
    __m128i m = _mm_max_epu16(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    m = _mm_max_epu16(m, _mm_srli_si128(m, 8));
    m = _mm_max_epu16(m, _mm_srli_si128(m, 4));
    m = _mm_max_epu16(m, _mm_srli_si128(m, 2));
    std::uint16_t r = static_cast<std::uint16_t>(_mm_cvtsi128_si32(m));
    for (; i < n; ++i) r = s[i] > r ? s[i] : r;
    return r;
  }
#endif

  struct no_kernel {
    template <class T>
    std::size_t operator()(const std::uint16_t*, const float*, bool, int, T*, std::size_t) const {
      return 0;
    }
  };

  /// Checks the plane and side bytes against the block, then writes conv(value) of every element
  /// of block row r to row_out(r) (head_dim values); kernel(s, step, bcast, MAX, o, n) may do a row
  /// prefix in bulk.
  template <class RowOut, class Conv, class Kernel = no_kernel>
  void decode_to(const symbols& in, const block& b, RowOut row_out, Conv conv, Kernel kernel = {}) const {
    const std::string where = "cachegen-quant (layer " + std::to_string(b.layer) + (b.key ? " K)" : " V)");
    const int bins = p_.bins_for(b.layer, b.key);
    const int MAX = bins / 2 - 1;
    const bool bf = p_.scale == "bf16";
    const bool by_token = (b.key ? p_.kaxis : p_.vaxis) == "token";
    const bool dense = b.dense();
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    const std::size_t R = dense ? static_cast<std::size_t>(b.t1 - b.t0) : b.rows();
    const std::size_t C = dense ? H * D : D;
    const std::size_t nscales = by_token ? R : (dense ? C : H * D);
    if (in.planes.size() != 1) throw_corrupt(where, "expected 1 symbol plane, found " + std::to_string(in.planes.size()));
    const symbol_plane& p = in.planes[0];
    if (p.rows != R || p.cols != C || p.sym.size() != R * C || p.alphabet != alphabet_for(bins))
      throw_corrupt(where, "plane " + std::to_string(p.rows) + "x" + std::to_string(p.cols) + " alphabet " + std::to_string(p.alphabet) +
                               ", expected " + std::to_string(R) + "x" + std::to_string(C) + " alphabet " + std::to_string(alphabet_for(bins)));
    if (in.side.size() != 2 * nscales)
      throw_corrupt(where, "expected " + std::to_string(2 * nscales) + " bytes of scales, found " + std::to_string(in.side.size()));
    std::vector<float> step(nscales);
    for (std::size_t i = 0; i < nscales; ++i) {
      const std::uint16_t bits = static_cast<std::uint16_t>(in.side[2 * i] | (in.side[2 * i + 1] << 8));
      const float s = cachegen_scale_value(bits, bf);
      if (!(s >= 0) || !std::isfinite(s)) throw_corrupt(where, "scale " + std::to_string(i) + " is negative or not finite");
      step[i] = MAX > 0 ? s / static_cast<float>(MAX) : 0.0f;
    }
    const std::uint32_t worst = max_symbol(p.sym.data(), p.sym.size());
    if (!p.sym.empty() && worst > static_cast<std::uint32_t>(2 * MAX))
      throw_corrupt(where, "symbol " + std::to_string(worst) + " above 2*MAX = " + std::to_string(2 * MAX));
    if (dense) {
      for (std::size_t h = 0; h < H; ++h)
        for (std::size_t r = 0; r < R; ++r) {
          const std::uint16_t* srow = p.sym.data() + r * C + h * D;
          auto* dst = row_out(h * R + r);
          if (by_token) {
            const float st = step[r];
            for (std::size_t d = kernel(srow, &st, true, MAX, dst, D); d < D; ++d) dst[d] = conv(cachegen_dequantize(srow[d], st, MAX));
          } else {
            const float* st = step.data() + h * D;
            for (std::size_t d = kernel(srow, st, false, MAX, dst, D); d < D; ++d) dst[d] = conv(cachegen_dequantize(srow[d], st[d], MAX));
          }
        }
    } else {
      std::size_t r = 0;
      for (std::size_t h = 0; h < H; ++h)
        for (std::uint32_t k = 0; k < b.count[h]; ++k, ++r) {
          auto* dst = row_out(r);
          for (std::size_t d = 0; d < D; ++d) dst[d] = conv(cachegen_dequantize(p.sym[r * D + d], by_token ? step[r] : step[h * D + d], MAX));
        }
    }
  }
};

}  // namespace kvcodec::cpu
