// kvcodec/eval/metrics.hpp — element-wise fidelity of a reconstructed KV cache against the original.
//
// compare_kv() reports, separately for K and V over every (layer, head, token, channel):
//   rel_fro_error = ||X - X^||_F / ||X||_F      (0 when both are 0, +inf when only X is 0)
//   max_abs_error = max |X - X^|
//   snr_db        = 10 log10(||X||^2 / ||X - X^||^2)   (+inf when exact, -inf when X is 0 and X^ is not)
//   cosine        = mean over (layer, head, token) rows of cos(x, x^); a row that is exactly zero in both
//                   counts 1, a row zero in only one counts 0.
// Rules: a token outside a cache's kept set (token dropping) reads as zeros whatever its buffer holds;
// positions where the ORIGINAL is NaN/Inf are left out of every sum and counted in `nonfinite`; a
// non-finite reconstruction of a finite original counts as an infinite error (its row's cosine is 0).
// All sums are in double; each layer is summed by one thread and layers are combined in order, so the
// result is bit-identical for any thread count. Nothing here follows a paper: these are the standard
// definitions (relative Frobenius error, SNR in dB, mean row cosine) used by KIVI/KVQuant-style studies.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/core/scalar/floats.hpp"
#include "kvcodec/cpu/policy.hpp"
#include "kvcodec/tensor/kept.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::eval {

struct tensor_metrics {
  double rel_fro_error = 0.0;
  double max_abs_error = 0.0;
  double snr_db = std::numeric_limits<double>::infinity();  ///< +inf when exact (print as null in JSON)
  double cosine = 1.0;
  std::int64_t nonfinite = 0;  ///< positions of the original that are NaN/Inf (excluded from the sums)
};

struct kv_metrics {
  tensor_metrics key, value;
};

/// Sums of one row (or many rows) of original x against reconstruction y.
struct row_diff {
  double ref_sq = 0.0;   ///< sum x^2
  double rec_sq = 0.0;   ///< sum y^2
  double dot = 0.0;      ///< sum x*y
  double err_sq = 0.0;   ///< sum (x-y)^2
  double max_abs = 0.0;  ///< max |x-y|
  std::int64_t nonfinite = 0;
  bool rec_nonfinite = false;  ///< y is NaN/Inf where x is finite
};

using kvcodec::detail::is_finite_f32;

/// Compares n elements of x with y; y == nullptr means the reconstruction is all zeros (dropped row).
KVCODEC_HD inline row_diff diff_row(const float* x, const float* y, std::int64_t n) noexcept {
  row_diff r;
  for (std::int64_t i = 0; i < n; ++i) {
    const float xf = x[i];
    if (!is_finite_f32(xf)) {
      ++r.nonfinite;
      continue;
    }
    const double xv = xf;
    const float yf = y ? y[i] : 0.0f;
    if (!is_finite_f32(yf)) {
      r.rec_nonfinite = true;
      r.ref_sq += xv * xv;
      continue;
    }
    const double yv = yf;
    const double e = xv - yv;
    r.ref_sq += xv * xv;
    r.rec_sq += yv * yv;
    r.dot += xv * yv;
    r.err_sq += e * e;
    const double a = e < 0 ? -e : e;
    if (a > r.max_abs) r.max_abs = a;
  }
  if (r.rec_nonfinite) {
    r.err_sq = HUGE_VAL;
    r.max_abs = HUGE_VAL;
  }
  return r;
}

/// Cosine of one row from its sums (1 when both rows are zero, 0 when exactly one is).
KVCODEC_HD inline double row_cosine(const row_diff& r) noexcept {
  if (r.rec_nonfinite) return 0.0;
  if (r.ref_sq == 0.0 && r.rec_sq == 0.0) return 1.0;
  if (r.ref_sq == 0.0 || r.rec_sq == 0.0) return 0.0;
  double c = r.dot / (std::sqrt(r.ref_sq) * std::sqrt(r.rec_sq));
  if (c > 1.0) c = 1.0;
  if (c < -1.0) c = -1.0;
  return c;
}

namespace detail {

/// Runs fn(task) for task in [0, n) on up to `threads` threads (0 = hardware concurrency), through the
/// project's cpu::parallel_for (each task on one thread; the first exception is rethrown).
template <class Fn>
void run_tasks(std::int64_t n, unsigned threads, Fn&& fn) {
  if (n <= 0) return;
  const int nt = threads == 0 ? cpu::par.threads() : static_cast<int>(threads);
  cpu::parallel_for(nt, static_cast<std::size_t>(n), [&](std::size_t i) { fn(static_cast<std::int64_t>(i)); });
}

using kvcodec::kept_mask;  // tensor/kept.hpp: dense 0/1 mask of the tokens a cache keeps for (layer, head)

struct tensor_sums {
  double ref_sq = 0.0, err_sq = 0.0, max_abs = 0.0, cos_sum = 0.0;
  std::int64_t rows = 0, nonfinite = 0;

