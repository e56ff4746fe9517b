// kvcodec/stage/drop_structural.hpp — token-dropping stages that need no queries: `random`,
// `streamingllm`, `knorm`, `keydiff`, `lagkv`.
//
//   random        seeded uniform choice per (layer, kv head) (kvpress RandomPress; a baseline)
//   streamingllm  the first `sink` tokens plus the most recent ones (Xiao et al. 2023, StreamingLLM)
//   knorm         the keys with the LOWEST L2 norm (Devoto et al. 2024, "A Simple and Effective L2
//                 Norm-Based Strategy for KV Cache Compression")
//   keydiff       the keys least similar (cosine) to the mean normalised key of the head (Park et al.
//                 2025, KeyDiff)
//   lagkv         the tokens whose keys and values vary most relative to the next `lag` tokens' range
//                 (Liang et al. 2025, LagKV; cpu/drop/lagkv.hpp)
// Invariant: each keeps exactly the budget of drop_common.hpp per (layer, kv head) of the prefix.
#pragma once

#include <cstdint>
#include <string_view>

#include "kvcodec/stage/drop_common.hpp"

namespace kvcodec::drop {

struct random : drop_budget {
  static constexpr std::string_view name = "random";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: seeded random choice per head (baseline)";
  std::int64_t seed = 0;

  template <class V> void visit(V& v) {
    visit_common(v, [&] { v("seed", seed, "random seed (>= 0); the choice depends on (seed, layer, head) only"); });
  }
  void validate() const {
    validate_common(name);
    check_param(seed >= 0, name, "seed", "an integer >= 0", seed);
  }
  config cfg() const {
    config c = common_cfg(method::random, name);
    c.seed = seed;
    return c;
  }
};

struct streamingllm : drop_budget {
  static constexpr std::string_view name = "streamingllm";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: attention sinks + most recent window (StreamingLLM)";
  std::int64_t sink = 4;

  template <class V> void visit(V& v) {
    visit_common(v, [&] {
      v("sink", sink, "first tokens always kept (attention sinks); the rest of the budget is the most recent tokens");
    });
  }
  void validate() const {
    validate_common(name);
    check_param(sink >= 0, name, "sink", "a token count >= 0", sink);
  }
  config cfg() const {
    config c = common_cfg(method::streamingllm, name);
    c.sink = sink;
    return c;
  }
};

struct knorm : drop_budget {
  static constexpr std::string_view name = "knorm";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: keep the keys with the lowest L2 norm (Devoto et al. 2024)";

  template <class V> void visit(V& v) { visit_common(v); }
  void validate() const { validate_common(name); }
  config cfg() const { return common_cfg(method::knorm, name); }
};

struct keydiff : drop_budget {
  static constexpr std::string_view name = "keydiff";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: keep the keys least similar to the mean key direction (KeyDiff)";

  template <class V> void visit(V& v) { visit_common(v); }
  void validate() const { validate_common(name); }
  config cfg() const { return common_cfg(method::keydiff, name); }
};

struct lagkv : drop_budget {
  static constexpr std::string_view name = "lagkv";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: lag-relative key/value statistics, no queries (LagKV)";
  std::int64_t sink = 16;
  std::int64_t lag = 128;

  template <class V> void visit(V& v) {
    visit_common(v, [&] {
      v("sink", sink, "first tokens always kept (attention sinks)");
      v("lag", lag, "partition size: each partition is scored against the next; the last one is kept");
    });
  }
  void validate() const {
    validate_common(name);
    check_param(sink >= 0, name, "sink", "a token count >= 0", sink);
    check_param(lag >= 2, name, "lag", "a partition size >= 2", lag);
  }
  config cfg() const {
    config c = common_cfg(method::lagkv, name);
    c.sink = sink;
    c.lag = lag;
    return c;
  }
};

}  // namespace kvcodec::drop
