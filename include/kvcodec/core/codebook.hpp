// kvcodec/core/codebook.hpp — non-uniform scalar quantization with a sorted codebook.
//
//   * NF4: the 16 NormalFloat4 levels of QLoRA (Dettmers et al. 2023, as in bitsandbytes), applied to a
//     block scaled by its absolute maximum: x ≈ nf4[code] · absmax.
//   * fit_codebook: 1-D Lloyd–Max (k-means) fitting of `levels` codewords to a sample, as KVQuant's
//     non-uniform per-layer datatypes; deterministic (initialised at the sample's quantiles
//     (j + 0.5)/levels, then `iters` Lloyd steps on the sorted sample, stopping early at a fixed point).
// Invariants: a codebook is non-decreasing (duplicates are allowed, e.g. when the sample has fewer
// distinct values than levels) and always has exactly `levels` entries, so the symbol width is fixed.
// Encoding picks the nearest codeword by binary search on the midpoints (cb[i] + cb[i+1]) / 2: a value
// >= the midpoint goes up (the fitter assigns samples to clusters by the same rule). Non-finite samples are ignored by the
// fitter and by absmax; NaN encodes as the codeword nearest 0, ±Inf as the last / first codeword.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/affine.hpp"
#include "kvcodec/core/config.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/kv_address.hpp"
#include "kvcodec/core/scalar/floats.hpp"

namespace kvcodec::codebook {

/// The i-th NF4 level (ascending, nf4_value(7) == 0).
KVCODEC_HD inline float nf4_value(int i) noexcept {
  const float v[16] = {-1.0f,
                       -0.6961928009986877f,
                       -0.5250730514526367f,
                       -0.39491748809814453f,
                       -0.28444138169288635f,
                       -0.18477343022823334f,
                       -0.09105003625154495f,
                       0.0f,
                       0.07958029955625534f,
                       0.16093020141124725f,
                       0.24611230194568634f,
                       0.33791524171829224f,
                       0.44070982933044434f,
                       0.5626170039176941f,
                       0.7229568362236023f,
                       1.0f};
  return v[i & 15];
}

/// Index of the codeword nearest v in a non-decreasing codebook cb[0..k), k >= 1.
KVCODEC_HD inline int nearest_code(const float* cb, int k, float v) noexcept {
  const std::uint32_t b = bit_cast_hd<std::uint32_t>(v) & 0x7fffffffu;
  if (b > 0x7f800000u) v = 0.0f;
  int lo = 0, hi = k - 1;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    const float m = 0.5f * cb[mid] + 0.5f * cb[mid + 1];
    if (v >= m)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

KVCODEC_HD inline void encode(const float* cb, int k, const float* x, std::size_t n, std::uint16_t* codes) noexcept {
  for (std::size_t i = 0; i < n; ++i) codes[i] = static_cast<std::uint16_t>(nearest_code(cb, k, x[i]));
}

KVCODEC_HD inline void decode(const float* cb, const std::uint16_t* codes, std::size_t n, float* y) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] = cb[codes[i]];
}

// ---- NF4 ------------------------------------------------------------------------------------------

/// max |x| over the finite values of x[0], x[stride], ... (0 if none).
KVCODEC_HD inline float absmax(const float* x, std::size_t n, std::size_t stride = 1) noexcept {
  return kvcodec::detail::finite_amax_ref(x, n, stride);
}

/// NF4 code of one value given the block's (stored) absmax; absmax 0 gives the code of 0 (7).
KVCODEC_HD inline std::uint8_t nf4_encode(float v, float absmax) noexcept {
  float t = absmax > 0.0f ? v / absmax : 0.0f;
  int lo = 0, hi = 15;
  const std::uint32_t b = bit_cast_hd<std::uint32_t>(t) & 0x7fffffffu;
  if (b > 0x7f800000u) t = 0.0f;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    const float m = 0.5f * nf4_value(mid) + 0.5f * nf4_value(mid + 1);
    if (t >= m)
      lo = mid + 1;
    else
      hi = mid;
  }
  return static_cast<std::uint8_t>(lo);
}

KVCODEC_HD inline float nf4_decode(std::uint8_t code, float absmax) noexcept { return nf4_value(code) * absmax; }

