// kvcodec/stage/params.hpp — codec spec strings and stage parameter structs.
//
// Spec grammar:   spec  := stage ('|' stage)*
//                 stage := name [':' param (',' param)*]
//                 param := key '=' value      (value: any text without ',' '|' '=')
// e.g. "snapkv:keep=0.5|kivi:bits=4|rans". A stage's parameters are a plain struct with a
// `visit(v)` member that names each field once; the same visit drives parsing (with type and
// unknown-key errors), canonical printing (every parameter, declared order) and `kvcodec list`.
#pragma once

#include <charconv>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvcodec/core/error.hpp"

namespace kvcodec {

struct stage_spec {
  std::string name;
  std::vector<std::pair<std::string, std::string>> params;  ///< in the order written
};

namespace detail {
inline std::string trim(std::string_view s) {
  std::size_t a = 0, b = s.size();
  while (a < b && (s[a] == ' ' || s[a] == '\t')) ++a;
  while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) --b;
  return std::string(s.substr(a, b - a));
}
inline std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  return out;
}
inline bool valid_name(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
      return false;
  return true;
}
}  // namespace detail

/// Parses a spec string; throws error(usage) with the offending piece on malformed input.
inline std::vector<stage_spec> parse_spec(std::string_view spec) {
  const std::string whole = detail::trim(spec);
  if (whole.empty()) throw_usage("codec spec: expected at least one stage (e.g. 'raw:dtype=f16'), found an empty spec");
  std::vector<stage_spec> out;
  for (auto piece : detail::split(whole, '|')) {
    const std::string p = detail::trim(piece);
    if (p.empty()) throw_usage("codec spec '" + whole + "': empty stage between '|'");
    stage_spec st;
    const auto colon = p.find(':');
    st.name = detail::trim(std::string_view(p).substr(0, colon));
    if (!detail::valid_name(st.name))
      throw_usage("codec spec '" + whole + "': stage name '" + st.name + "' is not a name (letters, digits, _ - .)");
    if (colon != std::string::npos) {
      const std::string rest = p.substr(colon + 1);
      // A parameter value may itself hold ':' (e.g. adakv:scorer=snapkv); split on ',' only.
      for (auto kv : detail::split(rest, ',')) {
        const std::string item = detail::trim(kv);
        const auto eq = item.find('=');
        if (item.empty() || eq == std::string::npos || eq == 0)
          throw_usage("codec spec '" + whole + "', stage '" + st.name + "': expected key=value, found '" + item + "'");
        std::string key = detail::trim(std::string_view(item).substr(0, eq));
        std::string val = detail::trim(std::string_view(item).substr(eq + 1));
        if (val.empty()) throw_usage("codec spec '" + whole + "', stage '" + st.name + "': parameter '" + key + "' has no value");
        for (const auto& [k, v] : st.params)
          if (k == key) throw_usage("codec spec '" + whole + "', stage '" + st.name + "': parameter '" + key + "' given twice");
        st.params.emplace_back(std::move(key), std::move(val));
      }
    }
    out.push_back(std::move(st));
  }
  return out;
}

inline std::string format_stage(const stage_spec& s) {
  std::string out = s.name;
  for (std::size_t i = 0; i < s.params.size(); ++i) out += (i == 0 ? ":" : ",") + s.params[i].first + "=" + s.params[i].second;
  return out;
}

inline std::string format_spec(const std::vector<stage_spec>& stages) {
  std::string out;
  for (std::size_t i = 0; i < stages.size(); ++i) out += (i ? "|" : "") + format_stage(stages[i]);
  return out;
}

// ---- value conversion -------------------------------------------------------------------------

namespace detail {
template <class T>
std::string to_text(const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_same_v<T, std::string>) {
    return v;
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest round-trip form
    return std::string(buf, r.ptr);
  } else {
    return std::to_string(v);
  }
}

template <class T>
bool from_text(const std::string& s, T& out) {
  if constexpr (std::is_same_v<T, bool>) {
    if (s == "true" || s == "1" || s == "yes" || s == "on") return out = true, true;
    if (s == "false" || s == "0" || s == "no" || s == "off") return out = false, true;
    return false;
  } else if constexpr (std::is_same_v<T, std::string>) {
    out = s;
    return true;
  } else if constexpr (std::is_floating_point_v<T>) {
    T v{};
    auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return false;
    out = v;
    return true;
  } else {
    T v{};
    auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return false;
    out = v;
    return true;
  }
}

template <class T>
constexpr const char* type_word() {
  if constexpr (std::is_same_v<T, bool>) return "true or false";
  else if constexpr (std::is_same_v<T, std::string>) return "text";
  else if constexpr (std::is_floating_point_v<T>) return "a number";
  else if constexpr (std::is_unsigned_v<T>) return "a non-negative integer";
  else return "an integer";
}
}  // namespace detail

/// Reads parameters from a stage_spec into a struct via its visit(); unknown keys are an error.
class param_reader {
 public:
  explicit param_reader(const stage_spec& s) : spec_(s) {}
  template <class T>
  void operator()(std::string_view key, T& field, std::string_view /*help*/) {
    known_.emplace_back(key);
    for (const auto& [k, v] : spec_.params)
      if (k == key) {
        if (!detail::from_text(v, field))
          throw_usage("stage '" + spec_.name + "': parameter '" + std::string(key) + "': expected " +
                      detail::type_word<T>() + ", found '" + v + "'");
        used_.insert(k);
      }
  }
  void finish() const {
    for (const auto& [k, v] : spec_.params)
      if (!used_.count(k)) {
        std::string list;
        for (const auto& n : known_) list += (list.empty() ? "" : ", ") + n;
        throw_usage("stage '" + spec_.name + "': unknown parameter '" + k + "' (accepted: " + (list.empty() ? "none" : list) + ")");
      }
  }

 private:
  const stage_spec& spec_;
  std::vector<std::string> known_;
  std::set<std::string> used_;
};

/// Collects the canonical key=value list of a parameter struct.
class param_writer {
 public:
  template <class T>
  void operator()(std::string_view key, const T& field, std::string_view /*help*/) {
    out.emplace_back(std::string(key), detail::to_text(field));
  }
  std::vector<std::pair<std::string, std::string>> out;
};

struct param_info {
  std::string key, default_value, help;
};

/// Collects (key, default, help) for `kvcodec list`, from a default-constructed struct.
class param_lister {
 public:
  template <class T>
  void operator()(std::string_view key, const T& field, std::string_view help) {
    out.push_back({std::string(key), detail::to_text(field), std::string(help)});
  }
  std::vector<param_info> out;
};

/// Parses a descriptor from a stage_spec: visit + unknown-key check + the descriptor's validate().
template <class D>
D parse_params(const stage_spec& s) {
  D d{};
  param_reader r(s);
  d.visit(r);
  r.finish();
  d.validate();
  return d;
}

template <class D>
stage_spec to_stage_spec(const D& d) {
  param_writer w;
  D copy = d;
  copy.visit(w);
  return stage_spec{std::string(D::name), std::move(w.out)};
}

/// Throws a usage error "stage 'S': parameter 'K': expected E, found F" unless ok.
template <class V>
void check_param(bool ok, std::string_view stage, std::string_view key, std::string_view expected, const V& found) {
  if (!ok)
    throw_usage("stage '" + std::string(stage) + "': parameter '" + std::string(key) + "': expected " +
                std::string(expected) + ", found " + detail::to_text(found));
}

}  // namespace kvcodec
