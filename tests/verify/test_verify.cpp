// Tests of draft-and-verify: the counter RNG and sampling kernels, acceptance policies (greedy and
// rejection sampling, chi-square against the exact distribution), horizon policies, statistics,
// cache sources and prefetch, the planner, and end-to-end sessions on synthetic and real models
// (greedy output identical to full-cache decoding for every registered codec, raw accepts all).
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/io/kv_dump.hpp"
#include "kvcodec/verify/decoding.hpp"
#include "kvcodec/verify/llama2c_adapter.hpp"
#include "kvcodec/verify/planner.hpp"
#include "kvcodec/verify/session.hpp"
#include "../support/shared_data.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_verify_verify {

namespace {

namespace fs = std::filesystem;
using namespace kvcodec;
using namespace kvcodec::verify;
using model_ptr = std::shared_ptr<const model::llama2c_model>;

model_ptr synth_model() {
  model::llama2c_config c;
  c.dim = 32;
  c.hidden_dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 24;
  c.seq_len = 128;
  c.shared_classifier = false;  // a shared one makes greedy repeat the input token
  return std::make_shared<const model::llama2c_model>(model::random_llama2c(c, 11));
}

kv_cache model_context(const model_ptr& m, int T) {
  model::decoder d(m, model::decoder_options{.record_queries = true});
  std::vector<int> ids;
  for (int i = 0; i < T; ++i) ids.push_back(1 + (i * 7 + 3) % (m->config.vocab_size - 1));
  d.forward_batch(ids, 0);
  return d.export_cache();
}

/// Keeps `frac` of positions [0, C) (the first 4 and the most recent) in every (layer, head).
kv_cache keep_fraction(kv_cache c, double frac) {
  const auto C = static_cast<std::int32_t>(c.shape.tokens);
  const auto keep = std::max<std::int32_t>(1, static_cast<std::int32_t>(frac * C));
  const std::int32_t sink = std::min<std::int32_t>(4, keep);
  c.kept.assign(static_cast<std::size_t>(c.shape.layers), std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(c.shape.kv_heads)));
  for (auto& layer : c.kept)
    for (auto& ks : layer)
      for (std::int32_t t = 0; t < C; ++t)
        if (t < sink || t >= C - (keep - sink)) ks.push_back(t);
  return c;
}

kv_cache add_noise(kv_cache c, float scale, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.0f, scale);
  for (auto* t : {&c.keys, &c.values})
    for (auto& l : *t)
      for (auto& x : l) x += n(g);
  return c;
}

struct run_out {
  std::vector<int> tokens, reference;
  verify_stats stats;
};

/// Draft-and-verify with a drafter on `draft_ctx` and a verifier on `full_ctx`, greedy; plus the
/// plain full-cache greedy reference.
run_out run_greedy(const model_ptr& m, const kv_cache& full_ctx, const kv_cache& draft_ctx, int first, int n, horizon_policy& h,
                   bool check_exact = false, model_ptr draft_model = nullptr) {
  const std::int64_t C = full_ctx.shape.tokens;
  memory_source src(full_ctx, C);
  decoder_verifier v(m, check_exact);
  decoder_drafter d(draft_model ? draft_model : m);
  d.load(draft_ctx, C);
  greedy_acceptance g;
  session_options o;
  o.max_length = m->config.seq_len;
  o.model = cost_model{1.0, 1.0, 0.0, 0.0, true};
  auto r = draft_and_verify(d, v, src, g, h, first, n, o);
  decoder_verifier ref(m);
  ref.install(src.fetch());
  return {r.tokens, reference_decode(ref, g, first, n), r.stats};
}

double chi2_crit_001(int df) {  // Wilson-Hilferty, alpha = 0.001
  const double z = 3.090232, a = 2.0 / (9.0 * df);
  return df * std::pow(1 - a + z * std::sqrt(a), 3);
}

}  // namespace

TEST_CASE("counter rng: reproducible / keyed / uniform") {
  CHECK(counter_uniform(1, 2, 3) == counter_uniform(1, 2, 3));
  CHECK(counter_uniform(1, 2, 3) != counter_uniform(1, 2, 4));
  CHECK(counter_uniform(1, 2, 3) != counter_uniform(1, 3, 3));
  CHECK(counter_uniform(1, 2, 3) != counter_uniform(2, 2, 3));
  double s = 0, mn = 1, mx = 0;
  const int N = 100000;
  for (int i = 0; i < N; ++i) {
    const double u = counter_uniform(42, static_cast<std::uint64_t>(i), stream_draft);
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    s += u;
    mn = std::min(mn, u);
    mx = std::max(mx, u);
  }
  CHECK(s / N == doctest::Approx(0.5).epsilon(0.01));
  CHECK(mn < 1e-3);
  CHECK(mx > 1 - 1e-3);
}

