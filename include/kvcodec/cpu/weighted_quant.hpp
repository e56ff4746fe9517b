// kvcodec/cpu/weighted_quant.hpp — stage `weighted-quant` (stage/weighted_quant.hpp): chooses each
// channel's step from the query energies and the block's RMS, then stores and decodes exactly as
// cachegen-quant with one scale per channel per chunk (scale = step x MAX). With derope=on, key rows
// are rotated back before RoPE before quantizing and forward as they are decoded (f16 rows written
// by one AVX2 pass from the decoded values). Math: core/weighted_quant.hpp; kernels:
// cpu/cachegen.hpp (quantize, dequantize) and cpu/x86/weighted_quant.hpp (rotate to f16).
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kvcodec/core/half.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/core/weighted_quant.hpp"
#include "kvcodec/cpu/cachegen.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/cpu/x86/weighted_quant.hpp"
#include "kvcodec/stage/weighted_quant.hpp"

namespace kvcodec::cpu {

class weighted_quant final : public stage_impl<quant::weighted, quant_stage> {
 public:
  explicit weighted_quant(quant::weighted p) : stage_impl(std::move(p)), inner_(inner_params(p_), quant::weighted::name) {
    quant::parse_multipliers(p_.klayer, kmul_);
    quant::parse_multipliers(p_.vlayer, vmul_);
  }
  bool lossless() const override { return false; }
  bool fit_uses_blocks() const override { return false; }
  bool wants_query_energy() const override { return p_.kweight == "query"; }
  bytes fit(const std::vector<block>&, const cache_info& info) override {
    if (p_.derope == "on") (void)rope_of(info, info.shape.head_dim);  // a cache without RoPE metadata fails before any block
    for (const auto* m : {&kmul_, &vmul_})
      if (m->size() != 1 && m->size() != static_cast<std::size_t>(info.shape.layers))
        throw_usage(std::string("weighted-quant: parameter '") + (m == &kmul_ ? "klayer" : "vlayer") + "': expected 1 or " +
                    std::to_string(info.shape.layers) + " multipliers (one per layer of the cache), found " + std::to_string(m->size()));
    return {};
  }

  /// The scale stored for each column (kv_heads x head_dim) of `b` as it is quantized (keys already
  /// rotated back when derope=on): step x MAX, the step raised where the column's largest magnitude
  /// would clamp.
  std::vector<float> scales(const block& b, const cache_info& info) const {
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    const int MAX = p_.bins / 2 - 1;
    double ss = 0;
    for (float x : b.data) ss += static_cast<double>(x) * x;
    const double rms = b.data.empty() ? 0.0 : std::sqrt(ss / static_cast<double>(b.data.size()));
    const std::vector<double>& mul = b.key ? kmul_ : vmul_;
    if (mul.size() != 1 && static_cast<std::size_t>(b.layer) >= mul.size())
      throw_usage(std::string("weighted-quant: parameter '") + (b.key ? "klayer" : "vlayer") + "': no multiplier for layer " + std::to_string(b.layer));
    const double base = (b.key ? p_.kstep : p_.vstep) * rms * (mul.size() == 1 ? mul[0] : mul[static_cast<std::size_t>(b.layer)]);
    std::vector<float> rel(H * D, 1.0f);
    const std::size_t per_layer = H * D;
    if (b.key && p_.kweight == "query" && info.query_energy.size() == static_cast<std::size_t>(info.shape.layers) * per_layer &&
        static_cast<std::size_t>(info.shape.kv_heads) == H && static_cast<std::size_t>(info.shape.head_dim) == D) {
      const auto it = info.metadata.find("rope");
      weighted_key_rel(info.query_energy.data() + static_cast<std::size_t>(b.layer) * per_layer, static_cast<int>(H), static_cast<int>(D),
                       rope_pairs_of(it == info.metadata.end() ? std::string() : it->second, static_cast<int>(D)), rel.data());
    }
    // Largest magnitude per column (rows of head h are rows [head_offset(h), +count[h])).
    std::vector<float> amax(H * D, 0.0f);
    std::size_t r0 = 0;
    for (std::size_t h = 0; h < H; ++h) {
      const std::size_t n = b.count[h];
      float* am = amax.data() + h * D;
      for (std::size_t r = r0; r < r0 + n; ++r) {
        const float* x = b.data.data() + r * D;
        for (std::size_t d = 0; d < D; ++d) am[d] = std::max(am[d], std::fabs(x[d]));
      }
      r0 += n;
    }
    std::vector<float> m(H * D);
    for (std::size_t i = 0; i < H * D; ++i) {
      const double step = base * rel[i];
      m[i] = static_cast<float>(std::max(step * MAX, static_cast<double>(amax[i])));
      // NaN or infinity anywhere makes rms non-finite: quantize_with reports it as bad input.
      if (!std::isfinite(rms)) m[i] = std::numeric_limits<float>::quiet_NaN();
    }
    return m;
  }

