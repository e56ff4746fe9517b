// kvcodec/cpu/derope.hpp — transform stage `derope` (stage/derope.hpp) on the CPU: keys are rotated
// back to pre-RoPE (core/rope.hpp rope_undo at position block.pos[row]) before quantization and rotated
// again after decoding. Style/theta resolve from parameters, else the metadata `rope` / `rope_theta`;
// a cache whose metadata says post_rope=false, or that names no usable style/theta, is a usage error.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcodec/core/rope.hpp"
#include "kvcodec/cpu/quant_common.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/derope.hpp"

namespace kvcodec::cpu {

class derope_transform final : public stage_impl<transform::derope, transform_stage> {
 public:
  using stage_impl::stage_impl;
  bool lossless() const override { return false; }
  bytes fit(const std::vector<block>&, const cache_info& info) override {
    (void)resolve(info, static_cast<std::size_t>(info.shape.head_dim));
    return {};
  }
  void forward(block& b, const cache_info& info) const override { rotate(b, info, false); }
  void inverse(block& b, const cache_info& info) const override { rotate(b, info, true); }

  struct rope_cfg {
    rope_style style;
    double theta;
  };
  /// The RoPE style and theta for a cache (parameters, else its metadata; usage error when neither
  /// names them): what the batch encoder's derope step runs (core/transform_rows.hpp).
  rope_cfg resolved(const cache_info& info) const { return resolve(info, static_cast<std::size_t>(info.shape.head_dim)); }

 private:
  rope_cfg resolve(const cache_info& info, std::size_t head_dim) const {
    const auto meta = [&](const char* k) -> std::string {
      auto it = info.metadata.find(k);
      return it == info.metadata.end() ? std::string() : it->second;
    };
    const std::string post = meta("post_rope");
    if (post == "false" || post == "0" || post == "no")
      throw_usage("stage 'derope': the cache metadata says post_rope=" + post + "; its keys carry no RoPE to undo");
    rope_cfg c{};
    const std::string st = p_.style == "auto" ? meta("rope") : p_.style;
    const auto s = parse_rope_style(st);
    if (!s)
      throw_usage("stage 'derope': parameter 'style': expected interleaved-pairs or rotate-half (or cache metadata 'rope'), found '" + st + "'");
    c.style = *s;
    c.theta = p_.theta;
    if (c.theta == 0.0) {
      const std::string t = meta("rope_theta");
      double v = 0.0;
      auto r = std::from_chars(t.data(), t.data() + t.size(), v);
      if (t.empty() || r.ec != std::errc() || r.ptr != t.data() + t.size())
        throw_usage("stage 'derope': parameter 'theta': expected a number > 1 (or cache metadata 'rope_theta'), found '" + t + "'");
      c.theta = v;
    }
    check_rope(head_dim, c.theta, "stage 'derope'");
    return c;
  }
  void rotate(block& b, const cache_info& info, bool apply) const {
    if (!b.key) return;
    qc::check_block(name(), b);
    const std::size_t D = static_cast<std::size_t>(b.head_dim);
    const rope_cfg c = resolve(info, D);
    if (b.rows() == 0 || D < 2) return;
    // cos/sin of every (position, pair) of the block, computed once per thread for a run of positions
    // and reused by the next blocks of the same chunk (every layer's K): the same double values
    // rope_apply / rope_undo compute per row, so the result is bit for bit theirs.
    const auto [pmin, pmax] = std::minmax_element(b.pos.begin(), b.pos.end());
    const std::int64_t p0 = *pmin, span = static_cast<std::int64_t>(*pmax) - *pmin + 1;
    if (span > static_cast<std::int64_t>(4 * b.rows() + 64)) {  // scattered positions: per row
      for (std::size_t r = 0; r < b.rows(); ++r) {
        if (apply)
          rope_apply(b.data.data() + r * D, D, b.pos[r], c.theta, c.style);
        else
          rope_undo(b.data.data() + r * D, D, b.pos[r], c.theta, c.style);
      }
      return;
    }
    const std::size_t half = D / 2;
    const double dir = apply ? 1.0 : -1.0;
    thread_local trig_table t;
    if (!t.covers(p0, span, D, c.theta, dir)) t.fill(p0, span, D, c.theta, dir);
    const bool inter = c.style == rope_style::interleaved_pairs;
    for (std::size_t r = 0; r < b.rows(); ++r) {
      float* x = b.data.data() + r * D;
      const std::size_t o = static_cast<std::size_t>(b.pos[r] - t.p0) * half;
      const double* cs = t.c.data() + o;
      const double* sn = t.s.data() + o;
      for (std::size_t i = 0; i < half; ++i) {
        const std::size_t i0 = inter ? 2 * i : i, i1 = inter ? 2 * i + 1 : i + half;
        const double x0 = x[i0], x1 = x[i1];
        x[i0] = static_cast<float>(x0 * cs[i] - x1 * sn[i]);
        x[i1] = static_cast<float>(x0 * sn[i] + x1 * cs[i]);
      }
    }
  }
  /// cos and sin of dir x rope_angle(p, i) for p in [p0, p0 + n), pairs i of head_dim D.
  struct trig_table {
    std::int64_t p0 = 0, n = 0;
    std::size_t D = 0;
    double theta = 0, dir = 0;
    std::vector<double> c, s;
    bool covers(std::int64_t q0, std::int64_t m, std::size_t d, double th, double dr) const {
      return d == D && th == theta && dr == dir && q0 >= p0 && q0 + m <= p0 + n;
    }
    void fill(std::int64_t q0, std::int64_t m, std::size_t d, double th, double dr) {
      p0 = q0;
      n = m;
      D = d;
      theta = th;
      dir = dr;
      const std::size_t half = d / 2;
      c.resize(static_cast<std::size_t>(m) * half);
      s.resize(c.size());
      for (std::int64_t p = 0; p < m; ++p)
        for (std::size_t i = 0; i < half; ++i) {
          const double a = dr * rope_angle(q0 + p, i, d, th);
          c[static_cast<std::size_t>(p) * half + i] = std::cos(a);
          s[static_cast<std::size_t>(p) * half + i] = std::sin(a);
        }
    }
  };
};

}  // namespace kvcodec::cpu
