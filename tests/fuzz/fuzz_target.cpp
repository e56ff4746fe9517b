// tests/fuzz/fuzz_target.cpp — a libFuzzer target; KVCODEC_FUZZ_TARGET (set per executable by
// tests/fuzz/CMakeLists.txt) names the entry point of fuzz_entry.hpp it drives.
#include <cstddef>
#include <cstdint>

int kvcodec_fuzz_one(const char* target, const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return kvcodec_fuzz_one(KVCODEC_FUZZ_TARGET, data, size);
}
