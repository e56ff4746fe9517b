// kvcodec/tensor/view.hpp — non-owning strided 3-D views (heads x tokens x head_dim).
//
// A view never owns memory; strides are in elements, so a view can describe a [H,T,D] slice of a
// [B,H,T,D] engine buffer, a transposed [T,H,D] layout, or a paged block, without copying.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/core/config.hpp"
#include "kvcodec/tensor/dtype.hpp"

namespace kvcodec {

template <class T>
struct strided_view3 {
  T* data = nullptr;
  std::int64_t n0 = 0, n1 = 0, n2 = 0;  ///< extents: heads, tokens, head_dim
  std::int64_t s0 = 0, s1 = 0, s2 = 1;  ///< strides in elements

  KVCODEC_HD T& operator()(std::int64_t i, std::int64_t j, std::int64_t k) const noexcept {
    return data[i * s0 + j * s1 + k * s2];
  }
  KVCODEC_HD std::int64_t size() const noexcept { return n0 * n1 * n2; }
  KVCODEC_HD bool contiguous() const noexcept { return s2 == 1 && s1 == n2 && s0 == n1 * n2; }

  /// A contiguous [n0, n1, n2] view.
  static KVCODEC_HD strided_view3 dense(T* p, std::int64_t a, std::int64_t b, std::int64_t c) noexcept {
    return strided_view3{p, a, b, c, b * c, c, 1};
  }
};

}  // namespace kvcodec
