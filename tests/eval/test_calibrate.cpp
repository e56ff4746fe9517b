// Tests of the per-layer calibration of kvw (eval/calibrate.hpp) and of weighted-quant's per-layer
// multipliers (klayer / vlayer).
#include <doctest/doctest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "kvcodec/eval/calibrate.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/kvcodec.hpp"
#include "kvcodec/model/llama2c.hpp"
#include "../support/shared_data.hpp"

namespace kvcodec_test_eval_calibrate {

using namespace kvcodec;

TEST_CASE("calibration multipliers balance the parts' KL per bit") {
  // KL 4x the geometric mean -> half the step; 1/4 -> twice; 0 -> the largest step
  const std::vector<double> m = eval::calibration_multipliers({4.0, 0.25, 1.0, 0.0});
  CHECK(m[0] == doctest::Approx(0.5));
  CHECK(m[1] == doctest::Approx(2.0));
  CHECK(m[2] == doctest::Approx(1.0));
  CHECK(m[3] == doctest::Approx(8.0));
  const std::vector<double> c = eval::calibration_multipliers({1e6, 1e-6});
  CHECK(c[0] == doctest::Approx(0.125));  // clamped
  CHECK(c[1] == doctest::Approx(8.0));
  CHECK(eval::multipliers_text({0.5, 2, 1.25}) == "0.5/2/1.25");
}

TEST_CASE("weighted-quant: per-layer multipliers scale that layer's steps only") {
  eval::synth_options o;
  o.layers = 3;
  o.kv_heads = 2;
  o.q_heads = 4;
  o.head_dim = 16;
  o.tokens = 64;
  const kv_cache c = eval::synth_cache(o);
  const kv_cache flat = decode(encode("weighted-quant:kstep=0.3,vstep=0.3|rans", c).data);
  const kv_cache fine = decode(encode("weighted-quant:kstep=0.3,vstep=0.3,klayer=1/0.25/1,vlayer=1/1/4|rans", c).data);
  const auto err = [&](const kv_cache& d, bool key, int l) {
    double e = 0;
    const auto& a = key ? c.keys[static_cast<std::size_t>(l)] : c.values[static_cast<std::size_t>(l)];
    const auto& b = key ? d.keys[static_cast<std::size_t>(l)] : d.values[static_cast<std::size_t>(l)];
    for (std::size_t i = 0; i < a.size(); ++i) e += (a[i] - b[i]) * (a[i] - b[i]);
    return e;
  };
  CHECK(err(fine, true, 0) == err(flat, true, 0));
  CHECK(err(fine, true, 1) < 0.2 * err(flat, true, 1));  // a quarter of the step: ~1/16 of the error
  CHECK(err(fine, false, 2) > 4 * err(flat, false, 2));  // four times the step
  CHECK(err(fine, false, 0) == err(flat, false, 0));
  // one multiplier per layer or one for all: anything else is a usage error naming the parameter
  CHECK_THROWS_WITH_AS(encode("weighted-quant:klayer=1/2|rans", c), doctest::Contains("'klayer': expected 1 or 3"), error);
  CHECK_THROWS_AS(make_codec("weighted-quant:vlayer=1/0/1|rans"), error);
  CHECK_THROWS_AS(make_codec("kvw:klayer=a/b"), error);
}

TEST_CASE("calibrate on one real dump orders the layers by their cost to the model") {
  const auto model_file = test::shared_file("models/stories260K/stories260K.bin");
  const kv_cache* s1 = test::shared_dump("stories260K-s1.safetensors");
  KVCODEC_REQUIRE_SHARED(model_file && s1);
  const auto m = std::make_shared<const model::llama2c_model>(model::load_llama2c(model_file->string()));
  const eval::calibration cal = eval::calibrate_layers(m, {s1}, 256, 0.25, 1.0);
  REQUIRE(cal.ksens.size() == 5);
  for (std::size_t l = 0; l < 5; ++l) {
    CHECK(cal.ksens[l] > 0);
    CHECK(cal.vsens[l] > 0);
    // the more a part costs the model, the finer its step
    for (std::size_t j = 0; j < 5; ++j)
      if (cal.ksens[l] > cal.ksens[j]) CHECK(cal.kmul[l] <= cal.kmul[j]);
  }
  CHECK(cal.spec.rfind("kvw:kstep=0.25,vstep=1,klayer=", 0) == 0);
  CHECK(make_codec(cal.spec).quant->name() == "weighted-quant");
}

TEST_CASE("kvw calibrated on kvlab-d1 gives kvlab-d0 a lower model KL at the same bits") {
  const auto model_file = test::shared_file("models/kvlab/kvlab.bin");
  const kv_cache* d0 = test::shared_dump("kvlab-d0.safetensors");
  const kv_cache* d1 = test::shared_dump("kvlab-d1.safetensors");
  KVCODEC_REQUIRE_SHARED(model_file && d0 && d1);
  const auto m = std::make_shared<const model::llama2c_model>(model::load_llama2c(model_file->string()));
  const eval::calibration cal = eval::calibrate_layers(m, {d1}, 256);
  // kvlab's first layer costs the model far more than the others (K and V): the finest steps
  for (std::size_t l = 1; l < cal.kmul.size(); ++l) {
    CHECK(cal.ksens[0] > 2 * cal.ksens[l]);
    CHECK(cal.kmul[0] < cal.kmul[l]);
    CHECK(cal.vmul[0] < cal.vmul[l]);
  }
  const eval::model_eval_options o{.context_tokens = 256, .generate_steps = 0};
  const auto flat = eval::evaluate_model(m, *d0, "kvw:kstep=0.2,vstep=0.3", o);
  const auto calibrated = eval::evaluate_model(m, *d0, cal.spec, o);
  MESSAGE("flat " << flat.bits_per_element << " b/e KL " << flat.model.kl << "; calibrated on d1 " << calibrated.bits_per_element << " b/e KL "
                  << calibrated.model.kl);
  CHECK(calibrated.model.kl < 0.9 * flat.model.kl);                     // measured 1.9e-5 vs 2.6e-5
  CHECK(calibrated.bits_per_element < 1.02 * flat.bits_per_element);  // measured 4.14 vs 4.12 (context)
}

TEST_CASE("lag metric: one position is the queries' outer product - lags rotate it - the sum is symmetric") {
  const std::size_t D = 4;
  // two query heads, one position: M = q1 q1^T + q2 q2^T, one pair each
  std::vector<float> q = {1, 2, 0, 0, 0, 0, 3, 1};
  std::vector<double> M(D * D, 0.0);
  CHECK(eval::add_lag_metric(q, 2, 1, D, 10000.0, rope_pairs::interleaved, M) == doctest::Approx(2.0));
  const double want[16] = {1, 2, 0, 0, 2, 4, 0, 0, 0, 0, 9, 3, 0, 0, 3, 1};
  for (std::size_t i = 0; i < D * D; ++i) CHECK(M[i] == doctest::Approx(want[i]));
  // two positions, one head, the query at position 1 only: lags 0 (key 1) and 1 (key 0, the query turned
  // back by one position's RoPE): M = q q^T + R(1) q q^T R(1)^T, pairs added 3
  std::vector<float> q2 = {0, 0, 0, 0, 1, 0, 0, 0};
  std::vector<double> M2(D * D, 0.0);
  CHECK(eval::add_lag_metric(q2, 1, 2, D, 10000.0, rope_pairs::interleaved, M2) == doctest::Approx(3.0));
  const double c = std::cos(1.0), s = std::sin(1.0);  // pair 0 turns by 1 radian per position
  CHECK(M2[0] == doctest::Approx(1 + c * c));
  CHECK(M2[1] == doctest::Approx(c * s));
  CHECK(M2[D + 1] == doctest::Approx(s * s));
  for (std::size_t i = 0; i < D; ++i)
    for (std::size_t j = 0; j < D; ++j) CHECK(M2[i * D + j] == doctest::Approx(M2[j * D + i]));
}

TEST_CASE("klt with a profile fitted on kvlab-d1 and d2 codes kvlab-d0 in fewer bits than kvw at no worse model KL") {
  const auto model_file = test::shared_file("models/kvlab/kvlab.bin");
  const kv_cache* d0 = test::shared_dump("kvlab-d0.safetensors");
  const kv_cache* d1 = test::shared_dump("kvlab-d1.safetensors");
  const kv_cache* d2 = test::shared_dump("kvlab-d2.safetensors");
  KVCODEC_REQUIRE_SHARED(model_file && d0 && d1 && d2);
  const auto m = std::make_shared<const model::llama2c_model>(model::load_llama2c(model_file->string()));
  auto& reg = io::profile_registry::instance();
  reg.clear();
  const io::kv_profile p = eval::build_profile(*m, {d1, d2}, "kvlab-d1,kvlab-d2");
  CHECK(p.model == "kvlab");
  CHECK(p.layers == 4);
  CHECK(p.head_dim == 64);
  // the transforms invert each other
  for (const bool key : {true, false}) {
    const float* F = p.matrix(3, key, 1, true);
    const float* Fi = p.matrix(3, key, 1, false);
    double worst = 0;
    for (int i = 0; i < 64; ++i)
      for (int j = 0; j < 64; ++j) {
        double s = 0;
        for (int k = 0; k < 64; ++k) s += static_cast<double>(F[i * 64 + k]) * Fi[k * 64 + j];
        worst = std::max(worst, std::fabs(s - (i == j ? 1.0 : 0.0)));
      }
    CHECK(worst < 1e-3);
  }
  reg.add(p);
  // the same steps without per-layer multipliers (calibrate_layers with klt is the CLI test's and
  // rd_curve's; sixteen model runs more here would be the slowest entry of the sanitizer suite)
  const eval::model_eval_options o{.context_tokens = 256, .generate_steps = 0};
  const auto kvw = eval::evaluate_model(m, *d0, "kvw:kstep=0.2,vstep=0.3", o);
  const auto klt = eval::evaluate_model(m, *d0, "klt:profile=" + io::profile_hash_text(p.hash) + ",kstep=0.2,vstep=0.3|rans", o);
  MESSAGE("kvw " << kvw.bits_per_element << " b/e KL " << kvw.model.kl << "; klt (profile from d1, d2) " << klt.bits_per_element << " b/e KL "
                 << klt.model.kl);
  CHECK(klt.bits_per_element < 0.8 * kvw.bits_per_element);  // measured 2.92 vs 4.12 b/e (context)
  CHECK(klt.model.kl < kvw.model.kl);                        // measured 1.9e-5 vs 2.6e-5
  reg.clear();
}

}  // namespace kvcodec_test_eval_calibrate
