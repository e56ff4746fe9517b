// kvcodec/store/redis.hpp — Redis standalone backend (`redis://HOST:PORT`) over hiredis's synchronous API.
//
// redis_conn is one connection with the project's failure rules: a connect timeout and an I/O timeout
// (redisConnectWithTimeout / redisSetTimeout), and `retries` further attempts of the whole command
// batch after a connection error or a LOADING/BUSY/TRYAGAIN reply (every command the store sends is
// idempotent: GET, SET, EXISTS, DEL, SADD, SMEMBERS, SCAN, WAIT). When the attempts run out it throws
// kvcodec::error (io) naming the server, the operation and hiredis's reason; it never hands back a
// reply to another command. redis_backend maps the backend interface onto one server: put = SET (atomic
// in Redis), exists = pipelined EXISTS, list = SCAN MATCH, sets = SADD/SMEMBERS, and sync() = WAIT for
// `wait_replicas` replicas (an error when fewer acknowledge within `wait_timeout_ms`).
#pragma once

#include <hiredis/hiredis.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>

#include <algorithm>
#include <chrono>
#include <initializer_list>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "kvcodec/store/backend.hpp"

namespace kvcodec::store {

struct redis_options {
  int connect_timeout_ms = 2000;  ///< per connection attempt
  int timeout_ms = 10000;         ///< per read/write on the socket
  int retries = 2;                ///< further attempts after a connection error or a LOADING/BUSY reply
  int retry_delay_ms = 100;       ///< between attempts (doubles each time)
  int wait_replicas = 0;          ///< sync(): WAIT for this many replicas (0 = do not wait)
  int wait_timeout_ms = 2000;     ///< sync(): how long WAIT may take
  int get_piece_kb = 1024;        ///< get(): values over 2 pieces are read as GETRANGE pieces of this size in one MULTI/EXEC (0: one GET)
};

struct reply_deleter {
  void operator()(redisReply* r) const noexcept {
    if (r) freeReplyObject(r);
  }
};
using reply_ptr = std::unique_ptr<redisReply, reply_deleter>;

inline std::string reply_text(const redisReply* r) { return r && r->str ? std::string(r->str, r->len) : std::string(); }
inline bool reply_is_error(const redisReply* r, std::string_view prefix = {}) {
  return r && r->type == REDIS_REPLY_ERROR && std::string_view(r->str, r->len).substr(0, prefix.size()) == prefix;
}

/// One synchronous connection to one Redis server.
class redis_conn {
 public:
  using command = std::vector<std::string_view>;

  redis_conn(std::string host, int port, redis_options o) : host_(std::move(host)), port_(port), o_(o) {}
  ~redis_conn() { close(); }
  redis_conn(const redis_conn&) = delete;
  redis_conn& operator=(const redis_conn&) = delete;

  std::string name() const { return host_ + ":" + std::to_string(port_); }
  const std::string& host() const noexcept { return host_; }
  int port() const noexcept { return port_; }

  /// Sends the commands in one pipeline and returns their replies in order (error replies included,
  /// except the retryable ones, which are retried). Throws io when the server cannot be reached.
  std::vector<reply_ptr> run(const std::vector<command>& cmds, const std::string& what) {
    std::string last;
    int delay = o_.retry_delay_ms;
    for (int attempt = 0; attempt <= o_.retries; ++attempt) {
      if (attempt > 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(delay));
        delay *= 2;
      }
      if (!c_ && !try_connect(last)) continue;
      std::vector<reply_ptr> out;
      if (!send(cmds, out, last)) {
        close();  // the stream may hold half a reply: never reuse it
        continue;
      }
      bool retry = false;
      for (const auto& r : out)
        if (reply_is_error(r.get(), "LOADING") || reply_is_error(r.get(), "BUSY") || reply_is_error(r.get(), "TRYAGAIN")) {
          last = "server busy: " + reply_text(r.get());
          retry = true;
        }
      if (!retry) return out;
    }
    throw_store_io("redis " + name() + ": " + what + ": " + last + " (after " + std::to_string(o_.retries + 1) + " attempts)");
  }
  reply_ptr run1(command cmd, const std::string& what) { return std::move(run({std::move(cmd)}, what)[0]); }

  /// Connects now (throws io naming the server on failure).
  void connect() {
    std::string why;
    if (!c_ && !try_connect(why)) throw_store_io("redis " + name() + ": cannot connect: " + why);
  }
  void close() noexcept {
    if (c_) redisFree(c_);
    c_ = nullptr;
  }