/// Encodes a block x[0], x[stride], ... with its finite absmax (returned, to be stored by the caller).
KVCODEC_HD inline float nf4_quantize_block(const float* x, std::size_t n, std::size_t stride, std::uint8_t* codes) noexcept {
  const float a = absmax(x, n, stride);
  for (std::size_t i = 0; i < n; ++i) codes[i] = nf4_encode(x[i * stride], a);
  return a;
}

KVCODEC_HD inline void nf4_dequantize_block(const std::uint8_t* codes, std::size_t n, float absmax, float* y,
                                            std::size_t stride = 1) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i * stride] = nf4_decode(codes[i], absmax);
}

// ---- Lloyd–Max fitting (host) ---------------------------------------------------------------------

/// Fits `levels` (1..65536) sorted codewords to the finite values of x[0..n) by 1-D k-means.
/// A sample with no finite value gives all-zero codewords; empty clusters keep their position.
inline std::vector<float> fit_codebook(const float* x, std::size_t n, int levels, int iters) {
  if (levels < 1 || levels > 65536)
    throw_usage(describe_mismatch("fit_codebook", "levels", "1..65536", std::to_string(levels)));
  if (iters < 0) throw_usage(describe_mismatch("fit_codebook", "iters", ">= 0", std::to_string(iters)));
  if (n > 0 && x == nullptr) throw_usage("fit_codebook: null sample pointer with n > 0");
  const std::size_t k = static_cast<std::size_t>(levels);
  std::vector<float> s;
  s.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    if (std::isfinite(x[i])) s.push_back(x[i]);
  std::vector<float> cb(k, 0.0f);
  if (s.empty()) return cb;
  std::sort(s.begin(), s.end());
  const std::size_t m = s.size();
  for (std::size_t j = 0; j < k; ++j) {
    std::size_t idx = static_cast<std::size_t>((static_cast<double>(j) + 0.5) * static_cast<double>(m) / static_cast<double>(k));
    cb[j] = s[std::min(idx, m - 1)];
  }
  std::vector<double> prefix(m + 1, 0.0);
  for (std::size_t i = 0; i < m; ++i) prefix[i + 1] = prefix[i] + static_cast<double>(s[i]);
  std::vector<std::size_t> bound(k + 1);
  for (int it = 0; it < iters; ++it) {
    bound[0] = 0;
    bound[k] = m;
    for (std::size_t j = 1; j < k; ++j) {
      const float mid = 0.5f * cb[j - 1] + 0.5f * cb[j];
      bound[j] = static_cast<std::size_t>(std::lower_bound(s.begin(), s.end(), mid) - s.begin());
      if (bound[j] < bound[j - 1]) bound[j] = bound[j - 1];
    }
    bool changed = false;
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t a = bound[j], b = bound[j + 1];
      if (b <= a) continue;
      const float c = static_cast<float>((prefix[b] - prefix[a]) / static_cast<double>(b - a));
      if (c != cb[j]) {
        cb[j] = c;
        changed = true;
      }
    }
    for (std::size_t j = 1; j < k; ++j)
      if (cb[j] < cb[j - 1]) cb[j] = cb[j - 1];
    if (!changed) break;
  }
  return cb;
}

/// Mean squared error of x[0..n) (finite values only) quantized to the nearest codeword of cb.
inline double codebook_mse(const std::vector<float>& cb, const float* x, std::size_t n) {
  if (cb.empty()) throw_usage("codebook_mse: empty codebook");
  double se = 0.0;
  std::size_t cnt = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) continue;
    const double d = static_cast<double>(x[i]) - cb[static_cast<std::size_t>(nearest_code(cb.data(), static_cast<int>(cb.size()), x[i]))];
    se += d * d;
    ++cnt;
  }
  return cnt ? se / static_cast<double>(cnt) : 0.0;
}

}  // namespace kvcodec::codebook

// ---- batch steps: the CUDA backend's decode and encode (cuda/codebook.cuh; host emulation: ----------
// pipeline/batch.hpp and pipeline/batch_encode.hpp), the CPU stages' values bit for bit

