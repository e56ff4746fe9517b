// kvcodec/cpu/quant_common.hpp — shared machinery of the quantizer stages: symbol-plane checks,
// exact float lists, dense-and-sparse outliers, and group-wise affine coding of a block's rows.
//
// Invariants: decoders trust nothing in `symbols` — plane count, shape, alphabet, every symbol and the
// exact side-byte length are checked and any mismatch throws error(corrupt). Exact floats are stored in
// the cache's source dtype when every value round-trips through it, else in f32 (a one-byte tag says
// which), so they are exact even after a transform stage. Outliers follow KVQuant's dense-and-sparse
// decomposition: the k = floor(n·p/100) largest finite |x| of a block plus every non-finite value are
// stored as (index, value) and excluded from the dense quantizer's scales (they enter it as NaN, which
// core/affine.hpp leaves out of the range and codes as the zero point).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/core/affine.hpp"
#include "kvcodec/format/bytes.hpp"
#include "kvcodec/stage/interface.hpp"
#include "kvcodec/tensor/dtype.hpp"

namespace kvcodec::cpu::qc {

/// "<stage> stage (layer L K, tokens t0..t1)" for error messages.
inline std::string where(std::string_view stage, const block& b) {
  return std::string(stage) + " stage (layer " + std::to_string(b.layer) + (b.key ? " K" : " V") + ", tokens " +
         std::to_string(b.t0) + ".." + std::to_string(b.t1) + ")";
}

/// Throws usage unless the block is self-consistent (count per head, positions, data size).
inline void check_block(std::string_view stage, const block& b) {
  std::size_t rows = 0;
  for (auto c : b.count) rows += c;
  if (b.heads < 1 || b.head_dim < 1 || b.count.size() != static_cast<std::size_t>(b.heads) || rows != b.pos.size() ||
      b.data.size() != rows * static_cast<std::size_t>(b.head_dim))
    throw_usage(describe_mismatch(where(stage, b), "data", "heads x count rows of head_dim values with one position each",
                                  std::to_string(b.count.size()) + " head counts summing to " + std::to_string(rows) + ", " +
                                      std::to_string(b.pos.size()) + " positions, " + std::to_string(b.data.size()) + " values"));
}

/// Checks that `in` has exactly one plane of rows x cols symbols < alphabet and returns it.
inline const symbol_plane& expect_plane(const symbols& in, std::uint32_t alphabet, std::size_t rows, std::size_t cols,
                                        const std::string& w) {
  if (in.planes.size() != 1) throw_corrupt(w, "expected 1 symbol plane, found " + std::to_string(in.planes.size()));
  const symbol_plane& p = in.planes[0];
  if (p.alphabet != alphabet || p.rows != rows || p.cols != cols || p.sym.size() != rows * cols)
    throw_corrupt(w, "expected a " + std::to_string(rows) + "x" + std::to_string(cols) + " plane of alphabet " +
                         std::to_string(alphabet) + ", found " + std::to_string(p.rows) + "x" + std::to_string(p.cols) +
                         " (" + std::to_string(p.sym.size()) + " symbols) of alphabet " + std::to_string(p.alphabet));
  for (auto s : p.sym)
    if (s >= alphabet) throw_corrupt(w, "symbol " + std::to_string(s) + " outside alphabet " + std::to_string(alphabet));
  return p;
}

inline symbol_plane make_plane(std::uint32_t alphabet, std::size_t rows, std::size_t cols) {
  symbol_plane p;
  p.alphabet = alphabet;
  p.rows = static_cast<std::uint32_t>(rows);
  p.cols = static_cast<std::uint32_t>(cols);
  p.sym.assign(rows * cols, 0);
  return p;
}

// ---- exact floats ---------------------------------------------------------------------------------

/// Appends a dtype tag and n floats, in `src` when all of them round-trip through it, else f32.
inline void put_exact(const float* x, std::size_t n, dtype src, bytes& out) {
  dtype t = src;
  if (t != dtype::f32)
    for (std::size_t i = 0; i < n; ++i)
      if (bit_cast_hd<std::uint32_t>(round_to_dtype(x[i], t)) != bit_cast_hd<std::uint32_t>(x[i])) {
        t = dtype::f32;
        break;
      }
  out.push_back(static_cast<std::uint8_t>(t));
  const std::size_t base = out.size();
  out.resize(base + n * dtype_size(t));
  encode_floats(x, n, t, out.data() + base);
}

/// Reads what put_exact wrote (n floats) into y.
inline void get_exact(byte_reader& r, std::size_t n, float* y) {
  const auto tag = r.get<std::uint8_t>("exact float dtype");
  const dtype t = static_cast<dtype>(tag);
  if (t != dtype::f32 && t != dtype::f16 && t != dtype::bf16)
    throw_corrupt(r.what(), "field 'exact float dtype': expected f32, f16 or bf16, found tag " + std::to_string(tag));
  const auto src = r.get_bytes(n * dtype_size(t), "exact floats");
  decode_floats(src.data(), n, t, y);
}

// ---- dense-and-sparse outliers -------------------------------------------------------------------

/// How many values of a block of n, `nonfinite` of them non-finite, are outliers: every non-finite one
/// plus floor(n·percent/100) finite ones (fewer when the block has fewer finite values).
inline std::size_t outlier_budget(std::size_t n, std::size_t nonfinite, double percent) {
  return nonfinite + std::min(n - nonfinite, static_cast<std::size_t>(std::floor(static_cast<double>(n) * percent / 100.0)));
}

/// Writes an outlier list: the count, the increasing indices idx[0..k) as gaps (varints), then their
/// values vals[0..k) exactly (put_exact). read_outliers reads it.
inline void put_outliers(const std::uint32_t* idx, const float* vals, std::size_t k, dtype src, bytes& side) {
  byte_writer w(side);
  w.put_varint(k);
  for (std::size_t j = 0; j < k; ++j) w.put_varint(j == 0 ? idx[j] : idx[j] - idx[j - 1] - 1u);
  put_exact(vals, k, src, side);
}

/// Moves the outliers of x[0..n) (see header) into `side` and replaces them by NaN in x: the largest
/// finite |x| first, equal magnitudes to the lower index (the batch encoders' rule too).
inline void take_outliers(float* x, std::size_t n, double percent, dtype src, bytes& side) {
  std::vector<std::uint32_t> idx;
  std::vector<std::uint32_t> finite;
  finite.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (kvcodec::detail::is_finite_f32(x[i]))
      finite.push_back(static_cast<std::uint32_t>(i));
    else
      idx.push_back(static_cast<std::uint32_t>(i));
  }
  const std::size_t k = outlier_budget(n, idx.size(), percent) - idx.size();
  if (k > 0) {
    auto mag_greater = [&](std::uint32_t a, std::uint32_t b) {
      const float fa = std::fabs(x[a]), fb = std::fabs(x[b]);
      return fa != fb ? fa > fb : a < b;
    };
    std::nth_element(finite.begin(), finite.begin() + static_cast<std::ptrdiff_t>(k - 1), finite.end(), mag_greater);
    idx.insert(idx.end(), finite.begin(), finite.begin() + static_cast<std::ptrdiff_t>(k));
  }
  std::sort(idx.begin(), idx.end());
  std::vector<float> vals(idx.size());
  for (std::size_t j = 0; j < idx.size(); ++j) {
    vals[j] = x[idx[j]];
    x[idx[j]] = std::numeric_limits<float>::quiet_NaN();
  }
  put_outliers(idx.data(), vals.data(), idx.size(), src, side);
}

