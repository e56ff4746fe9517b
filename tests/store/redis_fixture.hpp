// tests/store/redis_fixture.hpp — real redis-server processes on loopback for the store suites.
//
// Each server runs in a directory of its own on a free port, with AOF on and fsync at every write (so a
// SIGKILL loses nothing acknowledged), started with posix_spawnp and killed at scope exit. redis-server
// must be installed (scripts/setup installs it): a suite that needs it FAILS when it is absent.
#pragma once

#include <doctest/doctest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kvcodec/store/redis.hpp"
#include "store_support.hpp"

extern char** environ;

namespace kvcodec::test {

inline bool port_free(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

/// A TCP port on 127.0.0.1 that was free a moment ago, with port + 10000 free too (a cluster node's
/// bus port; Redis refuses cluster ports above 55535).
inline int free_port() {
  static std::mt19937 rng(static_cast<unsigned>(::getpid()) * 7919u + static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::uniform_int_distribution<int> pick(20000, 45000);
  for (int i = 0; i < 1000; ++i) {
    const int p = pick(rng);
    if (port_free(p) && port_free(p + 10000)) return p;
  }
  FAIL("no free loopback port pair (P, P+10000) found in 20000..55000");
  return 0;
}

inline bool have_program(const std::string& name) {
  return std::system(("command -v " + name + " >/dev/null 2>&1").c_str()) == 0;
}

inline void require_redis() {
  REQUIRE_MESSAGE(have_program("redis-server"), "redis-server is not installed: run scripts/setup (it installs redis-server and redis-tools)");
  REQUIRE_MESSAGE(have_program("redis-cli"), "redis-cli is not installed: run scripts/setup (it installs redis-tools)");
}

class redis_server {
 public:
  redis_server(std::string dir, std::vector<std::string> extra = {}) : dir_(std::move(dir)), port_(free_port()), extra_(std::move(extra)) {
    std::filesystem::create_directories(dir_);
    start();
  }
  ~redis_server() { kill9(); }
  redis_server(const redis_server&) = delete;
  redis_server& operator=(const redis_server&) = delete;

  int port() const noexcept { return port_; }
  std::string addr() const { return "127.0.0.1:" + std::to_string(port_); }
  std::string url() const { return "redis://" + addr(); }
  const std::string& dir() const noexcept { return dir_; }
  bool running() const noexcept { return pid_ > 0; }

  void start() {
    require_redis();
    std::vector<std::string> args = {"redis-server", "--port", std::to_string(port_), "--bind", "127.0.0.1", "--dir", dir_,
                                     "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
                                     "--protected-mode", "no", "--logfile", dir_ + "/redis.log"};
    args.insert(args.end(), extra_.begin(), extra_.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = -1;
    const int rc = ::posix_spawnp(&pid, "redis-server", nullptr, nullptr, argv.data(), environ);
    REQUIRE_MESSAGE(rc == 0, "cannot start redis-server: " << std::strerror(rc));
    pid_ = pid;
    // Ready when PING answers PONG (AOF loaded).
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    store::redis_options o;
    o.retries = 0;
    o.connect_timeout_ms = 500;
    while (true) {
      try {
        store::redis_conn c("127.0.0.1", port_, o);
        auto r = c.run1({"PING"}, "PING");
        if (r && r->type == REDIS_REPLY_STATUS && store::reply_text(r.get()) == "PONG") {
          started_once_ = true;
          return;
        }
      } catch (const error&) {
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        // Another process took the port between free_port() and the server's bind: a new port, once
        // more, unless this is a restart (whose clients expect the old port).
        if (!started_once_ && ++port_tries_ < 5) {
          port_ = free_port();
          start();
          return;
        }
        FAIL("redis-server on port " << port_ << " exited at start; see " << dir_ << "/redis.log");
      }
      if (std::chrono::steady_clock::now() > until) FAIL("redis-server on port " << port_ << " did not answer PING within 20 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  /// SIGKILL: the server dies at once, as in a crash.
  void kill9() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  /// A command on a fresh connection (admin work in tests).
  store::reply_ptr cmd(std::vector<std::string_view> c) const {
    store::redis_options o;
    o.retries = 0;
    store::redis_conn conn("127.0.0.1", port_, o);
    return conn.run1(std::move(c), "test command");
  }

 private:
  std::string dir_;
  int port_;
  std::vector<std::string> extra_;
  pid_t pid_ = -1;
  bool started_once_ = false;
  int port_tries_ = 0;
};

}  // namespace kvcodec::test
