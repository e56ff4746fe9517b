// kvcodec/cpu/hadamard.hpp — transform stage `hadamard` (stage/hadamard.hpp) on the CPU: every head
// row of the targeted tensors goes through core/hadamard.hpp's H·D rotation before quantization and
// D·H after decoding (orthogonal, so exact up to float rounding; rows of any head_dim).
#pragma once

#include <cstdint>

#include "kvcodec/core/hadamard.hpp"
#include "kvcodec/cpu/quant_common.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/hadamard.hpp"

namespace kvcodec::cpu {

class hadamard_transform final : public stage_impl<transform::hadamard, transform_stage> {
 public:
  using stage_impl::stage_impl;
  bool lossless() const override { return false; }
  void forward(block& b, const cache_info&) const override {
    if (!targets(b)) return;
    qc::check_block(name(), b);
    hadamard_forward_rows(b.data.data(), b.rows(), static_cast<std::size_t>(b.head_dim), static_cast<std::uint64_t>(p_.seed));
  }
  void inverse(block& b, const cache_info&) const override {
    if (!targets(b)) return;
    qc::check_block(name(), b);
    hadamard_inverse_rows(b.data.data(), b.rows(), static_cast<std::size_t>(b.head_dim), static_cast<std::uint64_t>(p_.seed));
  }

 private:
  bool targets(const block& b) const { return p_.target == "kv" || (p_.target == "k") == b.key; }
};

}  // namespace kvcodec::cpu