/// Reads an outlier list over n values: its indices (increasing, each < n) and their exact values.
inline void read_outliers(byte_reader& r, std::size_t n, std::vector<std::uint32_t>& idx, std::vector<float>& vals) {
  const std::uint64_t k = r.get_varint_max("outlier count", n);
  idx.resize(static_cast<std::size_t>(k));
  std::uint64_t pos = 0;
  for (std::size_t j = 0; j < idx.size(); ++j) {
    const std::uint64_t d = r.get_varint_max("outlier index delta", n);
    pos = j == 0 ? d : pos + d + 1;
    if (pos >= n) throw_corrupt(r.what(), "outlier index " + std::to_string(pos) + " outside the block's " + std::to_string(n) + " values");
    idx[j] = static_cast<std::uint32_t>(pos);
  }
  vals.resize(idx.size());
  get_exact(r, vals.size(), vals.data());
}

/// Reads an outlier list and writes its values into y[0..n).
inline void put_outliers_back(byte_reader& r, float* y, std::size_t n) {
  std::vector<std::uint32_t> idx;
  std::vector<float> vals;
  read_outliers(r, n, idx, vals);
  for (std::size_t j = 0; j < idx.size(); ++j) y[idx[j]] = vals[j];
}

// ---- group-wise affine coding of a block's rows --------------------------------------------------

