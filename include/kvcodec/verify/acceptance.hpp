// kvcodec/verify/acceptance.hpp — acceptance policies of draft-and-verify decoding.
//
// greedy_acceptance: the drafter proposes argmax tokens; the verifier accepts the longest prefix of
// drafts equal to its own argmax and appends its argmax at the first mismatch (the correction) or
// after the last draft (the bonus token). Output = plain greedy decoding with the verifier's cache.
// rejection_sampling (Leviathan et al. 2023, Chen et al. 2023 speculative sampling): draft d ~ q;
// accept with probability min(1, p(d)/q(d)); on rejection emit a sample of norm(max(0, p - q)); after
// K accepted drafts emit a bonus sample of p. The output distribution equals sampling from p.
// Randomness is counter-based: uniform(seed, position, stream) (splitmix64 finaliser of a keyed
// counter), so a run is reproducible and the token chosen for a position consumes its own numbers
// whatever the horizon or round structure; different positions draw independent numbers.
// Invariant: per-element math is KVCODEC_HD on explicit pointers; policies never allocate per token
// beyond their scratch vectors.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvcodec/core/random.hpp"
#include "kvcodec/core/config.hpp"
#include "kvcodec/core/error.hpp"

namespace kvcodec::verify {

/// Streams of the counter RNG: which decision of a position a uniform number serves.
enum rng_stream : std::uint64_t { stream_draft = 1, stream_accept = 2, stream_residual = 3, stream_plain = 4 };

/// splitmix64 finaliser.
KVCODEC_HD inline std::uint64_t mix64(std::uint64_t z) noexcept { return splitmix64_mix(z); }

/// Uniform double in [0, 1) keyed by (seed, position, stream): 53 random bits.
KVCODEC_HD inline double counter_uniform(std::uint64_t seed, std::uint64_t pos, std::uint64_t stream) noexcept {
  std::uint64_t z = mix64(seed + 0x9E3779B97F4A7C15ull);
  z = mix64(z ^ (pos * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull));
  z = mix64(z ^ (stream * 0x8CB92BA72F3D8DD7ull + 0x9E3779B97F4A7C15ull));
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
}

/// Index of the largest value (first on ties).
KVCODEC_HD inline int argmax_f32(const float* x, int n) noexcept {
  int b = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[b]) b = i;
  return b;
}

/// out = softmax(x / temperature) in double; temperature > 0.
KVCODEC_HD inline void softmax_t(const float* x, int n, double temperature, double* out) noexcept {
  double mx = static_cast<double>(x[0]);
  for (int i = 1; i < n; ++i) mx = static_cast<double>(x[i]) > mx ? static_cast<double>(x[i]) : mx;
  double s = 0;
  for (int i = 0; i < n; ++i) {
    out[i] = std::exp((static_cast<double>(x[i]) - mx) / temperature);
    s += out[i];
  }
  for (int i = 0; i < n; ++i) out[i] /= s;
}

/// Inverse-CDF sample of a distribution `p` (sums to ~1) with uniform u; the last index with p > 0
/// absorbs rounding.
KVCODEC_HD inline int sample_cdf(const double* p, int n, double u) noexcept {
  double acc = 0;
  int last = 0;
  for (int i = 0; i < n; ++i) {
    if (p[i] <= 0) continue;
    last = i;
    acc += p[i];
    if (u < acc) return i;
  }
  return last;
}

/// Sample of norm(max(0, p - q)) with uniform u, without a scratch buffer; returns -1 when p <= q
/// everywhere (then p == q and the caller samples p).
KVCODEC_HD inline int sample_residual(const double* p, const double* q, int n, double u) noexcept {
  double z = 0;
  for (int i = 0; i < n; ++i) z += p[i] > q[i] ? p[i] - q[i] : 0.0;
  if (!(z > 0)) return -1;
  const double target = u * z;
  double acc = 0;
  int last = -1;
  for (int i = 0; i < n; ++i) {
    const double r = p[i] > q[i] ? p[i] - q[i] : 0.0;
    if (r <= 0) continue;
    last = i;
    acc += r;
    if (target < acc) return i;
  }
  return last;
}

/// Outcome of verifying one drafted block.
struct accept_result {
  int accepted = 0;  ///< drafts kept (a prefix)
  int next = -1;     ///< token emitted after them: the correction, or the bonus token when all match
};

/// How drafts are proposed and judged. Positions are those of the token being chosen.
class acceptance_policy {
 public:
  virtual ~acceptance_policy() = default;
  virtual std::string name() const = 0;
  /// Draft token for `pos` from the drafter's logits.
  virtual int draft(const float* q_logits, int vocab, std::int64_t pos) = 0;
  /// q[i], p[i]: drafter / verifier logits for position pos0 + i (p has drafts.size() + 1 rows).
  virtual accept_result accept(const std::vector<std::vector<float>>& q, const std::vector<std::vector<float>>& p,
                               const std::vector<int>& drafts, std::int64_t pos0) = 0;
  /// The token plain full-cache decoding would choose at `pos` (the reference run).
  virtual int plain(const float* p_logits, int vocab, std::int64_t pos) = 0;
  /// True when the output is the same token sequence as plain(), not only the same distribution.
  virtual bool deterministic() const = 0;
};

