// kvcodec/pipeline/plan.hpp — CacheGen-style bandwidth adaptation: choose, per token chunk, a
// codec level (or recomputation from the tokens) so that loading meets a deadline at the best
// fidelity.
//
// Model: chunks are sent over one link of `bandwidth` bytes/s while recomputed chunks are rebuilt
// concurrently on the accelerator (CacheGen's streaming controller: transfer and prefill overlap),
// so delay = max(sum of chosen bytes / bandwidth, sum of recompute seconds). The loss of a plan is
// the sum over chunks of the chosen level's loss (e.g. attention KL measured per level); a
// recomputed chunk is exact (loss 0). plan() starts from the most faithful level everywhere and
// repeatedly takes the move (one chunk one level smaller, or to recomputation) with the largest
// delay saved per unit of added loss until the deadline is met; when no move helps it returns the
// fastest plan found with feasible = false. Deterministic (ties broken by chunk index).
#pragma once

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"

namespace kvcodec::plan {

struct chunk_costs {
  std::vector<double> bytes;  ///< encoded size at each level (index = level position)
  double recompute_s = 0;     ///< seconds to recompute this chunk instead
};

struct plan_input {
  double bandwidth = 0;          ///< bytes per second
  double deadline_s = 0;         ///< seconds
  std::vector<double> level_loss;  ///< loss of each level (ascending sizes expected: index 0 most faithful)
  std::vector<chunk_costs> chunks;
  bool allow_recompute = true;
};

struct plan_result {
  std::vector<int> choice;  ///< level position per chunk, -1 = recompute
  double transfer_s = 0, recompute_s = 0, delay_s = 0, total_loss = 0;
  bool feasible = false;
};

namespace detail {
inline void evaluate_plan(const plan_input& in, plan_result& r) {
  r.transfer_s = r.recompute_s = r.total_loss = 0;
  for (std::size_t i = 0; i < in.chunks.size(); ++i) {
    const int c = r.choice[i];
    if (c < 0)
      r.recompute_s += in.chunks[i].recompute_s;
    else {
      r.transfer_s += in.chunks[i].bytes[static_cast<std::size_t>(c)] / in.bandwidth;
      r.total_loss += in.level_loss[static_cast<std::size_t>(c)];
    }
  }
  r.delay_s = std::max(r.transfer_s, r.recompute_s);
  r.feasible = r.delay_s <= in.deadline_s * (1 + 1e-12);
}
}  // namespace detail

inline void validate(const plan_input& in) {
  const std::string w = "plan input";
  if (!(in.bandwidth > 0) || !std::isfinite(in.bandwidth)) throw_bad_input(w, "bandwidth", "> 0 bytes/s", std::to_string(in.bandwidth));
  if (!(in.deadline_s > 0) || !std::isfinite(in.deadline_s)) throw_bad_input(w, "deadline_s", "> 0", std::to_string(in.deadline_s));
  if (in.level_loss.empty()) throw_bad_input(w, "level_loss", "at least one level", "none");
  for (double l : in.level_loss)
    if (!(l >= 0) || !std::isfinite(l)) throw_bad_input(w, "level_loss", "finite values >= 0", std::to_string(l));
  for (std::size_t i = 0; i < in.chunks.size(); ++i) {
    const auto& c = in.chunks[i];
    if (c.bytes.size() != in.level_loss.size())
      throw_bad_input(w, "chunks[" + std::to_string(i) + "].bytes", std::to_string(in.level_loss.size()) + " sizes (one per level)",
                      std::to_string(c.bytes.size()));
    for (double b : c.bytes)
      if (!(b >= 0) || !std::isfinite(b)) throw_bad_input(w, "chunks[" + std::to_string(i) + "].bytes", "finite sizes >= 0", std::to_string(b));
    if (!(c.recompute_s >= 0) || !std::isfinite(c.recompute_s))
      throw_bad_input(w, "chunks[" + std::to_string(i) + "].recompute_s", "finite >= 0", std::to_string(c.recompute_s));
  }
}

inline plan_result plan(const plan_input& in) {
  validate(in);
  const std::size_t n = in.chunks.size(), L = in.level_loss.size();
  plan_result r;
  r.choice.assign(n, 0);
  detail::evaluate_plan(in, r);
  plan_result best = r;
  while (!r.feasible) {
    double best_score = -1;
    std::size_t bi = n;
    int bc = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const int c = r.choice[i];
      if (c < 0) continue;
      const double cur = in.chunks[i].bytes[static_cast<std::size_t>(c)] / in.bandwidth;
      auto consider = [&](int to, double new_transfer, double new_recompute, double dloss) {
        const double delay = std::max(new_transfer, new_recompute);
        const double saved = r.delay_s - delay;
        if (!(saved > 0)) return;
        const double score = saved / (std::max(dloss, 0.0) + 1e-12);
        if (score > best_score) best_score = score, bi = i, bc = to;
      };
      // the next level that is actually smaller
      for (std::size_t k = static_cast<std::size_t>(c) + 1; k < L; ++k) {
        const double t = in.chunks[i].bytes[k] / in.bandwidth;
        if (t < cur) {
          consider(static_cast<int>(k), r.transfer_s - cur + t, r.recompute_s,
                   in.level_loss[k] - in.level_loss[static_cast<std::size_t>(c)]);
          break;
        }
      }
      if (in.allow_recompute)
        consider(-1, r.transfer_s - cur, r.recompute_s + in.chunks[i].recompute_s, -in.level_loss[static_cast<std::size_t>(c)]);
    }
    if (bi == n) break;
    r.choice[bi] = bc;
    detail::evaluate_plan(in, r);
    if (r.delay_s < best.delay_s || r.feasible) best = r;
  }
  return r.feasible ? r : best;
}

}  // namespace kvcodec::plan
