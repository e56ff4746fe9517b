// Replays every input under tests/fuzz/regressions/<target>/ (crashes, leaks and blow-ups the fuzz
// targets found, and hand-made lying files of issue 11) through the same entry point as the fuzz
// target (fuzz_entry.hpp): each must end in success or a clean kvcodec::error, never a crash, a
// sanitizer report (the ASan suite runs this too) or another exception.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "fuzz_entry.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_fuzz_fuzz_regressions {

#ifndef KVCODEC_FUZZ_REGRESSIONS_DIR
#error "tests/CMakeLists.txt defines KVCODEC_FUZZ_REGRESSIONS_DIR"
#endif

namespace {
/// The inputs listed in regressions/OPEN ("<target>/<file> <note>" lines): bugs whose fix is pending in a
/// file another change owns; replaying them would crash the suite, so they are listed instead.
std::set<std::string> open_inputs(const std::filesystem::path& root) {
  std::set<std::string> open;
  std::ifstream in(root / "OPEN");
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    open.insert(line.substr(0, line.find_first_of(" \t")));
  }
  return open;
}
}  // namespace

TEST_CASE("fuzz regressions: every stored input ends in success or a kvcodec::error") {
  namespace fs = std::filesystem;
  const fs::path root = KVCODEC_FUZZ_REGRESSIONS_DIR;
  REQUIRE(fs::is_directory(root));
  const std::set<std::string> open = open_inputs(root);
  std::size_t replayed = 0;
  for (const char* target : kvcodec::fuzz::targets) {
    const fs::path dir = root / target;
    if (!fs::is_directory(dir)) continue;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      if (open.count(std::string(target) + "/" + f.filename().string())) {
        MESSAGE("not replayed, listed in regressions/OPEN (fix pending elsewhere): " << std::string(target) + "/" + f.filename().string());
        continue;
      }
      CAPTURE(f.string());
      std::ifstream in(f, std::ios::binary);
      const std::vector<std::uint8_t> b{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
      try {
        kvcodec::fuzz::run(target, b.data(), b.size());
      } catch (const kvcodec::error&) {
      }
      ++replayed;
    }
  }
  MESSAGE("replayed " << replayed << " regression inputs");
}

}  // namespace kvcodec_test_fuzz_fuzz_regressions