TEST_CASE("sampling kernels") {
  const double p[4] = {0.1, 0.0, 0.6, 0.3};
  CHECK(sample_cdf(p, 4, 0.0) == 0);
  CHECK(sample_cdf(p, 4, 0.1) == 2);
  CHECK(sample_cdf(p, 4, 0.69) == 2);
  CHECK(sample_cdf(p, 4, 0.71) == 3);
  CHECK(sample_cdf(p, 4, 0.9999999999) == 3);
  const double one[1] = {1.0};
  CHECK(sample_cdf(one, 1, 0.5) == 0);
  const double q[4] = {0.1, 0.0, 0.6, 0.3};
  CHECK(sample_residual(p, q, 4, 0.5) == -1);
  const double q2[4] = {0.5, 0.0, 0.2, 0.3};  // residual: only index 2 (0.4)
  CHECK(sample_residual(p, q2, 4, 0.0) == 2);
  CHECK(sample_residual(p, q2, 4, 0.99) == 2);
  const float lg[5] = {1.0f, 3.0f, 3.0f, -1.0f, 2.0f};
  CHECK(argmax_f32(lg, 5) == 1);
  CHECK(argmax_f32(lg, 1) == 0);
  double sm[5];
  softmax_t(lg, 5, 1.0, sm);
  double tot = 0;
  for (double v : sm) tot += v;
  CHECK(tot == doctest::Approx(1.0));
  CHECK(sm[1] == sm[2]);
  softmax_t(lg, 5, 0.01, sm);
  CHECK(sm[1] == doctest::Approx(0.5));
}

TEST_CASE("greedy acceptance: longest matching prefix / correction or bonus") {
  greedy_acceptance g;
  const auto row = [](int best) {
    std::vector<float> r(6, 0.0f);
    r[static_cast<std::size_t>(best)] = 1.0f;
    return r;
  };
  const std::vector<std::vector<float>> p = {row(3), row(1), row(4), row(5)};
  auto r = g.accept({}, p, {3, 1, 4}, 10);
  CHECK(r.accepted == 3);
  CHECK(r.next == 5);  // bonus
  r = g.accept({}, p, {3, 2, 4}, 10);
  CHECK(r.accepted == 1);
  CHECK(r.next == 1);  // correction
  r = g.accept({}, p, {0, 1, 4}, 10);
  CHECK(r.accepted == 0);
  CHECK(r.next == 3);
  r = g.accept({}, {row(2)}, {}, 0);  // K = 0: plain decoding step
  CHECK(r.accepted == 0);
  CHECK(r.next == 2);
  CHECK_THROWS_AS(g.accept({}, p, {3, 1}, 0), kvcodec::error);
  CHECK_THROWS_AS(g.accept({}, {row(1), row(2)}, {9}, 0), kvcodec::error);
  CHECK(g.deterministic());
}

TEST_CASE("rejection sampling: one block's emitted token follows p exactly (chi-square)") {
  // q favours token 0; p favours token 2: most drafts are rejected and resampled from the residual.
  const std::vector<float> pl = {0.0f, 0.5f, 2.0f, 1.0f, -1.0f}, ql = {2.5f, 0.0f, 0.2f, 1.0f, 0.0f};
  std::vector<double> p(5), q(5);
  softmax_t(pl.data(), 5, 1.0, p.data());
  softmax_t(ql.data(), 5, 1.0, q.data());
  const int N = 20000;
  std::vector<int> first(5, 0), bonus(5, 0), drafted(5, 0);
  int rejected = 0;
  for (int s = 0; s < N; ++s) {
    rejection_sampling rs(static_cast<std::uint64_t>(s));
    const int d = rs.draft(ql.data(), 5, 7);
    ++drafted[static_cast<std::size_t>(d)];
    const auto r = rs.accept({ql}, {pl, pl}, {d}, 7);
    if (r.accepted == 1) {
      ++first[static_cast<std::size_t>(d)];
      ++bonus[static_cast<std::size_t>(r.next)];
    } else {
      ++first[static_cast<std::size_t>(r.next)];
      ++rejected;
    }
    // reproducible: same seed, same outcome
    rejection_sampling again(static_cast<std::uint64_t>(s));
    REQUIRE(again.draft(ql.data(), 5, 7) == d);
  }
  const auto chi2 = [&](const std::vector<int>& obs, const std::vector<double>& prob) {
    double n = 0, x = 0;
    for (int o : obs) n += o;
    for (std::size_t i = 0; i < obs.size(); ++i) x += (obs[i] - n * prob[i]) * (obs[i] - n * prob[i]) / (n * prob[i]);
    return x;
  };
  CHECK(rejected > N / 4);
  CHECK(chi2(first, p) < chi2_crit_001(4));
  CHECK(chi2(bonus, p) < chi2_crit_001(4));
  CHECK(chi2(drafted, q) < chi2_crit_001(4));
  CHECK(chi2(drafted, p) > 10 * chi2_crit_001(4));  // the test has power: q is far from p
  CHECK_THROWS_AS(rejection_sampling(1, 0.0), kvcodec::error);
  CHECK_THROWS_AS(rejection_sampling(1, std::nan("")), kvcodec::error);
}