 private:
  static timeval tv_of(int ms) {
    timeval tv{};
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    return tv;
  }
  bool try_connect(std::string& why) {
    redisContext* c = redisConnectWithTimeout(host_.c_str(), port_, tv_of(o_.connect_timeout_ms));
    if (!c) {
      why = "cannot allocate a connection";
      return false;
    }
    if (c->err) {
      why = c->errstr;
      redisFree(c);
      return false;
    }
    if (redisSetTimeout(c, tv_of(o_.timeout_ms)) != REDIS_OK) {
      why = std::string("cannot set the I/O timeout: ") + c->errstr;
      redisFree(c);
      return false;
    }
    // Keep the reader's buffer between replies (hiredis frees it when more than 16 KB are unused):
    // chunk values are megabytes, and growing the buffer again for every reply dominated a fetch.
    c->reader->maxbuf = 0;
    c_ = c;
    return true;
  }
  bool send(const std::vector<command>& cmds, std::vector<reply_ptr>& out, std::string& why) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& cmd : cmds) {
      argv.clear();
      lens.clear();
      for (const auto& a : cmd) {
        argv.push_back(a.data());
        lens.push_back(a.size());
      }
      if (redisAppendCommandArgv(c_, static_cast<int>(argv.size()), argv.data(), lens.data()) != REDIS_OK) {
        why = c_->errstr;
        return false;
      }
    }
    int done = 0;
    do {
      if (redisBufferWrite(c_, &done) != REDIS_OK) {
        why = c_->errstr;
        return false;
      }
    } while (!done);
    for (std::size_t i = 0; i < cmds.size(); ++i) {
      void* r = nullptr;
      if (!read_reply(&r, why)) return false;
      out.emplace_back(static_cast<redisReply*>(r));
    }
    return true;
  }
  /// One reply through hiredis's reader, fed from the socket 1 MiB at a time (redisGetReply reads 16 KiB
  /// per call, which made multi-megabyte values cost thousands of reads and wake-ups).
  bool read_reply(void** out, std::string& why) {
    thread_local std::vector<char> buf(std::size_t{1} << 20);
    while (true) {
      if (redisReaderGetReply(c_->reader, out) != REDIS_OK) {
        why = std::string("protocol error: ") + c_->reader->errstr;
        return false;
      }
      if (*out) return true;
      const ssize_t n = ::recv(c_->fd, buf.data(), buf.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        why = "no reply within " + std::to_string(o_.timeout_ms) + " ms (timeout_ms)";
        return false;
      }
      if (n < 0) {
        why = std::strerror(errno);
        return false;
      }
      if (n == 0) {
        why = "the server closed the connection";
        return false;
      }
      if (redisReaderFeed(c_->reader, buf.data(), static_cast<std::size_t>(n)) != REDIS_OK) {
        why = std::string("protocol error: ") + c_->reader->errstr;
        return false;
      }
    }
  }

  std::string host_;
  int port_;
  redis_options o_;
  redisContext* c_ = nullptr;
};

/// Escapes the glob characters of a SCAN MATCH pattern.
inline std::string glob_escape(std::string_view s) {
  std::string out;
  for (char ch : s) {
    if (ch == '*' || ch == '?' || ch == '[' || ch == ']' || ch == '\\') out += '\\';
    out += ch;
  }
  return out;
}

/// Throws io for an error reply (or a reply of an unexpected type), naming server, operation and key.
inline void expect_reply(const redisReply* r, std::initializer_list<int> types, const std::string& server, const std::string& what) {
  if (!r) throw_store_io("redis " + server + ": " + what + ": no reply");
  if (r->type == REDIS_REPLY_ERROR) throw_store_io("redis " + server + ": " + what + ": server error: " + reply_text(r));
  for (int t : types)
    if (r->type == t) return;
  throw_store_io("redis " + server + ": " + what + ": unexpected reply type " + std::to_string(r->type));
}

/// SCAN MATCH prefix* over one server.
inline void scan_prefix(redis_conn& c, const std::string& prefix, std::vector<std::string>& out) {
  const std::string pattern = glob_escape(prefix) + "*";
  std::string cursor = "0";
  do {
    auto r = c.run1({"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"}, "SCAN '" + pattern + "'");
    expect_reply(r.get(), {REDIS_REPLY_ARRAY}, c.name(), "SCAN");
    if (r->elements != 2) throw_store_io("redis " + c.name() + ": SCAN: unexpected reply shape");
    cursor = reply_text(r->element[0]);
    const redisReply* keys = r->element[1];
    for (std::size_t i = 0; i < keys->elements; ++i) out.push_back(reply_text(keys->element[i]));
  } while (cursor != "0");
}

