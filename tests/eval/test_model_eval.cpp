// Tests of model-in-the-loop fidelity: slicing, the prefix-reuse protocol on synthetic and real
// models, an independent naive double-precision forward pass that recomputes every metric, and bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "kvcodec/eval/model_eval.hpp"
#include "../support/shared_data.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_eval_model_eval {

namespace {

using namespace kvcodec;
using model_ptr = std::shared_ptr<const model::llama2c_model>;

model_ptr synth_model() {
  model::llama2c_config c;
  c.dim = 32;
  c.hidden_dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 40;
  c.seq_len = 96;
  return std::make_shared<const model::llama2c_model>(model::random_llama2c(c, 7));
}

/// A dump made by the model itself: T tokens of pseudo-random ids, with queries.
kv_cache synth_dump(const model_ptr& m, int T) {
  model::decoder d(m, model::decoder_options{.record_queries = true});
  std::vector<int> ids;
  for (int i = 0; i < T; ++i) ids.push_back(1 + (i * 17 + 5) % (m->config.vocab_size - 1));
  d.forward_batch(ids, 0);
  return d.export_cache();
}

/// Independent reference: llama2.c forward in double over positions [C, T) with positions [0, C)
/// served by `ctx` (kept sets honoured). Returns logits per position.
std::vector<std::vector<double>> naive_logits(const model::llama2c_model& m, const kv_cache& ctx, std::int64_t C,
                                              const std::vector<std::int32_t>& ids) {
  const auto& c = m.config;
  const int hd = c.head_dim(), L = c.n_layers, KH = c.n_kv_heads, H = c.n_heads, D = c.dim, F = c.hidden_dim;
  const int T = static_cast<int>(ids.size());
  std::vector<double> K(static_cast<std::size_t>(L * KH * T * hd)), V(K.size());
  std::vector<char> keep(static_cast<std::size_t>(L * KH * T), 1);
  const auto at = [&](int l, int h, int t) { return static_cast<std::size_t>(((l * KH + h) * T + t)); };
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < KH; ++h) {
      for (int t = 0; t < C; ++t)
        for (int i = 0; i < hd; ++i) {
          const std::size_t src = (static_cast<std::size_t>(h) * static_cast<std::size_t>(ctx.shape.tokens) + static_cast<std::size_t>(t)) * hd + i;
          K[at(l, h, t) * hd + i] = ctx.keys[l][src];
          V[at(l, h, t) * hd + i] = ctx.values[l][src];
        }
      if (!ctx.kept.empty()) {
        for (int t = 0; t < C; ++t) keep[at(l, h, t)] = 0;
        for (auto t : ctx.kept[l][h])
          if (t < C) keep[at(l, h, t)] = 1;
      }
    }
  const auto rms = [&](const std::vector<double>& x, const auto& w) {
    double ss = 0;
    for (double v : x) ss += v * v;
    ss = 1.0 / std::sqrt(ss / x.size() + 1e-5);
    std::vector<double> o(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) o[i] = w[static_cast<Eigen::Index>(i)] * x[i] * ss;
    return o;
  };
  const auto matvec = [](const model::matrix_rm& w, const std::vector<double>& x) {
    std::vector<double> o(static_cast<std::size_t>(w.rows()), 0.0);
    for (Eigen::Index r = 0; r < w.rows(); ++r)
      for (Eigen::Index k = 0; k < w.cols(); ++k) o[static_cast<std::size_t>(r)] += static_cast<double>(w(r, k)) * x[static_cast<std::size_t>(k)];
    return o;
  };
  std::vector<std::vector<double>> out;
  for (int p = static_cast<int>(C); p < T; ++p) {
    std::vector<double> x(static_cast<std::size_t>(D));
    for (int i = 0; i < D; ++i) x[static_cast<std::size_t>(i)] = m.token_embedding(ids[static_cast<std::size_t>(p)], i);
    for (int l = 0; l < L; ++l) {
      const auto& w = m.layers[static_cast<std::size_t>(l)];
      auto xb = rms(x, w.rms_att);
      auto q = matvec(w.wq, xb), k = matvec(w.wk, xb), v = matvec(w.wv, xb);
      const auto rot = [&](std::vector<double>& u, int heads) {
        for (int h = 0; h < heads; ++h)
          for (int i = 0; i < hd / 2; ++i) {
            const double ang = p * std::pow(10000.0, -2.0 * i / hd);
            const double a = u[h * hd + 2 * i], b = u[h * hd + 2 * i + 1];
            u[h * hd + 2 * i] = a * std::cos(ang) - b * std::sin(ang);
            u[h * hd + 2 * i + 1] = a * std::sin(ang) + b * std::cos(ang);
          }
      };
      rot(q, H);
      rot(k, KH);
      for (int h = 0; h < KH; ++h)
        for (int i = 0; i < hd; ++i) {
          K[at(l, h, p) * hd + i] = k[h * hd + i];
          V[at(l, h, p) * hd + i] = v[h * hd + i];
        }
      std::vector<double> att(static_cast<std::size_t>(D), 0.0);
      for (int h = 0; h < H; ++h) {
        const int kh = h / (H / KH);
        std::vector<double> s(static_cast<std::size_t>(p + 1), -1e300);
        double mx = -1e300;
        for (int t = 0; t <= p; ++t) {
          if (!keep[at(l, kh, t)]) continue;
          double d = 0;
          for (int i = 0; i < hd; ++i) d += q[h * hd + i] * K[at(l, kh, t) * hd + i];
          s[t] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[t]);
        }
        double z = 0;
        for (int t = 0; t <= p; ++t)
          if (keep[at(l, kh, t)]) z += std::exp(s[t] - mx);
        for (int t = 0; t <= p; ++t)
          if (keep[at(l, kh, t)])
            for (int i = 0; i < hd; ++i) att[h * hd + i] += std::exp(s[t] - mx) / z * V[at(l, kh, t) * hd + i];
      }
      const auto o = matvec(w.wo, att);
      for (int i = 0; i < D; ++i) x[i] += o[i];
      xb = rms(x, w.rms_ffn);
      auto h1 = matvec(w.w1, xb), h3 = matvec(w.w3, xb);
      for (int i = 0; i < F; ++i) h1[i] = h1[i] / (1.0 + std::exp(-h1[i])) * h3[i];
      const auto f = matvec(w.w2, h1);
      for (int i = 0; i < D; ++i) x[i] += f[i];
    }
    out.push_back(matvec(m.classifier(), rms(x, m.rms_final)));
  }
  return out;
}

