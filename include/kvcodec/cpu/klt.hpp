// kvcodec/cpu/klt.hpp — stage `klt` (stage/klt.hpp): keys rotated back before RoPE, rows of K and V
// transformed by the profile's per-(layer, kv head) forward matrix, quantized as cachegen-quant with
// one scale per coefficient per chunk, stored with that scale once per block plus those of the
// coefficients that would clamp (compact_side); decoding dequantizes a row, applies the
// inverse matrix, rotates keys forward and writes the row in the asked dtype in one pass (decode()
// runs the same pass into f32). Math: core/klt.hpp; profiles: io/kv_profile.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "kvcodec/core/cachegen.hpp"
#include "kvcodec/core/half.hpp"
#include "kvcodec/core/klt.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/cpu/cachegen.hpp"
#include "kvcodec/cpu/rope_rows.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/cpu/x86/klt.hpp"
#include "kvcodec/io/kv_profile.hpp"
#include "kvcodec/stage/klt.hpp"

namespace kvcodec::cpu {

class klt_quant final : public stage_impl<quant::klt, quant_stage> {
 public:
  explicit klt_quant(quant::klt p) : stage_impl(std::move(p)), inner_(cachegen_quant::per_channel_params(p_.bins), quant::klt::name) {
    quant::parse_multipliers(p_.klayer, kmul_);
    quant::parse_multipliers(p_.vlayer, vmul_);
  }
  bool lossless() const override { return false; }
  bool fit_uses_blocks() const override { return false; }

  /// Resolves the profile (the only one loaded, or the one named) and checks it against the cache;
  /// the state stored is its hash (8 bytes, little-endian).
  bytes fit(const std::vector<block>&, const cache_info& info) override {
    std::shared_ptr<const io::kv_profile> pr;
    const auto loaded = io::profile_registry::instance().all();
    if (p_.profile == "auto") {
      if (loaded.size() != 1)
        throw_usage("klt: parameter 'profile': auto needs exactly one profile loaded (--profile FILE; `kvcodec calibrate --profile-out` writes one), found " +
                    std::to_string(loaded.size()));
      pr = loaded.front();
    } else {
      pr = io::profile_registry::instance().find(std::stoull(p_.profile, nullptr, 16));
      if (!pr) throw_usage("klt: parameter 'profile': no loaded profile has hash " + p_.profile + " (load it with --profile FILE)");
    }
    check_fits(*pr, info);
    for (const auto* m : {&kmul_, &vmul_})
      if (m->size() != 1 && m->size() != static_cast<std::size_t>(info.shape.layers))
        throw_usage(std::string("klt: parameter '") + (m == &kmul_ ? "klayer" : "vlayer") + "': expected 1 or " + std::to_string(info.shape.layers) +
                    " multipliers (one per layer of the cache), found " + std::to_string(m->size()));
    prof_ = pr;
    bytes state;
    for (int i = 0; i < 8; ++i) state.push_back(static_cast<std::uint8_t>(pr->hash >> (8 * i)));
    return state;
  }

  void load_state(std::span<const std::uint8_t> state, const cache_info& info) override {
    if (state.size() != 8) throw_corrupt("klt", "stage state: expected the 8-byte profile hash, found " + std::to_string(state.size()) + " bytes");
    std::uint64_t h = 0;
    for (int i = 0; i < 8; ++i) h |= static_cast<std::uint64_t>(state[static_cast<std::size_t>(i)]) << (8 * i);
    auto pr = io::profile_registry::instance().find(h);
    if (!pr)
      throw_usage("klt: this container was coded with KV profile " + io::profile_hash_text(h) +
                  ", which is not loaded: pass the profile file it was encoded with (--profile FILE)");
    check_fits(*pr, info);
    prof_ = std::move(pr);
  }

