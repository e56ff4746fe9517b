// kvcodec/cpu/drop_stages.hpp — CPU implementations of the token-dropping stages: one template that
// binds any drop descriptor (stage/drop_structural.hpp, stage/drop_attention.hpp) to its method's
// selector (cpu/drop/<method>.hpp, through cpu/drop_select.hpp).
//
// Invariant: select() is a pure function of the cache and the parameters (no state, no randomness
// beyond the `seed` parameter), so encoding the same cache twice gives the same kept sets.
#pragma once

#include "kvcodec/cpu/drop_select.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/drop_attention.hpp"
#include "kvcodec/stage/drop_structural.hpp"

namespace kvcodec::cpu {

/// A drop stage that is one configured method (every built-in stage): other selectors than the CPU's
/// (cuda/drop_select.cuh) run its configuration.
class configured_drop : public drop_stage {
 public:
  virtual drop::config cfg() const = 0;
};

template <class D>
class drop_impl : public stage_impl<D, configured_drop> {
 public:
  using stage_impl<D, configured_drop>::stage_impl;
  drop::config cfg() const override { return this->p_.cfg(); }
  kept_sets select(const kv_cache& kv) const override { return drop_select(kv, this->p_.cfg()); }
};

}  // namespace kvcodec::cpu
