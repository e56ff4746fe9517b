// kvcodec/stage/interface.hpp — what flows between pipeline stages, and the stage interfaces.
//
//   KV cache ──drop──> kept sets ──> blocks ──transform*──> blocks ──quant──> symbols ──entropy──> bytes
//
// A `block` is one (layer, token chunk) of K or of V: per kv head, the rows of the tokens kept in the
// chunk (ragged when token dropping kept different counts per head), with their global positions.
// A quantizer turns a block into `symbols`: integer planes (alphabet <= 65536, a rows x cols matrix
// whose column is the entropy coder's context, e.g. the channel) plus side bytes (scales, exact
// outliers). An entropy stage turns symbols into bytes and back, self-describingly.
// Stages may carry state fitted on the whole cache (codebooks, shared tables): fit() returns it as
// bytes that the container stores once, and load_state() restores it before decoding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/format/bytes.hpp"
#include "kvcodec/stage/params.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec {

enum class stage_kind : std::uint8_t { drop = 0, transform = 1, quant = 2, entropy = 3 };

inline constexpr std::string_view stage_kind_name(stage_kind k) noexcept {
  switch (k) {
    case stage_kind::drop: return "drop";
    case stage_kind::transform: return "transform";
    case stage_kind::quant: return "quant";
    case stage_kind::entropy: return "entropy";
  }
  return "?";
}

/// What a stage knows about the whole cache it codes (shape, source dtype, metadata such as rope).
struct cache_info {
  kv_shape shape;
  dtype source_dtype = dtype::f32;
  std::map<std::string, std::string> metadata;
  /// Mean squared query per (layer, kv head, channel), over the query heads that read the kv head
  /// and every token: [layers][kv_heads][head_dim] flattened; empty when the cache has no queries.
  std::vector<float> query_energy;
};

struct block {
  std::int32_t layer = 0;
  bool key = true;             ///< K (true) or V (false)
  std::int32_t heads = 0;
  std::int32_t head_dim = 0;
  std::int64_t t0 = 0, t1 = 0;        ///< token range of the chunk, [t0, t1)
  std::vector<std::uint32_t> count;   ///< rows per head (t1 - t0 each when dense)
  std::vector<std::int32_t> pos;      ///< global token index of each row, heads concatenated
  std::vector<float> data;            ///< rows x head_dim, heads concatenated

  std::size_t rows() const noexcept { return pos.size(); }
  bool dense() const noexcept {
    for (auto c : count)
      if (static_cast<std::int64_t>(c) != t1 - t0) return false;
    return true;
  }
  /// First row of head h.
  std::size_t head_offset(int h) const noexcept {
    std::size_t o = 0;
    for (int i = 0; i < h; ++i) o += count[static_cast<std::size_t>(i)];
    return o;
  }
};

struct symbol_plane {
  std::uint32_t alphabet = 0;  ///< symbols are < alphabet (<= 65536)
  std::uint32_t rows = 0, cols = 0;
  std::vector<std::uint16_t> sym;  ///< rows x cols, row-major; column = coding context
  /// When nonzero, the entropy stage that decoded the plane vouches that every symbol is below it
  /// (rANS: one past the highest symbol its tables give a nonzero frequency), so a quantizer may skip
  /// its own scan for out-of-range symbols; 0 = no such promise (encoders and most stages).
  std::uint32_t sym_bound = 0;
};

struct symbols {
  std::vector<symbol_plane> planes;
  bytes side;  ///< stage-specific side information (scales, zero points, exact outliers)
};

/// Exact bit accounting reported by encoders (summed over segments by the pipeline).
struct coder_stats {
  double payload_bits = 0;        ///< bits of coded symbols
  double side_info_bits = 0;      ///< probability tables, stream lengths, plane headers
  double entropy_bound_bits = 0;  ///< empirical entropy of the coded symbols under the coder's context model
  double quant_side_bits = 0;     ///< quantizer side bytes (scales, zero points, outliers)
  /// Accounts one coded stream of `total` bits: `payload` bits of symbols, `side` bits of quantizer side
  /// bytes, the rest (tables, plane headers, lengths) as side information.
  void add_stream(double total, double payload, double side) {
    payload_bits += payload;
    quant_side_bits += side;
    side_info_bits += total - payload - side;
  }
  coder_stats& operator+=(const coder_stats& o) {
    payload_bits += o.payload_bits;
    side_info_bits += o.side_info_bits;
    entropy_bound_bits += o.entropy_bound_bits;
    quant_side_bits += o.quant_side_bits;
    return *this;
  }
};

class stage {
 public:
  virtual ~stage() = default;
  virtual std::string_view name() const = 0;
  virtual stage_kind kind() const = 0;
  /// Canonical parameters, every one, in declared order.
  virtual stage_spec spec() const = 0;
  virtual bool lossless() const = 0;
  /// State fitted at encode time is restored from these bytes before decoding (default: none).
  virtual void load_state(std::span<const std::uint8_t> state, const cache_info&) {
    if (!state.empty()) throw_corrupt(std::string(name()), "unexpected stage state in container");
  }
};

