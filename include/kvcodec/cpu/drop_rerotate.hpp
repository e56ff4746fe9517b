// kvcodec/cpu/drop_rerotate.hpp — moved: key re-rotation is cpu/drop/rerotate.hpp; decode_dropped
// (decode, then re-rotate) is pipeline/decode_dropped.hpp.
#pragma once

#include "kvcodec/cpu/drop/rerotate.hpp"
