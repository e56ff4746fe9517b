// kvcodec/cpu/ac.hpp — stage `ac`: symbols -> range-coded streams (core/range_coder.hpp)
// with CacheGen's static 16-bit CDFs, stored as LMCache stores them.
//
// CDF of a context with counts n_s (N in all, A symbols, L = A + 1 entries):
//   cdf[k] = round_half_up(P(<k) * (2^16 - A)) + k, cdf[0] = 0, cdf[A] = 2^16,
// so every symbol has probability >= 2^-16 (torchac's normalisation with precision 16).
// Block stream: varint planes; per plane varint alphabet, rows, cols; per non-empty sub-plane
// (anchor rows, residual rows; cpu/entropy_model.hpp): the CDFs (one per column for ctx=channel,
// one for ctx=pooled) as L little-endian u16 (the final 2^16 stored as 0, as an int16 wraps), then
//   streams=row:   per row a u32 byte length, then the rows' streams back to back;
//   streams=block: a varint length and one stream.
// Then the side bytes blob. Every stream must decode exactly (rc_dec_ok), else corrupt.
// Decoding allocates nothing a stream claims before checking the bytes that back it: the CDFs
// (contexts x (alphabet + 1) u16) and the per-row lengths must fit in what is left of the stream; the
// symbols themselves are bounded by the block (max_symbols_for).
#pragma once

#include <string>
#include <vector>

#include "kvcodec/core/range_coder.hpp"
#include "kvcodec/cpu/entropy_model.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/ac.hpp"

namespace kvcodec::cpu {

/// CacheGen's 16-bit CDF (A + 1 entries) from counts.
inline std::vector<std::uint32_t> cachegen_cdf(const std::uint32_t* h, std::uint32_t A) {
  std::uint64_t n = 0;
  for (std::uint32_t s = 0; s < A; ++s) n += h[s];
  std::vector<std::uint32_t> cdf(A + 1);
  const std::uint64_t span = (1u << rc_prob_bits) - A;
  std::uint64_t cum = 0;
  for (std::uint32_t k = 0; k <= A; ++k) {
    const std::uint64_t v = n ? (2 * cum * span + n) / (2 * n) : (static_cast<std::uint64_t>(k) * span) / A;
    cdf[k] = static_cast<std::uint32_t>(v) + k;
    if (k < A) cum += h[k];
  }
  cdf[A] = 1u << rc_prob_bits;
  return cdf;
}

class ac_entropy final : public stage_impl<entropy::ac, entropy_stage> {
 public:
  explicit ac_entropy(entropy::ac p) : stage_impl(std::move(p)) { pk_ = em::parse_pred(p_.pred); }

