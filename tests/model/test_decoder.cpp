// Tests of the reference decoder: kernels, a naive double-precision reference on synthetic models,
// batch == sequential bit for bit, rollback and row copies, the real stories260K golden output, the
// real KV dumps, preloading (dense and with kept sets) and speed.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcodec/model/decoder.hpp"
#include "../support/shared_data.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_model_decoder {

namespace {

using namespace kvcodec::model;
using model_ptr = std::shared_ptr<const llama2c_model>;

/// The real stories260K model, loaded once; nullptr when the shared data is absent.
model_ptr real_model() {
  static model_ptr m;
  if (!m)
    if (const auto p = kvcodec::test::shared_file("models/stories260K/stories260K.bin"))
      m = std::make_shared<const llama2c_model>(load_llama2c(p->string()));
  return m;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  float d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// Straightforward double-precision forward pass over a whole token sequence (no cache object).
std::vector<std::vector<double>> naive_logits(const llama2c_model& m, const std::vector<int>& tokens) {
  const auto& c = m.config;
  const int d = c.dim, hd = c.head_dim(), kvd = c.kv_dim(), H = c.n_heads, G = c.kv_group();
  std::vector<std::vector<std::vector<double>>> K(static_cast<std::size_t>(c.n_layers)), V(K.size());
  const auto matvec = [](const matrix_rm& w, const std::vector<double>& x) {
    std::vector<double> y(static_cast<std::size_t>(w.rows()), 0.0);
    for (Eigen::Index r = 0; r < w.rows(); ++r)
      for (Eigen::Index k = 0; k < w.cols(); ++k) y[static_cast<std::size_t>(r)] += double(w(r, k)) * x[static_cast<std::size_t>(k)];
    return y;
  };
  const auto norm = [](const std::vector<double>& x, const vector_f& w) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double s = 1.0 / std::sqrt(ss / double(x.size()) + 1e-5);
    std::vector<double> o(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) o[i] = double(w[static_cast<Eigen::Index>(i)]) * s * x[i];
    return o;
  };
  const auto rope = [&](std::vector<double>& v, int pos) {
    for (std::size_t i = 0; i < v.size(); i += 2) {
      const int pair = static_cast<int>(i % static_cast<std::size_t>(hd)) / 2;
      const double ang = pos * std::pow(10000.0, -2.0 * pair / hd);
      const double a = v[i], b = v[i + 1];
      v[i] = a * std::cos(ang) - b * std::sin(ang);
      v[i + 1] = a * std::sin(ang) + b * std::cos(ang);
    }
  };
  std::vector<std::vector<double>> out;
  for (std::size_t p = 0; p < tokens.size(); ++p) {
    std::vector<double> x(static_cast<std::size_t>(d));
    for (int i = 0; i < d; ++i) x[static_cast<std::size_t>(i)] = m.token_embedding(tokens[p], i);
    for (int l = 0; l < c.n_layers; ++l) {
      const auto& w = m.layers[static_cast<std::size_t>(l)];
      auto xb = norm(x, w.rms_att);
      auto q = matvec(w.wq, xb), k = matvec(w.wk, xb), v = matvec(w.wv, xb);
      rope(q, static_cast<int>(p));
      rope(k, static_cast<int>(p));
      K[static_cast<std::size_t>(l)].push_back(k);
      V[static_cast<std::size_t>(l)].push_back(v);
      std::vector<double> att_out(static_cast<std::size_t>(d), 0.0);
      for (int h = 0; h < H; ++h) {
        const int kh = h / G;
        std::vector<double> s(p + 1);
        double mx = -1e300;
        for (std::size_t t = 0; t <= p; ++t) {
          double dot = 0;
          for (int i = 0; i < hd; ++i)
            dot += q[static_cast<std::size_t>(h * hd + i)] * K[static_cast<std::size_t>(l)][t][static_cast<std::size_t>(kh * hd + i)];
          s[t] = dot / std::sqrt(double(hd));
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (std::size_t t = 0; t <= p; ++t)
          for (int i = 0; i < hd; ++i)
            att_out[static_cast<std::size_t>(h * hd + i)] += s[t] / sum * V[static_cast<std::size_t>(l)][t][static_cast<std::size_t>(kh * hd + i)];
      }
      (void)kvd;
      const auto o = matvec(w.wo, att_out);
      for (int i = 0; i < d; ++i) x[static_cast<std::size_t>(i)] += o[static_cast<std::size_t>(i)];
      xb = norm(x, w.rms_ffn);
      auto h1 = matvec(w.w1, xb), h3 = matvec(w.w3, xb);
      for (std::size_t i = 0; i < h1.size(); ++i) h1[i] = h1[i] / (1.0 + std::exp(-h1[i])) * h3[i];
      const auto f = matvec(w.w2, h1);
      for (int i = 0; i < d; ++i) x[static_cast<std::size_t>(i)] += f[static_cast<std::size_t>(i)];
    }
    out.push_back(matvec(m.classifier(), norm(x, m.rms_final)));
  }
  return out;
}

llama2c_config cfg(int dim, int hidden, int layers, int heads, int kv, int vocab, int seq, bool shared) {
  return llama2c_config{dim, hidden, layers, heads, kv, vocab, seq, shared};
}

std::vector<int> pseudo_tokens(int n, int vocab, unsigned seed) {
  std::vector<int> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = static_cast<int>((seed = seed * 1664525u + 1013904223u) >> 8) % vocab;
  return t;
}

std::vector<std::vector<float>> run_sequential(decoder& d, const std::vector<int>& tokens) {
  std::vector<std::vector<float>> out;
  for (std::size_t i = 0; i < tokens.size(); ++i) out.push_back(d.forward(tokens[i], d.length()));
  return out;
}

/// Runs `tokens` through forward_batch in chunks of the given sizes (cycled).
std::vector<std::vector<float>> run_chunked(decoder& d, const std::vector<int>& tokens, const std::vector<int>& sizes) {
  std::vector<std::vector<float>> out;
  std::size_t at = 0, k = 0;
  while (at < tokens.size()) {
    const std::size_t n = std::min<std::size_t>(static_cast<std::size_t>(sizes[k++ % sizes.size()]), tokens.size() - at);
    auto part = d.forward_batch(std::vector<int>(tokens.begin() + static_cast<std::ptrdiff_t>(at),
                                                 tokens.begin() + static_cast<std::ptrdiff_t>(at + n)),
                                static_cast<int>(at));
    for (auto& p : part) out.push_back(std::move(p));
    at += n;
  }
  return out;
}

bool same_cache(const decoder& a, const decoder& b) {
  const auto& x = a.cache();
  const auto& y = b.cache();
  if (x.length() != y.length()) return false;
  for (int l = 0; l < x.layers(); ++l)
    for (int h = 0; h < x.kv_heads(); ++h) {
      const auto n = static_cast<std::size_t>(x.length() * x.head_dim()) * sizeof(float);
      if (std::memcmp(x.key(l, h, 0), y.key(l, h, 0), n) || std::memcmp(x.value(l, h, 0), y.value(l, h, 0), n)) return false;
    }
  return true;
}

}  // namespace

TEST_CASE("decoder kernels") {
  SUBCASE("rmsnorm") {
    const float x[2] = {3.0f, 4.0f}, w[2] = {1.0f, 2.0f};
    float o[2];
    rmsnorm(o, x, w, 2, 0.0f);
    const float s = 1.0f / std::sqrt(12.5f);
    CHECK(o[0] == doctest::Approx(3.0f * s));
    CHECK(o[1] == doctest::Approx(8.0f * s));
    float z[1] = {0.0f};
    const float one[1] = {1.0f};
    rmsnorm(z, z, one, 1, 1e-5f);
    CHECK(z[0] == 0.0f);
  }
  SUBCASE("rope") {
    float c[2], s[2];
    rope_angles(c, s, 0, 4, 10000.0f);
    CHECK(c[0] == 1.0f);
    CHECK(s[1] == 0.0f);
    rope_angles(c, s, 3, 4, 10000.0f);
    CHECK(c[0] == doctest::Approx(std::cos(3.0)));
    CHECK(s[1] == doctest::Approx(std::sin(3.0 / 100.0)));
    float v[8] = {1, 0, 0, 1, 2, 0, 1, 1};  // two heads of 4
    rope_rotate(v, 2, 4, c, s);
    CHECK(v[0] == doctest::Approx(std::cos(3.0)));
    CHECK(v[1] == doctest::Approx(std::sin(3.0)));
    CHECK(v[2] == doctest::Approx(-std::sin(0.03)));
    CHECK(v[3] == doctest::Approx(std::cos(0.03)));
    CHECK(v[4] == doctest::Approx(2 * std::cos(3.0)));
    CHECK(v[6] * v[6] + v[7] * v[7] == doctest::Approx(2.0));
  }
  SUBCASE("swiglu") {
    float a[3] = {0.0f, 1.0f, -2.0f};
    const float b[3] = {5.0f, 2.0f, 1.0f};
    swiglu(a, b, 3);
    CHECK(a[0] == 0.0f);
    CHECK(a[1] == doctest::Approx(2.0 / (1.0 + std::exp(-1.0))));
    CHECK(a[2] == doctest::Approx(-2.0 / (1.0 + std::exp(2.0))));
  }
  SUBCASE("attend_head with masks") {
    const float q[2] = {1.0f, 0.0f};
    const float k[6] = {1, 0, 0, 1, -1, 0};
    const float v[6] = {10, 20, 30, 40, 50, 60};
    float att[3], out[2];
    const std::uint8_t all[3] = {1, 1, 1}, one[3] = {0, 1, 0}, none[3] = {0, 0, 0};
    attend_head(q, k, v, one, 3, 2, att, out);
    CHECK(out[0] == 30.0f);
    CHECK(out[1] == 40.0f);
    attend_head(q, k, v, all, 1, 2, att, out);
    CHECK(out[0] == 10.0f);
    CHECK(out[1] == 20.0f);
    attend_head(q, k, v, none, 3, 2, att, out);
    CHECK(out[0] == 0.0f);
    CHECK(out[1] == 0.0f);
    attend_head(q, k, v, all, 3, 2, att, out);
    const double s = std::sqrt(2.0), e0 = std::exp(1 / s), e1 = 1.0, e2 = std::exp(-1 / s), z = e0 + e1 + e2;
    CHECK(out[0] == doctest::Approx((10 * e0 + 30 * e1 + 50 * e2) / z));
    CHECK(out[1] == doctest::Approx((20 * e0 + 40 * e1 + 60 * e2) / z));
  }
}

TEST_CASE("decoder: synthetic models match a naive double-precision reference") {
  const llama2c_config configs[] = {
      cfg(6, 5, 2, 3, 1, 7, 9, false),     // odd hidden and vocab, head_dim 2, 3 query heads per kv head
      cfg(8, 12, 3, 4, 2, 11, 17, true),   // GQA 2:1, shared classifier
      cfg(12, 7, 1, 2, 2, 5, 6, false),    // no GQA, head_dim 6
      cfg(2, 1, 1, 1, 1, 3, 4, true),      // minimal
  };
  for (const auto& c : configs) {
    CAPTURE(c.dim);
    auto m = std::make_shared<const llama2c_model>(random_llama2c(c, 1234u + static_cast<unsigned>(c.dim)));
    const auto tokens = pseudo_tokens(c.seq_len, c.vocab_size, 99u);
    const auto ref = naive_logits(*m, tokens);
    decoder d(m);
    const auto got = run_sequential(d, tokens);
    double worst = 0;
    for (std::size_t p = 0; p < tokens.size(); ++p)
      for (std::size_t i = 0; i < ref[p].size(); ++i) worst = std::max(worst, std::abs(ref[p][i] - double(got[p][i])));
    CHECK(worst < 1e-4);
    CHECK(d.length() == c.seq_len);
    // Full context: one more position is a usage error.
    CHECK_THROWS_AS(d.forward(0, c.seq_len), kvcodec::error);

    decoder b(m);
    const auto batched = run_chunked(b, tokens, {3, 1, 2});
    for (std::size_t p = 0; p < tokens.size(); ++p) CHECK(bit_equal(batched[p], got[p]));
    CHECK(same_cache(b, d));
    decoder whole(m);
    const auto all = whole.forward_batch(tokens, 0);
    for (std::size_t p = 0; p < tokens.size(); ++p) CHECK(bit_equal(all[p], got[p]));
  }
}

TEST_CASE("decoder: argument checks / rollback and row copies") {
  auto m = std::make_shared<const llama2c_model>(random_llama2c(cfg(8, 12, 2, 4, 2, 11, 32, false), 5));
  const auto tokens = pseudo_tokens(32, 11, 7);
  decoder d(m, {.record_queries = true});
  using kvcodec::error_kind;
  const auto kind_of = [](auto&& f) {
    try {
      f();
    } catch (const kvcodec::error& e) {
      return static_cast<int>(e.kind());
    }
    return -1;
  };
  CHECK(kind_of([&] { d.forward(0, 1); }) == static_cast<int>(error_kind::usage));    // gap
  CHECK(kind_of([&] { d.forward(11, 0); }) == static_cast<int>(error_kind::bad_input));  // token id
  CHECK(kind_of([&] { d.forward(-1, 0); }) == static_cast<int>(error_kind::bad_input));
  CHECK(kind_of([&] { d.forward(0, -1); }) == static_cast<int>(error_kind::usage));
  CHECK(kind_of([&] { d.forward_batch(std::vector<int>(33, 0), 0); }) == static_cast<int>(error_kind::usage));
  CHECK(d.length() == 0);
  CHECK(d.forward_batch({}, 0).empty());
  CHECK(kind_of([&] { d.truncate(1); }) == static_cast<int>(error_kind::usage));
  CHECK(kind_of([&] { d.export_cache(); }) == static_cast<int>(error_kind::usage));

  const auto ref = run_sequential(d, tokens);  // 32 positions

  // Rollback: keep 10, redo 10..19 with other tokens, then roll back and redo the originals.
  d.truncate(10);
  const auto snap = d.snapshot();
  CHECK(snap.length() == 10);
  const auto other = pseudo_tokens(10, 11, 8);
  const auto alt = d.forward_batch(other, 10);
  CHECK(!bit_equal(alt[9], ref[19]));
  d.restore(snap);
  CHECK(d.length() == 10);
  const auto redo = d.forward_batch(std::vector<int>(tokens.begin() + 10, tokens.begin() + 20), 10);
  for (int i = 0; i < 10; ++i) CHECK(bit_equal(redo[static_cast<std::size_t>(i)], ref[static_cast<std::size_t>(10 + i)]));
  d.truncate(0);
  CHECK(bit_equal(d.forward(tokens[0], 0), ref[0]));

  // Row copies: a drafter at length 12 takes rows [12, 25) from a verifier that ran 25 positions.
  decoder verifier(m), drafter(m);
  run_sequential(verifier, std::vector<int>(tokens.begin(), tokens.begin() + 25));
  run_sequential(drafter, std::vector<int>(tokens.begin(), tokens.begin() + 12));
  CHECK(kind_of([&] { drafter.copy_cache_rows(verifier, 13, 25); }) == static_cast<int>(error_kind::usage));  // gap
  CHECK(kind_of([&] { drafter.copy_cache_rows(verifier, 12, 26); }) == static_cast<int>(error_kind::usage));  // past source
  drafter.copy_cache_rows(verifier, 12, 25);
  CHECK(drafter.length() == 25);
  CHECK(same_cache(drafter, verifier));
  CHECK(drafter.cache().token(24) == tokens[24]);
  CHECK(bit_equal(drafter.forward(tokens[25], 25), ref[25]));
  // Overwriting rows inside the length with different K/V changes the next logits; copying back restores.
  decoder wrong(m);
  run_sequential(wrong, pseudo_tokens(20, 11, 3));
  decoder fixed(m);
  run_sequential(fixed, std::vector<int>(tokens.begin(), tokens.begin() + 20));
  fixed.copy_cache_rows(wrong, 5, 10);
  CHECK(fixed.length() == 20);
  CHECK(!bit_equal(fixed.forward(tokens[20], 20), ref[20]));
  fixed.truncate(20);
  fixed.copy_cache_rows(verifier, 5, 10);
  CHECK(bit_equal(fixed.forward(tokens[20], 20), ref[20]));
  // Shape mismatch.
  decoder small(std::make_shared<const llama2c_model>(random_llama2c(cfg(8, 12, 1, 4, 2, 11, 32, false), 5)));
  CHECK(kind_of([&] { small.copy_cache_rows(verifier, 0, 1); }) == static_cast<int>(error_kind::usage));
  CHECK(kind_of([&] { small.restore(verifier.snapshot()); }) == static_cast<int>(error_kind::usage));

  // Export and reload reproduces the continuation bit for bit; queries are exported when recorded.
  decoder rec(m, {.record_queries = true});
  run_sequential(rec, std::vector<int>(tokens.begin(), tokens.begin() + 16));
  const auto exported = rec.export_cache();
  CHECK(exported.shape.tokens == 16);
  CHECK(exported.shape.q_heads == 4);
  CHECK(exported.is_dense());
  CHECK(exported.tokens == std::vector<std::int32_t>(tokens.begin(), tokens.begin() + 16));
  exported.validate("exported");
  decoder loaded(m, {.record_queries = true});
  loaded.load_cache(exported);
  CHECK(loaded.length() == 16);
  CHECK(std::memcmp(loaded.cache().query(1, 3, 15), rec.cache().query(1, 3, 15), 8 * sizeof(float)) == 0);
  CHECK(bit_equal(loaded.forward(tokens[16], 16), ref[16]));
  decoder part(m);
  part.load_cache(exported, 0);
  CHECK(part.length() == 0);
  CHECK(bit_equal(part.forward(tokens[0], 0), ref[0]));
  // Load validation.
  auto bad = exported;
  bad.positions[3] = 7;
  CHECK(kind_of([&] { part.load_cache(bad); }) == static_cast<int>(error_kind::bad_input));
  CHECK(kind_of([&] { small.load_cache(exported); }) == static_cast<int>(error_kind::bad_input));
  CHECK(kind_of([&] { part.load_cache(exported, 17); }) == static_cast<int>(error_kind::bad_input));
  bad = exported;
  bad.keys[0].pop_back();
  CHECK(kind_of([&] { part.load_cache(bad); }) == static_cast<int>(error_kind::bad_input));
}

TEST_CASE("decoder: kept-set masking") {
  auto m = std::make_shared<const llama2c_model>(random_llama2c(cfg(8, 12, 2, 4, 2, 11, 40, true), 17));
  const auto tokens = pseudo_tokens(30, 11, 21);
  decoder full(m);
  const auto ref = run_sequential(full, tokens);
  full.truncate(20);
  const auto base = full.export_cache();

  // Every token kept (explicit sets) == dense, bit for bit.
  auto all = base;
  all.kept.assign(2, std::vector<std::vector<std::int32_t>>(2));
  for (auto& l : all.kept)
    for (auto& h : l)
      for (int t = 0; t < 20; ++t) h.push_back(t);
  decoder a(m);
  a.load_cache(all);
  for (int p = 20; p < 30; ++p) CHECK(bit_equal(a.forward(tokens[static_cast<std::size_t>(p)], p), ref[static_cast<std::size_t>(p)]));

  // Drop tokens 3..8 in layer 1, kv head 0 only: logits change; the dropped rows' contents are ignored.
  auto drop = all;
  auto& ks = drop.kept[1][0];
  ks.erase(std::remove_if(ks.begin(), ks.end(), [](int t) { return t >= 3 && t < 9; }), ks.end());
  decoder b(m);
  b.load_cache(drop);
  CHECK(b.cache().keep(1, 0)[3] == 0);
  CHECK(b.cache().keep(1, 1)[3] == 1);
  CHECK(b.cache().keep(0, 0)[3] == 1);
  const auto dropped = b.forward(tokens[20], 20);
  CHECK(!bit_equal(dropped, ref[20]));
  CHECK(max_abs_diff(dropped, ref[20]) > 1e-4f);
  auto garbage = drop;
  for (int t = 3; t < 9; ++t)  // kv head 0 of layer 1: rows t of head_dim 2 at the start of the layer
    for (int i = 0; i < 2; ++i) {
      garbage.keys[1][static_cast<std::size_t>(t * 2 + i)] = 1e6f;
      garbage.values[1][static_cast<std::size_t>(t * 2 + i)] = -1e6f;
    }
  decoder g(m);
  g.load_cache(garbage);
  CHECK(bit_equal(g.forward(tokens[20], 20), dropped));
  // The masks survive export (kept sets come back) and new positions are attended.
  const auto re = b.export_cache();
  REQUIRE(!re.is_dense());
  CHECK(re.kept[1][0].size() == 21 - 6);
  CHECK(re.kept[1][0].back() == 20);
  CHECK(re.kept[0][1].size() == 21);
  // Only the current token kept everywhere: attention output is that token's V at every layer.
  auto only = base;
  only.kept.assign(2, std::vector<std::vector<std::int32_t>>(2));
  decoder o(m), fresh(m);
  o.load_cache(only, 20);
  const auto lo = o.forward(tokens[20], 20);
  const auto lf = fresh.forward(tokens[20], 0);
  CHECK(bit_equal(lo, lf));  // one kept row: its weight is 1 whatever q.k is, and V has no RoPE
  decoder o2(m);
  only.keys[0].assign(only.keys[0].size(), 3.0f);
  o2.load_cache(only, 20);
  CHECK(bit_equal(o2.forward(tokens[20], 20), lo));
}

TEST_CASE("decoder: real stories260K golden output") {
  const auto golden_path = kvcodec::test::shared_file("models/stories260K/golden.json");
  auto m = real_model();
  KVCODEC_REQUIRE_SHARED(golden_path && m);
  std::ifstream gf(*golden_path);
  const auto golden = nlohmann::json::parse(gf);
  const auto want = golden.at("greedy_tokens").get<std::vector<int>>();
  const auto want_logits = golden.at("logits_first_3_steps").get<std::vector<std::vector<float>>>();
  REQUIRE(golden.at("prompt_tokens").get<std::vector<int>>() == std::vector<int>{1});
  REQUIRE(want.size() == 200);

  decoder d(m);
  std::vector<int> got;
  float worst = 0;
  int tok = 1;
  const auto t0 = std::chrono::steady_clock::now();
  for (int step = 0; step < 200; ++step) {
    const auto lg = d.forward(tok, step);
    if (step < 3) worst = std::max(worst, max_abs_diff(lg, want_logits[static_cast<std::size_t>(step)]));
    tok = static_cast<int>(std::max_element(lg.begin(), lg.end()) - lg.begin());
    got.push_back(tok);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(got == want);
  CHECK(worst < 1e-4f);
  MESSAGE("golden: 200 greedy tokens match; max |logit diff| over the first 3 steps = ", worst);

  // Speed: 512 positions one at a time, and as one batch.
  decoder s(m);
  const auto tokens = pseudo_tokens(512, 512, 4);
  const auto t1 = std::chrono::steady_clock::now();
  const auto seq = run_sequential(s, tokens);
  const double s1 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  decoder bt(m);
  const auto t2 = std::chrono::steady_clock::now();
  const auto bat = bt.forward_batch(tokens, 0);
  const double s2 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t2).count();
  MESSAGE("speed: greedy 200 steps ", 200 / secs, " tok/s; 512 positions sequential ", 512 / s1,
          " tok/s; one 512-token batch ", 512 / s2, " tok/s");
  for (std::size_t p = 0; p < tokens.size(); ++p) CHECK(bit_equal(seq[p], bat[p]));
  CHECK(same_cache(s, bt));
}

TEST_CASE("decoder: real KV dumps are reproduced / preloading continues correctly") {
  auto m = real_model();
  KVCODEC_REQUIRE_SHARED(m);
  for (int seed = 0; seed < 3; ++seed) {
    CAPTURE(seed);
    const kvcodec::kv_cache* dump = kvcodec::test::shared_dump("stories260K-s" + std::to_string(seed) + ".safetensors");
    REQUIRE(dump != nullptr);
    const kvcodec::kv_cache& cache = *dump;
    REQUIRE(cache.shape.layers == 5);
    REQUIRE(cache.has_queries());
    REQUIRE(cache.shape.tokens == 512);
    const std::vector<int> tokens(cache.tokens.begin(), cache.tokens.end());

    decoder d(m, {.record_queries = true});
    const auto ref = run_chunked(d, tokens, {1, 7, 64, 3});
    const auto mine = d.export_cache();
    float dk = 0, dv = 0, dq = 0;
    for (int l = 0; l < 5; ++l) {
      dk = std::max(dk, max_abs_diff(mine.keys[static_cast<std::size_t>(l)], cache.keys[static_cast<std::size_t>(l)]));
      dv = std::max(dv, max_abs_diff(mine.values[static_cast<std::size_t>(l)], cache.values[static_cast<std::size_t>(l)]));
      dq = std::max(dq, max_abs_diff(mine.queries[static_cast<std::size_t>(l)], cache.queries[static_cast<std::size_t>(l)]));
    }
    MESSAGE("dump s", seed, ": max |diff| K ", dk, ", V ", dv, ", Q ", dq);
    CHECK(dk < 1e-4f);
    CHECK(dv < 1e-4f);
    CHECK(dq < 1e-4f);

    // Preload the dump's first C positions and continue: same logits as from scratch.
    for (int C : {1, 100, 300}) {
      CAPTURE(C);
      decoder p(m);
      p.load_cache(cache, C);
      CHECK(p.length() == C);
      CHECK(p.cache().token(C - 1) == tokens[static_cast<std::size_t>(C - 1)]);
      const auto cont = p.forward_batch(std::vector<int>(tokens.begin() + C, tokens.begin() + C + 50), C);
      float worst = 0;
      for (int i = 0; i < 50; ++i)
        worst = std::max(worst, max_abs_diff(cont[static_cast<std::size_t>(i)], ref[static_cast<std::size_t>(C + i)]));
      MESSAGE("dump s", seed, " preload C=", C, ": max |logit diff| vs scratch over 50 positions ", worst);
      CHECK(worst < 1e-3f);
    }
    // Dropping a third of the context (every third token, all layers and heads) changes the logits.
    auto sparse = cache;
    sparse.kept.assign(5, std::vector<std::vector<std::int32_t>>(4));
    for (auto& l : sparse.kept)
      for (auto& h : l)
        for (int t = 0; t < 512; ++t)
          if (t % 3 != 1) h.push_back(t);
    decoder sp(m);
    sp.load_cache(sparse, 400);
    const auto lg = sp.forward(tokens[400], 400);
    const float change = max_abs_diff(lg, ref[400]);
    MESSAGE("dump s", seed, ": dropping every third token changes logits at 400 by up to ", change);
    CHECK(change > 1e-2f);
  }
}

}  // namespace kvcodec_test_model_decoder