  void encode(const block& b, const cache_info& info, symbols& out) const override {
    if (!(b.key && p_.derope == "on")) {
      cachegen_quant::quantize_with(b, p_.bins, false, false, scales(b, info), quant::weighted::name, out);
      return;
    }
    thread_local block rb;
    rb = b;
    rotate_rows(rb, rope_of(info, b.head_dim), -1.0);
    cachegen_quant::quantize_with(rb, p_.bins, false, false, scales(rb, info), quant::weighted::name, out);
  }

  void decode(const symbols& in, const cache_info& info, block& b) const override {
    inner_.decode(in, info, b);
    if (b.key && p_.derope == "on") rotate_rows(b, rope_of(info, b.head_dim), 1.0);
  }

  bool decode_rows(const symbols& in, const cache_info& info, const block& b, dtype t, std::byte* const* rows) const override {
    if (!(b.key && p_.derope == "on")) return inner_.decode_rows(in, info, b, t, rows);
    if (t != dtype::f32 && t != dtype::f16 && t != dtype::bf16) return false;
    const rope r = rope_of(info, b.head_dim);
    // cachegen-quant's checks, then one pass per row: dequantize, rotate, convert, store.
    thread_local std::vector<float> step;
    int MAX = 0;
    const symbol_plane& p = inner_.checked(in, b, step, MAX);
    const bool dense = b.dense();
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    const std::size_t C = dense ? H * D : D;
    const int Di = static_cast<int>(D);
#if KVCODEC_X86_DISPATCH
    const bool vec = t == dtype::f16 && simd::avx2();
#endif
    thread_local std::vector<float> x;
    x.resize(D);
    std::size_t i = 0;
    for (std::size_t h = 0; h < H; ++h)
      for (std::uint32_t k = 0; k < b.count[h]; ++k, ++i) {
        // block row i: dense = plane row k, columns h*D..; ragged = plane row i, columns 0..D
        const std::uint16_t* srow = p.sym.data() + (dense ? static_cast<std::size_t>(k) * C + h * D : i * D);
        const float* st = step.data() + h * D;
        const factors f = factors_at(r, b, i, D, 1.0);
        std::size_t d0 = 0;
#if KVCODEC_X86_DISPATCH
        if (vec) d0 = weighted_detail::dequant_rope_row_f16_f16c(srow, st, MAX, f.c, f.s, r.pairs == rope_pairs::interleaved, D,
                                                                 reinterpret_cast<std::uint16_t*>(rows[i]));
#endif
        if (d0 == D) continue;
        for (std::size_t d = 0; d < D; ++d) x[d] = cachegen_dequantize(srow[d], st[d], MAX);
        if (t == dtype::f32) {
          float* o = reinterpret_cast<float*>(rows[i]);
          for (std::size_t d = 0; d < D; ++d) o[d] = rope_rotated(x.data(), static_cast<int>(d), Di, r.pairs, f.c, f.s);
        } else {
          auto* o = reinterpret_cast<std::uint16_t*>(rows[i]);
          const bool half = t == dtype::f16;
          for (std::size_t d = d0; d < D; ++d) {
            const float y = rope_rotated(x.data(), static_cast<int>(d), Di, r.pairs, f.c, f.s);
            o[d] = half ? f32_to_f16_bits(y) : f32_to_bf16_bits(y);
          }
        }
      }
    return true;
  }