namespace detail {
inline void check_block(const std::vector<std::vector<float>>& q, const std::vector<std::vector<float>>& p,
                        const std::vector<int>& drafts, bool need_q) {
  if (p.size() != drafts.size() + 1 || (need_q && q.size() != drafts.size()))
    throw_usage("acceptance: need " + std::to_string(drafts.size() + 1) + " verifier rows and " + std::to_string(drafts.size()) +
                " drafter rows, got " + std::to_string(p.size()) + " and " + std::to_string(q.size()));
  for (const auto& r : p)
    if (r.empty() || r.size() != p[0].size()) throw_usage("acceptance: verifier logits rows differ in size");
  for (int d : drafts)
    if (d < 0 || static_cast<std::size_t>(d) >= p[0].size())
      throw_usage("acceptance: draft token " + std::to_string(d) + " outside the vocabulary of " + std::to_string(p[0].size()));
}
}  // namespace detail

class greedy_acceptance final : public acceptance_policy {
 public:
  std::string name() const override { return "greedy"; }
  int draft(const float* q_logits, int vocab, std::int64_t) override { return argmax_f32(q_logits, vocab); }
  accept_result accept(const std::vector<std::vector<float>>& q, const std::vector<std::vector<float>>& p,
                       const std::vector<int>& drafts, std::int64_t) override {
    detail::check_block(q, p, drafts, false);
    const int V = static_cast<int>(p[0].size());
    accept_result r;
    for (std::size_t i = 0; i <= drafts.size(); ++i) {
      const int best = argmax_f32(p[i].data(), V);
      if (i == drafts.size() || best != drafts[i]) {
        r.next = best;
        return r;
      }
      ++r.accepted;
    }
    return r;
  }
  int plain(const float* p_logits, int vocab, std::int64_t) override { return argmax_f32(p_logits, vocab); }
  bool deterministic() const override { return true; }
};

class rejection_sampling final : public acceptance_policy {
 public:
  explicit rejection_sampling(std::uint64_t seed, double temperature = 1.0) : seed_(seed), temp_(temperature) {
    if (!(temperature > 0) || !std::isfinite(temperature))
      throw_usage("rejection_sampling: temperature must be a finite number > 0, got " + std::to_string(temperature));
  }
  std::string name() const override { return "rejection"; }
  std::uint64_t seed() const noexcept { return seed_; }
  double temperature() const noexcept { return temp_; }

  int draft(const float* q_logits, int vocab, std::int64_t pos) override {
    q_.resize(static_cast<std::size_t>(vocab));
    softmax_t(q_logits, vocab, temp_, q_.data());
    return sample_cdf(q_.data(), vocab, counter_uniform(seed_, static_cast<std::uint64_t>(pos), stream_draft));
  }

  accept_result accept(const std::vector<std::vector<float>>& q, const std::vector<std::vector<float>>& p,
                       const std::vector<int>& drafts, std::int64_t pos0) override {
    detail::check_block(q, p, drafts, true);
    const int V = static_cast<int>(p[0].size());
    p_.resize(static_cast<std::size_t>(V));
    q_.resize(static_cast<std::size_t>(V));
    accept_result r;
    for (std::size_t i = 0; i < drafts.size(); ++i) {
      const auto pos = static_cast<std::uint64_t>(pos0 + static_cast<std::int64_t>(i));
      if (static_cast<int>(q[i].size()) != V) throw_usage("rejection_sampling: drafter and verifier vocabularies differ");
      softmax_t(p[i].data(), V, temp_, p_.data());
      softmax_t(q[i].data(), V, temp_, q_.data());
      const double pd = p_[static_cast<std::size_t>(drafts[i])], qd = q_[static_cast<std::size_t>(drafts[i])];
      const double u = counter_uniform(seed_, pos, stream_accept);
      if (qd > 0 && u * qd < pd) {
        ++r.accepted;
        continue;
      }
      const double ur = counter_uniform(seed_, pos, stream_residual);
      r.next = sample_residual(p_.data(), q_.data(), V, ur);
      if (r.next < 0) r.next = sample_cdf(p_.data(), V, ur);
      return r;
    }
    softmax_t(p.back().data(), V, temp_, p_.data());
    r.next = sample_cdf(p_.data(), V, counter_uniform(seed_, static_cast<std::uint64_t>(pos0 + static_cast<std::int64_t>(drafts.size())), stream_residual));
    return r;
  }

  int plain(const float* p_logits, int vocab, std::int64_t pos) override {
    p_.resize(static_cast<std::size_t>(vocab));
    softmax_t(p_logits, vocab, temp_, p_.data());
    return sample_cdf(p_.data(), vocab, counter_uniform(seed_, static_cast<std::uint64_t>(pos), stream_plain));
  }
  bool deterministic() const override { return false; }

 private:
  std::uint64_t seed_;
  double temp_;
  std::vector<double> p_, q_;
};

}  // namespace kvcodec::verify