class drop_stage : public stage {
 public:
  stage_kind kind() const override { return stage_kind::drop; }
  bool lossless() const override { return false; }
  /// Chooses the kept tokens per (layer, kv head); may read queries.
  virtual kept_sets select(const kv_cache& kv) const = 0;
};

class transform_stage : public stage {
 public:
  stage_kind kind() const override { return stage_kind::transform; }
  virtual bytes fit(const std::vector<block>&, const cache_info&) { return {}; }
  virtual void forward(block& b, const cache_info& info) const = 0;
  virtual void inverse(block& b, const cache_info& info) const = 0;
  /// Row width of `b` after forward() (a transform that stores rows narrower, e.g. think, says how
  /// narrow: the decoder codes the block at this width before inverse()). Default: unchanged.
  virtual int coded_head_dim(const block& b, const cache_info&) const { return b.head_dim; }
  /// True when fit() reads cache_info::query_energy.
  virtual bool wants_query_energy() const { return false; }
};

class quant_stage : public stage {
 public:
  stage_kind kind() const override { return stage_kind::quant; }
  /// Called once with every block before encoding; returns state to store (codebooks...).
  virtual bytes fit(const std::vector<block>&, const cache_info&) { return {}; }
  /// False when fit() ignores its blocks: the pipeline then quantizes each block as soon as it is cut
  /// (without transforms) and never holds the whole cache's f32 copy.
  virtual bool fit_uses_blocks() const { return true; }
  /// True when encode() reads cache_info::query_energy (callers holding queries should supply them).
  virtual bool wants_query_energy() const { return false; }
  virtual void encode(const block& b, const cache_info& info, symbols& out) const = 0;
  /// `b` arrives with layer/key/heads/head_dim/t0/t1/count/pos set; fills b.data.
  virtual void decode(const symbols& in, const cache_info& info, block& b) const = 0;
  /// Fused decode: writes row r of the block (block order: heads concatenated, each head's rows in
  /// token order) straight to rows[r] as head_dim contiguous values of type `t` (f32, f16 or bf16),
  /// the same values decode() followed by a conversion to `t` would give, with the same checks.
  /// Returns false (writing nothing) when the stage has no such path; the pipeline then decodes to
  /// f32 and converts.
  virtual bool decode_rows(const symbols&, const cache_info&, const block&, dtype, std::byte* const*) const { return false; }
};

class entropy_stage : public stage {
 public:
  stage_kind kind() const override { return stage_kind::entropy; }
  bool lossless() const override { return true; }
  virtual bytes fit(const std::vector<const symbols*>&, const cache_info&) { return {}; }
  /// Whether fit() reads the symbols at all (false: the encoder calls fit({}) and needs no first pass).
  virtual bool fit_uses_symbols() const { return false; }
  /// Whether the stage fits block by block: fit_begin, fit_add for every block (j = its index in
  /// chunk-major order, 2 per segment: K then V; may be called from several threads at once),
  /// fit_end -> the same state fit() would return. Lets the encoder fit without holding every block's symbols.
  virtual bool fit_streaming() const { return false; }
  virtual void fit_begin(const cache_info&) {}
  virtual void fit_add(std::size_t, const symbols&) {}
  virtual bytes fit_end(const cache_info&) { return {}; }
  /// `ctx` identifies the block (layer, K/V) for context models that depend on it.
  virtual void encode(const symbols& in, const block& ctx, bytes& out, coder_stats& stats) const = 0;
  virtual symbols decode(std::span<const std::uint8_t> in, const block& ctx) const = 0;
  /// decode() into `out`, whose planes and side bytes may hold a previous block's symbols: a stage
  /// that overrides it reuses their memory (no allocation, zero-fill or page faults per block when a
  /// decoder keeps one `symbols` per thread). On an exception `out` holds unspecified symbols.
  virtual void decode_reusing(std::span<const std::uint8_t> in, const block& ctx, symbols& out) const { out = decode(in, ctx); }
};

// ---- compile-time pipeline typing ---------------------------------------------------------------

/// Data-kind tags for typed pipelines: what a stage consumes and produces.
struct kv_data {};
struct symbol_data {};
struct byte_data {};

template <stage_kind K> struct stage_io;
template <> struct stage_io<stage_kind::drop> { using consumes = kv_data; using produces = kv_data; };
template <> struct stage_io<stage_kind::transform> { using consumes = kv_data; using produces = kv_data; };
template <> struct stage_io<stage_kind::quant> { using consumes = kv_data; using produces = symbol_data; };
template <> struct stage_io<stage_kind::entropy> { using consumes = symbol_data; using produces = byte_data; };

}  // namespace kvcodec
