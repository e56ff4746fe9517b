// kvcodec/stage/drop_common.hpp — what every token-dropping stage shares: the budget, the compressed
// prefix and the resolved configuration the CPU selector runs on.
//
// Budget: `tokens` > 0 keeps that many tokens per (layer, kv head) of the compressed prefix;
// otherwise round(keep x prefix) (at least 1). The compressed prefix is [0, obs_end) (obs_end = -1:
// the whole cache); tokens at or after obs_end arrive after compression (a question, a decode) and
// are always kept, so selection can observe queries of one window and fidelity can be measured on a
// later, disjoint one (eval attention_options::query_begin). Follows kvpress's presses (NVIDIA,
// ScorerPress: score every key, keep the top budget per head). Every descriptor derives from
// drop_budget, which owns keep, tokens and obs_end, their place in the visit order and their checks.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::drop {

enum class method : std::uint8_t {
  random, streamingllm, knorm, keydiff, h2o, snapkv, tova, expected_attention, pyramidkv, adakv, lagkv, chunkkv,
  criticalkv, criticaladakv, block
};

/// Everything a selector may need; each descriptor fills the fields it exposes, the rest keep defaults.
struct config {
  method m = method::snapkv;
  std::string name = "snapkv";
  double keep = 0.5;
  std::int64_t tokens = 0;
  std::int64_t obs_end = -1;
  std::int64_t seed = 0;
  std::int64_t sink = 4;
  std::int64_t lag = 128;
  std::int64_t chunk = 10;
  std::int64_t window = 64;
  std::int64_t kernel = 5;
  double recent = 0.5;
  std::int64_t future = 64;
  bool cov = false;
  bool vnorm = true;
  double beta = 20.0;
  double alpha = 0.2;
  double first = 0.5;
  double epsilon = 1e-4;
  std::int64_t block = 128;
  method scorer = method::snapkv;
};

/// Scorers the wrapping presses (adakv, chunkkv, criticalkv, criticaladakv, block) accept, by stage name.
inline bool parse_scorer(std::string_view s, method& out) {
  if (s == "snapkv") return out = method::snapkv, true;
  if (s == "h2o") return out = method::h2o, true;
  if (s == "tova") return out = method::tova, true;
  if (s == "expected-attention") return out = method::expected_attention, true;
  if (s == "knorm") return out = method::knorm, true;
  if (s == "keydiff") return out = method::keydiff, true;
  if (s == "lagkv") return out = method::lagkv, true;
  return false;
}

inline constexpr std::string_view scorer_names = "snapkv, h2o, tova, expected-attention, knorm, keydiff, lagkv";

inline constexpr std::string_view keep_help = "fraction of the compressed prefix kept per (layer, kv head), in (0, 1]";
inline constexpr std::string_view tokens_help = "tokens kept per (layer, kv head) of the prefix; > 0 overrides keep";
inline constexpr std::string_view obs_end_help =
    "end of the compressed prefix and of the observed queries (-1 = all tokens); later tokens are kept";

/// The parameters every drop descriptor has (it derives from this): keep and tokens come first in
/// its visit order, then the stage's own parameters, then obs_end.
struct drop_budget {
  double keep = 0.5;
  std::int64_t tokens = 0;
  std::int64_t obs_end = -1;

  /// Visits keep, tokens, the stage's own parameters (`own()`), then obs_end.
  template <class V, class F> void visit_common(V& v, F&& own) {
    v("keep", keep, keep_help);
    v("tokens", tokens, tokens_help);
    own();
    v("obs_end", obs_end, obs_end_help);
  }
  template <class V> void visit_common(V& v) {
    visit_common(v, [] {});
  }

  /// Checks keep, tokens and obs_end (usage errors naming the stage).
  void validate_common(std::string_view stage) const {
    check_param(keep > 0.0 && keep <= 1.0, stage, "keep", "a fraction in (0, 1]", keep);
    check_param(tokens >= 0, stage, "tokens", "a token count >= 0 (0 = use keep)", tokens);
    check_param(obs_end == -1 || obs_end >= 1, stage, "obs_end", "-1 (the whole cache) or a token index >= 1", obs_end);
  }

  /// A config for method m of the named stage with the common fields filled in.
  config common_cfg(method m, std::string_view stage) const {
    config c;
    c.m = m;
    c.name = std::string(stage);
    c.keep = keep;
    c.tokens = tokens;
    c.obs_end = obs_end;
    return c;
  }
};

/// A press that wraps a scorer (adakv, chunkkv, criticalkv, criticaladakv, block): the scorer's name
/// and the parameters any scorer may read (window, kernel: snapkv, h2o, expected-attention; sink:
/// lagkv, expected-attention; lag: lagkv), after the budget. Visit order: scorer, keep, tokens, the press's own, window, kernel, sink,
/// lag, obs_end.
struct scored_budget : drop_budget {
  std::string scorer = "snapkv";
  std::int64_t window = 64;
  std::int64_t kernel = 5;
  std::int64_t sink = -1;
  std::int64_t lag = 128;

  template <class V, class F> void visit_scored(V& v, F&& own) {
    v("scorer", scorer, "scoring method: snapkv, h2o, tova, expected-attention, knorm, keydiff or lagkv");
    visit_common(v, [&] {
      own();
      v("window", window, "the scorer's observation window (snapkv, expected-attention, h2o)");
      v("kernel", kernel, "the snapkv scorer's pooling kernel (odd)");
      v("sink", sink, "first tokens the scorer always keeps (-1 = the scorer's default: lagkv 16, expected-attention 4)");
      v("lag", lag, "the lagkv scorer's partition size");
    });
  }
  void validate_scored(std::string_view stage) const {
    method m{};
    check_param(parse_scorer(scorer, m), stage, "scorer", std::string(scorer_names), scorer);
    validate_common(stage);
    check_param(window >= 1, stage, "window", "a query count >= 1", window);
    check_param(kernel >= 1 && kernel % 2 == 1, stage, "kernel", "an odd number >= 1", kernel);
    check_param(sink >= -1, stage, "sink", "a token count >= 0, or -1 for the scorer's default", sink);
    check_param(lag >= 2, stage, "lag", "a partition size >= 2", lag);
  }
  config scored_cfg(method m, std::string_view stage) const {
    config c = common_cfg(m, stage);
    c.window = window, c.kernel = kernel, c.lag = lag;
    parse_scorer(scorer, c.scorer);
    c.sink = sink >= 0 ? sink : c.scorer == method::lagkv ? 16 : 4;
    return c;
  }
};

}  // namespace kvcodec::drop
