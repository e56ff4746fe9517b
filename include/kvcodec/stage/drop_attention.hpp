// kvcodec/stage/drop_attention.hpp — token-dropping stages that score keys with the cache's queries:
// `h2o`, `snapkv`, `tova`, `expected-attention`, `pyramidkv`, and the presses that wrap any scorer:
// `adakv`, `chunkkv`, `criticalkv`, `criticaladakv`, `block`.
//
//   h2o                 accumulated attention each key receives from the observed queries, divided
//                       by how many of them could see it (kvpress ObservedAttentionPress), plus a
//                       `recent` share of the budget for the newest tokens (H2O, Zhang et al. 2023)
//   snapkv              mean attention of the last `window` queries, average-pooled with `kernel`,
//                       averaged over each GQA group; the window itself is always kept (SnapKV, Li et
//                       al. 2024)
//   tova                attention of the last query averaged over all query heads (TOVA, Oren et al.
//                       2024); the last token is kept
//   expected-attention  softmax of mu.k/sqrt(d) (+ k^T Sigma k/(2d) with cov=true) under the statistics
//                       of the recent queries moved to future positions, times ||v|| (kvpress
//                       ExpectedAttentionPress; defaults differ from kvpress, see docs/codecs/drop.md)
//   pyramidkv           snapkv scores with per-layer budgets on an arithmetic schedule decreasing with
//                       depth, same total (PyramidKV, Cai et al. 2024)
//   adakv               head-wise budgets over any scorer: the layer's normalised scores pooled over
//                       heads, top budget x heads kept, at least alpha of each head's share per head
//                       (Ada-KV, Feng et al. 2024)
//   chunkkv             the scorer's scores averaged over chunks of tokens, whole chunks kept (ChunkKV, Liu
//                       et al. 2025)
//   criticalkv          the scorer's top `first` share of each head's budget, then the rest by (score +
//                       epsilon) x ||v||_1 (CriticalKV, Feng et al. 2025: ||W_o v||_1, with W_o, which a KV
//                       cache does not carry, left out)
//   criticaladakv       Ada-KV's head budgets, then criticalkv's two stages within each head's budget
//   block               the scorer run over the kept tokens and the next `block` tokens, block after
//                       block, keeping the budget each time (kvpress BlockPress, after KeyDiff, Park et al. 2025)
// Invariant: the total kept per layer (pyramidkv: per cache) is the budget of drop_common.hpp.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kvcodec/stage/drop_common.hpp"

namespace kvcodec::drop {

inline constexpr std::string_view window_help = "observation window: the last `window` queries before obs_end";

struct h2o : drop_budget {
  static constexpr std::string_view name = "h2o";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: heavy hitters by accumulated observed attention + recent tokens (H2O)";
  double recent = 0.5;
  std::int64_t window = 0;

  template <class V> void visit(V& v) {
    visit_common(v, [&] {
      v("recent", recent, "share of the budget given to the most recent tokens, in [0, 1] (H2O: 0.5)");
      v("window", window, "observed queries: the last `window` before obs_end (0 = every query)");
    });
  }
  void validate() const {
    validate_common(name);
    check_param(recent >= 0.0 && recent <= 1.0, name, "recent", "a fraction in [0, 1]", recent);
    check_param(window >= 0, name, "window", "a query count >= 0 (0 = all)", window);
  }
  config cfg() const {
    config c = common_cfg(method::h2o, name);
    c.recent = recent, c.window = window;
    return c;
  }
};

struct snapkv : drop_budget {
  static constexpr std::string_view name = "snapkv";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: pooled attention of an observation window (SnapKV)";
  std::int64_t window = 64;
  std::int64_t kernel = 5;

  template <class V> void visit(V& v) {
    visit_common(v, [&] {
      v("window", window, window_help);
      v("kernel", kernel, "average-pooling kernel over token scores (odd)");
    });
  }
  void validate() const {
    validate_common(name);
    check_param(window >= 1, name, "window", "a query count >= 1", window);
    check_param(kernel >= 1 && kernel % 2 == 1, name, "kernel", "an odd number >= 1", kernel);
  }
  config cfg() const {
    config c = common_cfg(method::snapkv, name);
    c.window = window, c.kernel = kernel;
    return c;
  }
};

struct tova : drop_budget {
  static constexpr std::string_view name = "tova";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: attention of the last query averaged over heads (TOVA)";

  template <class V> void visit(V& v) { visit_common(v); }
  void validate() const { validate_common(name); }
  config cfg() const { return common_cfg(method::tova, name); }
};

struct expected_attention : drop_budget {
  static constexpr std::string_view name = "expected-attention";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: expected attention of future queries (kvpress ExpectedAttention)";
  std::int64_t window = 64;
  std::int64_t sink = 4;
  std::int64_t future = 64;
  bool cov = false;
  bool vnorm = true;

  template <class V> void visit(V& v) {
    visit_common(v, [&] {
      v("window", window, "queries whose statistics are used: the last `window` before obs_end");
      v("sink", sink, "first tokens always kept");
      v("future", future, "future positions after obs_end the RoPE rotation is averaged over (kvpress: 512)");
      v("cov", cov, "add the query covariance term k^T Sigma k / 2d (kvpress: true; hurts on small heads, see docs)");
      v("vnorm", vnorm, "multiply scores by the value norm");
    });
  }
  void validate() const {
    validate_common(name);
    check_param(window >= 1, name, "window", "a query count >= 1", window);
    check_param(sink >= 0, name, "sink", "a token count >= 0", sink);
    check_param(future >= 1, name, "future", "a position count >= 1", future);
  }
  config cfg() const {
    config c = common_cfg(method::expected_attention, name);
    c.window = window, c.sink = sink, c.future = future, c.cov = cov, c.vnorm = vnorm;
    return c;
  }
};

struct pyramidkv : drop_budget {
  static constexpr std::string_view name = "pyramidkv";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: snapkv with per-layer budgets decreasing with depth (PyramidKV)";
  std::int64_t window = 64;
  std::int64_t kernel = 5;
  double beta = 20.0;

