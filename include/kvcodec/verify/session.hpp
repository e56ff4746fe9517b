// kvcodec/verify/session.hpp — the draft-and-verify loop (VeriCache) over engine-agnostic hooks.
//
// State between rounds: drafter and verifier both hold positions [0, L); `next` is the token to feed
// at L. A round: start the full-cache fetch (background) -> draft K tokens with the compressed cache
// (drafter.step, policy.draft at positions L+1..L+K) -> wait for the fetch, install it -> score
// [next, d_1..d_K] at L..L+K in one batched verifier pass -> accept a prefix of n drafts plus one
// verifier token -> verifier keeps [0, L+n+1), drafter rolls back to L and adopts the verified rows
// [L, L+n+1) -> L += n + 1. Every round emits n + 1 tokens, so the run emits exactly `tokens`.
// With greedy_acceptance the output equals plain greedy decoding with the full cache (reference_decode)
// token for token whenever the verifier honours its bitwise contract (verify/hooks.hpp).
// Invariant: after each round drafter.length() == verifier.length() == L.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/verify/acceptance.hpp"
#include "kvcodec/verify/full_cache_source.hpp"
#include "kvcodec/verify/hooks.hpp"
#include "kvcodec/verify/horizon.hpp"
#include "kvcodec/verify/stats.hpp"

namespace kvcodec::verify {

struct session_options {
  int max_length = -1;            ///< positions the engine can hold (-1 = no limit)
  bool fetch_every_round = true;  ///< VeriCache: the full cache lives off-accelerator, swapped in per verification
  std::optional<cost_model> model;  ///< accumulates stats.modeled_s when set
};

struct session_result {
  std::vector<int> tokens;
  verify_stats stats;
};

/// Feeds `first` at the current length and emits `n_tokens` tokens by draft-and-verify.
inline session_result draft_and_verify(drafter& d, verifier& v, full_cache_source& src, acceptance_policy& policy,
                                       horizon_policy& horizon, int first, int n_tokens, const session_options& o = {}) {
  using clock = std::chrono::steady_clock;
  const auto secs = [](clock::duration x) { return std::chrono::duration<double>(x).count(); };
  if (n_tokens < 0) throw_usage("draft_and_verify: token count must be >= 0, got " + std::to_string(n_tokens));
  if (o.model) o.model->validate();
  session_result r;
  const auto t_start = clock::now();
  int L = d.length();
  if (v.length() != 0 && v.length() != L)
    throw_usage("draft_and_verify: drafter holds " + std::to_string(L) + " positions, verifier " + std::to_string(v.length()));
  if (L < src.context_tokens())
    throw_usage("draft_and_verify: drafter holds " + std::to_string(L) + " positions, fewer than the context (" +
                std::to_string(src.context_tokens()) + ")");
  prefetcher pf(src);
  full_cache_ptr resident;
  int next = first;
  std::vector<int> drafts, block;
  std::vector<std::vector<float>> q;
  while (static_cast<int>(r.tokens.size()) < n_tokens) {
    const int remaining = n_tokens - static_cast<int>(r.tokens.size());
    int limit = remaining - 1;
    if (o.max_length >= 0) {
      if (L + 1 > o.max_length)
        throw_usage("draft_and_verify: no room for position " + std::to_string(L) + " (max_length " + std::to_string(o.max_length) + ")");
      limit = std::min(limit, o.max_length - L - 1);
    }
    const int K = horizon.choose(limit);
    if (K < 0 || K > limit) throw_usage("draft_and_verify: horizon policy returned " + std::to_string(K) + " outside 0.." + std::to_string(limit));
    const bool fetch = o.fetch_every_round || !resident;
    if (fetch) pf.start();

    const auto t0 = clock::now();
    drafts.clear();
    q.clear();
    int x = next;
    for (int i = 0; i < K; ++i) {
      q.push_back(d.step(x));
      x = policy.draft(q.back().data(), static_cast<int>(q.back().size()), static_cast<std::int64_t>(L) + 1 + i);
      drafts.push_back(x);
    }
    const auto t1 = clock::now();
    double exposed = 0, fetch_s = 0;
    if (fetch) {
      resident = pf.wait(exposed, fetch_s);
      r.stats.fetch_s += fetch_s;
      r.stats.fetch_exposed_s += exposed;
      r.stats.fetch_hidden_s += std::max(0.0, fetch_s - exposed);
    }
    v.install(resident);
    if (v.length() != L)
      throw_usage("draft_and_verify: after install the verifier holds " + std::to_string(v.length()) + " positions, expected " + std::to_string(L));
    const auto t2 = clock::now();
    block.assign(1, next);
    block.insert(block.end(), drafts.begin(), drafts.end());
    const auto p = v.score(block);
    const auto t3 = clock::now();
    if (p.size() != block.size()) throw_usage("draft_and_verify: verifier returned " + std::to_string(p.size()) + " rows for " + std::to_string(block.size()) + " tokens");
    const accept_result a = policy.accept(q, p, drafts, static_cast<std::int64_t>(L) + 1);
    if (a.accepted < 0 || a.accepted > K || a.next < 0) throw_usage("draft_and_verify: acceptance policy returned an invalid result");
    for (int i = 0; i < a.accepted; ++i) r.tokens.push_back(drafts[static_cast<std::size_t>(i)]);
    r.tokens.push_back(a.next);
    const int L2 = L + a.accepted + 1;
    v.truncate(L2);
    d.truncate(L);
    d.adopt(v, L, L2);
    if (d.length() != L2) throw_usage("draft_and_verify: drafter length " + std::to_string(d.length()) + " after adopt, expected " + std::to_string(L2));
    L = L2;
    next = a.next;

    const double draft_s = secs(t1 - t0), verify_s = secs(t3 - t2);
    r.stats.draft_s += draft_s;
    r.stats.verify_s += verify_s;
    r.stats.record_round(K, a.accepted);
    if (o.model) r.stats.modeled_s += o.model->round_s(K);
    horizon.observe(K, a.accepted);
    horizon.observe_times(K, draft_s, verify_s + secs(clock::now() - t3), fetch ? fetch_s : 0.0);
  }
  const exactness_counts e = v.exactness();
  r.stats.exact_checked = e.checked;
  r.stats.exact_mismatched = e.mismatched;
  r.stats.total_s = secs(clock::now() - t_start);
  return r;
}

/// Plain decoding with the verifier alone (the full-cache reference): feeds `first`, emits
/// `n_tokens` tokens chosen by policy.plain. The verifier must already hold its context.
inline std::vector<int> reference_decode(verifier& v, acceptance_policy& policy, int first, int n_tokens) {
  std::vector<int> out;
  int x = first;
  for (int s = 0; s < n_tokens; ++s) {
    const std::int64_t pos = v.length();
    const auto p = v.score({x});
    x = policy.plain(p[0].data(), static_cast<int>(p[0].size()), pos + 1);
    out.push_back(x);
  }
  return out;
}

}  // namespace kvcodec::verify
