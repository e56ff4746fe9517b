// kvcodec/core/klt.hpp — the math of `klt` (stage/klt.hpp): a per-(layer, kv head) linear transform
// of K and V rows that whitens the distortion metric the model applies to them and then decorrelates
// the rows (a Karhunen-Loeve transform), so that one uniform step per coefficient is near the
// rate-distortion optimum (reverse water-filling: components below the step cost ~0 bits).
//
// With S the symmetric square root of the metric (keys: the pre-RoPE queries' covariance averaged over
// the RoPE rotation of every causal query-key lag, eval/calibrate.hpp's add_lag_metric; values: (W_o,h^T W_o,h)^(1/2), the output projection columns of the
// query heads that read kv head h, scaled to trace D) and C the covariance of the rows, the
// eigenvectors U of S C S (descending eigenvalues) give forward = S U (y = x forward) and
// inverse = U^T S^-1 (x = y inverse). Rows are row vectors; matrices are D x D row-major f32.
#pragma once

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace kvcodec {

/// y = x M for one row (x, y: D values; M: D x D row-major). The sum runs over j in order, the same
/// float operations wherever it is called (encode and both decode paths).
inline void klt_row(const float* x, const float* M, std::size_t D, float* y) {
  for (std::size_t d = 0; d < D; ++d) y[d] = 0.0f;
  for (std::size_t j = 0; j < D; ++j) {
    const float xj = x[j];
    const float* m = M + j * D;
    for (std::size_t d = 0; d < D; ++d) y[d] += xj * m[d];
  }
}

/// Symmetric square root (and its inverse) of a symmetric positive semi-definite D x D matrix,
/// eigenvalues floored at 1e-9 of the largest; with lo > 0, kept within [lo, hi] x their geometric mean.
inline void klt_sqrtm(const std::vector<double>& M, std::size_t D, std::vector<double>& root, std::vector<double>& inv_root, double lo = 0,
                      double hi = 0) {
  const Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> m(M.data(), static_cast<Eigen::Index>(D),
                                                                                                      static_cast<Eigen::Index>(D));
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(0.5 * (m + m.transpose()));
  Eigen::VectorXd ev = es.eigenvalues();
  const double floor = std::max(ev.maxCoeff(), 1e-300) * 1e-9;
  for (Eigen::Index i = 0; i < ev.size(); ++i) ev[i] = std::max(ev[i], floor);
  if (lo > 0) {
    const double gm = std::exp(ev.array().log().mean());
    for (Eigen::Index i = 0; i < ev.size(); ++i) ev[i] = std::clamp(ev[i], lo * gm, hi * gm);
  }
  const Eigen::MatrixXd Q = es.eigenvectors();
  const Eigen::MatrixXd r = Q * ev.cwiseSqrt().asDiagonal() * Q.transpose();
  const Eigen::MatrixXd ri = Q * ev.cwiseSqrt().cwiseInverse().asDiagonal() * Q.transpose();
  root.resize(D * D);
  inv_root.resize(D * D);
  for (std::size_t i = 0; i < D; ++i)
    for (std::size_t j = 0; j < D; ++j) {
      root[i * D + j] = r(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j));
      inv_root[i * D + j] = ri(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j));
    }
}

/// forward = S U and inverse = U^T S_inv from the row covariance C (D x D) and the metric root S and
/// its inverse (all row-major double); U = eigenvectors of S C S by descending eigenvalue.
inline void klt_from_covariance(const std::vector<double>& C, const std::vector<double>& S, const std::vector<double>& S_inv, std::size_t D,
                                float* forward, float* inverse) {
  using mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const auto Di = static_cast<Eigen::Index>(D);
  const Eigen::Map<const mat> c(C.data(), Di, Di), s(S.data(), Di, Di), si(S_inv.data(), Di, Di);
  const Eigen::MatrixXd w = s * c * s;
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(0.5 * (w + w.transpose()));
  const Eigen::MatrixXd U = es.eigenvectors().rowwise().reverse();  // descending eigenvalues
  const Eigen::MatrixXd f = s * U, inv = U.transpose() * si;
  for (Eigen::Index i = 0; i < Di; ++i)
    for (Eigen::Index j = 0; j < Di; ++j) {
      forward[i * Di + j] = static_cast<float>(f(i, j));
      inverse[i * Di + j] = static_cast<float>(inv(i, j));
    }
}

}  // namespace kvcodec
