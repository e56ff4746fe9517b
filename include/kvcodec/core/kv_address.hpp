// kvcodec/core/kv_address.hpp — where row (head h, token t) of one layer's K or V lives in a strided or
// paged (vLLM-style) layout: the address math of tensor/kv_view.hpp as a host/device function over a
// flat, trivially copyable descriptor, so CPU code and GPU kernels address a view the same way.
//   strided: h*s_head + t*s_token                 (element offsets from the layer's base)
//   paged:   block_table[t / block_size]*s_block + (t % block_size)*s_token + h*s_head
#pragma once

#include <cstdint>

#include "kvcodec/core/config.hpp"

namespace kvcodec {

struct kv_layout_desc {
  std::int64_t s_head = 0, s_token = 0, s_dim = 1;
  std::int64_t block_size = 0;  ///< 0 = strided
  std::int64_t s_block = 0;
  const std::int32_t* block_table = nullptr;  ///< paged: in the memory space of the code that reads it
};

/// Element offset of (h, t, channel 0) from the layer's base.
KVCODEC_HD inline std::int64_t kv_row_offset(const kv_layout_desc& L, std::int64_t h, std::int64_t t) noexcept {
  if (L.block_size > 0) return static_cast<std::int64_t>(L.block_table[t / L.block_size]) * L.s_block + (t % L.block_size) * L.s_token + h * L.s_head;
  return h * L.s_head + t * L.s_token;
}

}  // namespace kvcodec
