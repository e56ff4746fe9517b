// kvcodec/stage/drop_structural.hpp — token-dropping stages that need no queries: `random`,
// `streamingllm`, `knorm`, `keydiff`.
//
//   random        seeded uniform choice per (layer, kv head) (kvpress RandomPress; a baseline)
//   streamingllm  the first `sink` tokens plus the most recent ones (Xiao et al. 2023, StreamingLLM)
//   knorm         the keys with the LOWEST L2 norm (Devoto et al. 2024, "A Simple and Effective L2
//                 Norm-Based Strategy for KV Cache Compression")
//   keydiff       the keys least similar (cosine) to the mean normalised key of the head (Park et al.
//                 2025, KeyDiff)
// Invariant: each keeps exactly the budget of drop_common.hpp per (layer, kv head) of the prefix.
#pragma once

#include <cstdint>
#include <string_view>

#include "kvcodec/stage/drop_common.hpp"

namespace kvcodec::drop {

struct random {
  static constexpr std::string_view name = "random";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: seeded random choice per head (baseline)";
  double keep = 0.5;
  std::int64_t tokens = 0;
  std::int64_t seed = 0;
  std::int64_t obs_end = -1;

  template <class V> void visit(V& v) {
    v("keep", keep, keep_help);
    v("tokens", tokens, tokens_help);
    v("seed", seed, "random seed (>= 0); the choice depends on (seed, layer, head) only");
    v("obs_end", obs_end, obs_end_help);
  }
  void validate() const {
    validate_budget(name, keep, tokens, obs_end);
    check_param(seed >= 0, name, "seed", "an integer >= 0", seed);
  }
  config cfg() const {
    config c;
    c.m = method::random, c.name = name, c.keep = keep, c.tokens = tokens, c.seed = seed, c.obs_end = obs_end;
    return c;
  }
};

struct streamingllm {
  static constexpr std::string_view name = "streamingllm";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: attention sinks + most recent window (StreamingLLM)";
  double keep = 0.5;
  std::int64_t tokens = 0;
  std::int64_t sink = 4;
  std::int64_t obs_end = -1;

  template <class V> void visit(V& v) {
    v("keep", keep, keep_help);
    v("tokens", tokens, tokens_help);
    v("sink", sink, "first tokens always kept (attention sinks); the rest of the budget is the most recent tokens");
    v("obs_end", obs_end, obs_end_help);
  }
  void validate() const {
    validate_budget(name, keep, tokens, obs_end);
    check_param(sink >= 0, name, "sink", "a token count >= 0", sink);
  }
  config cfg() const {
    config c;
    c.m = method::streamingllm, c.name = name, c.keep = keep, c.tokens = tokens, c.sink = sink, c.obs_end = obs_end;
    return c;
  }
};

struct knorm {
  static constexpr std::string_view name = "knorm";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: keep the keys with the lowest L2 norm (Devoto et al. 2024)";
  double keep = 0.5;
  std::int64_t tokens = 0;
  std::int64_t obs_end = -1;

  template <class V> void visit(V& v) {
    v("keep", keep, keep_help);
    v("tokens", tokens, tokens_help);
    v("obs_end", obs_end, obs_end_help);
  }
  void validate() const { validate_budget(name, keep, tokens, obs_end); }
  config cfg() const {
    config c;
    c.m = method::knorm, c.name = name, c.keep = keep, c.tokens = tokens, c.obs_end = obs_end;
    return c;
  }
};

struct keydiff {
  static constexpr std::string_view name = "keydiff";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: keep the keys least similar to the mean key direction (KeyDiff)";
  double keep = 0.5;
  std::int64_t tokens = 0;
  std::int64_t obs_end = -1;

  template <class V> void visit(V& v) {
    v("keep", keep, keep_help);
    v("tokens", tokens, tokens_help);
    v("obs_end", obs_end, obs_end_help);
  }
  void validate() const { validate_budget(name, keep, tokens, obs_end); }
  config cfg() const {
    config c;
    c.m = method::keydiff, c.name = name, c.keep = keep, c.tokens = tokens, c.obs_end = obs_end;
    return c;
  }
};

}  // namespace kvcodec::drop
