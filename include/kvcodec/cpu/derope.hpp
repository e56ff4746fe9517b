// kvcodec/cpu/derope.hpp — transform stage `derope` (stage/derope.hpp) on the CPU: keys are rotated
// back to pre-RoPE (core/rope.hpp rope_undo at position block.pos[row]) before quantization and rotated
// again after decoding. Style/theta resolve from parameters, else the metadata `rope` / `rope_theta`;
// a cache whose metadata says post_rope=false, or that names no usable style/theta, is a usage error.
#pragma once

#include <charconv>
#include <string>

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

 private:
  struct rope_cfg {
    rope_style style;
    double theta;
  };
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
    for (std::size_t r = 0; r < b.rows(); ++r) {
      if (apply)
        rope_apply(b.data.data() + r * D, D, b.pos[r], c.theta, c.style);
      else
        rope_undo(b.data.data() + r * D, D, b.pos[r], c.theta, c.style);
    }
  }
};

}  // namespace kvcodec::cpu