  template <class V> void visit(V& v) {
    visit_common(v, [&] {
      v("window", window, window_help);
      v("kernel", kernel, "average-pooling kernel over token scores (odd)");
      v("beta", beta, "pyramid steepness: the last layer gets budget/beta, the first 2 budget - budget/beta");
    });
  }
  void validate() const {
    validate_common(name);
    check_param(window >= 1, name, "window", "a query count >= 1", window);
    check_param(kernel >= 1 && kernel % 2 == 1, name, "kernel", "an odd number >= 1", kernel);
    check_param(beta >= 1.0, name, "beta", "a number >= 1", beta);
  }
  config cfg() const {
    config c = common_cfg(method::pyramidkv, name);
    c.window = window, c.kernel = kernel, c.beta = beta;
    return c;
  }
};

struct adakv : scored_budget {
  static constexpr std::string_view name = "adakv";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: head-wise budgets over a scorer's pooled scores (Ada-KV)";
  double alpha = 0.2;

  template <class V> void visit(V& v) {
    visit_scored(v, [&] { v("alpha", alpha, "safeguard: each head keeps at least alpha of its uniform share, in [0, 1]"); });
  }
  void validate() const {
    validate_scored(name);
    check_param(alpha >= 0.0 && alpha <= 1.0, name, "alpha", "a fraction in [0, 1]", alpha);
  }
  config cfg() const {
    config c = scored_cfg(method::adakv, name);
    c.alpha = alpha;
    return c;
  }
};

struct chunkkv : scored_budget {
  static constexpr std::string_view name = "chunkkv";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: a scorer's scores averaged over chunks, whole chunks kept (ChunkKV)";
  std::int64_t chunk = 10;

  template <class V> void visit(V& v) {
    visit_scored(v, [&] { v("chunk", chunk, "tokens per chunk: the unit kept or dropped"); });
  }
  void validate() const {
    validate_scored(name);
    check_param(chunk >= 1, name, "chunk", "a token count >= 1", chunk);
  }
  config cfg() const {
    config c = scored_cfg(method::chunkkv, name);
    c.chunk = chunk;
    return c;
  }
};

inline constexpr std::string_view first_help = "share of each head's budget taken by the scorer alone before the value-norm correction, in [0, 1]";
inline constexpr std::string_view epsilon_help = "added to the scores before they are multiplied by the value norm (> 0)";

struct criticalkv : scored_budget {
  static constexpr std::string_view name = "criticalkv";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: a scorer's top share, then scores x value L1 norm (CriticalKV)";
  double first = 0.5;
  double epsilon = 1e-4;

  template <class V> void visit(V& v) {
    visit_scored(v, [&] {
      v("first", first, first_help);
      v("epsilon", epsilon, epsilon_help);
    });
  }
  void validate() const {
    validate_scored(name);
    check_param(first >= 0.0 && first <= 1.0, name, "first", "a fraction in [0, 1]", first);
    check_param(epsilon > 0.0, name, "epsilon", "a number > 0", epsilon);
  }
  config cfg() const {
    config c = scored_cfg(method::criticalkv, name);
    c.first = first, c.epsilon = epsilon;
    c.vnorm = false;  // expected-attention's own value-norm factor: the second stage applies one
    return c;
  }
};

struct criticaladakv : scored_budget {
  static constexpr std::string_view name = "criticaladakv";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: Ada-KV's head budgets, CriticalKV's value-norm correction within each";
  double alpha = 0.2;
  double first = 0.5;
  double epsilon = 1e-4;

  template <class V> void visit(V& v) {
    visit_scored(v, [&] {
      v("alpha", alpha, "safeguard: each head keeps at least alpha of its uniform share, in [0, 1]");
      v("first", first, first_help);
      v("epsilon", epsilon, epsilon_help);
    });
  }
  void validate() const {
    validate_scored(name);
    check_param(alpha >= 0.0 && alpha <= 1.0, name, "alpha", "a fraction in [0, 1]", alpha);
    check_param(first >= 0.0 && first <= 1.0, name, "first", "a fraction in [0, 1]", first);
    check_param(epsilon > 0.0, name, "epsilon", "a number > 0", epsilon);
  }
  config cfg() const {
    config c = scored_cfg(method::criticaladakv, name);
    c.alpha = alpha, c.first = first, c.epsilon = epsilon;
    c.vnorm = false;
    return c;
  }
};

struct block_press : scored_budget {
  static constexpr std::string_view name = "block";
  static constexpr stage_kind kind = stage_kind::drop;
  static constexpr std::string_view summary = "token dropping: a scorer run block by block over the kept tokens and the next block (KeyDiff's block prefill)";
  std::int64_t block_size = 128;

  template <class V> void visit(V& v) {
    visit_scored(v, [&] { v("block", block_size, "tokens scored with the kept ones at each step"); });
  }
  void validate() const {
    validate_scored(name);
    check_param(block_size >= 1, name, "block", "a token count >= 1", block_size);
  }
  config cfg() const {
    config c = scored_cfg(method::block, name);
    c.block = block_size;
    return c;
  }
};

}  // namespace kvcodec::drop
