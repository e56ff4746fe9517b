// kvcodec/verify/hooks.hpp — the engine-facing hooks of draft-and-verify decoding (VeriCache).
//
// An engine plugs in two clients: a drafter that decodes one token at a time with the compressed
// cache, and a verifier that scores a drafted block in one batched pass with the full cache. Both
// hold positions [0, length()); the session rolls both back after each verification and hands the
// verified positions' exact K/V to the drafter (adopt). Nothing here knows a model or a KV layout:
// the llama2.c reference decoder is one adapter (verify/llama2c_adapter.hpp); a vLLM or llama.cpp
// integration maps the same calls onto its scheduler (docs/verify.md).
// Invariant: verifier::score(tokens) must return, for every position, the logits single-token
// decoding with the full cache would give (bitwise, for greedy exactness).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::verify {

/// The full cache of the stored context as a source delivers it.
using full_cache_ptr = std::shared_ptr<const kv_cache>;

/// Bitwise checks of batched verification against single-token decoding.
struct exactness_counts {
  std::int64_t checked = 0;     ///< positions compared
  std::int64_t mismatched = 0;  ///< positions whose logits differed in any bit
};

class verifier {
 public:
  virtual ~verifier() = default;
  virtual int length() const = 0;
  /// Makes the fetched full context resident (a swap-in); called before every score().
  virtual void install(const full_cache_ptr& context) = 0;
  /// Appends `tokens` at positions [length(), length() + n) in one batched pass; logits of each.
  virtual std::vector<std::vector<float>> score(const std::vector<int>& tokens) = 0;
  /// Keeps positions [0, n) (drops rejected drafts).
  virtual void truncate(int n) = 0;
  virtual exactness_counts exactness() const { return {}; }
};

class drafter {
 public:
  virtual ~drafter() = default;
  virtual int length() const = 0;
  /// Appends `token` at length() with the compressed cache; logits for the next position.
  virtual std::vector<float> step(int token) = 0;
  virtual void truncate(int n) = 0;
  /// Takes the verifier's K/V of positions [a, b) (the verified tokens); a <= length().
  virtual void adopt(const verifier& v, int a, int b) = 0;
};

}  // namespace kvcodec::verify
