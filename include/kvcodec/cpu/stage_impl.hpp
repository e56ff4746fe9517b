// kvcodec/cpu/stage_impl.hpp — glue that binds a stage descriptor (plain parameter struct) to a
// CPU implementation of one of the stage interfaces.
#pragma once

#include <string_view>
#include <utility>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::cpu {

template <class D, class Base>
class stage_impl : public Base {
 public:
  using descriptor = D;
  explicit stage_impl(D p) : p_(std::move(p)) {}
  std::string_view name() const override { return D::name; }
  stage_spec spec() const override { return to_stage_spec(p_); }
  const D& params() const noexcept { return p_; }

 protected:
  D p_;
};

}  // namespace kvcodec::cpu