/// The metrics recomputed from naive logits (no code shared with model_eval.hpp).
struct naive_metrics {
  double top1 = 0, kl = 0, ppl_full = 0, ppl_lossy = 0;
};
naive_metrics naive_compare(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b,
                            const std::vector<std::int32_t>& ids, std::int64_t C) {
  naive_metrics r;
  double nf = 0, nl = 0;
  int targets = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto lsm = [](const std::vector<double>& x) {
      double mx = *std::max_element(x.begin(), x.end()), z = 0;
      for (double v : x) z += std::exp(v - mx);
      std::vector<double> o;
      for (double v : x) o.push_back(v - mx - std::log(z));
      return o;
    };
    const auto la = lsm(a[i]), lb = lsm(b[i]);
    r.top1 += (std::max_element(a[i].begin(), a[i].end()) - a[i].begin()) == (std::max_element(b[i].begin(), b[i].end()) - b[i].begin());
    for (std::size_t v = 0; v < la.size(); ++v) r.kl += std::exp(la[v]) * (la[v] - lb[v]);
    const std::size_t nx = static_cast<std::size_t>(C) + i + 1;
    if (nx < ids.size()) {
      nf -= la[static_cast<std::size_t>(ids[nx])];
      nl -= lb[static_cast<std::size_t>(ids[nx])];
      ++targets;
    }
  }
  r.top1 /= static_cast<double>(a.size());
  r.kl /= static_cast<double>(a.size());
  r.ppl_full = std::exp(nf / targets);
  r.ppl_lossy = std::exp(nl / targets);
  return r;
}