  void encode(const symbols& in, const block&, bytes& out, coder_stats& st) const override {
    const std::size_t base = out.size();
    byte_writer w(out);
    w.put_varint(in.planes.size());
    double payload = 0, bound = 0;
    std::vector<std::uint16_t> sub[2];
    std::vector<std::uint32_t> colh;
    std::vector<std::uint8_t> buf;
    for (const symbol_plane& p : in.planes) {
      check_plane(p);
      w.put_varint(p.alphabet);
      w.put_varint(p.rows);
      w.put_varint(p.cols);
      em::split_plane(p, pk_, static_cast<std::uint32_t>(p_.group), sub[0], sub[1]);
      for (int s = 0; s < 2; ++s) {
        if (sub[s].empty()) continue;
        const std::uint32_t A = p.alphabet, C = p.cols;
        em::column_hist(sub[s].data(), sub[s].size(), C, A, colh, "ac encode");
        const bool pooled = p_.ctx == "pooled";
        const std::uint32_t nctx = pooled ? 1 : C;
        std::vector<std::uint32_t> gof(C);
        for (std::uint32_t c = 0; c < C; ++c) gof[c] = pooled ? 0 : c;
        const auto gh = em::group_hist(colh, A, gof, nctx);
        bound += em::grouped_entropy(gh, A, nctx);
        std::vector<std::uint32_t> cdfs(static_cast<std::size_t>(nctx) * (A + 1));
        for (std::uint32_t g = 0; g < nctx; ++g) {
          const auto cdf = cachegen_cdf(gh.data() + static_cast<std::size_t>(g) * A, A);
          std::copy(cdf.begin(), cdf.end(), cdfs.begin() + static_cast<std::ptrdiff_t>(g) * (A + 1));
          for (auto v : cdf) w.put<std::uint16_t>(static_cast<std::uint16_t>(v));
        }
        const std::size_t rows = sub[s].size() / C;
        const bool per_row = p_.streams == "row";
        const std::size_t nstreams = per_row ? rows : 1;
        const std::size_t per = per_row ? C : sub[s].size();
        std::vector<std::uint32_t> lens(nstreams);
        bytes data;
        for (std::size_t k = 0; k < nstreams; ++k) {
          buf.resize(per * 3 + 16);
          rc_encoder e;
          rc_enc_init(e, buf.data(), buf.size());
          const std::uint16_t* sy = sub[s].data() + k * per;
          for (std::size_t i = 0; i < per; ++i) {
            const std::uint32_t* cdf = cdfs.data() + static_cast<std::size_t>(gof[i % C]) * (A + 1);
            rc_encode(e, cdf[sy[i]], cdf[sy[i] + 1] - cdf[sy[i]]);
          }
          const std::size_t n = rc_enc_finish(e);
          if (e.overflow) throw error(error_kind::io, "ac encode: stream buffer too small");
          lens[k] = static_cast<std::uint32_t>(n);
          data.insert(data.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n));
        }
        if (per_row)
          for (auto l : lens) w.put<std::uint32_t>(l);
        else
          w.put_varint(data.size());
        w.put_bytes(data.data(), data.size());
        payload += static_cast<double>(data.size()) * 8.0;
      }
    }
    w.put_blob(in.side);
    st.add_stream(static_cast<double>(out.size() - base) * 8.0, payload, static_cast<double>(in.side.size()) * 8.0);
    st.entropy_bound_bits += bound;
  }

  symbols decode(std::span<const std::uint8_t> in, const block& ctx) const override {
    symbols out;
    std::vector<std::uint16_t> sub[2];
    walk(in, ctx, out, [&](std::size_t pi, symbol_plane& p, std::uint32_t na) {
      sub[0].assign(static_cast<std::size_t>(na) * p.cols, 0);
      sub[1].assign(static_cast<std::size_t>(p.rows - na) * p.cols, 0);
      (void)pi;
    }, [&](const stream_ref& sr) {
      rc_decoder d;
      rc_dec_init(d, sr.bytes.data(), sr.bytes.size());
      std::uint16_t* o = sub[sr.sub].data() + sr.first;
      std::uint32_t c = 0;
      for (std::size_t i = 0; i < sr.n; ++i) {
        o[i] = static_cast<std::uint16_t>(ac_decode_symbol(d, sr.cdfs + static_cast<std::size_t>(sr.pooled ? 0 : c) * (sr.alphabet + 1), sr.alphabet));
        c = c + 1 == sr.cols ? 0 : c + 1;
      }
      if (!rc_dec_ok(d)) throw_corrupt(sr.where, "plane " + std::to_string(sr.plane) + " stream " + std::to_string(sr.index) + " does not decode exactly");
    }, [&](std::size_t, symbol_plane& p) { em::merge_plane(p, pk_, static_cast<std::uint32_t>(p_.group), sub[0], sub[1]); });
    return out;
  }

  // ---- batch decoding (pipeline/batch.hpp: the CUDA decoder and its host emulation) ---------------