/// How a block's rows are grouped: per_channel = groups of `group` tokens along one channel of one head
/// (0 = all the head's rows); otherwise groups of `group` channels of one row (must divide head_dim).
struct affine_cfg {
  int bits = 4;
  affine::mode mode = affine::mode::asymmetric;
  affine::param_dtype pd = affine::param_dtype::f16;
  bool per_channel = false;
  int group = 0;
};

inline std::size_t affine_groups(const affine_cfg& c, const std::uint32_t* count, int heads, int D) {
  std::size_t g = 0;
  if (c.per_channel) {
    for (int h = 0; h < heads; ++h) {
      const std::size_t n = count[h];
      const std::size_t G = c.group > 0 ? static_cast<std::size_t>(c.group) : std::max<std::size_t>(n, 1);
      g += (n + G - 1) / G * static_cast<std::size_t>(D);
    }
  } else {
    std::size_t rows = 0;
    for (int h = 0; h < heads; ++h) rows += count[h];
    g = rows * static_cast<std::size_t>(D / c.group);
  }
  return g;
}

inline std::size_t affine_side_bytes(const affine_cfg& c, const std::uint32_t* count, int heads, int D) {
  return affine_groups(c, count, heads, D) * affine::param_bytes(c.mode, c.pd);
}

/// Codes rows (heads concatenated, count[h] rows of D each) into sym and side (affine_side_bytes), with
/// core/affine.hpp's bulk kernels (groups along tokens: quantize_columns; along channels: quantize_groups).
inline void affine_encode(const affine_cfg& c, const float* x, const std::uint32_t* count, int heads, int D,
                          std::uint16_t* sym, std::uint8_t* side) {
  const std::size_t Dz = static_cast<std::size_t>(D);
  const std::size_t pb = affine::param_bytes(c.mode, c.pd);
  if (c.per_channel) {
    std::size_t r0 = 0;
    for (int h = 0; h < heads; ++h) {
      const std::size_t n = count[h];
      const std::size_t G = c.group > 0 ? static_cast<std::size_t>(c.group) : std::max<std::size_t>(n, 1);
      for (std::size_t t = 0; t < n; t += G) {
        const std::size_t m = std::min(G, n - t);
        affine::quantize_columns(x + (r0 + t) * Dz, m, Dz, Dz, c.bits, c.mode, c.pd, side, sym + (r0 + t) * Dz);
        side += Dz * pb;
      }
      r0 += n;
    }
  } else {
    std::size_t rows = 0;
    for (int h = 0; h < heads; ++h) rows += count[h];
    const std::size_t G = static_cast<std::size_t>(c.group);
    affine::quantize_groups(x, rows * Dz / G, G, c.bits, c.mode, c.pd, side, sym);
  }
}

/// Inverse of affine_encode.
inline void affine_decode(const affine_cfg& c, const std::uint16_t* sym, const std::uint8_t* side, const std::uint32_t* count,
                          int heads, int D, float* y) {
  const std::size_t Dz = static_cast<std::size_t>(D);
  const std::size_t pb = affine::param_bytes(c.mode, c.pd);
  if (c.per_channel) {
    std::size_t r0 = 0;
    for (int h = 0; h < heads; ++h) {
      const std::size_t n = count[h];
      const std::size_t G = c.group > 0 ? static_cast<std::size_t>(c.group) : std::max<std::size_t>(n, 1);
      for (std::size_t t = 0; t < n; t += G) {
        const std::size_t m = std::min(G, n - t);
        affine::dequantize_columns(sym + (r0 + t) * Dz, side, m, Dz, Dz, c.bits, c.mode, c.pd, y + (r0 + t) * Dz);
        side += Dz * pb;
      }
      r0 += n;
    }
  } else {
    std::size_t rows = 0;
    for (int h = 0; h < heads; ++h) rows += count[h];
    const std::size_t G = static_cast<std::size_t>(c.group);
    affine::dequantize_groups(sym, side, rows * Dz / G, G, c.bits, c.mode, c.pd, y);
  }
}

/// Throws usage unless `group` (channels) divides head_dim.
inline void check_channel_group(std::string_view stage, std::string_view key, int group, int head_dim) {
  if (group <= 0 || head_dim % group != 0)
    throw_usage("stage '" + std::string(stage) + "': parameter '" + std::string(key) + "': expected a divisor of head_dim (" +
                std::to_string(head_dim) + ") for groups along channels, found " + std::to_string(group));
}

}  // namespace kvcodec::cpu::qc
