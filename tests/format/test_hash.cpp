// format/hash.hpp: the dispatched XXH3 gives XXH3's values (checksums in files and store keys must
// not depend on the CPU that wrote them).
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "kvcodec/format/hash.hpp"

namespace kvcodec_test_format_hash {

using namespace kvcodec;

TEST_CASE("xxh3_64 and xxh3_128 equal the plain XXH3 functions at every length class") {
  std::mt19937_64 rng(11);
  std::vector<std::uint8_t> b(1 << 20);
  for (auto& x : b) x = static_cast<std::uint8_t>(rng());
  // 0-16, 17-128, 129-240 and long inputs take different code paths in XXH3; lengths around the
  // 64-byte stripes and 1 KiB blocks of the vector loops too.
  std::vector<std::size_t> lengths;
  for (std::size_t n = 0; n <= 300; ++n) lengths.push_back(n);
  for (std::size_t n : {511u, 512u, 1023u, 1024u, 1025u, 4096u, 65537u, 1u << 20}) lengths.push_back(n);
  for (const std::size_t n : lengths) {
    const std::uint8_t* p = b.data() + (n % 7);  // unaligned starts too
    const std::size_t len = std::min(n, b.size() - 7);
    CAPTURE(len);
    CHECK(xxh3_64(p, len) == XXH3_64bits(p, len));
    const std::uint64_t seed = rng();
    CHECK(xxh3_64(p, len, seed) == XXH3_64bits_withSeed(p, len, seed));
    const XXH128_hash_t a = xxh3_128(p, len), c = XXH3_128bits(p, len);
    CHECK(a.low64 == c.low64);
    CHECK(a.high64 == c.high64);
  }
}

TEST_CASE("xxh3_64 of the empty input is the value the XXH3 specification gives") {
  CHECK(xxh3_64(nullptr, 0) == 0x2d06800538d394c2ull);
}

}  // namespace kvcodec_test_format_hash