TEST_CASE("horizon policies and the cost model") {
  fixed_horizon f(4);
  CHECK(f.choose(10) == 4);
  CHECK(f.choose(2) == 2);
  CHECK(f.choose(0) == 0);
  CHECK_THROWS_AS(fixed_horizon(-1), kvcodec::error);
  cost_model c{1.0, 4.0, 0.0, 10.0, true};
  CHECK(c.round_s(0) == 14.0);
  CHECK(c.round_s(10) == 14.0);
  CHECK(c.round_s(12) == 16.0);
  c.overlap = false;
  CHECK(c.round_s(3) == 17.0);
  c.overlap = true;
  CHECK(expected_tokens({1, 1, 1}, 3) == 4.0);
  CHECK(expected_tokens({0.5, 0.5}, 2) == 1.75);
  CHECK(expected_tokens({}, 5) == 1.0);
  // everything accepted: draft as long as allowed
  CHECK(best_horizon(std::vector<double>(32, 1.0), c, 32) == 32);
  // nothing accepted: a draft only costs when it outlasts the fetch -> K up to 10 is free, any K ties
  CHECK(best_horizon(std::vector<double>(32, 0.0), cost_model{1.0, 4.0, 0.0, 0.0, true}, 32) == 0);
  // brute-force check of the argmax
  const std::vector<double> a = {0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2};
  const cost_model c2{1.0, 3.0, 0.1, 2.0, true};
  double rate = 0;
  const int k = best_horizon(a, c2, 8, &rate);
  for (int j = 0; j <= 8; ++j) CHECK(expected_tokens(a, j) / c2.round_s(j) <= rate + 1e-15);
  CHECK(expected_tokens(a, k) / c2.round_s(k) == rate);
  adaptive_horizon ad(c2, adaptive_options{.k_max = 8});
  for (int i = 0; i < 400; ++i) {
    int acc = 0;
    while (acc < 8 && counter_uniform(3, static_cast<std::uint64_t>(i * 16 + acc), 0) < a[static_cast<std::size_t>(acc)]) ++acc;
    ad.observe(8, acc);
  }
  const auto est = ad.acceptance();
  CHECK(est[0] == doctest::Approx(0.9).epsilon(0.05));
  CHECK(ad.choose(1 << 30) == k);  // far from the end: the steady-state optimum
  CHECK(ad.choose(8) <= 8);
  CHECK(ad.choose(1) <= 1);
  CHECK(ad.choose(0) == 0);
  CHECK_THROWS_AS(adaptive_horizon(c2, adaptive_options{.k_max = -1}), kvcodec::error);
  CHECK_THROWS_AS(adaptive_horizon(c2, adaptive_options{.prior_accept = 1.0}), kvcodec::error);
  CHECK_THROWS_AS(adaptive_horizon(cost_model{-1, 1, 0, 0, true}), kvcodec::error);
  adaptive_horizon learn(c2, adaptive_options{.learn_costs = true});
  learn.observe_times(4, 0.4, 0.3, 0.5);
  CHECK(learn.costs().draft_step_s == doctest::Approx(0.1));
  CHECK(learn.costs().fetch_s == doctest::Approx(0.5));
}

namespace {

/// Expected cost of the last r tokens by exhaustive recursion (no memo), for checking plan_horizon.
double brute_cost(const std::vector<double>& a, const cost_model& c, int k_max, int r) {
  if (r <= 0) return 0;
  double best = 1e300;
  for (int k = 0; k <= std::min(k_max, r - 1); ++k) {
    double e = c.round_s(k), s = 1;
    for (int n = 0; n <= k; ++n) {
      const double an = n < static_cast<int>(a.size()) ? a[static_cast<std::size_t>(n)] : 0.0;
      const double p = n < k ? s * (1 - an) : s;
      e += p * brute_cost(a, c, k_max, r - n - 1);
      s *= an;
    }
    best = std::min(best, e);
  }
  return best;
}

/// Runs `policy` for `tokens` tokens against an acceptance oracle (accepted drafts of round `round`
/// given K); returns the modeled cost.
template <class Oracle>
double simulate_rounds(horizon_policy& policy, const cost_model& c, int tokens, Oracle accepted_of) {
  double cost = 0;
  int done = 0;
  for (int round = 0; done < tokens; ++round) {
    const int limit = tokens - done - 1;
    const int k = policy.choose(limit);
    REQUIRE(k >= 0);
    REQUIRE(k <= limit);
    const int acc = std::min(k, accepted_of(round, k));
    cost += c.round_s(k);
    done += acc + 1;
    policy.observe(k, acc);
  }
  CHECK(done == tokens);
  return cost;
}

}  // namespace

