// kvcodec/stage/cachegen.hpp — `cachegen-quant`: CacheGen's quantizer as LMCache ships it.
//
// One symmetric max-abs scale per (layer, token) over all KV-head channels (axis=token); symbol
// = round(x * MAX / max) + MAX with MAX = bins/2 - 1, bins chosen by layer tier: `kbins=32/16`
// with `klayers=10` means 32 bins for layers 0-9 and 16 after (LMCache's default keys); values
// `vbins=32/16`, `vlayers=2`. Scales are stored as f16 (or bf16). axis=channel instead takes one
// scale per channel over the chunk (KIVI-style keys; used by the kvc presets). Symbols form one
// plane of rows = tokens, cols = kv_heads x head_dim, alphabet max(32, bins - 1) (CacheGen's
// 33-entry CDFs); ragged (token-dropped) blocks use one scale per (head, row) and cols = head_dim.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::quant {

namespace detail {
/// Parses "a/b/c" into integers; false on malformed text.
inline bool parse_tiers(const std::string& s, std::vector<int>& out) {
  out.clear();
  std::size_t i = 0;
  while (i <= s.size()) {
    const std::size_t j = std::min(s.find('/', i), s.size());
    int v = 0;
    if (!kvcodec::detail::from_text(s.substr(i, j - i), v)) return false;
    out.push_back(v);
    i = j + 1;
  }
  return true;
}
}  // namespace detail

struct cachegen {
  static constexpr std::string_view name = "cachegen-quant";
  static constexpr stage_kind kind = stage_kind::quant;
  static constexpr std::string_view summary = "CacheGen/LMCache quantizer: per-token max-abs scale, bins by layer tier";
  std::string kbins = "32/16";
  std::string klayers = "10";
  std::string vbins = "32/16";
  std::string vlayers = "2";
  std::string scale = "f16";
  std::string kaxis = "token";
  std::string vaxis = "token";

  template <class V> void visit(V& v) {
    v("kbins", kbins, "key bins per layer tier, '/'-separated (even, 4..4096)");
    v("klayers", klayers, "first layer of each later key tier, '/'-separated (one fewer than kbins; '-' for one tier)");
    v("vbins", vbins, "value bins per layer tier");
    v("vlayers", vlayers, "first layer of each later value tier");
    v("scale", scale, "scale storage: f16 or bf16");
    v("kaxis", kaxis, "key scale axis: token (CacheGen) or channel (one scale per channel per chunk)");
    v("vaxis", vaxis, "value scale axis: token or channel");
  }
  /// Bins of `layer` for K or V (valid after validate()).
  int bins_for(int layer, bool key) const {
    std::vector<int> b, l;
    detail::parse_tiers(key ? kbins : vbins, b);
    const std::string& ls = key ? klayers : vlayers;
    if (ls != "-") detail::parse_tiers(ls, l);
    std::size_t t = 0;
    while (t < l.size() && layer >= l[t]) ++t;
    return b[t];
  }
  void validate() const {
    for (int k = 0; k < 2; ++k) {
      const std::string& bs = k ? vbins : kbins;
      const std::string& ls = k ? vlayers : klayers;
      const char* bn = k ? "vbins" : "kbins";
      const char* ln = k ? "vlayers" : "klayers";
      std::vector<int> b, l;
      check_param(detail::parse_tiers(bs, b), name, bn, "integers separated by '/'", bs);
      for (int x : b) check_param(x >= 4 && x <= 4096 && x % 2 == 0, name, bn, "even bin counts in 4..4096", bs);
      if (ls != "-") check_param(detail::parse_tiers(ls, l), name, ln, "layer indices separated by '/' or '-'", ls);
      check_param(l.size() + 1 == b.size(), name, ln, "one fewer entry than " + std::string(bn), ls);
      for (std::size_t i = 0; i < l.size(); ++i) check_param(l[i] >= 1 && (i == 0 || l[i] > l[i - 1]), name, ln, "increasing layers >= 1", ls);
    }
    check_param(scale == "f16" || scale == "bf16", name, "scale", "f16 or bf16", scale);
    check_param(kaxis == "token" || kaxis == "channel", name, "kaxis", "token or channel", kaxis);
    check_param(vaxis == "token" || vaxis == "channel", name, "vaxis", "token or channel", vaxis);
  }
};

}  // namespace kvcodec::quant
