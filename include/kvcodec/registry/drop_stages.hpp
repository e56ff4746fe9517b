// kvcodec/registry/drop_stages.hpp — registers the token-dropping stages.
#pragma once

#include "kvcodec/registry/registry.hpp"

namespace kvcodec {

inline void register_drop_stages(registry& r) { (void)r; }

}  // namespace kvcodec
