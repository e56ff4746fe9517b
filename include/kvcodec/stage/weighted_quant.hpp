// kvcodec/stage/weighted_quant.hpp — `weighted-quant`: entropy-coded uniform quantization whose
// steps are set by what the model does with the cache, not by each channel's range (issue 13).
//
// Keys: the step of (layer, kv head, channel) is kstep x the block's key RMS x sqrt(G / w), where
// w is the mean squared query over the query heads that read that kv head (the sensitivity of a
// logit to an error in that key channel; KVQuant's sensitivity weighting, diagonal form), averaged
// over each RoPE pair (the rotation mixes a pair's error, so a pair shares one weight), and G is
// the geometric mean of w over the layer (so kstep keeps its meaning whatever the weights). The
// ratio is clamped to [1/16, 16]. Without queries (cache_info::query_energy empty) or with
// kweight=none every key channel of a layer gets the same step. Values: vstep x the block's value
// RMS for every channel (their error reaches the model through W_o, which a dump does not carry).
// klayer / vlayer multiply the steps of each layer (model-aware allocation across layers and between
// K and V: `kvcodec calibrate` measures each layer's sensitivity with the model in the loop).
// A step is raised where it would clamp the channel (|x| / step > MAX, MAX = bins/2 - 1).
//
// derope=on quantizes keys before RoPE (KVQuant's pre-RoPE keys: their channels keep their sign and
// scale over tokens, so the same step costs fewer bits): the stage rotates each key row back at its
// position (block.pos) before choosing steps and quantizing, and forward again as it decodes, in the
// same pass that writes the row (f16 straight from the rotation); what the `derope` transform does,
// without a second pass over an f32 copy.
//
// The stored format is cachegen-quant's with one scale per channel per chunk (kaxis = vaxis =
// channel, one tier of `bins`): the scale stored is step x MAX, so the decoder, its checks and its
// AVX2 kernels are cachegen-quant's (derope=on then rotates the decoded rows).
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::quant {

/// Parses "a/b/c" into positive finite numbers <= 1024; false on malformed text.
inline bool parse_multipliers(const std::string& s, std::vector<double>& out) {
  out.clear();
  std::size_t i = 0;
  while (i <= s.size()) {
    const std::size_t j = std::min(s.find('/', i), s.size());
    double v = 0;
    if (!kvcodec::detail::from_text(s.substr(i, j - i), v) || !(v > 0) || v > 1024) return false;
    out.push_back(v);
    i = j + 1;
  }
  return true;
}

struct weighted {
  static constexpr std::string_view name = "weighted-quant";
  static constexpr stage_kind kind = stage_kind::quant;
  static constexpr std::string_view summary = "uniform steps set by query sensitivity (keys) and RMS, entropy-coded symbols";
  double kstep = 0.2;
  double vstep = 0.3;
  int bins = 256;
  std::string kweight = "query";
  std::string derope = "off";
  std::string klayer = "1";
  std::string vlayer = "1";

  template <class V> void visit(V& v) {
    v("kstep", kstep, "key step relative to the block's key RMS (before the query weighting)");
    v("vstep", vstep, "value step relative to the block's value RMS");
    v("bins", bins, "symbols per channel (even, 4..4096): steps are raised so that no value clamps");
    v("kweight", kweight, "query (key steps from the cache's queries; none when it has none) or none");
    v("klayer", klayer, "per-layer multipliers of the key steps, '/'-separated (one per layer, or one for all; from `kvcodec calibrate`)");
    v("vlayer", vlayer, "per-layer multipliers of the value steps");
    v("derope", derope, "on: keys rotated back before RoPE (cache metadata rope, rope_theta) before quantizing, and forward after decoding, fused into the decode; off");
  }
  void validate() const {
    check_param(kstep > 0 && kstep <= 64 && std::isfinite(kstep), name, "kstep", "a step in (0, 64]", kstep);
    check_param(vstep > 0 && vstep <= 64 && std::isfinite(vstep), name, "vstep", "a step in (0, 64]", vstep);
    check_param(bins >= 4 && bins <= 4096 && bins % 2 == 0, name, "bins", "an even count in 4..4096", bins);
    check_param(kweight == "query" || kweight == "none", name, "kweight", "query or none", kweight);
    check_param(derope == "on" || derope == "off", name, "derope", "on or off", derope);
    std::vector<double> m;
    check_param(parse_multipliers(klayer, m), name, "klayer", "numbers in (0, 1024] separated by '/'", klayer);
    check_param(parse_multipliers(vlayer, m), name, "vlayer", "numbers in (0, 1024] separated by '/'", vlayer);
  }
};

}  // namespace kvcodec::quant