  /// One range-coded stream of a block: n symbols of sub-plane `sub` of plane `plane` from symbol
  /// `first`, symbol i with the CDF of context (pooled ? 0 : i % cols), CDFs of alphabet + 1 entries.
  struct stream_ref {
    std::size_t plane = 0, sub = 0, index = 0;
    std::span<const std::uint8_t> bytes;
    std::size_t first = 0, n = 0;
    std::uint32_t cols = 1, alphabet = 1;
    bool pooled = false;
    const std::uint32_t* cdfs = nullptr;  ///< into block_plan::cdfs (or the decoder's own copy)
    std::string where;
  };
  /// A block parsed and checked as decode() checks it, for a batch decoder: the planes' shapes and
  /// the side bytes (headers, sym empty), the CDFs and the streams. Planes coded with prediction are a
  /// usage error (only the CPU decoder restores them).
  struct block_plan {
    symbols headers;
    std::vector<stream_ref> streams;
    std::vector<std::vector<std::uint32_t>> cdfs;  ///< per sub-plane with symbols
    std::vector<std::uint32_t> anchors;            ///< per plane: its anchor rows (all its rows without prediction)
  };
  /// `predicted`: whether the caller restores planes coded with prediction (core/pred.hpp's restore
  /// step over the sub-planes, anchor rows then residual rows); without it they are a usage error.
  block_plan plan(std::span<const std::uint8_t> in, const block& ctx, bool predicted = false) const {
    block_plan bp;
    walk(in, ctx, bp.headers, [&](std::size_t pi, symbol_plane& p, std::uint32_t na) {
      if (na != p.rows && !predicted)
        throw_usage("ac: plane " + std::to_string(pi) + " of layer " + std::to_string(ctx.layer) + " is coded with pred=" + p_.pred +
                    " residual rows, which this batch decoder does not restore; it takes pred=none streams");
      bp.anchors.push_back(na);
    }, [&](const stream_ref& sr) { bp.streams.push_back(sr); }, [](std::size_t, symbol_plane&) {}, &bp.cdfs);
    return bp;
  }
  /// The prediction (core/pred.hpp's kinds: 0 none, 1 prev, 2 anchor) and its group.
  std::uint32_t pred_code() const noexcept { return static_cast<std::uint32_t>(pk_); }
  std::uint32_t pred_group() const noexcept { return static_cast<std::uint32_t>(p_.group); }

 private:
  /// Decodes one symbol with a CDF of A + 1 entries.
  static std::uint32_t ac_decode_symbol(rc_decoder& d, const std::uint32_t* cdf, std::uint32_t A) {
    std::uint32_t rr;
    const std::uint32_t t = rc_decode_target(d, rr);
    const std::uint32_t sym = rc_cdf_find(cdf, A, t);
    rc_decode_update(d, rr, cdf[sym], cdf[sym + 1] - cdf[sym]);
    return sym;
  }