namespace kvcodec {

/// One dense K or V block of an `nf4` or `kmeans` container (cpu/codebook.hpp's layout): a plane of
/// heads x tokens rows (a head's rows in token order) x head_dim symbols, from u16 symbol `sym_first` of
/// the batch's symbols or (packed) `bits`-bit LSB-first codes from byte `sym_first` of its bytes.
/// nf4 (nf4 = 1): value i is in absmax group i / group, the group's absmax at byte side + g x param
/// bytes (param_dtype: 0 f32, 1 f16, affine::param_dtype). kmeans: codeword s is books[book + s].
struct codebook_batch_block {
  std::uint64_t sym_first = 0, side = 0, book = 0;
  std::uint32_t tokens = 0, heads = 0, bits = 4, group = 1, packed = 0, nf4 = 1, param_dtype = 0;
  std::int32_t layer = 0;
  std::uint32_t key = 1;
  std::int64_t t_first = 0;  ///< destination (encoders: source) token of a head's row 0
  std::int64_t t_end = 0;    ///< rows landing outside [0, t_end) are skipped
  std::uint64_t sym_off = 0; ///< decoders: the block's first symbol within the plane at sym_first (a head's part of a token-dropped block)
};

namespace detail {
KVCODEC_HD inline std::uint64_t codebook_values(const codebook_batch_block& b, std::uint64_t D) noexcept {
  return static_cast<std::uint64_t>(b.heads) * b.tokens * D;
}
/// nf4: the stored absmax of group g.
KVCODEC_HD inline float nf4_group_absmax(const codebook_batch_block& b, const std::uint8_t* bytes, std::uint64_t g) noexcept {
  const auto pd = static_cast<affine::param_dtype>(b.param_dtype);
  return affine::load_params(bytes + b.side + g * affine::param_bytes(affine::mode::symmetric, pd), affine::mode::symmetric, pd).scale;
}
}  // namespace detail

/// Decode step: value i of block b (plane order) dequantized (nf4_decode with its group's absmax, or
/// its codeword) and stored through kv_batch_put. False for a symbol of 2^bits or more.
struct codebook_batch_op {
  const std::uint16_t* sym = nullptr;  ///< the batch's u16 symbols (unpacked blocks)
  const std::uint8_t* bytes = nullptr;
  const float* books = nullptr;
  kv_batch_dest d;
  KVCODEC_HD std::uint64_t count(const codebook_batch_block& b) const noexcept { return detail::codebook_values(b, kv_batch_width(d, b.key != 0)); }
  KVCODEC_HD bool operator()(const codebook_batch_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t D = kv_batch_width(d, b.key != 0), c = i % D, row = i / D, h = row / b.tokens, r = row % b.tokens;
    const std::uint32_t s = b.packed != 0 ? detail::packed_code(bytes + b.sym_first, b.sym_off + i, b.bits) : sym[b.sym_first + b.sym_off + i];
    if (s >> b.bits) return false;
    const float x = b.nf4 != 0 ? codebook::nf4_decode(static_cast<std::uint8_t>(s), detail::nf4_group_absmax(b, bytes, i / b.group)) : books[b.book + s];
    const std::int64_t t = b.t_first + static_cast<std::int64_t>(r);
    if (t < 0 || t >= b.t_end) return true;
    kv_batch_put(d, b.key != 0, b.layer, static_cast<std::int64_t>(h), t, static_cast<std::int64_t>(c), x);
    return true;
  }
};

/// nf4 encode, first step: item g of block b is absmax group g, whose finite absmax (non-finite values
/// left out, as codebook::absmax), rounded to its storage dtype, is stored at out + b.side + g x param bytes.
struct nf4_absmax_op {
  kv_batch_src s;
  std::uint8_t* out = nullptr;
  KVCODEC_HD std::uint64_t count(const codebook_batch_block& b) const noexcept {
    return detail::codebook_values(b, static_cast<std::uint64_t>(s.head_dim)) / b.group;
  }
  KVCODEC_HD bool operator()(const codebook_batch_block& b, std::uint64_t g) const noexcept {
    const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim);
    float a = 0.0f;
    for (std::uint64_t i = g * b.group; i < (g + 1) * b.group; ++i) {
      const std::uint64_t row = i / D, h = row / b.tokens, r = row % b.tokens;
      const float v = kv_batch_get(s, b.key != 0, b.layer, static_cast<std::int64_t>(h), b.t_first + static_cast<std::int64_t>(r), static_cast<std::int64_t>(i % D));
      const std::uint32_t bits = bit_cast_hd<std::uint32_t>(v) & 0x7fffffffu;
      if (bits >= 0x7f800000u) continue;
      const float m = bit_cast_hd<float>(bits);
      a = m > a ? m : a;
    }
    const auto pd = static_cast<affine::param_dtype>(b.param_dtype);
    affine::store_params(affine::params{affine::round_param(a, pd), 0.0f}, affine::mode::symmetric, pd,
                         out + b.side + g * affine::param_bytes(affine::mode::symmetric, pd));
    return true;
  }
};

