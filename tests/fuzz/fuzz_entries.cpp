// tests/fuzz/fuzz_entries.cpp — every entry point of fuzz_entry.hpp, compiled once with coverage and
// sanitizers and linked into each fuzz_<target> (the stages' code beside it: cli/builtin_registry.cpp).
#include "fuzz_entry.hpp"

/// Runs `target` on one input; a kvcodec::error is the expected refusal of bad input, anything else
/// escapes to libFuzzer (an uncaught exception is reported as a crash).
int kvcodec_fuzz_one(const char* target, const std::uint8_t* data, std::size_t size) {
  try {
    if (!kvcodec::fuzz::run(target, data, size)) __builtin_trap();
  } catch (const kvcodec::error&) {
  }
  return 0;
}
