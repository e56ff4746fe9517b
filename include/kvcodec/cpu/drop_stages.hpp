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

template <class D>
class drop_impl : public stage_impl<D, drop_stage> {
 public:
  using stage_impl<D, drop_stage>::stage_impl;
  kept_sets select(const kv_cache& kv) const override { return drop_select(kv, this->p_.cfg()); }
};

}  // namespace kvcodec::cpu
