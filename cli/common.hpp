// cli/common.hpp — shared plumbing of the kvcodec command: exit codes, progress, file guards.
#pragma once

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <string>

#include "kvcodec/cpu/drop/rerotate.hpp"
#include "kvcodec/io/file.hpp"
#include "kvcodec/io/kv_dump.hpp"
#include "kvcodec/io/kv_dump_view.hpp"
#include "kvcodec/pipeline/decode_file.hpp"
#include "kvcodec/kvcodec.hpp"

namespace kvcodec::cli {

/// Exit codes: 0 ok, 1 usage, 2 bad input or corrupt file, 3 internal error.
enum exit_code : int { ok = 0, usage = 1, bad_input = 2, internal = 3 };

inline int exit_for(const error& e) {
  switch (e.kind()) {
    case error_kind::usage: return usage;
    default: return bad_input;
  }
}

/// A one-line progress bar on stderr, shown only when stderr is a terminal.
class progress_bar {
 public:
  explicit progress_bar(std::string label) : label_(std::move(label)), tty_(isatty(STDERR_FILENO) == 1) {}
  ~progress_bar() {
    if (tty_ && drawn_) std::fprintf(stderr, "\r\033[K");
  }
  std::function<void(std::size_t, std::size_t)> callback() {
    if (!tty_) return {};
    return [this](std::size_t done, std::size_t total) {
      const auto now = std::chrono::steady_clock::now();
      if (done != total && now - last_ < std::chrono::milliseconds(100)) return;
      last_ = now;
      drawn_ = true;
      const int width = 30;
      const int fill = total ? static_cast<int>(static_cast<double>(done) / static_cast<double>(total) * width) : width;
      std::fprintf(stderr, "\r%s [%.*s%*s] %zu/%zu", label_.c_str(), fill, "##############################", width - fill, "", done, total);
      std::fflush(stderr);
    };
  }

 private:
  std::string label_;
  bool tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

/// Refuses an output path that is the input, or an existing file without --force.
inline void check_output(const std::string& in, const std::string& out, bool force) {
  if (io::same_file(in, out) || in == out)
    throw error(error_kind::bad_input, out + ": output path is the input file; refusing to overwrite it");
  std::error_code ec;
  if (!force && std::filesystem::exists(out, ec))
    throw error(error_kind::bad_input, out + ": exists; pass --force to overwrite it");
}

struct command {
  CLI::App* app;
  std::function<int()> run;
};

command add_encode(CLI::App& root);
command add_decode(CLI::App& root);
command add_info(CLI::App& root);
command add_list(CLI::App& root);
command add_eval(CLI::App& root);
command add_compare(CLI::App& root);
command add_synth(CLI::App& root);
command add_plan(CLI::App& root);
command add_calibrate(CLI::App& root);
command add_verify(CLI::App& root);
command add_plan_verify(CLI::App& root);
command add_store(CLI::App& root);

}  // namespace kvcodec::cli

#include "kvcodec/eval/evaluate.hpp"

namespace kvcodec::cli {

inline std::string fmt_num(double v, const char* f = "%.4g") {
  if (!std::isfinite(v)) return v > 0 ? "inf" : "-";
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

/// Text (or Markdown) table of eval results.
inline void print_eval_table(const std::vector<eval::eval_result>& rs, bool markdown, std::FILE* out = stdout) {
  const char* sep = markdown ? " | " : "  ";
  if (markdown) std::fprintf(out, "| ");
  std::fprintf(out, "%-44s%s%8s%s%8s%s%9s%s%9s%s%10s%s%10s%s%10s%s%10s", "codec", sep, "bits/el", sep, "x fp16", sep, "enc MB/s", sep,
               "dec MB/s", sep, "K relerr", sep, "V relerr", sep, "attn err", sep, "attn KL");
  if (markdown) std::fprintf(out, " |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|");
  std::fprintf(out, "\n");
  for (const auto& r : rs) {
    if (markdown) std::fprintf(out, "| ");
    const std::string name = r.requested.size() > 44 ? r.requested.substr(0, 41) + "..." : r.requested;
    std::fprintf(out, "%-44s%s%8.4f%s%8.2f%s%9.1f%s%9.1f%s%10s%s%10s%s%10s%s%10s", name.c_str(), sep, r.bits_per_element, sep,
                 r.ratio_vs_fp16, sep, r.encode_mb_s, sep, r.decode_mb_s, sep, fmt_num(r.metrics.key.rel_fro_error).c_str(), sep,
                 fmt_num(r.metrics.value.rel_fro_error).c_str(), sep, r.attention ? fmt_num(r.attention->rel_error).c_str() : "-", sep,
                 r.attention ? fmt_num(r.attention->kl).c_str() : "-");
    if (markdown) std::fprintf(out, " |");
    std::fprintf(out, "\n");
  }
}

/// Parses "A:B" into a query window for attention metrics.
inline void parse_window(const std::string& s, eval::attention_options& a) {
  if (s.empty()) return;
  const auto c = s.find(':');
  try {
    if (c == std::string::npos) throw std::invalid_argument("no colon");
    a.query_begin = std::stoll(s.substr(0, c));
    a.query_end = c + 1 < s.size() ? std::stoll(s.substr(c + 1)) : -1;
  } catch (const std::exception&) {
    throw_usage("--query-window: expected BEGIN:END token positions (END may be empty for the end), found '" + s + "'");
  }
}

}  // namespace kvcodec::cli
