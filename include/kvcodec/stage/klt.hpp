// kvcodec/stage/klt.hpp — `klt`: entropy-coded uniform quantization of K and V rows in a per-model
// transform domain (issue 13). A profile (io/kv_profile.hpp, fitted by `kvcodec calibrate
// --profile-out` on other dumps of the model) holds, per layer and kv head, a transform that whitens
// the error metric the model applies (keys: the pre-RoPE queries' covariance averaged over the RoPE
// rotation of every causal lag; values: W_o of the query heads that read the head) and then
// decorrelates the rows (the metric-weighted KLT, core/klt.hpp). One step per block then spends bits where the model needs them and none on
// directions the rows do not use: on kvlab's dumps it codes the context in ~20% fewer bits than
// weighted-quant at the same model KL.
//
// Keys are rotated back before RoPE (cache metadata `rope`, `rope_theta`) and transformed; values are
// transformed. The step of every coefficient of a block is kstep (vstep) x the block's RMS x the
// layer's klayer (vlayer) multiplier, raised for a coefficient where it would clamp (|y| / step > MAX,
// MAX = bins / 2 - 1). Symbols are cachegen-quant's over the coefficients (the entropy stage's columns
// are the KLT components); the f16 scale is stored once per block, plus those of the coefficients
// whose step was raised (cpu/klt.hpp compact_side). The container keeps
// the profile's hash (stage state): decoding needs the same profile loaded, and says which one when
// it is not.
#pragma once

#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/stage/interface.hpp"
#include "kvcodec/stage/weighted_quant.hpp"

namespace kvcodec::quant {

struct klt {
  static constexpr std::string_view name = "klt";
  static constexpr stage_kind kind = stage_kind::quant;
  static constexpr std::string_view summary = "uniform steps on a per-model metric-weighted KLT of K and V (needs a profile), entropy-coded symbols";
  std::string profile = "auto";
  double kstep = 0.2;
  double vstep = 0.3;
  int bins = 256;
  std::string klayer = "1";
  std::string vlayer = "1";

  template <class V> void visit(V& v) {
    v("profile", profile, "hash of the loaded profile to use (16 hex digits), or auto = the only one loaded (--profile FILE)");
    v("kstep", kstep, "key step relative to the block's key RMS");
    v("vstep", vstep, "value step relative to the block's value RMS");
    v("bins", bins, "symbols per coefficient (even, 4..4096): steps are raised so that no coefficient clamps");
    v("klayer", klayer, "per-layer multipliers of the key steps, '/'-separated (one per layer, or one for all; from `kvcodec calibrate`)");
    v("vlayer", vlayer, "per-layer multipliers of the value steps");
  }
  static bool hex16(const std::string& s) {
    if (s.size() != 16) return false;
    for (char c : s)
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
  }
  void validate() const {
    check_param(profile == "auto" || hex16(profile), name, "profile", "auto or 16 lowercase hex digits", profile);
    check_param(kstep > 0 && kstep <= 64 && std::isfinite(kstep), name, "kstep", "a step in (0, 64]", kstep);
    check_param(vstep > 0 && vstep <= 64 && std::isfinite(vstep), name, "vstep", "a step in (0, 64]", vstep);
    check_param(bins >= 4 && bins <= 4096 && bins % 2 == 0, name, "bins", "an even count in 4..4096", bins);
    std::vector<double> m;
    check_param(parse_multipliers(klayer, m), name, "klayer", "numbers in (0, 1024] separated by '/'", klayer);
    check_param(parse_multipliers(vlayer, m), name, "vlayer", "numbers in (0, 1024] separated by '/'", vlayer);
  }
};

}  // namespace kvcodec::quant