  void add(const row_diff& r) {
    ref_sq += r.ref_sq;
    err_sq += r.err_sq;
    max_abs = std::max(max_abs, r.max_abs);
    cos_sum += row_cosine(r);
    nonfinite += r.nonfinite;
    ++rows;
  }
  void merge(const tensor_sums& o) {
    ref_sq += o.ref_sq;
    err_sq += o.err_sq;
    max_abs = std::max(max_abs, o.max_abs);
    cos_sum += o.cos_sum;
    rows += o.rows;
    nonfinite += o.nonfinite;
  }
  tensor_metrics finish() const {
    tensor_metrics m;
    const double inf = std::numeric_limits<double>::infinity();
    m.max_abs_error = max_abs;
    m.nonfinite = nonfinite;
    m.cosine = rows > 0 ? cos_sum / static_cast<double>(rows) : 1.0;
    if (err_sq == 0.0) {
      m.rel_fro_error = 0.0;
      m.snr_db = inf;
    } else if (ref_sq == 0.0) {
      m.rel_fro_error = inf;
      m.snr_db = -inf;
    } else {
      m.rel_fro_error = std::sqrt(err_sq) / std::sqrt(ref_sq);
      m.snr_db = 10.0 * std::log10(ref_sq / err_sq);
    }
    return m;
  }
};

}  // namespace detail

/// Fidelity of `b` (reconstruction) against `a` (original). Both must have the same layers, kv_heads,
/// head_dim and tokens (queries are ignored). `threads` = 0 uses the hardware concurrency; small caches
/// run on the calling thread. Throws bad_input on a shape mismatch or an invalid cache.
inline kv_metrics compare_kv(const kv_cache& a, const kv_cache& b, unsigned threads = 0) {
  a.validate("compare_kv original");
  b.validate("compare_kv reconstructed");
  const auto dims = [](const kv_shape& s) {
    return std::to_string(s.layers) + "x" + std::to_string(s.kv_heads) + "x" + std::to_string(s.tokens) + "x" +
           std::to_string(s.head_dim);
  };
  if (a.shape.layers != b.shape.layers || a.shape.kv_heads != b.shape.kv_heads ||
      a.shape.head_dim != b.shape.head_dim || a.shape.tokens != b.shape.tokens)
    throw_bad_input("compare_kv reconstructed", "shape (layers x kv_heads x tokens x head_dim)", dims(a.shape),
                    dims(b.shape));

  const int L = a.shape.layers, H = a.shape.kv_heads;
  const std::int64_t T = a.shape.tokens, D = a.shape.head_dim;
  if (a.shape.layer_elements() < (std::size_t{1} << 18)) threads = 1;

  std::vector<detail::tensor_sums> ks(static_cast<std::size_t>(L)), vs(static_cast<std::size_t>(L));
  detail::run_tasks(L, threads, [&](std::int64_t li) {
    const int l = static_cast<int>(li);
    std::vector<std::uint8_t> ma, mb;
    const float* ak = a.keys[static_cast<std::size_t>(l)].data();
    const float* av = a.values[static_cast<std::size_t>(l)].data();
    const float* bk = b.keys[static_cast<std::size_t>(l)].data();
    const float* bv = b.values[static_cast<std::size_t>(l)].data();
    detail::tensor_sums sk, sv;
    std::vector<float> zeros(static_cast<std::size_t>(D), 0.0f);
    for (int h = 0; h < H; ++h) {
      detail::kept_mask(a, l, h, ma);
      detail::kept_mask(b, l, h, mb);
      for (std::int64_t t = 0; t < T; ++t) {
        const std::size_t off = (static_cast<std::size_t>(h) * static_cast<std::size_t>(T) + static_cast<std::size_t>(t)) *
                                static_cast<std::size_t>(D);
        const bool ka = ma[static_cast<std::size_t>(t)] != 0, kb = mb[static_cast<std::size_t>(t)] != 0;
        sk.add(diff_row(ka ? ak + off : zeros.data(), kb ? bk + off : nullptr, D));
        sv.add(diff_row(ka ? av + off : zeros.data(), kb ? bv + off : nullptr, D));
      }
    }
    ks[static_cast<std::size_t>(l)] = sk;
    vs[static_cast<std::size_t>(l)] = sv;
  });

  detail::tensor_sums k, v;
  for (int l = 0; l < L; ++l) {
    k.merge(ks[static_cast<std::size_t>(l)]);
    v.merge(vs[static_cast<std::size_t>(l)]);
  }
  return kv_metrics{k.finish(), v.finish()};
}

}  // namespace kvcodec::eval
