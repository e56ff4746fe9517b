// kvcodec/verify/stats.hpp — statistics of a draft-and-verify run.
//
// rounds; drafted / accepted / produced tokens; acceptance-length histogram (index = drafts accepted
// in a round); per-position acceptance (reached[i] rounds drafted an i-th token whose predecessors
// were all accepted, accepted_at[i] of them accepted it: a_i = accepted_at[i] / reached[i], the
// empirical conditional acceptance the planner and the adaptive horizon use); wall times of drafting,
// verification and fetching, the fetch split into exposed (waited for) and hidden (overlapped with
// drafting) time; modeled time under a cost model; bitwise exactness checks.
// Invariant: produced == accepted + rounds; sum(histogram) == rounds.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvcodec::verify {

struct verify_stats {
  std::int64_t rounds = 0, drafted = 0, accepted = 0, produced = 0;
  std::vector<std::int64_t> histogram;
  std::vector<std::int64_t> reached, accepted_at;
  double draft_s = 0, verify_s = 0, fetch_s = 0, fetch_exposed_s = 0, fetch_hidden_s = 0, total_s = 0;
  double modeled_s = 0;  ///< sum of cost_model::round_s over rounds (when the session has a model)
  std::int64_t exact_checked = 0, exact_mismatched = 0;
  std::vector<int> horizons;  ///< horizon of each round

  void record_round(int drafted_k, int accepted_k) {
    ++rounds;
    drafted += drafted_k;
    accepted += accepted_k;
    produced += accepted_k + 1;
    const auto grow = [](std::vector<std::int64_t>& v, std::size_t n) {
      if (v.size() < n) v.resize(n, 0);
    };
    grow(histogram, static_cast<std::size_t>(drafted_k) + 1);
    ++histogram[static_cast<std::size_t>(accepted_k)];
    grow(reached, static_cast<std::size_t>(drafted_k));
    grow(accepted_at, static_cast<std::size_t>(drafted_k));
    for (int i = 0; i < drafted_k && i <= accepted_k; ++i) {
      ++reached[static_cast<std::size_t>(i)];
      if (i < accepted_k) ++accepted_at[static_cast<std::size_t>(i)];
    }
    horizons.push_back(drafted_k);
  }
  double mean_accepted() const { return rounds ? static_cast<double>(accepted) / static_cast<double>(rounds) : 0.0; }
  double acceptance_rate() const { return drafted ? static_cast<double>(accepted) / static_cast<double>(drafted) : 0.0; }
  /// Conditional acceptance a_i (NaN-free: 0 where never reached).
  std::vector<double> conditional_acceptance() const {
    std::vector<double> a(reached.size(), 0.0);
    for (std::size_t i = 0; i < a.size(); ++i)
      a[i] = reached[i] ? static_cast<double>(accepted_at[i]) / static_cast<double>(reached[i]) : 0.0;
    return a;
  }

  nlohmann::json to_json() const {
    nlohmann::json j;
    j["rounds"] = rounds;
    j["drafted"] = drafted;
    j["accepted"] = accepted;
    j["produced"] = produced;
    j["mean_accepted"] = mean_accepted();
    j["acceptance_rate"] = acceptance_rate();
    j["acceptance_histogram"] = histogram;
    j["per_position"] = {{"reached", reached}, {"accepted", accepted_at}, {"rate", conditional_acceptance()}};
    j["timings"] = {{"draft_s", draft_s},           {"verify_s", verify_s},
                    {"fetch_s", fetch_s},           {"fetch_exposed_s", fetch_exposed_s},
                    {"fetch_hidden_s", fetch_hidden_s}, {"total_s", total_s},
                    {"modeled_s", modeled_s}};
    j["exactness"] = {{"checked", exact_checked}, {"mismatched", exact_mismatched}};
    return j;
  }
};

}  // namespace kvcodec::verify