  void encode(const block& b, const cache_info& info, symbols& out) const override {
    const io::kv_profile& pr = profile();
    thread_local block rb;
    rb = b;
    if (b.key) rope_rows::rotate_rows(rb, rope_rows::rope_of(info, b.head_dim, "klt"), -1.0);
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    double ss = 0;
    for (float x : b.data) ss += static_cast<double>(x) * x;
    const double rms = b.data.empty() ? 0.0 : std::sqrt(ss / static_cast<double>(b.data.size()));
    thread_local std::vector<float> x;
    x.resize(D);
    std::vector<float> amax(H * D, 0.0f);
    std::size_t r = 0;
    for (std::size_t h = 0; h < H; ++h) {
      const float* F = pr.matrix(b.layer, b.key, static_cast<int>(h), true);
      float* am = amax.data() + h * D;
      for (std::uint32_t k = 0; k < b.count[h]; ++k, ++r) {
        float* row = rb.data.data() + r * D;
        std::copy_n(row, D, x.data());
        row_product(x.data(), F, D, row);
        for (std::size_t d = 0; d < D; ++d) am[d] = std::max(am[d], std::fabs(row[d]));
      }
    }
    const std::vector<double>& mul = b.key ? kmul_ : vmul_;
    const double base = (b.key ? p_.kstep : p_.vstep) * rms * (mul.size() == 1 ? mul[0] : mul[static_cast<std::size_t>(b.layer)]);
    const int MAX = p_.bins / 2 - 1;
    // One scale (step x MAX) for the block, rounded to f16; a coefficient whose largest magnitude
    // exceeds it gets its own (it would clamp).
    const std::uint16_t base_bits = cachegen_scale_bits(static_cast<float>(base * MAX), false);
    const float base_scale = cachegen_scale_value(base_bits, false);
    std::vector<float> m(H * D);
    for (std::size_t i = 0; i < H * D; ++i) {
      m[i] = amax[i] > base_scale ? amax[i] : base_scale;
      if (!std::isfinite(rms)) m[i] = std::numeric_limits<float>::quiet_NaN();  // quantize_with reports NaN / inf input
    }
    cachegen_quant::quantize_with(rb, p_.bins, false, false, m, quant::klt::name, out);
    compact_side(out.side, base_bits);
  }

