// kvcodec/stage/uniform.hpp — `uniform`: per-group affine / symmetric round-to-nearest quantization
// of K and V with separate settings and per-layer bit schedules, optional dense-and-sparse outliers.
//
// Follows the group-wise integer KV quantizers of KIVI / KVQuant / FlexGen (x ≈ q·scale + min, or
// (q − 2^(b−1))·scale symmetric). Axis vocabulary is KIVI's: `token` = per-token quantization (a group
// is `group` consecutive channels of one head row), `channel` = per-channel quantization (a group is
// `group` consecutive tokens of one channel of one head, within a token chunk).
// Bit schedules: "4" (every layer), or "8/8/4" (layer 0: 8, layer 1: 8, every later layer: the last
// value); `auto` for kbits/vbits means "use `bits`". Outliers (KVQuant's dense-and-sparse): the top
// `outliers` percent of |x| per block plus every non-finite value are stored exactly in a sparse list
// and left out of the scales.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::quant {

/// Parses a bit schedule "b0/b1/.../bn" (each lo..8); throws usage naming stage and key.
inline std::vector<int> parse_bit_schedule(const std::string& text, std::string_view stage, std::string_view key, int lo) {
  std::vector<int> out;
  for (auto piece : kvcodec::detail::split(text, '/')) {
    int v = 0;
    if (!kvcodec::detail::from_text(std::string(piece), v) || v < lo || v > 8)
      check_param(false, stage, key, "bits " + std::to_string(lo) + "..8, or a schedule such as 8/8/4", text);
    out.push_back(v);
  }
  return out;
}

/// Bits of `layer` under a schedule (the last entry repeats).
inline int schedule_bits(const std::vector<int>& s, int layer) noexcept {
  if (s.empty()) return 0;
  return s[static_cast<std::size_t>(layer) < s.size() ? static_cast<std::size_t>(layer) : s.size() - 1];
}

struct uniform {
  static constexpr std::string_view name = "uniform";
  static constexpr stage_kind kind = stage_kind::quant;
  static constexpr std::string_view summary = "group-wise uniform (affine/symmetric) quantization, 1-8 bits, per-layer schedules";
  int bits = 4;
  std::string kbits = "auto";
  std::string vbits = "auto";
  std::string kaxis = "token";
  std::string vaxis = "token";
  int group = 0;
  std::string mode = "asym";
  std::string scale = "f16";
  double outliers = 0.0;

  template <class V> void visit(V& v) {
    v("bits", bits, "bits per element for K and V, 1..8 (2..8 when mode=sym)");
    v("kbits", kbits, "K bits or per-layer schedule b0/b1/.../rest (e.g. 8/8/4); auto = bits");
    v("vbits", vbits, "V bits or per-layer schedule; auto = bits");
    v("kaxis", kaxis, "K grouping: token (groups of channels of one token) or channel (groups of tokens of one channel)");
    v("vaxis", vaxis, "V grouping: token or channel");
    v("group", group, "group size (channels for token axis, must divide head_dim; tokens for channel axis); 0 = whole head row / whole chunk");
    v("mode", mode, "asym (scale + min) or sym (scale only, levels symmetric about 0)");
    v("scale", scale, "storage of scales and minima: f16 or f32");
    v("outliers", outliers, "percent of values per block kept exactly in a sparse list (dense-and-sparse), 0..100");
  }
  int min_bits() const { return mode == "sym" ? 2 : 1; }
  std::vector<int> k_schedule() const { return parse_bit_schedule(kbits == "auto" ? std::to_string(bits) : kbits, name, "kbits", min_bits()); }
  std::vector<int> v_schedule() const { return parse_bit_schedule(vbits == "auto" ? std::to_string(bits) : vbits, name, "vbits", min_bits()); }
  void validate() const {
    check_param(mode == "asym" || mode == "sym", name, "mode", "asym or sym", mode);
    check_param(bits >= min_bits() && bits <= 8, name, "bits", std::to_string(min_bits()) + "..8", bits);
    (void)k_schedule();
    (void)v_schedule();
    check_param(kaxis == "token" || kaxis == "channel", name, "kaxis", "token or channel", kaxis);
    check_param(vaxis == "token" || vaxis == "channel", name, "vaxis", "token or channel", vaxis);
    check_param(group >= 0, name, "group", ">= 0", group);
    check_param(scale == "f16" || scale == "f32", name, "scale", "f16 or f32", scale);
    check_param(outliers >= 0.0 && outliers <= 100.0, name, "outliers", "a percentage 0..100", outliers);
  }
};

}  // namespace kvcodec::quant