 private:
  struct rope {
    rope_pairs pairs = rope_pairs::none;
    double theta = 0;
  };
  /// The cache's RoPE (metadata `rope`, `rope_theta`); a usage error naming the parameter when absent.
  static rope rope_of(const cache_info& info, int head_dim) {
    const auto meta = [&](const char* k) {
      const auto it = info.metadata.find(k);
      return it == info.metadata.end() ? std::string() : it->second;
    };
    const std::string post = meta("post_rope");
    if (post == "false" || post == "0" || post == "no")
      throw_usage("weighted-quant: parameter 'derope': the cache metadata says post_rope=" + post + "; its keys carry no RoPE to undo");
    rope r;
    r.pairs = rope_pairs_of(meta("rope"), head_dim);
    if (r.pairs == rope_pairs::none)
      throw_usage("weighted-quant: parameter 'derope': expected cache metadata 'rope' = interleaved-pairs or rotate-half and an even head_dim, found '" +
                  meta("rope") + "' with head_dim " + std::to_string(head_dim));
    const std::string t = meta("rope_theta");
    const auto res = std::from_chars(t.data(), t.data() + t.size(), r.theta);
    if (t.empty() || res.ec != std::errc() || res.ptr != t.data() + t.size() || !(r.theta > 1) || !std::isfinite(r.theta))
      throw_usage("weighted-quant: parameter 'derope': expected cache metadata 'rope_theta' > 1, found '" + t + "'");
    return r;
  }
  struct factors {
    const float* c;
    const float* s;
  };
  /// Rotates every row of `b` in place by RoPE at its position (dir +1) or back (dir -1).
  static void rotate_rows(block& b, const rope& r, double dir) {
    const std::size_t D = static_cast<std::size_t>(b.head_dim);
    thread_local std::vector<float> row;
    row.resize(D);
    for (std::size_t i = 0; i < b.rows(); ++i) {
      const factors f = factors_at(r, b, i, D, dir);
      float* x = b.data.data() + i * D;
      std::copy_n(x, D, row.data());
      for (std::size_t d = 0; d < D; ++d) x[d] = rope_rotated(row.data(), static_cast<int>(d), static_cast<int>(D), r.pairs, f.c, f.s);
    }
  }
  /// The factors of row i of `b` (position b.pos[i]): from a per-thread table of the positions of the
  /// current chunk, refilled when a block's positions leave it (every layer of a chunk shares it).
  static factors factors_at(const rope& r, const block& b, std::size_t i, std::size_t D, double dir) {
    struct table {
      std::int64_t p0 = 0, n = 0;
      std::size_t D = 0;
      double theta = 0;
      rope_pairs pairs = rope_pairs::none;
      std::vector<float> c, s;
    };
    thread_local table tables[2];  // encode (dir -1) and decode (dir +1)
    table& t = tables[dir > 0 ? 1 : 0];
    const std::int64_t p = b.pos[i];
    if (!(t.D == D && t.theta == r.theta && t.pairs == r.pairs && p >= t.p0 && p < t.p0 + t.n)) {
      // cover this block's positions when they form a run (dense chunks), else this one position
      const auto [lo, hi] = std::minmax_element(b.pos.begin(), b.pos.end());
      const std::int64_t span = static_cast<std::int64_t>(*hi) - *lo + 1;
      const bool run = span <= static_cast<std::int64_t>(4 * b.rows() + 64);
      t.p0 = run ? *lo : p;
      t.n = run ? span : 1;
      t.D = D;
      t.theta = r.theta;
      t.pairs = r.pairs;
      t.c.resize(static_cast<std::size_t>(t.n) * D);
      t.s.resize(t.c.size());
      rope_factors_run(t.p0, t.n, D, r.theta, r.pairs, dir, t.c.data(), t.s.data());
    }
    const std::size_t o = static_cast<std::size_t>(p - t.p0) * D;
    return {t.c.data() + o, t.s.data() + o};
  }
  static quant::cachegen inner_params(const quant::weighted& w) {
    quant::cachegen c;
    c.kbins = c.vbins = std::to_string(w.bins);
    c.klayers = c.vlayers = "-";
    c.scale = "f16";
    c.kaxis = c.vaxis = "channel";
    return c;
  }
  cachegen_quant inner_;
  std::vector<double> kmul_, vmul_;
};

}  // namespace kvcodec::cpu
