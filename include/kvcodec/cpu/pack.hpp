// kvcodec/cpu/pack.hpp — serialisation of `symbols` with fixed-width bit-packing (stage `pack`),
// also the inner layer of byte-level coders such as zstd.
//
// Layout: varint plane count; per plane varint alphabet, rows, cols, then ceil(n*w/8) bytes of
// symbols packed LSB-first with w = bits needed for alphabet-1 (0 when alphabet is 1); finally
// the side bytes as a varint-length blob. Decoding bounds every count by `max_symbols` and by the
// bytes actually present, and rejects symbols >= alphabet. Widths up to 8 go through core/affine.hpp's
// (AVX2-dispatched) byte packers, which produce the same bit stream.
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <string>

#include "kvcodec/core/affine.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/pack.hpp"

namespace kvcodec::cpu {

inline unsigned symbol_bits(std::uint32_t alphabet) noexcept {
  return alphabet <= 1 ? 0u : static_cast<unsigned>(std::bit_width(alphabet - 1u));
}

/// Packs n symbols of w bits (w <= 16), LSB first, appending to out.
inline void pack_bits(const std::uint16_t* s, std::size_t n, unsigned w, bytes& out) {
  if (w == 0 || n == 0) return;
  const std::size_t nbytes = (n * w + 7) / 8;
  const std::size_t base = out.size();
  out.resize(base + nbytes, 0);
  std::uint8_t* dst = out.data() + base;
  if (w <= 8) {
    // symbols are < 2^w (alphabet), so narrowing to bytes loses nothing; core/affine.hpp packs them
    constexpr std::size_t chunk = 4096;
    std::uint8_t buf[chunk];
    for (std::size_t i = 0; i < n; i += chunk) {
      const std::size_t k = n - i < chunk ? n - i : chunk;
      for (std::size_t j = 0; j < k; ++j) buf[j] = static_cast<std::uint8_t>(s[i + j]);
      affine::pack_bits_fast(buf, k, static_cast<int>(w), dst + i / 8 * w);
    }
    return;
  }
  std::uint64_t acc = 0;
  unsigned fill = 0;
  std::size_t o = 0;
  for (std::size_t i = 0; i < n; ++i) {
    acc |= static_cast<std::uint64_t>(s[i]) << fill;
    fill += w;
    while (fill >= 8) {
      dst[o++] = static_cast<std::uint8_t>(acc);
      acc >>= 8;
      fill -= 8;
    }
  }
  if (fill) dst[o] = static_cast<std::uint8_t>(acc);
}

inline void unpack_bits(const std::uint8_t* src, std::size_t n, unsigned w, std::uint16_t* s) {
  if (n == 0) return;
  if (w == 0) {
    for (std::size_t i = 0; i < n; ++i) s[i] = 0;
    return;
  }
  if (w <= 8) {
    // byte symbols through core/affine.hpp's unpacker (same LSB-first layout), then widened; chunks of
    // a multiple of 8 symbols start on byte boundaries
    constexpr std::size_t chunk = 4096;
    std::uint8_t buf[chunk];
    for (std::size_t i = 0; i < n; i += chunk) {
      const std::size_t k = n - i < chunk ? n - i : chunk;
      affine::unpack_bits_fast(src + i / 8 * w, k, static_cast<int>(w), buf);
      for (std::size_t j = 0; j < k; ++j) s[i + j] = buf[j];
    }
    return;
  }
  const std::uint32_t mask = (1u << w) - 1u;
  std::uint64_t acc = 0;
  unsigned fill = 0;
  std::size_t o = 0;
  for (std::size_t i = 0; i < n; ++i) {
    while (fill < w) {
      acc |= static_cast<std::uint64_t>(src[o++]) << fill;
      fill += 8;
    }
    s[i] = static_cast<std::uint16_t>(acc & mask);
    acc >>= w;
    fill -= w;
  }
}

/// Appends the serialised symbols to out; returns the bits spent on packed symbols.
inline std::uint64_t serialize_symbols(const symbols& in, bytes& out) {
  byte_writer w(out);
  w.put_varint(in.planes.size());
  std::uint64_t payload = 0;
  for (const auto& p : in.planes) {
    w.put_varint(p.alphabet);
    w.put_varint(p.rows);
    w.put_varint(p.cols);
    const unsigned bw = symbol_bits(p.alphabet);
    const std::size_t before = out.size();
    pack_bits(p.sym.data(), p.sym.size(), bw, out);
    payload += (out.size() - before) * 8u;
  }
  w.put_blob(in.side);
  return payload;
}

/// Parses serialised symbols; `max_symbols` bounds each plane (derived from the block's size).
inline symbols deserialize_symbols(byte_reader& r, std::uint64_t max_symbols) {
  symbols out;
  const auto np = r.get_varint_max("plane count", 64);
  out.planes.resize(static_cast<std::size_t>(np));
  for (auto& p : out.planes) {
    p.alphabet = static_cast<std::uint32_t>(r.get_varint_max("alphabet", 65536));
    if (p.alphabet == 0) throw_corrupt(r.what(), "field 'alphabet': expected >= 1, found 0");
    p.rows = static_cast<std::uint32_t>(r.get_varint_max("rows", max_symbols));
    p.cols = static_cast<std::uint32_t>(r.get_varint_max("cols", max_symbols));
    const std::uint64_t n = static_cast<std::uint64_t>(p.rows) * p.cols;
    if (n > max_symbols)
      throw_corrupt(r.what(), "plane of " + std::to_string(n) + " symbols exceeds the block's " + std::to_string(max_symbols));
    const unsigned bw = symbol_bits(p.alphabet);
    const std::uint64_t nbytes = (n * bw + 7) / 8;
    auto src = r.get_bytes(static_cast<std::size_t>(nbytes), "packed symbols");
    p.sym.resize(static_cast<std::size_t>(n));
    unpack_bits(src.data(), p.sym.size(), bw, p.sym.data());
    if (bw > 0 && (p.alphabet & (p.alphabet - 1)) != 0)
      for (auto s : p.sym)
        if (s >= p.alphabet) throw_corrupt(r.what(), "symbol " + std::to_string(s) + " outside alphabet " + std::to_string(p.alphabet));
  }
  auto side = r.get_blob("side bytes");
  out.side.assign(side.begin(), side.end());
  return out;
}

/// Upper bound on the symbols a block of `rows` rows of `head_dim` values can produce; protects decoders
/// from lying counts.
inline std::uint64_t max_symbols_for(std::uint64_t rows, std::int64_t head_dim) {
  return rows * static_cast<std::uint64_t>(head_dim > 0 ? head_dim : 1) * 2u + 65536u;
}
inline std::uint64_t max_symbols_for(const block& b) { return max_symbols_for(b.rows(), b.head_dim); }
/// The same for the largest block a cache of shape `s` can have (every head, every token): no plane
/// of any block of that cache, hence no column count, exceeds it.
inline std::uint64_t max_symbols_for(const kv_shape& s) {
  const auto heads = static_cast<std::uint64_t>(s.kv_heads > 0 ? s.kv_heads : 0);
  const auto tokens = static_cast<std::uint64_t>(s.tokens > 0 ? s.tokens : 0);
  const auto dim = static_cast<std::uint64_t>(s.head_dim > 0 ? s.head_dim : 1);
  if (heads != 0 && tokens > (std::uint64_t{1} << 62) / heads / dim / 2) return std::uint64_t{1} << 62;  // saturate
  return max_symbols_for(heads * tokens, s.head_dim);
}

class pack_entropy final : public stage_impl<entropy::pack, entropy_stage> {
 public:
  using stage_impl::stage_impl;
  void encode(const symbols& in, const block&, bytes& out, coder_stats& st) const override {
    const std::size_t before = out.size();
    const std::uint64_t payload = serialize_symbols(in, out);
    const double total = static_cast<double>(out.size() - before) * 8.0;
    st.add_stream(total, static_cast<double>(payload), static_cast<double>(in.side.size()) * 8.0);
    for (const auto& p : in.planes) st.entropy_bound_bits += static_cast<double>(p.sym.size()) * symbol_bits(p.alphabet);
  }
  symbols decode(std::span<const std::uint8_t> in, const block& ctx) const override {
    byte_reader r(in, "pack stream (layer " + std::to_string(ctx.layer) + (ctx.key ? " K" : " V") + ")");
    symbols s = deserialize_symbols(r, max_symbols_for(ctx));
    r.expect_end();
    return s;
  }
};

}  // namespace kvcodec::cpu
