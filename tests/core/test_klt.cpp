// Tests of the math of `klt` (core/klt.hpp): the row product, the metric root and the
// metric-weighted KLT (forward x inverse = I; the transformed rows are decorrelated, largest first).
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kvcodec/core/klt.hpp"

namespace kvcodec_test_core_klt {

using namespace kvcodec;

namespace {
std::vector<double> matmul(const std::vector<double>& a, const std::vector<double>& b, std::size_t D) {
  std::vector<double> c(D * D, 0.0);
  for (std::size_t i = 0; i < D; ++i)
    for (std::size_t k = 0; k < D; ++k)
      for (std::size_t j = 0; j < D; ++j) c[i * D + j] += a[i * D + k] * b[k * D + j];
  return c;
}
/// A random SPD covariance with a spread of eigenvalues (rows from a random mixing matrix).
std::vector<double> random_cov(std::size_t D, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> n(0.0, 1.0);
  std::vector<double> A(D * D), C(D * D, 0.0);
  for (std::size_t i = 0; i < D; ++i)
    for (std::size_t j = 0; j < D; ++j) A[i * D + j] = n(rng) * std::pow(0.7, static_cast<double>(j));
  for (std::size_t i = 0; i < D; ++i)
    for (std::size_t j = 0; j < D; ++j)
      for (std::size_t k = 0; k < D; ++k) C[i * D + j] += A[i * D + k] * A[j * D + k];
  return C;
}
}  // namespace

TEST_CASE("klt_row is the row-vector product x M") {
  const std::size_t D = 4;
  const float x[D] = {1, -2, 0.5f, 3};
  std::vector<float> M(D * D);
  for (std::size_t i = 0; i < D * D; ++i) M[i] = static_cast<float>(i) * 0.25f - 1.0f;
  float y[D];
  klt_row(x, M.data(), D, y);
  for (std::size_t d = 0; d < D; ++d) {
    double want = 0;
    for (std::size_t j = 0; j < D; ++j) want += static_cast<double>(x[j]) * M[j * D + d];
    CHECK(y[d] == doctest::Approx(want).epsilon(1e-6));
  }
}

TEST_CASE("klt_sqrtm: root x root = M and root x inverse root = I") {
  const std::size_t D = 8;
  const std::vector<double> C = random_cov(D, 3);
  std::vector<double> r, ri;
  klt_sqrtm(C, D, r, ri);
  const auto rr = matmul(r, r, D), id = matmul(r, ri, D);
  for (std::size_t i = 0; i < D * D; ++i) {
    CHECK(rr[i] == doctest::Approx(C[i]).epsilon(1e-8).scale(1.0));
    CHECK(id[i] == doctest::Approx(i % (D + 1) == 0 ? 1.0 : 0.0).epsilon(1e-8).scale(1.0));
  }
}

TEST_CASE("klt_from_covariance: inverse undoes forward - and the weighted rows come out decorrelated - largest variance first") {
  const std::size_t D = 16;
  const std::vector<double> C = random_cov(D, 7);
  std::vector<double> S(D * D, 0.0), Si(D * D, 0.0);
  for (std::size_t i = 0; i < D; ++i) {
    S[i * D + i] = 0.5 + 0.1 * static_cast<double>(i);  // a diagonal metric, as for keys
    Si[i * D + i] = 1.0 / S[i * D + i];
  }
  std::vector<float> F(D * D), Fi(D * D);
  klt_from_covariance(C, S, Si, D, F.data(), Fi.data());
  std::vector<double> f(F.begin(), F.end()), fi(Fi.begin(), Fi.end());
  const auto id = matmul(f, fi, D);
  for (std::size_t i = 0; i < D * D; ++i) CHECK(id[i] == doctest::Approx(i % (D + 1) == 0 ? 1.0 : 0.0).epsilon(1e-5).scale(1.0));
  // covariance of y = x F is F^T C F: diagonal, descending
  std::vector<double> ft(D * D);
  for (std::size_t i = 0; i < D; ++i)
    for (std::size_t j = 0; j < D; ++j) ft[i * D + j] = f[j * D + i];
  const auto cy = matmul(matmul(ft, C, D), f, D);
  double off = 0, on = 0;
  for (std::size_t i = 0; i < D; ++i)
    for (std::size_t j = 0; j < D; ++j) (i == j ? on : off) += std::fabs(cy[i * D + j]);
  CHECK(off < 1e-5 * on);
  for (std::size_t i = 1; i < D; ++i) CHECK(cy[i * D + i] <= cy[(i - 1) * D + (i - 1)] * (1 + 1e-6));
}

}  // namespace kvcodec_test_core_klt
