// kvcodec/registry/presets.hpp — the named codecs: presets that expand to a full stage list before
// construction (`kvcodec list` shows them under [presets]).
//
// cachegen       = LMCache's default CacheGen: cachegen-quant (per-token max-abs, keys 32 bins for
//                  layers 0-9 then 16, values 32 for layers 0-1 then 16, f16 scales) + ac (per
//                  channel 33-entry 16-bit CDFs rebuilt every chunk, one stream + u32 length per token).
// cachegen-paper = the paper's three quantization levels with anchor-group token deltas (groups of
//                  10 tokens, in the symbol domain, lossless), same coder.
// kvc:level=L    = kvcodec's own family, 1 most faithful .. 9 smallest (table in kvc_level_spec).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kvcodec/registry/registry.hpp"
#include "kvcodec/stage/weighted_quant.hpp"

namespace kvcodec {

namespace presets {
struct cachegen_p {
  template <class V> void visit(V&) {}
  void validate() const {}
};
struct cachegen_paper_p {
  int level = 1;
  template <class V> void visit(V& v) { v("level", level, "paper quantization level: 1 (32/16 bins), 2 (16/8), 3 (8/4)"); }
  void validate() const { check_param(level >= 1 && level <= 3, "cachegen-paper", "level", "1..3", level); }
};
struct kvc_p {
  int level = 5;
  double target = 0;
  std::string values = "token";
  template <class V> void visit(V& v) {
    v("level", level, "1 (most faithful) .. 9 (smallest)");
    v("values", values, "value scales: token (one per token, as CacheGen) or channel (one per channel per chunk: smaller at the same model KL on every real dump, bench/results/rd_curve.md)");
    v("target", target, "instead of a level: the largest attention KL allowed; the smallest encoding under it is chosen on the cache (pipeline/target.hpp)");
  }
  void validate() const {
    check_param(level >= 1 && level <= 9, "kvc", "level", "1..9", level);
    check_param(target >= 0 && std::isfinite(target), "kvc", "target", "an attention KL > 0", target);
    check_param(values == "token" || values == "channel", "kvc", "values", "token or channel", values);
  }
};
struct kvw_p {
  double kstep = 0.2;
  double vstep = 0.3;
  std::string derope = "on";
  std::string klayer = "1";
  std::string vlayer = "1";
  template <class V> void visit(V& v) {
    v("kstep", kstep, "key step relative to the key RMS, before the query weighting (smaller = more faithful)");
    v("vstep", vstep, "value step relative to the value RMS");
    v("klayer", klayer, "per-layer key step multipliers, '/'-separated (from `kvcodec calibrate --model`), or one for all");
    v("vlayer", vlayer, "per-layer value step multipliers");
    v("derope", derope, "on (keys quantized before RoPE; needs the cache's rope metadata) or off");
  }
  void validate() const {
    check_param(kstep > 0 && kstep <= 64 && std::isfinite(kstep), "kvw", "kstep", "a step in (0, 64]", kstep);
    check_param(vstep > 0 && vstep <= 64 && std::isfinite(vstep), "kvw", "vstep", "a step in (0, 64]", vstep);
    check_param(derope == "on" || derope == "off", "kvw", "derope", "on or off", derope);
    std::vector<double> m;
    check_param(quant::parse_multipliers(klayer, m), "kvw", "klayer", "numbers in (0, 1024] separated by '/'", klayer);
    check_param(quant::parse_multipliers(vlayer, m), "kvw", "vlayer", "numbers in (0, 1024] separated by '/'", vlayer);
  }
};
}  // namespace presets

inline std::string cachegen_spec() { return "cachegen-quant|ac:ctx=channel,streams=row"; }

inline std::string cachegen_paper_spec(int level) {
  static const char* bins[3][2] = {{"32/16", "32/16"}, {"16/8", "16/8"}, {"8/4", "8/4"}};
  const auto& b = bins[level - 1];
  return std::string("cachegen-quant:kbins=") + b[0] + ",vbins=" + b[1] + "|ac:ctx=channel,streams=row,pred=anchor,group=10";
}

/// kvc levels: key bins (per-channel scales per chunk), value bins (per-token scales), rANS table
/// precision. Levels 3..9 (alphabets of at most 129 symbols) use 2^10-slot tables: a context's
/// decode table is 4 KB instead of 16 KB, so a block's tables stay in L1/L2 while its rows stream out
/// (decode_into of a 256 MB kvc:level=5 cache ~1.3x faster in one run), and the files are no larger
/// (real dumps -0.03..-0.33%, synthetic +0.03..+0.1%; bench/results/datapath.txt). Levels 1-2 keep
/// 2^12 (alphabets above 256: 2^10 slots cost +0.06..+0.7%).
/// kvc's quantizer alone: key bins (per-channel scales per chunk), value bins (values = "token": per-token
/// scales; "channel": per-channel scales per chunk).
inline std::string kvc_quant_spec(int kbins, int vbins, const std::string& values = "token") {
  return "cachegen-quant:kbins=" + std::to_string(kbins) + ",klayers=-,vbins=" + std::to_string(vbins) + ",vlayers=-,kaxis=channel,vaxis=" + values;
}
/// kvc at any bins: the quantizer, then rANS with 2^10-slot tables below 128 bins, 2^12 up to 256 bins,
/// 2^14 up to 1024 and 2^15 above (the finer end of kvc:target's axis, beyond the levels).
inline std::string kvc_bins_spec(int kbins, int vbins, const std::string& values = "token") {
  const int b = std::max(kbins, vbins);
  const int prob_bits = b < 128 ? 10 : b <= 256 ? 12 : b <= 1024 ? 14 : 15;
  return kvc_quant_spec(kbins, vbins, values) + "|rans:lanes=0,tables=shared,ctx=auto,model=auto,prob_bits=" + std::to_string(prob_bits);
}
inline std::string kvc_level_spec(int level, const std::string& values = "token") {
  static const int bins[9] = {256, 128, 64, 48, 32, 24, 16, 12, 8};
  return kvc_bins_spec(bins[level - 1], bins[level - 1], values);
}

/// kvw: weighted-quant (key steps from the queries' sensitivity, value steps from the RMS, keys
/// quantized before RoPE with the rotation fused into the decode; 256 bins: steps, not ranges, set
/// the rate, and 8-bit symbols keep the rANS decoder's fast path), then the kvc levels' rANS.
inline std::string kvw_spec(double kstep, double vstep, bool derope = true, const std::string& klayer = "1", const std::string& vlayer = "1") {
  char b[200];
  std::snprintf(b, sizeof b, "weighted-quant:kstep=%.17g,vstep=%.17g,derope=%s", kstep, vstep, derope ? "on" : "off");
  return std::string(b) + ",klayer=" + klayer + ",vlayer=" + vlayer + "|rans:lanes=0,tables=shared,ctx=auto,model=auto,prob_bits=10";
}

inline void register_presets(registry& r) {
  r.add_preset<presets::cachegen_p>("cachegen", "CacheGen as LMCache ships it (per-token quantizer, tiered bins, torchac-style coder)",
                                    [](const presets::cachegen_p&) { return cachegen_spec(); });
  r.add_preset<presets::cachegen_paper_p>("cachegen-paper", "CacheGen paper: three quantization levels + anchor-group token deltas",
                                          [](const presets::cachegen_paper_p& p) { return cachegen_paper_spec(p.level); });
  r.add_preset<presets::kvc_p>("kvc", "kvcodec's own codec family: level 1 (most faithful) .. 9 (smallest)",
                               [](const presets::kvc_p& p) {
                                 if (p.target > 0)
                                   throw_usage("kvc:target=" + std::to_string(p.target) +
                                               " is chosen on the cache it encodes: resolve it with kvcodec::resolve_target(spec, cache) "
                                               "(pipeline/target.hpp), or use `kvcodec encode` / `kvcodec eval` / kvcodec.encode in Python");
                                 return kvc_level_spec(p.level, p.values);
                               });
  r.add_preset<presets::kvw_p>("kvw", "kvcodec's model-aware family: steps weighted by query sensitivity, keys before RoPE (issue 13)",
                               [](const presets::kvw_p& p) { return kvw_spec(p.kstep, p.vstep, p.derope == "on", p.klayer, p.vlayer); });
}

}  // namespace kvcodec