  /// cachegen-quant's side bytes (one f16 scale per column) as klt stores them: u16 the block's scale,
  /// a bitmap of the columns with a scale of their own (LSB first), then those scales (u16 each).
  static void compact_side(bytes& side, std::uint16_t base_bits) {
    const std::size_t n = side.size() / 2;
    thread_local std::vector<std::uint16_t> own;
    own.clear();
    bytes c(2 + (n + 7) / 8, 0);
    kvcodec::detail::store_le16(c.data(), base_bits);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint16_t v = kvcodec::detail::load_le16(side.data() + 2 * i);
      if (v != base_bits) {
        c[2 + i / 8] = static_cast<std::uint8_t>(c[2 + i / 8] | (1u << (i % 8)));
        own.push_back(v);
      }
    }
    const std::size_t o = c.size();
    c.resize(o + 2 * own.size());
    for (std::size_t j = 0; j < own.size(); ++j) kvcodec::detail::store_le16(c.data() + o + 2 * j, own[j]);
    side.swap(c);
  }
  /// The per-column side bytes back from compact_side's (n columns); corrupt when the sizes disagree.
  static void expand_side(std::span<const std::uint8_t> c, std::size_t n, std::vector<std::uint8_t>& side, const block& b) {
    const std::string where = "klt (layer " + std::to_string(b.layer) + (b.key ? " K)" : " V)");
    const std::size_t head = 2 + (n + 7) / 8;
    if (c.size() < head) throw_corrupt(where, "expected at least " + std::to_string(head) + " bytes of scales, found " + std::to_string(c.size()));
    std::size_t own = 0;
    for (std::size_t i = 0; i < n; ++i) own += (c[2 + i / 8] >> (i % 8)) & 1u;
    if (c.size() != head + 2 * own)
      throw_corrupt(where, "expected " + std::to_string(head + 2 * own) + " bytes of scales (" + std::to_string(own) + " own), found " +
                               std::to_string(c.size()));
    if (n % 8 != 0 && (c[head - 1] >> (n % 8)) != 0) throw_corrupt(where, "scale bitmap has bits past the last column");
    side.resize(2 * n);
    const std::uint16_t base = kvcodec::detail::load_le16(c.data());
    std::size_t j = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const bool mine = (c[2 + i / 8] >> (i % 8)) & 1u;
      kvcodec::detail::store_le16(side.data() + 2 * i, mine ? kvcodec::detail::load_le16(c.data() + head + 2 * j++) : base);
    }
  }

  void decode(const symbols& in, const cache_info& info, block& b) const override {
    b.data.resize(b.rows() * static_cast<std::size_t>(b.head_dim));
    std::vector<std::byte*> rows(b.rows());
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = reinterpret_cast<std::byte*>(b.data.data() + i * static_cast<std::size_t>(b.head_dim));
    decode_rows(in, info, b, dtype::f32, rows.data());
  }

  bool decode_rows(const symbols& in, const cache_info& info, const block& b, dtype t, std::byte* const* rows) const override {
    if (t != dtype::f32 && t != dtype::f16 && t != dtype::bf16) return false;
    const io::kv_profile& pr = profile();
    thread_local std::vector<float> step;
    int MAX = 0;
    thread_local std::vector<std::uint8_t> side;
    expand_side(in.side, static_cast<std::size_t>(b.heads) * static_cast<std::size_t>(b.head_dim), side, b);  // one scale per column
    const symbol_plane& p = inner_.checked(in.planes, side, b, step, MAX);
    rope_rows::rope r;
    if (b.key) r = rope_rows::rope_of(info, b.head_dim, "klt");
    const bool dense = b.dense();
    const std::size_t D = static_cast<std::size_t>(b.head_dim), H = static_cast<std::size_t>(b.heads);
    const std::size_t C = dense ? H * D : D;
    thread_local std::vector<float> y, x, o;
    y.resize(D);
    x.resize(D);
    o.resize(D);
    std::size_t i = 0;
    for (std::size_t h = 0; h < H; ++h) {
      const float* Finv = pr.matrix(b.layer, b.key, static_cast<int>(h), false);
      const float* st = step.data() + h * D;
      for (std::uint32_t k = 0; k < b.count[h]; ++k, ++i) {
        // block row i: dense = plane row k, columns h*D..; ragged = plane row i, columns 0..D
        const std::uint16_t* srow = p.sym.data() + (dense ? static_cast<std::size_t>(k) * C + h * D : i * D);
        for (std::size_t d = 0; d < D; ++d) y[d] = cachegen_dequantize(srow[d], st[d], MAX);
        row_product(y.data(), Finv, D, x.data());
        const float* v = x.data();
        if (b.key) {
          const rope_rows::factors f = rope_rows::factors_at(r, b, i, D, 1.0);
          for (std::size_t d = 0; d < D; ++d) o[d] = rope_rotated(x.data(), static_cast<int>(d), static_cast<int>(D), r.pairs, f.c, f.s);
          v = o.data();
        }
        if (t == dtype::f32) {
          std::memcpy(rows[i], v, D * sizeof(float));
        } else {
          auto* out = reinterpret_cast<std::uint16_t*>(rows[i]);
          for (std::size_t d = 0; d < D; ++d) out[d] = t == dtype::f16 ? f32_to_f16_bits(v[d]) : f32_to_bf16_bits(v[d]);
        }
      }
    }
    return true;
  }

 private:
  /// klt_row, 8-wide where the CPU has AVX2 (the same floats either way).
  static void row_product(const float* x, const float* M, std::size_t D, float* y) {
#if KVCODEC_X86_DISPATCH
    if (D % 8 == 0 && simd::avx2()) {
      klt_detail::row_avx2(x, M, D, y);
      return;
    }
#endif
    klt_row(x, M, D, y);
  }
  const io::kv_profile& profile() const {
    if (!prof_) throw_usage("klt: no profile resolved (the encoder calls fit, the decoder load_state, before any block)");
    return *prof_;
  }
  static void check_fits(const io::kv_profile& pr, const cache_info& info) {
    const auto& s = info.shape;
    if (pr.layers != s.layers || pr.kv_heads != s.kv_heads || pr.head_dim != s.head_dim)
      throw_usage("klt: profile " + io::profile_hash_text(pr.hash) + " (model '" + pr.model + "') is for layers x kv_heads x head_dim = " +
                  std::to_string(pr.layers) + " x " + std::to_string(pr.kv_heads) + " x " + std::to_string(pr.head_dim) + ", the cache is " +
                  std::to_string(s.layers) + " x " + std::to_string(s.kv_heads) + " x " + std::to_string(s.head_dim));
    const auto it = info.metadata.find("rope");
    const std::string rope = it == info.metadata.end() ? std::string() : it->second;
    if (rope != pr.rope)
      throw_usage("klt: profile " + io::profile_hash_text(pr.hash) + " was fitted on keys with rope '" + pr.rope + "', the cache's metadata says '" + rope + "'");
    (void)rope_rows::rope_of(info, s.head_dim, "klt");  // a cache without usable RoPE metadata fails before any block
  }
  cachegen_quant inner_;
  std::vector<double> kmul_, vmul_;
  std::shared_ptr<const io::kv_profile> prof_;
};

}  // namespace kvcodec::cpu
