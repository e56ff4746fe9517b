// Tests of io/file.hpp's write_file_atomic: permissions kept on --force, no-replace without it (even
// against a file created meanwhile), temporary files removed on failure and on SIGINT/SIGTERM.
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/io/file.hpp"
#include "../support/io_helpers.hpp"

// Unity builds (tests/CMakeLists.txt) compile several suites as one file: each keeps its names to itself.
namespace kvcodec_test_io_file {

using namespace kvcodec;
using namespace kvcodec::io;
using test::catch_error;

namespace {
namespace fs = std::filesystem;

struct temp_dir {
  std::string path;
  temp_dir() {
    path = (fs::temp_directory_path() / ("kvcodec_file_" + std::to_string(::getpid()) + "_" + std::to_string(std::random_device{}()))).string();
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::size_t entries() const {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(path)) ++n;
    return n;
  }
};

std::vector<std::uint8_t> text(const std::string& s) { return {s.begin(), s.end()}; }
std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
mode_t mode_of(const std::string& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}
}  // namespace

TEST_CASE("write_file_atomic: --force keeps the permissions of the file it replaces") {
  temp_dir d;
  const std::string p = d.path + "/secret.kvc";
  write_file_atomic(p, text("one"), false);
  for (const mode_t m : {mode_t{0600}, mode_t{0640}, mode_t{0604}}) {
    REQUIRE(::chmod(p.c_str(), m) == 0);
    write_file_atomic(p, text("two"), true);
    CHECK(slurp(p) == "two");
    CHECK(mode_of(p) == m);  // was 0644 (0666 minus the umask) whatever the old file had
  }
  CHECK(d.entries() == 1);
}

TEST_CASE("write_file_atomic: without overwrite an existing file is refused and left alone") {
  temp_dir d;
  const std::string p = d.path + "/out.kvc";
  write_file_atomic(p, text("first"), false);
  const auto e = catch_error([&] { write_file_atomic(p, text("second"), false); });
  CHECK(e.kind == error_kind::usage);
  CHECK(slurp(p) == "first");
  CHECK(d.entries() == 1);
}

TEST_CASE("write_file_atomic: the no-replace move never replaces a file created meanwhile") {
  // The last step of a write without overwrite, raced by a file that appeared after the first check.
  temp_dir d;
  const std::string tmp = d.path + "/out.kvc.tmp-1", dst = d.path + "/out.kvc";
  { std::ofstream(tmp) << "ours"; }
  { std::ofstream(dst) << "theirs"; }
  CHECK(io::detail::rename_noreplace(tmp, dst) == EEXIST);
  CHECK(slurp(dst) == "theirs");
  CHECK(slurp(tmp) == "ours");
  fs::remove(dst);
  CHECK(io::detail::rename_noreplace(tmp, dst) == 0);
  CHECK(slurp(dst) == "ours");
  CHECK_FALSE(fs::exists(tmp));
}

TEST_CASE("write_file_atomic: a failed write removes its temporary file") {
  temp_dir d;
  const std::string p = d.path + "/big.kvc";
  // In a child: a 4 KiB file-size limit makes the write fail with EFBIG (SIGXFSZ ignored).
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit lim{4096, 4096};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    int rc = 1;
    try {
      write_file_atomic(p, std::vector<std::uint8_t>(1 << 20, 7), false);
    } catch (const error& e) {
      rc = e.kind() == error_kind::io ? 0 : 2;
    } catch (...) {
      rc = 3;
    }
    ::_exit(rc);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(d.entries() == 0);  // neither big.kvc nor big.kvc.tmp-N
  // A directory that does not exist: io error, nothing created.
  CHECK(catch_error([&] { write_file_atomic(d.path + "/missing/x.kvc", text("x"), false); }).kind == error_kind::io);
}

TEST_CASE("write_file_atomic: SIGINT/SIGTERM remove a registered temporary file / then the signal kills") {
  for (const int sig : {SIGINT, SIGTERM}) {
    temp_dir d;
    const std::string tmp = d.path + "/out.kvc.tmp-42";
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // A fresh process with the default dispositions (doctest installs its own handlers in ours).
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGTERM, SIG_DFL);
      io::detail::temp_handlers_installed = false;
      io::detail::temp_registration reg(tmp);
      { std::ofstream(tmp) << "partial"; }
      ::raise(sig);
      ::_exit(0);  // not reached
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == sig);
    CHECK_FALSE(fs::exists(tmp));
  }
}

}  // namespace kvcodec_test_io_file