/// One replication group WAIT: throws when fewer than `want` replicas acknowledged in time.
inline void wait_replicas(redis_conn& c, int want, int timeout_ms) {
  if (want <= 0) return;
  auto r = c.run1({"WAIT", std::to_string(want), std::to_string(timeout_ms)}, "WAIT");
  expect_reply(r.get(), {REDIS_REPLY_INTEGER}, c.name(), "WAIT " + std::to_string(want));
  if (r->integer < want)
    throw_store_io("redis " + c.name() + ": WAIT: " + std::to_string(r->integer) + " of the " + std::to_string(want) +
                   " replicas asked for acknowledged the writes within " + std::to_string(timeout_ms) + " ms");
}

/// GET of `key` on connection `c`, values over two pieces of `piece_kb` KiB read as GETRANGE pieces inside one
/// MULTI/EXEC (atomic like a GET, after a STRLEN): a single GET of a multi-megabyte value makes Redis copy
/// it into one reply block of its size, which its allocator (jemalloc) maps fresh and page-faults in for
/// every reply (costly in a VM), and hiredis does the same on this side; 1 MiB pieces reuse memory on both
/// sides: 8 MiB values at 1.8 GB/s instead of 0.2 GB/s on loopback (bench/results/store.txt).
/// (piece_kb = 0: one GET). Used by the standalone backend, and by the cluster backend on the master
/// that serves the key's slot.
inline std::optional<byte_buffer> redis_get_in_pieces(redis_conn& c, const std::string& key, int piece_kb) {
  const std::string what = "GET '" + key + "'";
  const std::size_t get_piece = static_cast<std::size_t>(std::max(piece_kb, 0)) * 1024;
  const auto whole = [&]() -> std::optional<byte_buffer> {
    auto r = c.run1({"GET", key}, what);
    expect_reply(r.get(), {REDIS_REPLY_STRING, REDIS_REPLY_NIL}, c.name(), what);
    if (r->type == REDIS_REPLY_NIL) return std::nullopt;
    return byte_buffer(reinterpret_cast<const std::uint8_t*>(r->str), reinterpret_cast<const std::uint8_t*>(r->str) + r->len);
  };
  if (get_piece == 0) return whole();
  // One round trip answers a small value (and a missing one): its length and its first 64 KiB, atomically.
  constexpr std::size_t head = std::size_t{64} << 10;
  const std::string head_end = std::to_string(head - 1);
  auto rs = c.run({{"MULTI"}, {"EXISTS", key}, {"STRLEN", key}, {"GETRANGE", key, "0", head_end}, {"EXEC"}}, what + " (length and head)");
  for (std::size_t i = 0; i + 1 < rs.size(); ++i) expect_reply(rs[i].get(), {REDIS_REPLY_STATUS}, c.name(), what + ": MULTI");
  const redisReply* hx = rs.back().get();
  expect_reply(hx, {REDIS_REPLY_ARRAY}, c.name(), what + ": EXEC");
  if (hx->elements != 3) throw_store_io("redis " + c.name() + ": " + what + ": EXEC returned " + std::to_string(hx->elements) + " replies, expected 3");
  expect_reply(hx->element[0], {REDIS_REPLY_INTEGER}, c.name(), what + ": EXISTS");
  expect_reply(hx->element[1], {REDIS_REPLY_INTEGER}, c.name(), what + ": STRLEN");
  expect_reply(hx->element[2], {REDIS_REPLY_STRING}, c.name(), what + ": GETRANGE");
  if (hx->element[0]->integer == 0) return std::nullopt;
  std::size_t n = static_cast<std::size_t>(hx->element[1]->integer);
  if (n <= head) {
    const redisReply* p = hx->element[2];
    if (p->len != n) throw_store_io("redis " + c.name() + ": " + what + ": GETRANGE returned " + std::to_string(p->len) + " bytes of " + std::to_string(n));
    return byte_buffer(reinterpret_cast<const std::uint8_t*>(p->str), reinterpret_cast<const std::uint8_t*>(p->str) + p->len);
  }
  // Larger: one GET up to two pieces, else every piece in one MULTI/EXEC (with its STRLEN: a value
  // replaced by one of another length meanwhile is read again).
  for (int attempt = 0; attempt < 4 && n > 2 * get_piece; ++attempt) {
    const std::size_t pieces = (n + get_piece - 1) / get_piece;
    std::vector<std::string> bounds;
    for (std::size_t i = 0; i < pieces; ++i) {
      bounds.push_back(std::to_string(i * get_piece));
      bounds.push_back(std::to_string(std::min(n, (i + 1) * get_piece) - 1));
    }
    std::vector<redis_conn::command> cmds{{"MULTI"}, {"STRLEN", key}};
    for (std::size_t i = 0; i < pieces; ++i) cmds.push_back({"GETRANGE", key, bounds[2 * i], bounds[2 * i + 1]});
    cmds.push_back({"EXEC"});
    auto ps = c.run(cmds, what + " (" + std::to_string(pieces) + " GETRANGE pieces)");
    for (std::size_t i = 0; i + 1 < ps.size(); ++i) expect_reply(ps[i].get(), {REDIS_REPLY_STATUS}, c.name(), what + ": MULTI");
    const redisReply* ex = ps.back().get();
    expect_reply(ex, {REDIS_REPLY_ARRAY}, c.name(), what + ": EXEC");
    if (ex->elements != pieces + 1) throw_store_io("redis " + c.name() + ": " + what + ": EXEC returned " + std::to_string(ex->elements) + " replies");
    expect_reply(ex->element[0], {REDIS_REPLY_INTEGER}, c.name(), what + ": STRLEN");
    const std::size_t now = static_cast<std::size_t>(ex->element[0]->integer);
    if (now != n) {  // replaced (or removed: 0) since the first look
      if (now == 0) return whole();
      n = now;
      continue;
    }
    byte_buffer out(n);
    std::size_t at = 0;
    for (std::size_t i = 0; i < pieces; ++i) {
      const redisReply* p = ex->element[i + 1];
      expect_reply(p, {REDIS_REPLY_STRING}, c.name(), what + ": GETRANGE");
      const std::size_t want = std::min(n, (i + 1) * get_piece) - i * get_piece;
      if (p->len != want)
        throw_store_io("redis " + c.name() + ": " + what + ": GETRANGE piece " + std::to_string(i) + " has " + std::to_string(p->len) + " bytes, expected " + std::to_string(want));
      std::memcpy(out.data() + at, p->str, want);
      at += want;
    }
    return out;
  }
  return whole();
}
class redis_backend final : public backend {
 public:
  redis_backend(std::string host, int port, redis_options o = {}) : c_(std::move(host), port, o), o_(o) { c_.connect(); }
  std::string url() const override { return "redis://" + c_.name(); }
  std::unique_ptr<backend> clone() const override { return std::make_unique<redis_backend>(c_.host(), c_.port(), o_); }

