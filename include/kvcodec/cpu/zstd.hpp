// kvcodec/cpu/zstd.hpp — stage `zstd`: Zstandard over the `pack` serialisation of the symbols.
//
// Decoding checks the frame's declared content size against the block's bound before allocating.
#pragma once

#include <zstd.h>

#include <string>

#include "kvcodec/cpu/pack.hpp"
#include "kvcodec/stage/zstd.hpp"

namespace kvcodec::cpu {

class zstd_entropy final : public stage_impl<entropy::zstd, entropy_stage> {
 public:
  using stage_impl::stage_impl;
  void encode(const symbols& in, const block&, bytes& out, coder_stats& st) const override {
    bytes packed;
    serialize_symbols(in, packed);
    const std::size_t bound = ZSTD_compressBound(packed.size());
    const std::size_t base = out.size();
    out.resize(base + bound);
    const std::size_t n = ZSTD_compress(out.data() + base, bound, packed.data(), packed.size(), p_.level);
    if (ZSTD_isError(n)) throw error(error_kind::io, std::string("zstd compress: ") + ZSTD_getErrorName(n));
    out.resize(base + n);
    st.payload_bits += static_cast<double>(n) * 8.0;
    st.entropy_bound_bits += static_cast<double>(n) * 8.0;
  }
  symbols decode(std::span<const std::uint8_t> in, const block& ctx) const override {
    const std::string what = "zstd stream (layer " + std::to_string(ctx.layer) + (ctx.key ? " K" : " V") + ")";
    const unsigned long long declared = ZSTD_getFrameContentSize(in.data(), in.size());
    if (declared == ZSTD_CONTENTSIZE_ERROR || declared == ZSTD_CONTENTSIZE_UNKNOWN)
      throw_corrupt(what, "not a zstd frame with a known content size");
    const std::uint64_t limit = max_symbols_for(ctx) * 4u + 1024u;
    if (declared > limit)
      throw_corrupt(what, "declared size " + std::to_string(declared) + " exceeds the block's bound " + std::to_string(limit));
    bytes packed(static_cast<std::size_t>(declared));
    const std::size_t n = ZSTD_decompress(packed.data(), packed.size(), in.data(), in.size());
    if (ZSTD_isError(n) || n != packed.size()) throw_corrupt(what, std::string("zstd: ") + (ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short frame"));
    byte_reader r(packed, what);
    symbols s = deserialize_symbols(r, max_symbols_for(ctx));
    r.expect_end();
    return s;
  }
};

}  // namespace kvcodec::cpu
