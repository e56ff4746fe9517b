// kvcodec/cpu/drop/window_attention.hpp — the attention a window of queries pays each key, summed
// over a GQA group: the score of h2o, snapkv and pyramidkv.
//
// Q K^T is computed over blocks of at most 256 stacked query rows, so memory is O(256 x tokens) per
// layer, never O(tokens^2): with AVX2 by the 6 x 16 FMA register tile of cpu/x86/drop.hpp over keys
// packed once per head, otherwise by an Eigen f32 GEMM; each row's softmax is exact on the block.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "kvcodec/core/simd.hpp"
#include "kvcodec/cpu/x86/drop.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::cpu::drop_detail {

/// Scratch of the window-attention GEMM: stacked queries, a block of scores, column sums, packed keys.
struct attn_scratch {
  std::vector<float> q, s, col, kp;
};

/// acc[j] += sum over the query heads of kv head g and the queries i in [qb, qe) of
/// softmax_j(q_i . k_j / sqrt(d)) over j <= i. Q K^T is computed over blocks of at most 256 stacked
/// query rows (so the score block is at most 256 x qe floats): with AVX2 by a 6 x 16 FMA register
/// tile over keys packed once per head into 16-key panels (O(qe x d) floats), otherwise by an Eigen
/// f32 GEMM. Each row's softmax is exact on the block (max, exp, sum). A row with a NaN or an
/// infinite maximum adds nothing.
inline void attention_colsum(const kv_cache& kv, int l, int g, std::int64_t qb, std::int64_t qe, double* acc, attn_scratch& sc) {
  using rmat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using arr = Eigen::Array<float, Eigen::Dynamic, 1>;
  const std::int64_t T = kv.shape.tokens, D = kv.shape.head_dim;
  const int group = kv.shape.q_heads / kv.shape.kv_heads;
  const float* K = kv.keys[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(g) * static_cast<std::size_t>(T * D);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  const std::int64_t R = std::max<std::int64_t>(1, 256 / group);
#if KVCODEC_X86_DISPATCH
  const bool fast = simd::avx2();
  if (fast) pack_keys16(K, qe, static_cast<std::size_t>(D), sc.kp);
#else
  const bool fast = false;
#endif
  for (std::int64_t r0 = qb; r0 < qe; r0 += R) {
    const std::int64_t rows = std::min(R, qe - r0), kmax = r0 + rows, M = group * rows;
    const std::int64_t ld = fast ? (kmax + 15) / 16 * 16 : kmax;
    sc.q.resize(static_cast<std::size_t>(M * D));
    for (int h = 0; h < group; ++h) {
      const float* Q = kv.queries[static_cast<std::size_t>(l)].data() +
                       static_cast<std::size_t>(g * group + h) * static_cast<std::size_t>(T * D) + static_cast<std::size_t>(r0 * D);
      std::copy_n(Q, static_cast<std::size_t>(rows * D), sc.q.data() + static_cast<std::size_t>(h * rows * D));
    }
    sc.s.resize(static_cast<std::size_t>(M * ld));
    sc.col.assign(static_cast<std::size_t>(kmax), 0.0f);
#if KVCODEC_X86_DISPATCH
    if (fast) qk_block_avx2(sc.q.data(), M, rows, r0, static_cast<std::size_t>(D), sc.kp.data(), sc.s.data(), static_cast<std::size_t>(ld));
#endif
    if (!fast) {
      Eigen::Map<rmat> S(sc.s.data(), M, kmax);
      S.noalias() = Eigen::Map<const rmat>(sc.q.data(), M, D) * Eigen::Map<const rmat>(K, kmax, D).transpose();
    }
    for (std::int64_t r = 0; r < M; ++r) {
      const std::int64_t lim = r0 + r % rows + 1;
#if KVCODEC_X86_DISPATCH
      if (fast) {
        softmax_col_avx2(sc.s.data() + static_cast<std::size_t>(r * ld), lim, scale, sc.col.data());
        continue;
      }
#endif
      Eigen::Map<arr> row(sc.s.data() + static_cast<std::size_t>(r * ld), lim);
      const float m = row.maxCoeff();
      row = ((row - m) * scale).exp();
      const float z = row.sum();
      if (!std::isfinite(z) || !(z > 0.0f)) continue;
      Eigen::Map<arr>(sc.col.data(), lim) += row * (1.0f / z);
    }
    for (std::int64_t j = 0; j < kmax; ++j) acc[j] += static_cast<double>(sc.col[static_cast<std::size_t>(j)]);
  }
}

}  // namespace kvcodec::cpu::drop_detail
