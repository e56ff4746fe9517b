// kvcodec/cpu/delta.hpp — stage `delta`: float-domain token delta on dense blocks (open loop).
//
// forward: per head, going backwards through the rows, x_t -= ref_t (anchor of t's group, or
// x_{t-1}); inverse: forwards, x_t += ref_t using the already reconstructed reference, so it is the
// exact inverse of forward on unquantized data (up to float rounding).
#pragma once

#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/delta.hpp"

namespace kvcodec::cpu {

class delta_transform final : public stage_impl<transform::delta, transform_stage> {
 public:
  explicit delta_transform(transform::delta p) : stage_impl(std::move(p)) {}
  bool lossless() const override { return false; }
  void forward(block& b, const cache_info&) const override { run(b, true); }
  void inverse(block& b, const cache_info&) const override { run(b, false); }

 private:
  void run(block& b, bool fwd) const {
    if (!b.dense()) return;
    const std::size_t R = static_cast<std::size_t>(b.t1 - b.t0), D = static_cast<std::size_t>(b.head_dim);
    const std::size_t G = static_cast<std::size_t>(p_.group);
    const bool prev = p_.mode == "prev";
    for (int h = 0; h < b.heads; ++h) {
      float* x = b.data.data() + static_cast<std::size_t>(h) * R * D;
      auto ref = [&](std::size_t r) { return prev ? r - 1 : r - r % G; };
      auto is_anchor = [&](std::size_t r) { return prev ? r == 0 : r % G == 0; };
      if (fwd) {
        for (std::size_t r = R; r-- > 0;)
          if (!is_anchor(r))
            for (std::size_t d = 0; d < D; ++d) x[r * D + d] -= x[ref(r) * D + d];
      } else {
        for (std::size_t r = 0; r < R; ++r)
          if (!is_anchor(r))
            for (std::size_t d = 0; d < D; ++d) x[r * D + d] += x[ref(r) * D + d];
      }
    }
  }
};

}  // namespace kvcodec::cpu