/// Keeps the first `sink` and the last `recent` of positions [0, C) in every (layer, head).
kv_cache keep_window(kv_cache c, std::int64_t C, int sink, int recent) {
  c.kept.assign(static_cast<std::size_t>(c.shape.layers), std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(c.shape.kv_heads)));
  for (auto& layer : c.kept)
    for (auto& ks : layer)
      for (std::int32_t t = 0; t < c.shape.tokens; ++t)
        if (t < sink || (t >= C - recent && t < C) || t >= C) ks.push_back(t);
  return c;
}

void check_against_naive(const model_ptr& m, const kv_cache& dump, const kv_cache& lossy, std::int64_t C) {
  model::decoder dec(m);
  eval::model_eval_options o;
  o.context_tokens = C;
  o.generate_steps = 8;
  const auto mm = eval::evaluate_context(dec, dump, lossy, o);
  const auto nf = naive_logits(*m, dump, C, dump.tokens), nl = naive_logits(*m, lossy, C, dump.tokens);
  const auto nm = naive_compare(nf, nl, dump.tokens, C);
  CHECK(mm.positions == dump.shape.tokens - C);
  CHECK(std::abs(mm.top1_agreement - nm.top1) <= 1.0 / static_cast<double>(mm.positions) + 1e-12);
  CHECK(std::abs(mm.kl - nm.kl) <= 1e-3 * nm.kl + 1e-6);
  CHECK(std::abs(mm.ppl_full - nm.ppl_full) <= 1e-4 * nm.ppl_full);
  CHECK(std::abs(mm.ppl_lossy - nm.ppl_lossy) <= 1e-4 * nm.ppl_lossy);
  MESSAGE("model_eval kl " << mm.kl << " naive " << nm.kl << "; ppl " << mm.ppl_full << "/" << mm.ppl_lossy << " naive "
                           << nm.ppl_full << "/" << nm.ppl_lossy << "; top1 " << mm.top1_agreement << " naive " << nm.top1);
}

}  // namespace

TEST_CASE("slice_tokens keeps the first n tokens of every buffer") {
  const auto m = synth_model();
  kv_cache d = synth_dump(m, 9);
  d = keep_window(d, 9, 1, 2);
  const kv_cache s = eval::slice_tokens(d, 5);
  CHECK(s.shape.tokens == 5);
  CHECK(s.tokens == std::vector<std::int32_t>(d.tokens.begin(), d.tokens.begin() + 5));
  CHECK(s.positions == std::vector<std::int32_t>{0, 1, 2, 3, 4});
  CHECK(s.has_queries());
  const std::size_t hd = static_cast<std::size_t>(d.shape.head_dim);
  CHECK(s.keys[1][hd * 5 + 3] == d.keys[1][hd * 9 + 3]);  // head 1, token 0
  CHECK(s.queries[0][hd * 5 * 3 + hd * 4] == d.queries[0][hd * 9 * 3 + hd * 4]);
  CHECK(s.kept[0][0] == std::vector<std::int32_t>{0});  // recent window [7, 9) lies beyond 5
  CHECK(eval::slice_tokens(d, 1).shape.tokens == 1);
  CHECK(eval::slice_tokens(d, 9).keys == d.keys);
  CHECK_THROWS_AS(eval::slice_tokens(d, 0), kvcodec::error);
  CHECK_THROWS_AS(eval::slice_tokens(d, 10), kvcodec::error);
}

TEST_CASE("model eval: the original context scores perfectly - a lossy one matches the naive double reference") {
  const auto m = synth_model();
  const kv_cache dump = synth_dump(m, 41);
  for (std::int64_t C : {1, 20, 40}) {
    CAPTURE(C);
    const auto r = eval::evaluate_model(m, dump, "raw", eval::model_eval_options{.context_tokens = C, .generate_steps = 6});
    CHECK(r.model.top1_agreement == 1.0);
    CHECK(r.model.kl == 0.0);
    if (C < 40) CHECK(r.model.ppl_full == r.model.ppl_lossy);
    CHECK(r.model.first_divergence == -1);
    CHECK(r.model.generate_steps == 6);
    CHECK(r.model.positions == 41 - C);
    if (C == 40) CHECK(std::isnan(r.model.ppl_full));  // one position: no next-token target
  }
  check_against_naive(m, dump, keep_window(dump, 30, 2, 5), 30);
  // a garbled context must move every metric away from perfect
  kv_cache bad = dump;
  for (auto& l : bad.values)
    for (std::size_t i = 0; i < l.size(); ++i) l[i] = -l[i] * 3.0f;
  model::decoder dec(m);
  const auto g = eval::evaluate_context(dec, dump, bad, eval::model_eval_options{.context_tokens = 30, .generate_steps = 10});
  CHECK(g.kl > 1e-4);
  CHECK(g.ppl_lossy != g.ppl_full);
  check_against_naive(m, dump, bad, 30);
}

