// kvcodec/verify/decoding.hpp — decoding compression (kvpress DecodingPress): while draft-and-verify
// generates, the drafter's cache grows by the verified rows it adopts, at full precision. With a
// decoding_compressor installed (decoder_drafter::set_after_adopt), every time `every` new positions
// have been adopted since the last compression, the drafter's rows [done, length) are compressed with
// the codec `spec` as a cache of their own (its drop stage keeps its share of them, scoring with their
// recorded queries; its quantizer codes them) and written back lossy, dropped rows masked out. The
// verifier keeps the full cache, so greedy draft-and-verify stays identical to full-cache decoding;
// what the compression costs shows in the acceptance rate. Positions before `start` (the context) are
// left as loaded: compress them with the codec the drafter was loaded with.
// Invariant: each position is compressed at most once; rows before `done` are never touched again.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/model/decoder.hpp"
#include "kvcodec/pipeline/codec.hpp"
#include "kvcodec/pipeline/decode.hpp"
#include "kvcodec/pipeline/encode.hpp"
#include "kvcodec/tensor/kept.hpp"

namespace kvcodec::verify {

struct decoding_stats {
  std::int64_t compressions = 0;   ///< chunks compressed
  std::int64_t positions = 0;      ///< positions compressed, summed over chunks
  std::int64_t rows_dropped = 0;   ///< (layer, kv head, position) rows masked out
  std::int64_t rows = 0;           ///< (layer, kv head, position) rows compressed
  std::uint64_t codec_bytes = 0;   ///< the chunks' coded bytes (what bits_per_element counts)
  std::int64_t elements = 0;       ///< K and V elements compressed (rows x head_dim x 2)
  double bits_per_element() const { return elements > 0 ? 8.0 * static_cast<double>(codec_bytes) / static_cast<double>(elements) : 0.0; }
};

/// Positions [a, b) of `s` as a dense cache (queries when the store records them; positions a..b-1).
inline kv_cache store_rows(const model::kv_store& s, int a, int b) {
  if (a < 0 || a >= b || b > s.length())
    throw_usage("store_rows: need 0 <= a < b <= length (" + std::to_string(s.length()) + "), got [" + std::to_string(a) + ", " + std::to_string(b) + ")");
  const kv_shape shape{s.layers(), s.kv_heads(), s.q_heads(), s.head_dim(), b - a};
  kv_cache c = kv_cache::zeros(shape);
  const auto n = static_cast<std::size_t>(b - a), hd = static_cast<std::size_t>(s.head_dim());
  for (int l = 0; l < s.layers(); ++l) {
    for (int h = 0; h < s.kv_heads(); ++h) {
      std::copy_n(s.key(l, h, a), n * hd, c.keys[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(h) * n * hd));
      std::copy_n(s.value(l, h, a), n * hd, c.values[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(h) * n * hd));
    }
    for (int h = 0; h < s.q_heads(); ++h)
      std::copy_n(s.query(l, h, a), n * hd, c.queries[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(h) * n * hd));
  }
  c.positions.resize(n);
  for (std::size_t i = 0; i < n; ++i) c.positions[i] = a + static_cast<std::int32_t>(i);
  c.metadata = {{"format", "llama2.c"}, {"rope", "interleaved-pairs"}, {"rope_theta", "10000"}, {"post_rope", "true"}};
  return c;
}

/// Compresses every `every` adopted positions of a drafter's cache with `spec` (see the header comment).
class decoding_compressor {
 public:
  /// Compresses positions from `start` on (the drafter's length when the session starts: the context
  /// end) in chunks of at least `every`.
  decoding_compressor(std::string spec, int every, int start) : spec_(std::move(spec)), every_(every), done_(start) {
    if (start < 0) throw_usage("decoding compression: start must be a position >= 0, got " + std::to_string(start));
    if (every_ < 1) throw_usage("decoding compression: every must be >= 1 positions, got " + std::to_string(every_));
    const codec c = make_codec(spec_);  // a usage error names a bad spec now, not mid-session
    (void)c;
  }
  const std::string& spec() const noexcept { return spec_; }
  int every() const noexcept { return every_; }
  const decoding_stats& stats() const noexcept { return stats_; }

  /// Called after each adopt: compresses [done, length) once it holds `every` positions.
  void operator()(model::decoder& d) {
    model::kv_store& s = d.cache();
    if (s.length() - done_ < every_) return;
    const int a = done_, b = s.length();
    const encoded e = encode(spec_, store_rows(s, a, b));
    const kv_cache back = decode(e.data);
    const auto n = static_cast<std::size_t>(b - a), hd = static_cast<std::size_t>(s.head_dim());
    std::vector<std::uint8_t> mask(n);
    for (int l = 0; l < s.layers(); ++l)
      for (int h = 0; h < s.kv_heads(); ++h) {
        const std::size_t off = static_cast<std::size_t>(h) * n * hd;
        std::copy_n(back.keys[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(off), n * hd, s.key(l, h, a));
        std::copy_n(back.values[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(off), n * hd, s.value(l, h, a));
        kept_mask(back, l, h, mask.data(), n);
        std::copy_n(mask.data(), n, s.keep(l, h) + a);
        for (auto m : mask) stats_.rows_dropped += m ? 0 : 1;
        stats_.rows += static_cast<std::int64_t>(n);
        stats_.elements += static_cast<std::int64_t>(2 * n * hd);
      }
    ++stats_.compressions;
    stats_.positions += b - a;
    stats_.codec_bytes += e.report.codec_bytes;
    done_ = b;
  }
 private:
  std::string spec_;
  int every_;
  int done_;
  decoding_stats stats_;
};

}  // namespace kvcodec::verify
