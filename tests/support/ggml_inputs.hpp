// tests/support/ggml_inputs.hpp — the fixed inputs on which the golden ggml block bytes were made
// (tests/core/test_ggml_blocks.cpp), reused by the ggml stage tests (tests/cpu/test_quant_cpu.cpp).
//
// Invariant: make_input(which, x) writes exactly 64 floats (two 32-value ggml blocks) and is fully
// deterministic; changing it invalidates the golden bytes produced by ggml's reference quantizers.
#pragma once

#include <cstdint>

namespace kvcodec::test {

/// 64 values (two blocks): 0 ramp, 1 negative signed max, 2 zeros, 3 constant, 4 LCG pseudo-random.
inline void make_input(int which, float* x) {
  std::uint32_t s = 12345u;
  for (int j = 0; j < 64; ++j) {
    switch (which) {
      case 0: x[j] = static_cast<float>(j % 32) * 0.25f - 3.875f; break;
      case 1: x[j] = (j % 32 == 5) ? -9.0f : static_cast<float>(((j * 7) % 32) - 13) * 0.5f; break;
      case 2: x[j] = 0.0f; break;
      case 3: x[j] = 1.5f; break;
      default:
        s = s * 1664525u + 1013904223u;
        x[j] = static_cast<float>(static_cast<int>(s >> 16) % 2001 - 1000) / 256.0f;
        break;
    }
  }
}

}  // namespace kvcodec::test
