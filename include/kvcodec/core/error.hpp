// kvcodec/core/error.hpp — typed errors.
//
// Library code never asserts on input: it throws a kvcodec::error whose kind tells the CLI which exit
// code to use (bad_input/corrupt -> 2, usage -> 1) and whose message names the file or object, the
// field, what was expected and what was found.
#pragma once

#include <stdexcept>
#include <string>

namespace kvcodec {

enum class error_kind {
  bad_input,    ///< a file or tensor that is not what it claims or not a KV cache
  corrupt,      ///< a checksum or structural check of an encoded stream failed
  usage,        ///< a bad spec, parameter or option
  unsupported,  ///< valid input that this build cannot handle (e.g. CUDA absent)
  io            ///< the operating system refused a read or write
};

class error : public std::runtime_error {
 public:
  error(error_kind k, const std::string& what) : std::runtime_error(what), kind_(k) {}
  error_kind kind() const noexcept { return kind_; }

 private:
  error_kind kind_;
};

/// "<where>: field '<field>': expected <expected>, found <found>"
inline std::string describe_mismatch(const std::string& where, const std::string& field,
                                     const std::string& expected, const std::string& found) {
  std::string s = where;
  if (!field.empty()) s += (s.empty() ? "" : ": ") + std::string("field '") + field + "'";
  s += ": expected " + expected + ", found " + found;
  return s;
}

[[noreturn]] inline void throw_bad_input(const std::string& where, const std::string& field,
                                         const std::string& expected, const std::string& found) {
  throw error(error_kind::bad_input, describe_mismatch(where, field, expected, found));
}

[[noreturn]] inline void throw_corrupt(const std::string& where, const std::string& what) {
  throw error(error_kind::corrupt, where + ": " + what);
}

[[noreturn]] inline void throw_usage(const std::string& what) { throw error(error_kind::usage, what); }

}  // namespace kvcodec