TEST_CASE("model eval rejects bad input") {
  const auto m = synth_model();
  const kv_cache dump = synth_dump(m, 12);
  const auto run = [&](const kv_cache& d, std::int64_t C) {
    return eval::evaluate_model(m, d, "raw", eval::model_eval_options{.context_tokens = C});
  };
  CHECK_THROWS_AS(run(dump, 0), kvcodec::error);
  CHECK_THROWS_AS(run(dump, 12), kvcodec::error);
  kv_cache no_ids = dump;
  no_ids.tokens.clear();
  CHECK_THROWS_AS(run(no_ids, 4), kvcodec::error);
  kv_cache halves = dump;
  halves.metadata["rope"] = "half";
  CHECK_THROWS_WITH_AS(run(halves, 4), doctest::Contains("rope"), kvcodec::error);
  kv_cache bad_id = dump;
  bad_id.tokens[3] = 999;
  CHECK_THROWS_WITH_AS(run(bad_id, 4), doctest::Contains("tokens[3]"), kvcodec::error);
  auto c2 = m->config;
  c2.n_layers = 3;
  const auto m3 = std::make_shared<const model::llama2c_model>(model::random_llama2c(c2, 1));
  CHECK_THROWS_WITH_AS(eval::evaluate_model(m3, dump, "raw", eval::model_eval_options{.context_tokens = 4}), doctest::Contains("layers"),
                       kvcodec::error);
  CHECK_THROWS_AS(eval::evaluate_model(m, dump, "nosuchcodec", eval::model_eval_options{.context_tokens = 4}), kvcodec::error);
}

TEST_CASE("model eval on the real stories260K dumps") {
  const auto model_file = test::shared_file("models/stories260K/stories260K.bin");
  const kv_cache* shared = test::shared_dump("stories260K-s0.safetensors");
  KVCODEC_REQUIRE_SHARED(model_file && shared);
  const auto m = std::make_shared<const model::llama2c_model>(model::load_llama2c(model_file->string()));
  const kv_cache& dump = *shared;
  const std::int64_t C = 384;
  const auto raw = eval::evaluate_model(m, dump, "raw", eval::model_eval_options{.context_tokens = C});
  CHECK(raw.model.kl == 0.0);
  CHECK(raw.model.top1_agreement == 1.0);
  CHECK(raw.model.first_divergence == -1);
  CHECK(raw.model.generate_steps == 512 - C);
  CHECK(raw.model.ppl_full > 1.0);
  CHECK(raw.model.ppl_full < 20.0);  // a trained model on its own sampled text
  const auto bf = eval::evaluate_model(m, dump, "raw:dtype=bf16", eval::model_eval_options{.context_tokens = C});
  CHECK(bf.bits_per_element == doctest::Approx(16.0).epsilon(0.01));
  CHECK(bf.model.kl > 0.0);
  CHECK(bf.model.kl < 1e-2);
  CHECK(bf.model.top1_agreement > 0.95);
  const auto j = eval::to_json(bf.model);
  for (const char* k : {"top1_agreement", "kl", "ppl_full", "ppl_lossy", "first_divergence"}) CHECK(j.contains(k));
  // independent cross-check on the last 64 positions with a 20%-keep window (sink 4 + recent)
  const kv_cache ctx = eval::slice_tokens(dump, 448);
  const kv_cache dec = decode(encode("raw:dtype=bf16", ctx).data);
  check_against_naive(m, dump, dec, 448);
  check_against_naive(m, dump, keep_window(dump, 448, 4, 86), 448);
}

}  // namespace kvcodec_test_eval_model_eval