TEST_CASE("plan_horizon: expected cost to the end of the run") {
  const cost_model c{1.0, 1.0, 0.0, 8.0, true};
  double cost = -1;
  CHECK(plan_horizon(std::vector<double>(32, 0.9), c, 32, 0, &cost) == 0);
  CHECK(cost == 0.0);
  CHECK(plan_horizon(std::vector<double>(32, 0.9), c, 32, 1, &cost) == 0);
  CHECK(cost == c.round_s(0));
  CHECK(plan_horizon(std::vector<double>(32, 0.9), c, 0, 50) == 0);
  // nothing can be accepted past a's end; drafts hidden by the fetch are free, ties go to the larger K
  CHECK(plan_horizon({}, c, 32, 50, &cost) == 8);
  CHECK(cost == doctest::Approx(50 * c.round_s(0)));
  // certain acceptance: one round that fits what is left, while it fits the horizon
  const std::vector<double> ones(32, 1.0);
  CHECK(plan_horizon(ones, c, 32, 12, &cost) == 11);
  CHECK(cost == 12.0);
  CHECK(plan_horizon(ones, c, 32, 5) == 4);
  // 192 tokens: every round hides the fetch (K >= 8), so the cost is one per token
  plan_horizon(ones, c, 32, 192, &cost);
  CHECK(cost == doctest::Approx(192.0));
  // exact against exhaustive recursion, odd sizes included
  const std::vector<double> a = {0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5};
  const cost_model c2{1.0, 3.0, 0.1, 2.0, true};
  for (int r : {1, 2, 3, 5, 8, 9, 11}) {
    CAPTURE(r);
    const int k = plan_horizon(a, c2, 6, r, &cost);
    CHECK(k <= std::min(6, r - 1));
    CHECK(cost == doctest::Approx(brute_cost(a, c2, 6, r)).epsilon(1e-12));
  }
  // far from the end the plan is the steady-state optimum
  const std::vector<double> b = {0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2};
  CHECK(plan_horizon(b, c2, 8, std::int64_t{1} << 40) == best_horizon(b, c2, 8));
  CHECK(plan_horizon(std::vector<double>(64, 0.97), cost_model{1.0, 1.0, 0.0, 8.0, false}, 64, 100000) ==
        best_horizon(std::vector<double>(64, 0.97), cost_model{1.0, 1.0, 0.0, 8.0, false}, 64));
}

TEST_CASE("adaptive horizon matches or beats every fixed horizon") {
  const cost_model c{1.0, 1.0, 0.0, 8.0, true};
  // every draft accepted (the lossless codecs): no fixed K does better, whatever the length
  for (int tokens : {1, 2, 7, 64, 192, 193, 500}) {
    CAPTURE(tokens);
    const auto all = [](int, int k) { return k; };
    adaptive_horizon ad(c, adaptive_options{.k_max = 32});
    const double auto_cost = simulate_rounds(ad, c, tokens, all);
    double best_fixed = 1e300;
    for (int k : {1, 2, 4, 8, 16, 32}) {
      fixed_horizon f(k);
      best_fixed = std::min(best_fixed, simulate_rounds(f, c, tokens, all));
    }
    CHECK(auto_cost <= best_fixed);
  }
  // i.i.d. acceptance 0.9 per draft: averaged over seeds, within 2% of the best fixed horizon
  const int seeds = 200, tokens = 192;
  std::map<int, double> fixed_total;
  double auto_total = 0;
  for (int seed = 0; seed < seeds; ++seed) {
    const auto iid = [seed](int round, int k) {
      int n = 0;
      while (n < k && counter_uniform(static_cast<std::uint64_t>(seed), static_cast<std::uint64_t>(round) * 64 + static_cast<std::uint64_t>(n), 1) < 0.9) ++n;
      return n;
    };
    adaptive_horizon ad(c, adaptive_options{.k_max = 32});
    auto_total += simulate_rounds(ad, c, tokens, iid);
    for (int k : {1, 2, 4, 8, 16, 32}) {
      fixed_horizon f(k);
      fixed_total[k] += simulate_rounds(f, c, tokens, iid);
    }
  }
  double best_fixed = 1e300;
  for (const auto& [k, v] : fixed_total) best_fixed = std::min(best_fixed, v);
  MESSAGE("iid 0.9: adaptive " << auto_total / seeds << " vs best fixed " << best_fixed / seeds << " per run");
  CHECK(auto_total <= 1.02 * best_fixed);
}