/// nf4 encode, second step: item i of block b is value i, its code (nf4_encode with the stored absmax
/// of its group) written as a byte at out + b.sym_first + i.
struct nf4_code_op {
  kv_batch_src s;
  std::uint8_t* out = nullptr;
  KVCODEC_HD std::uint64_t count(const codebook_batch_block& b) const noexcept { return detail::codebook_values(b, static_cast<std::uint64_t>(s.head_dim)); }
  KVCODEC_HD bool operator()(const codebook_batch_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), row = i / D, h = row / b.tokens, r = row % b.tokens;
    const float v = kv_batch_get(s, b.key != 0, b.layer, static_cast<std::int64_t>(h), b.t_first + static_cast<std::int64_t>(r), static_cast<std::int64_t>(i % D));
    out[b.sym_first + i] = codebook::nf4_encode(v, detail::nf4_group_absmax(b, out, i / b.group));
    return true;
  }
};

/// kmeans encode, first step: one block per (layer, K/V), item j is sample j, the value at position
/// j x stride of that context's values in the CPU encoder's order (chunks of chunk_tokens tokens in
/// order, each head-major: head, token, channel), written to out[first + j]. These are the values
/// kmeans_quant::fit samples.
struct kmeans_sample_block {
  std::uint64_t first = 0, count = 0, stride = 1;
  std::int64_t tokens = 0;  ///< the cache's tokens
  std::uint32_t chunk_tokens = 1, heads = 0;
  std::int32_t layer = 0;
  std::uint32_t key = 1;
};
struct kmeans_sample_op {
  kv_batch_src s;
  float* out = nullptr;
  KVCODEC_HD std::uint64_t count(const kmeans_sample_block& b) const noexcept { return b.count; }
  KVCODEC_HD bool operator()(const kmeans_sample_block& b, std::uint64_t j) const noexcept {
    const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), p = j * b.stride;
    const std::uint64_t full = static_cast<std::uint64_t>(b.heads) * b.chunk_tokens * D;  // the values of a full chunk
    const std::uint64_t chunk = p / full, rem = p - chunk * full;
    const std::int64_t t0 = static_cast<std::int64_t>(chunk * b.chunk_tokens);
    const std::uint64_t tc = static_cast<std::uint64_t>(b.tokens - t0 < static_cast<std::int64_t>(b.chunk_tokens) ? b.tokens - t0 : b.chunk_tokens);
    const std::uint64_t h = rem / (tc * D), r = rem / D % tc, c = rem % D;
    out[b.first + j] = kv_batch_get(s, b.key != 0, b.layer, static_cast<std::int64_t>(h), t0 + static_cast<std::int64_t>(r), static_cast<std::int64_t>(c));
    return true;
  }
};

/// kmeans encode, second step: item i of block b is value i, its code (the nearest codeword of the
/// block's codebook, codebook::nearest_code) written as a byte at out + b.sym_first + i.
struct kmeans_code_op {
  kv_batch_src s;
  const float* books = nullptr;
  std::uint8_t* out = nullptr;
  KVCODEC_HD std::uint64_t count(const codebook_batch_block& b) const noexcept { return detail::codebook_values(b, static_cast<std::uint64_t>(s.head_dim)); }
  KVCODEC_HD bool operator()(const codebook_batch_block& b, std::uint64_t i) const noexcept {
    const std::uint64_t D = static_cast<std::uint64_t>(s.head_dim), row = i / D, h = row / b.tokens, r = row % b.tokens;
    const float v = kv_batch_get(s, b.key != 0, b.layer, static_cast<std::int64_t>(h), b.t_first + static_cast<std::int64_t>(r), static_cast<std::int64_t>(i % D));
    out[b.sym_first + i] = static_cast<std::uint8_t>(codebook::nearest_code(books + b.book, 1 << b.bits, v));
    return true;
  }
};

}  // namespace kvcodec
