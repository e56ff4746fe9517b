// tests/support/io_helpers.hpp — what the I/O tests (kv_dump, npy/npz, safetensors) share to check
// the errors a reader throws: run a callable and record whether it threw a kvcodec::error, of which
// kind, with which message.
//
// Invariant: catch_error() catches only kvcodec::error; any other exception escapes to doctest, so
// a reader that throws the wrong type still fails the test.
#pragma once

#include <string>

#include "kvcodec/core/error.hpp"

namespace kvcodec::test {

struct caught {
  bool thrown = false;
  error_kind kind = error_kind::io;
  std::string msg;
  bool has(const std::string& s) const { return msg.find(s) != std::string::npos; }
};

template <class F>
inline caught catch_error(F&& f) {
  caught c;
  try {
    f();
  } catch (const kvcodec::error& e) {
    c.thrown = true;
    c.kind = e.kind();
    c.msg = e.what();
  }
  return c;
}

}  // namespace kvcodec::test
