// doctest entry point shared by every test translation unit, with two guards that keep each ctest entry
// honest (tests/CMakeLists.txt registers one ctest test per TEST_CASE by name):
//  1. Names. A TEST_CASE name with ';' is split in two by CMake's list handling in
//     doctest_discover_tests, ',' and '\' are filter separators/escapes for --test-case, '*' and '?' are
//     filter wildcards and '[' ']' change CMake's list splitting: any of them leaves a ctest entry that
//     runs zero (or the wrong) test cases and still passes. Every run, --list-test-cases included (which
//     doctest_discover_tests calls at build time, so the build fails), rejects such names, and names that
//     differ only in case (doctest's filters ignore case). SUBCASE names are checked as they run.
//  2. Empty runs. A run whose filters select no test case, or a test case that executes no assertion,
//     fails instead of passing silently; a case that cannot run here (its ../shared data absent) says so
//     with kvcodec::test::mark_skipped() and is listed as skipped.
// tests.ctest_entries (tests/check_ctest_entries.cmake) checks from the outside that every ctest entry
// selects exactly the test cases it should, through `--kvcodec-count-each=FILE`: each line of FILE is
// one entry's arguments (tab-separated); for each, doctest parses exactly those arguments plus --count in
// this one process, and the number of test cases they select is printed, one line each.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

/// Characters a test or subcase name must not contain (see above).
constexpr const char* k_forbidden = ";,\\*?[]";

struct guard_state {
  std::vector<std::string> problems;  // bad subcase names, test cases without assertions
  std::vector<std::string> skipped;   // test cases that called test::mark_skipped()
  bool skip_current = false;          // the running test case called it
  bool ran = false;                   // a test run happened (not a query, --help, --no-run, ...)
  unsigned selected = 0;              // test cases passing the filters in that run
  long long queried = -1;             // test cases passing the filters in the last --count query
};

guard_state& state() {
  static guard_state s;
  return s;
}

std::string bad_chars(const std::string& name) {
  std::string bad;
  for (char c : name)
    if (std::string(k_forbidden).find(c) != std::string::npos && bad.find(c) == std::string::npos) bad += c;
  return bad;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string where(const char* file, long long line) { return std::string(file) + ":" + std::to_string(line); }

/// Every registered test case name is usable as one ctest entry; returns the problems found.
std::vector<std::string> check_registered_names() {
  std::vector<std::string> out;
  std::map<std::string, std::string> seen;  // lower-cased name -> first location
  for (const auto& tc : doctest::detail::getRegisteredTests()) {
    const std::string name = tc.m_name, loc = where(tc.m_file.c_str(), tc.m_line);
    if (const std::string bad = bad_chars(name); !bad.empty())
      out.push_back(loc + ": TEST_CASE \"" + name + "\" contains '" + bad + "' (forbidden in test names: " + k_forbidden + ")");
    if (name.empty() || name.front() == ' ' || name.back() == ' ')
      out.push_back(loc + ": TEST_CASE \"" + name + "\" is empty or has leading/trailing spaces");
    auto [it, fresh] = seen.emplace(lower(name), loc);
    if (!fresh) out.push_back(loc + ": TEST_CASE \"" + name + "\" has the same name (ignoring case) as the one at " + it->second);
  }
  return out;
}

struct guard_listener : doctest::IReporter {
  explicit guard_listener(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData& q) override {
    if (q.run_stats != nullptr) state().queried = q.run_stats->numTestCasesPassingFilters;
  }
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats& s) override {
    state().ran = true;
    state().selected = s.numTestCasesPassingFilters;
  }
  void test_case_start(const doctest::TestCaseData& tc) override {
    current_ = &tc;
    state().skip_current = false;
  }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats& s) override {
    if (current_ != nullptr && state().skip_current)
      state().skipped.push_back(where(current_->m_file.c_str(), current_->m_line) + ": \"" + current_->m_name + "\"");
    else if (current_ != nullptr && s.numAssertsCurrentTest == 0 && s.failure_flags == 0)
      state().problems.push_back(where(current_->m_file.c_str(), current_->m_line) + ": TEST_CASE \"" + current_->m_name +
                                 "\" ran without executing a single assertion");
    current_ = nullptr;
  }
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature& sc) override {
    const std::string name = sc.m_name.c_str();
    if (const std::string bad = bad_chars(name); !bad.empty())
      state().problems.push_back(where(sc.m_file, sc.m_line) + ": SUBCASE \"" + name + "\" contains '" + bad +
                                 "' (forbidden in test names: " + k_forbidden + ")");
  }
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}

 private:
  const doctest::TestCaseData* current_ = nullptr;
};

}  // namespace

DOCTEST_REGISTER_LISTENER("kvcodec_guard", 0, guard_listener);

namespace kvcodec::test {
void mark_skipped();  // declared for the suites in tests/support/shared_data.hpp
void mark_skipped() { state().skip_current = true; }
}  // namespace kvcodec::test

namespace {

/// --kvcodec-count-each=FILE: prints, for each line of FILE (one command line's arguments, tab-separated),
/// how many test cases doctest selects with exactly those arguments.
int count_each(const char* self, const char* file) {
  std::ifstream in(file);
  if (!in) {
    std::fprintf(stderr, "kvcodec_tests: cannot read %s\n", file);
    return 2;
  }
  std::string line;
  std::ostringstream sink;  // doctest's own --count report
  while (std::getline(in, line)) {
    std::vector<std::string> args = {self};
    std::istringstream fields(line);
    for (std::string a; std::getline(fields, a, '\t');)
      if (!a.empty()) args.push_back(a);
    args.emplace_back("--count");
    std::vector<const char*> argv;
    for (const auto& a : args) argv.push_back(a.c_str());
    doctest::Context ctx(static_cast<int>(argv.size()), argv.data());
    ctx.setCout(&sink);
    state().queried = -1;
    ctx.run();
    std::printf("%lld\n", state().queried);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> name_problems = check_registered_names();
  for (const auto& p : name_problems) std::fprintf(stderr, "kvcodec_tests: %s\n", p.c_str());
  if (!name_problems.empty()) {
    std::fprintf(stderr, "kvcodec_tests: rename the test cases above: ctest cannot run them by name\n");
    return 2;
  }
  constexpr const char* k_count_each = "--kvcodec-count-each=";
  if (argc == 2 && std::strncmp(argv[1], k_count_each, std::strlen(k_count_each)) == 0)
    return count_each(argv[0], argv[1] + std::strlen(k_count_each));
  doctest::Context ctx(argc, argv);
  int rc = ctx.run();
  if (!state().skipped.empty()) {
    std::fprintf(stderr, "kvcodec_tests: %zu test case(s) skipped, their data absent:\n", state().skipped.size());
    for (const auto& p : state().skipped) std::fprintf(stderr, "kvcodec_tests:   %s\n", p.c_str());
  }
  for (const auto& p : state().problems) std::fprintf(stderr, "kvcodec_tests: %s\n", p.c_str());
  if (!state().problems.empty()) rc = rc == 0 ? 1 : rc;
  if (state().ran && state().selected == 0) {
    std::fprintf(stderr, "kvcodec_tests: the filters selected no test case, so nothing was tested (a ctest entry must run one)\n");
    rc = rc == 0 ? 1 : rc;
  }
  return rc;
}