TEST_CASE("verify_stats invariants") {
  verify_stats s;
  s.record_round(4, 4);
  s.record_round(4, 1);
  s.record_round(0, 0);
  CHECK(s.rounds == 3);
  CHECK(s.produced == s.accepted + s.rounds);
  CHECK(s.histogram == std::vector<std::int64_t>{1, 1, 0, 0, 1});
  CHECK(s.reached == std::vector<std::int64_t>{2, 2, 1, 1});
  CHECK(s.accepted_at == std::vector<std::int64_t>{2, 1, 1, 1});
  CHECK(s.mean_accepted() == doctest::Approx(5.0 / 3));
  const auto j = s.to_json();
  CHECK(j["acceptance_histogram"].size() == 5);
  CHECK(j["timings"].contains("fetch_exposed_s"));
  CHECK(verify_stats{}.mean_accepted() == 0.0);
}

TEST_CASE("cache sources: memory / file (.kvc and dump) / simulated link / prefetch") {
  const auto m = synth_model();
  const kv_cache ctx = model_context(m, 20);
  memory_source mem(ctx, 12);
  CHECK(mem.fetch()->shape.tokens == 12);
  CHECK(mem.fetch() == mem.fetch());
  CHECK(mem.bytes() == doctest::Approx(2.0 * ctx.shape.kv_elements() * 12 / 20));
  const auto dir = fs::temp_directory_path() / ("kvcodec_verify_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string dump_path = (dir / "ctx.safetensors").string(), kvc_path = (dir / "ctx.kvc").string();
  io::write_kv_dump(dump_path, ctx, io::kv_layout::hf_4d, dtype::f32);
  {
    const auto enc = encode("raw", ctx);
    std::ofstream(kvc_path, std::ios::binary).write(reinterpret_cast<const char*>(enc.data.data()), static_cast<std::streamsize>(enc.data.size()));
  }
  for (const auto& path : {dump_path, kvc_path}) {
    file_source fs_(path, 12);
    const auto c = fs_.fetch();
    CHECK(c->shape.tokens == 12);
    CHECK(c->keys == mem.fetch()->keys);
  }
  CHECK_THROWS_AS(file_source(dump_path, 21), kvcodec::error);
  CHECK_THROWS_AS(file_source((dir / "missing.kvc").string(), 4), kvcodec::error);
  auto inner = std::make_shared<memory_source>(ctx, 12);
  link_source link(inner, inner->bytes() / 0.05, 0.01);  // 50 ms transfer + 10 ms latency
  CHECK(link.transfer_s() == doctest::Approx(0.06));
  prefetcher pf(link);
  double exposed = 0, fetch_s = 0;
  CHECK_THROWS_AS(pf.wait(exposed, fetch_s), kvcodec::error);
  pf.start();
  CHECK_THROWS_AS(pf.start(), kvcodec::error);
  std::this_thread::sleep_for(std::chrono::milliseconds(30));  // "drafting"
  const auto got = pf.wait(exposed, fetch_s);
  CHECK(got->shape.tokens == 12);
  CHECK(fetch_s >= 0.059);
  CHECK(exposed < fetch_s);
  CHECK(exposed > 0.01);
  CHECK_THROWS_AS(link_source(inner, 0.0, 0.0), kvcodec::error);
  CHECK_THROWS_AS(link_source(nullptr, 1.0, 0.0), kvcodec::error);
  fs::remove_all(dir);
}

TEST_CASE("planner: iteration-time model") {
  hardware_desc h;
  model_desc md;
  const std::vector<acceptance_curve> curves = {{"perfect", 4.0, std::vector<double>(8, 1.0)},
                                                {"useless", 2.0, std::vector<double>(8, 0.0)}};
  const auto p = make_plan(h, md, curves, 32);
  CHECK(p.rows.size() == 2 * 33);
  for (const auto& r : p.rows) CHECK(r.tokens_per_s == doctest::Approx(md.batch * r.expected_tokens / r.round_s));
  CHECK(p.best.codec == "perfect");
  CHECK(p.best_per_codec[0].horizon == 32);  // acceptance 1 extrapolated: the longest horizon wins
  CHECK(p.best_per_codec[1].horizon == 0);
  CHECK(p.full_mode == "resident");  // 16 GB weights + 34 GB KV fit in 80 GB
  md.context_tokens = 131072;        // 137 GB of KV do not
  const auto pl = make_plan(h, md, curves, 32);
  const double kv = md.batch * md.context_tokens * md.kv_bytes_per_token;
  CHECK(pl.full_mode == "offloaded");
  CHECK(pl.full_step_s == doctest::Approx((md.weight_bytes + kv) / h.hbm_bw + h.link_latency_s + kv / h.link_bw));
  model_desc small = md;
  small.context_tokens = 1024;
  const auto ps = make_plan(h, small, curves, 4);
  CHECK(ps.full_mode == "resident");
  CHECK(ps.full_tokens_per_s == doctest::Approx(small.batch * h.hbm_bw / (small.weight_bytes + small.batch * 1024.0 * small.kv_bytes_per_token)));
  const cost_model c = round_costs(h, md, 4.0);
  CHECK(c.draft_step_s == doctest::Approx((md.weight_bytes + kv / 4) / h.hbm_bw));
  CHECK_THROWS_AS(make_plan(hardware_desc{.hbm_bw = 0}, md, curves, 4), kvcodec::error);
  CHECK_THROWS_AS(make_plan(h, md, {{"bad", 4.0, {1.5}}}, 4), kvcodec::error);
  CHECK_THROWS_AS(make_plan(h, md, {{"bad", 0.0, {0.5}}}, 4), kvcodec::error);
  CHECK(to_json(p)["projection"] == true);
}

TEST_CASE("session on a synthetic model: greedy output identical under heavy rejection - exact batched verify") {
  const auto m = synth_model();
  const kv_cache ctx = model_context(m, 40);
  for (int K : {0, 1, 3, 8}) {
    CAPTURE(K);
    fixed_horizon h(K);
    // the drafter runs another model (other weights): many drafts are rejected
    auto cfg = m->config;
    const auto other = std::make_shared<const model::llama2c_model>(model::random_llama2c(cfg, 99));
    const auto r = run_greedy(m, ctx, model_context(other, 40), 3, 50, h, true, other);
    CHECK(r.tokens == r.reference);
    CHECK(r.tokens.size() == 50);
    CHECK(r.stats.produced == 50);
    CHECK(r.stats.exact_checked == r.stats.drafted + r.stats.rounds);
    CHECK(r.stats.exact_mismatched == 0);
    if (K > 0) CHECK(r.stats.acceptance_rate() < 0.95);  // the noisy drafter is really rejected
  }
  fixed_horizon h(5);
  const auto same = run_greedy(m, ctx, ctx, 3, 40, h);
  CHECK(same.tokens == same.reference);
  CHECK(same.stats.acceptance_rate() == 1.0);
  // n = 0 and max_length: no room
  fixed_horizon h0(2);
  CHECK(run_greedy(m, ctx, ctx, 3, 0, h0).tokens.empty());
  CHECK(run_greedy(m, ctx, ctx, 3, 1, h0).tokens.size() == 1);
  const kv_cache full = model_context(m, 127);
  CHECK_THROWS_AS(run_greedy(m, full, full, 3, 5, h0), kvcodec::error);
}

TEST_CASE("decoding compression: the drafter's generated rows compressed every N positions - greedy output still identical") {
  const auto m = synth_model();
  const kv_cache ctx = model_context(m, 40);
  const model::decoder_options rec{.record_queries = true};
  decoder_verifier v(m, false, rec);
  decoder_drafter d(m, rec);
  d.load(ctx, 40);
  const auto dc = std::make_shared<decoding_compressor>("snapkv:keep=0.5,window=4|kivi:bits=4,residual=0", 8, 40);
  d.set_after_adopt([dc](model::decoder& x) { (*dc)(x); });
  memory_source src(ctx, 40);
  greedy_acceptance g;
  fixed_horizon h(4);
  session_options o;
  o.max_length = m->config.seq_len;
  const auto r = draft_and_verify(d, v, src, g, h, 3, 60, o);
  decoder_verifier ref(m);
  ref.install(src.fetch());
  CHECK(r.tokens == reference_decode(ref, g, 3, 60));
  const decoding_stats& st = dc->stats();
  CHECK(st.compressions >= 5);
  CHECK(st.positions >= 52);
  CHECK(st.positions <= d.length() - 40);
  // snapkv keeps round(keep x n) of each chunk per head: about half the rows
  CHECK(st.rows_dropped > 0.4 * static_cast<double>(st.rows));
  CHECK(st.rows_dropped < 0.6 * static_cast<double>(st.rows));
  CHECK(st.bits_per_element() > 0);
  CHECK(st.bits_per_element() < 8);  // f32 would be 16 at half the rows kept; 4-bit KIVI on chunks of 8 tokens pays its scales
  // the context is as loaded (dense), the compressed rows are masked where dropped and lossy where kept
  const model::kv_store& ds = d.decoder().cache();
  const model::kv_store& vs = v.decoder().cache();
  std::int64_t ctx_dropped = 0, gen_dropped = 0, gen_changed = 0;
  for (int l = 0; l < ds.layers(); ++l)
    for (int hh = 0; hh < ds.kv_heads(); ++hh)
      for (int t = 0; t < 40 + static_cast<int>(st.positions); ++t) {
        if (t < 40) ctx_dropped += ds.keep(l, hh)[t] ? 0 : 1;
        else gen_dropped += ds.keep(l, hh)[t] ? 0 : 1;
        if (t >= 40 && ds.keep(l, hh)[t] && !std::equal(ds.key(l, hh, t), ds.key(l, hh, t) + ds.head_dim(), vs.key(l, hh, t))) ++gen_changed;
      }
  CHECK(ctx_dropped == 0);
  CHECK(gen_dropped == st.rows_dropped);
  CHECK(gen_changed > 0);
  CHECK_THROWS_AS(decoding_compressor("snapkv", 0, 40), kvcodec::error);
  CHECK_THROWS_AS(decoding_compressor("no-such-stage", 8, 40), kvcodec::error);
}

TEST_CASE("rejection-sampling session: output distribution equals full-cache sampling (chi-square)") {
  const auto model_file = test::shared_file("models/stories260K/stories260K.bin");
  const kv_cache* shared = test::shared_dump("stories260K-s0.safetensors");
  model_ptr m;
  kv_cache ctx;
  if (!model_file || !shared) {
    MESSAGE("no ../shared: using the synthetic model");
    m = synth_model();
    ctx = model_context(m, 48);
  } else {
    m = std::make_shared<const model::llama2c_model>(model::load_llama2c(model_file->string()));
    ctx = eval::slice_tokens(*shared, 96);
  }
  const std::int64_t C = ctx.shape.tokens;
  const int first = ctx.tokens.empty() ? 3 : ctx.tokens.back();
  const kv_cache draft = add_noise(keep_fraction(ctx, 0.2), 0.3f, 9);
  memory_source src(ctx, C);
  decoder_verifier v(m);
  decoder_drafter d(m);
  d.load(draft, C);
  // exact joint distribution of the first two tokens with the full cache
  v.install(src.fetch());
  const int V = m->config.vocab_size;
  const auto p1l = v.score({first})[0];
  std::vector<double> p1(static_cast<std::size_t>(V));
  softmax_t(p1l.data(), V, 1.0, p1.data());
  std::map<std::pair<int, int>, double> joint;
  for (int a = 0; a < V; ++a) {
    if (p1[static_cast<std::size_t>(a)] < 1e-4) continue;
    const auto p2l = v.score({a})[0];
    std::vector<double> p2(static_cast<std::size_t>(V));
    softmax_t(p2l.data(), V, 1.0, p2.data());
    for (int b = 0; b < V; ++b) joint[{a, b}] = p1[static_cast<std::size_t>(a)] * p2[static_cast<std::size_t>(b)];
    v.truncate(static_cast<int>(C) + 1);
  }
  v.truncate(static_cast<int>(C));
  const int N = 4000;
  std::map<std::pair<int, int>, int> seen, seen_draft;
  std::int64_t rejected_rounds = 0;
  for (int s = 0; s < N; ++s) {
    rejection_sampling rs(static_cast<std::uint64_t>(s) * 7919 + 1);
    fixed_horizon h(3);
    d.truncate(static_cast<int>(C));
    v.truncate(static_cast<int>(C));
    const auto r = draft_and_verify(d, v, src, rs, h, first, 2);
    REQUIRE(r.tokens.size() == 2);
    ++seen[{r.tokens[0], r.tokens[1]}];
    rejected_rounds += r.stats.rounds - (r.stats.histogram.size() > 1 ? r.stats.histogram[1] : 0);
    // the drafter's own samples (what "accept everything" would emit): must be rejected by the test
    d.truncate(static_cast<int>(C));
    rejection_sampling rq(static_cast<std::uint64_t>(s) * 7919 + 1);
    const auto q1 = d.step(first);
    const int t1 = rq.draft(q1.data(), V, C + 1);
    const auto q2 = d.step(t1);
    ++seen_draft[{t1, rq.draft(q2.data(), V, C + 2)}];
  }
  const auto chi2 = [&](const std::map<std::pair<int, int>, int>& obs, int& df) {
    double x = 0, other_e = 0, other_o = N;
    df = 0;
    for (const auto& [k, pr] : joint) {
      const double e = N * pr;
      if (e < 5) {
        other_e += e;
        continue;
      }
      const auto it = obs.find(k);
      const double o = it == obs.end() ? 0 : it->second;
      other_o -= o;
      x += (o - e) * (o - e) / e;
      ++df;
    }
    other_e = N - (N - other_e - 0);  // every pair not binned above
    double binned_e = 0;
    for (const auto& [k, pr] : joint)
      if (N * pr >= 5) binned_e += N * pr;
    other_e = N - binned_e;
    if (other_e > 0) x += (other_o - other_e) * (other_o - other_e) / other_e;
    return x;
  };
  int df = 0, df2 = 0;
  const double x = chi2(seen, df), xd = chi2(seen_draft, df2);
  MESSAGE("chi-square " << x << " with " << df << " dof (critical " << chi2_crit_001(df) << "); drafter alone " << xd
                        << "; rounds with a rejection " << rejected_rounds);
  CHECK(df >= 3);
  CHECK(x < chi2_crit_001(df));
  CHECK(xd > chi2_crit_001(df));  // the drafter's distribution differs: the test can tell them apart
  CHECK(rejected_rounds > N / 50);
}

TEST_CASE("greedy draft-and-verify on the real dumps: identical for every registered codec - raw accepts all") {
  const auto model_file = test::shared_file("models/stories260K/stories260K.bin");
  KVCODEC_REQUIRE_SHARED(model_file);
  const auto m = std::make_shared<const model::llama2c_model>(model::load_llama2c(model_file->string()));
  std::vector<std::string> specs = {"raw", "raw:dtype=bf16", "raw:dtype=f16", "raw:dtype=bf16|zstd"};
  const registry& reg = builtin_registry();
  for (const auto& e : reg.stages()) {
    specs.push_back(e.name);
    std::string tuned;
    for (const auto& p : e.params) {
      if (p.key == "bits") tuned += ":bits=2";
      if (p.key.find("keep") != std::string::npos) tuned += ":" + p.key + "=0.2";
      if (p.key == "compression_ratio") tuned += ":compression_ratio=0.8";
    }
    if (!tuned.empty()) {
      for (std::size_t i = 1; i < tuned.size(); ++i)
        if (tuned[i] == ':') tuned[i] = ',';
      specs.push_back(e.name + tuned);
    }
  }
  for (const auto& p : reg.presets()) specs.push_back(p.name);
  for (const char* s : {"kivi:bits=2", "kivi:bits=2|rans", "snapkv:keep=0.2", "streamingllm:keep=0.2", "knorm:keep=0.2",
                        "h2o:keep=0.2", "tova:keep=0.2", "expected_attention:keep=0.2", "random:keep=0.2"})
    specs.push_back(s);
  std::sort(specs.begin(), specs.end());
  specs.erase(std::unique(specs.begin(), specs.end()), specs.end());
  int ran = 0;
  const std::int64_t C = 256;
  for (const char* f : {"stories260K-s0.safetensors", "stories260K-s1.safetensors", "stories260K-s2.safetensors"}) {
    const kv_cache* shared = test::shared_dump(f);
    REQUIRE(shared);
    const kv_cache& dump = *shared;
    const kv_cache ctx = eval::slice_tokens(dump, C);
    const int first = dump.tokens[C];
    for (const auto& s : specs) {
      kv_cache lossy;
      try {
        make_codec(s);
      } catch (const kvcodec::error&) {
        continue;  // not registered (yet)
      }
      try {
        lossy = decode(encode(s, ctx).data);
      } catch (const kvcodec::error& e) {
        MESSAGE("spec " << s << " does not encode this cache with these parameters: " << e.what());
        continue;
      }
      CAPTURE(f);
      CAPTURE(s);
      adaptive_horizon h(cost_model{1.0, 1.0, 0.0, 4.0, true});
      const auto r = run_greedy(m, ctx, lossy, first, 64, h, ran == 0);
      CHECK(r.tokens == r.reference);
      CHECK(r.stats.exact_mismatched == 0);
      if (s == "raw") {
        CHECK(r.stats.acceptance_rate() == 1.0);
        CHECK(r.stats.accepted == r.stats.drafted);
      }
      ++ran;
    }
    // token dropping by kept sets (20% keep) and noise, without a registered stage
    for (double frac : {0.2, 0.05}) {
      fixed_horizon h(6);
      const auto r = run_greedy(m, ctx, keep_fraction(ctx, frac), first, 64, h);
      CHECK(r.tokens == r.reference);
      ++ran;
    }
    fixed_horizon h(4);
    const auto r = run_greedy(m, ctx, add_noise(ctx, 1.0f, 3), first, 64, h);
    CHECK(r.tokens == r.reference);
  }
  MESSAGE(ran << " (dump, codec) greedy runs identical to full-cache decoding");
  CHECK(ran >= 12);
}

}  // namespace kvcodec_test_verify_verify