  /// Parses a block's stream with every check: on_plane(pi, plane, anchor rows) after a plane's
  /// header, on_stream(stream_ref) for each range-coded stream, plane_done(pi, plane) after a plane.
  /// The CDFs live in `keep` when given (one vector per sub-plane with symbols), else only while
  /// their sub-plane's streams are handed over.
  template <class OnPlane, class OnStream, class Done>
  void walk(std::span<const std::uint8_t> in, const block& ctx, symbols& out, const OnPlane& on_plane, const OnStream& on_stream, const Done& plane_done,
            std::vector<std::vector<std::uint32_t>>* keep = nullptr) const {
    byte_reader r(in, "ac stream (layer " + std::to_string(ctx.layer) + (ctx.key ? " K" : " V") + ")");
    const std::uint64_t max_sym = max_symbols_for(ctx);
    out.planes.resize(static_cast<std::size_t>(r.get_varint_max("plane count", 64)));
    if (keep) keep->reserve(2 * out.planes.size());  // pointers into it stay valid
    for (std::size_t pi = 0; pi < out.planes.size(); ++pi) {
      symbol_plane& p = out.planes[pi];
      p.alphabet = static_cast<std::uint32_t>(r.get_varint_max("alphabet", (1u << rc_prob_bits) - 1));
      p.rows = static_cast<std::uint32_t>(r.get_varint_max("rows", max_sym));
      p.cols = static_cast<std::uint32_t>(r.get_varint_max("cols", max_sym));
      if (p.alphabet == 0) throw_corrupt(r.what(), "field 'alphabet': expected >= 1, found 0");
      if (static_cast<std::uint64_t>(p.rows) * p.cols > max_sym) throw_corrupt(r.what(), "plane larger than the block");
      if (p.rows > 0 && p.cols == 0) throw_corrupt(r.what(), "field 'cols': expected >= 1, found 0");
      const std::uint32_t A = p.alphabet, C = p.cols;
      const std::uint32_t na = em::anchor_rows(pk_, static_cast<std::uint32_t>(p_.group), p.rows);
      const std::size_t rows_of[2] = {na, static_cast<std::size_t>(p.rows - na)};
      on_plane(pi, p, na);
      for (int s = 0; s < 2; ++s) {
        // The sub-plane is bounded by the block (max_sym); everything sized by the stream itself is
        // checked against the bytes that back it before it is allocated.
        if (rows_of[s] == 0) continue;
        const bool pooled = p_.ctx == "pooled";
        const std::uint32_t nctx = pooled ? 1 : C;
        const std::uint64_t cdf_entries = static_cast<std::uint64_t>(nctx) * (static_cast<std::uint64_t>(A) + 1);
        if (cdf_entries * 2 > r.remaining())
          throw_corrupt(r.what(), "plane " + std::to_string(pi) + ": " + std::to_string(nctx) + " CDFs of " + std::to_string(A + 1) +
                                      " entries need " + std::to_string(cdf_entries * 2) + " bytes, only " +
                                      std::to_string(r.remaining()) + " bytes left");
        std::vector<std::uint32_t> local;
        std::vector<std::uint32_t>& cdfs = keep ? keep->emplace_back() : local;
        cdfs.resize(static_cast<std::size_t>(cdf_entries));
        for (std::uint32_t g = 0; g < nctx; ++g) {
          std::uint32_t* cdf = cdfs.data() + static_cast<std::size_t>(g) * (A + 1);
          for (std::uint32_t k = 0; k <= A; ++k) cdf[k] = r.get<std::uint16_t>("cdf");
          if (cdf[A] == 0) cdf[A] = 1u << rc_prob_bits;
          if (cdf[0] != 0) throw_corrupt(r.what(), "cdf " + std::to_string(g) + " does not start at 0");
          for (std::uint32_t k = 0; k < A; ++k)
            if (cdf[k + 1] <= cdf[k]) throw_corrupt(r.what(), "cdf " + std::to_string(g) + " is not strictly increasing at " + std::to_string(k));
        }
        const bool per_row = p_.streams == "row";
        const std::size_t nstreams = per_row ? rows_of[s] : 1;
        const std::size_t per = per_row ? C : rows_of[s] * C;
        if (per_row && static_cast<std::uint64_t>(nstreams) * 4 > r.remaining())
          throw_corrupt(r.what(), "plane " + std::to_string(pi) + ": " + std::to_string(nstreams) + " stream lengths need " +
                                      std::to_string(static_cast<std::uint64_t>(nstreams) * 4) + " bytes, only " +
                                      std::to_string(r.remaining()) + " bytes left");
        std::vector<std::uint32_t> lens(nstreams);
        if (per_row)
          for (auto& l : lens) l = r.get<std::uint32_t>("stream length");
        else
          lens[0] = static_cast<std::uint32_t>(r.get_varint_max("stream length", r.remaining()));
        for (std::size_t k = 0; k < nstreams; ++k) {
          stream_ref sr;
          sr.plane = pi;
          sr.sub = static_cast<std::size_t>(s);
          sr.index = k;
          sr.bytes = r.get_bytes(lens[k], "range-coded stream");
          sr.first = k * per;
          sr.n = per;
          sr.cols = C;
          sr.alphabet = A;
          sr.pooled = pooled;
          sr.cdfs = cdfs.data();
          sr.where = r.what();
          on_stream(sr);
        }
      }
      plane_done(pi, p);
    }
    const auto side = r.get_blob("side bytes");
    out.side.assign(side.begin(), side.end());
    r.expect_end();
  }

 private:
  void check_plane(const symbol_plane& p) const {
    if (p.alphabet == 0 || p.alphabet >= (1u << rc_prob_bits))
      throw_bad_input("ac encode", "alphabet", "1..65535", std::to_string(p.alphabet));
    if (p.sym.size() != static_cast<std::size_t>(p.rows) * p.cols)
      throw_bad_input("ac encode", "plane size", std::to_string(static_cast<std::size_t>(p.rows) * p.cols), std::to_string(p.sym.size()));
    if (p.rows > 0 && p.cols == 0) throw_bad_input("ac encode", "cols", ">= 1", "0");
  }
  em::pred_kind pk_ = em::pred_kind::none;
};

}  // namespace kvcodec::cpu
