// tests/support/window_cases.hpp — the window scorers' cases (snapkv, pyramidkv, h2o, tova) and the
// check of a GPU kept set against the CPU's, shared by tests/core/test_window_attention.cpp (the host
// emulation) and tests/cuda/test_cuda.cu (the kernels): a token only one side keeps must have a CPU
// score within a relative 1e-4 of the CPU's weakest kept score (a near-tie the two summation orders
// may break either way); protected tokens must be kept alike.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <string>
#include <vector>

#include "kvcodec/core/half.hpp"
#include "kvcodec/core/window_attention.hpp"
#include "kvcodec/cpu/drop/h2o.hpp"
#include "kvcodec/cpu/drop/pyramidkv.hpp"
#include "kvcodec/cpu/drop/snapkv.hpp"
#include "kvcodec/cpu/drop/tova.hpp"
#include "kvcodec/stage/drop_attention.hpp"
#include "typed_layers.hpp"

namespace kvcodec::test {


/// A source over [head][token][dim] buffers of T tokens; paged: blocks of 16 tokens, physical block i = i.
inline drop_source source_of(const typed& t, std::int64_t T, int D, std::uint32_t code, bool paged, const std::vector<std::int32_t>& table) {
  drop_source s;
  s.k = t.ptr.data();
  s.head_dim = D;
  s.dtype_code = code;
  s.layout.s_head = T * D;
  s.layout.s_token = D;
  if (paged) {
    s.layout.block_size = 16;
    s.layout.s_block = 16 * static_cast<std::int64_t>(D);
    s.layout.block_table = table.data();
  }
  return s;
}

struct method_case {
  std::string name;
  drop::config cfg;
  wattn_score kind;
  bool pyramid = false;
};

/// The CPU's scores of layer l (s[h * n + j]) and kept sets, by the method's scorer.
template <class Scorer>
inline std::vector<double> cpu_scores(const kv_cache& kv, const drop::config& c, std::int64_t n, int l, std::int64_t b) {
  const Scorer sc(kv, c, n);
  cpu::drop_detail::layer_scores ls;
  ls.s.assign(static_cast<std::size_t>(kv.shape.kv_heads) * static_cast<std::size_t>(n), 0.0);
  sc(l, b, ls);
  return ls.s;
}

inline std::vector<double> scores_of(const method_case& m, const kv_cache& kv, std::int64_t n, int l, std::int64_t b) {
  using namespace cpu::drop_detail;
  switch (m.kind) {
    case wattn_score::h2o: return cpu_scores<h2o_scorer>(kv, m.cfg, n, l, b);
    case wattn_score::tova: return cpu_scores<tova_scorer>(kv, m.cfg, n, l, b);
    default: return cpu_scores<snapkv_scorer>(kv, m.cfg, n, l, b);
  }
}

inline kept_sets cpu_kept(const method_case& m, const kv_cache& kv) {
  switch (m.kind) {
    case wattn_score::h2o: return cpu::select_h2o(kv, m.cfg, 1);
    case wattn_score::tova: return cpu::select_tova(kv, m.cfg, 1);
    default: return m.pyramid ? cpu::select_pyramidkv(kv, m.cfg, 1) : cpu::select_snapkv(kv, m.cfg, 1);
  }
}

/// The emulation's and kernels' parameters of method m over the source s.
inline drop_window_plan window_plan(const method_case& m, drop_window_source s) {
  drop_window_params wp;
  wp.kind = m.kind, wp.b = m.cfg.tokens, wp.window = m.cfg.window, wp.kernel = m.cfg.kernel, wp.recent = m.cfg.recent, wp.pyramid = m.pyramid,
  wp.beta = m.cfg.beta;
  return plan_drop_window(s, wp);
}

/// How `got` (a GPU kept set, drop_window_kept_size(plan) tokens) differs from the CPU's kept sets of
/// method m on kv: the tokens only one side keeps, and the description of the first that is not a
/// near-tie (empty when none).
struct kept_diff {
  std::size_t tokens = 0;
  std::string bad;
};

inline kept_diff window_kept_diff(const method_case& m, const kv_cache& kv, const drop_window_plan& plan, const std::vector<std::int32_t>& got) {
  kept_diff out;
  if (got.size() != drop_window_kept_size(plan)) return out.bad = "kept size " + std::to_string(got.size()), out;
  const kept_sets want = cpu_kept(m, kv);
  const int H = plan.a.heads;
  const std::int64_t n = plan.a.n, pf = plan.coder.protect_from;
  std::size_t first = 0;
  for (int l = 0; l < plan.a.layers; ++l) {
    const std::int64_t bl = plan.budgets[static_cast<std::size_t>(l)];
    const std::vector<double> s = scores_of(m, kv, n, l, bl);
    for (int h = 0; h < H; ++h, first += static_cast<std::size_t>(bl)) {
      const double* sh = s.data() + static_cast<std::size_t>(h) * static_cast<std::size_t>(n);
      const auto& kh = want[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)];
      const std::vector<std::int32_t> cpu_set(kh.begin(), kh.begin() + bl);
      const std::vector<std::int32_t> gpu_set(got.begin() + static_cast<std::ptrdiff_t>(first), got.begin() + static_cast<std::ptrdiff_t>(first) + bl);
      double weakest = HUGE_VAL;
      for (auto t : cpu_set)
        if (t < pf) weakest = std::min(weakest, sh[t]);
      std::vector<std::int32_t> diff;
      std::set_symmetric_difference(cpu_set.begin(), cpu_set.end(), gpu_set.begin(), gpu_set.end(), std::back_inserter(diff));
      out.tokens += diff.size();
      for (auto t : diff)
        if (out.bad.empty() && (t >= pf || !(std::abs(sh[t] - weakest) <= 1e-4 * std::abs(weakest))))
          out.bad = m.name + ": layer " + std::to_string(l) + " head " + std::to_string(h) + " token " + std::to_string(t) + " (score " + std::to_string(sh[t]) +
                    ", weakest kept " + std::to_string(weakest) + ") kept by one side only";
    }
  }
  return out;
}

inline kv_cache rounded(kv_cache kv, std::uint32_t code) {
  for (auto* t : {&kv.keys, &kv.queries})
    for (auto& layer : *t)
      for (auto& x : layer) x = round_to(x, code);
  return kv;
}

inline std::vector<method_case> methods(std::int64_t b, std::int64_t obs_end, std::int64_t window) {
  std::vector<method_case> out;
  drop::snapkv s;
  s.tokens = b, s.obs_end = obs_end, s.window = window, s.kernel = 5;
  out.push_back({"snapkv", s.cfg(), wattn_score::snapkv});
  drop::pyramidkv p;
  p.tokens = b, p.obs_end = obs_end, p.window = window, p.kernel = 3, p.beta = 4.0;
  out.push_back({"pyramidkv", p.cfg(), wattn_score::snapkv, true});
  drop::h2o h;
  h.tokens = b, h.obs_end = obs_end, h.window = window, h.recent = 0.25;
  out.push_back({"h2o", h.cfg(), wattn_score::h2o});
  drop::h2o all = h;
  all.window = 0;
  out.push_back({"h2o window=0", all.cfg(), wattn_score::h2o});
  drop::tova t;
  t.tokens = b, t.obs_end = obs_end;
  out.push_back({"tova", t.cfg(), wattn_score::tova});
  return out;
}

}  // namespace kvcodec::test