  /// Values over two pieces (redis_options::get_piece_kb, 1 MiB) are read as GETRANGE pieces
  /// (redis_get_in_pieces).
  std::optional<byte_buffer> get(const std::string& key) override { return redis_get_in_pieces(c_, key, o_.get_piece_kb); }
  void put(const std::string& key, std::span<const std::uint8_t> value) override {
    auto r = c_.run1({"SET", key, std::string_view(reinterpret_cast<const char*>(value.data()), value.size())}, "SET '" + key + "'");
    expect_reply(r.get(), {REDIS_REPLY_STATUS}, c_.name(), "SET '" + key + "'");
  }
  std::vector<bool> exists(const std::vector<std::string>& keys) override {
    std::vector<redis_conn::command> cmds;
    for (const auto& k : keys) cmds.push_back({"EXISTS", k});
    std::vector<bool> out;
    if (cmds.empty()) return out;
    auto rs = c_.run(cmds, "EXISTS (" + std::to_string(keys.size()) + " keys)");
    for (std::size_t i = 0; i < rs.size(); ++i) {
      expect_reply(rs[i].get(), {REDIS_REPLY_INTEGER}, c_.name(), "EXISTS '" + keys[i] + "'");
      out.push_back(rs[i]->integer > 0);
    }
    return out;
  }
  bool remove(const std::string& key) override {
    auto r = c_.run1({"DEL", key}, "DEL '" + key + "'");
    expect_reply(r.get(), {REDIS_REPLY_INTEGER}, c_.name(), "DEL '" + key + "'");
    return r->integer > 0;
  }
  std::vector<std::string> list(const std::string& prefix) override {
    std::vector<std::string> out;
    scan_prefix(c_, prefix, out);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());  // SCAN may return a key twice
    return out;
  }
  void set_add(const std::string& key, const std::string& member) override {
    auto r = c_.run1({"SADD", key, member}, "SADD '" + key + "'");
    expect_reply(r.get(), {REDIS_REPLY_INTEGER}, c_.name(), "SADD '" + key + "'");
  }
  std::vector<std::string> set_members(const std::string& key) override {
    auto r = c_.run1({"SMEMBERS", key}, "SMEMBERS '" + key + "'");
    expect_reply(r.get(), {REDIS_REPLY_ARRAY}, c_.name(), "SMEMBERS '" + key + "'");
    std::vector<std::string> out;
    for (std::size_t i = 0; i < r->elements; ++i) out.push_back(reply_text(r->element[i]));
    return out;
  }
  void sync() override { wait_replicas(c_, o_.wait_replicas, o_.wait_timeout_ms); }

 private:
  redis_conn c_;
  redis_options o_;
};

}  // namespace kvcodec::store
