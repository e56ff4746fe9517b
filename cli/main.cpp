// kvcodec — encode, decode, inspect and evaluate KV-cache dumps.
#include <malloc.h>

#include <exception>
#include <iostream>
#include <new>
#include <vector>

#include "common.hpp"
#include "kvcodec/io/kv_profile.hpp"

int main(int argc, char** argv) {
  using namespace kvcodec::cli;
  // Per-segment buffers (symbols, blocks: up to a few MB) are allocated and freed thousands of times;
  // glibc would serve each from a fresh mmap and fault every page in again. Keep them on the heap.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  CLI::App app{"kvcodec " KVCODEC_VERSION_STRING " — KV-cache compression: encode, decode, inspect and evaluate KV dumps"};
  app.require_subcommand(1);
  app.set_version_flag("--version", KVCODEC_VERSION_STRING);
  std::vector<command> cmds = {add_encode(app), add_decode(app), add_info(app), add_list(app),
                               add_eval(app),   add_compare(app), add_synth(app), add_plan(app), add_calibrate(app), add_verify(app), add_plan_verify(app), add_store(app)};
  // Commands that encode or decode take KV profiles (`klt`'s per-model transforms, io/kv_profile.hpp).
  std::vector<std::string> profiles;
  for (auto& c : cmds) {
    const std::string n = c.app->get_name();
    if (n == "encode" || n == "decode" || n == "eval" || n == "compare" || n == "verify" || n == "plan")
      c.app->add_option("--profile", profiles, "KV profile file(s) for the klt codec (from `kvcodec calibrate --profile-out`); repeatable")
          ->allow_extra_args(false);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? ok : usage;
  }
  try {
    for (const auto& p : profiles) kvcodec::io::profile_registry::instance().load(p);
    for (auto& c : cmds)
      if (c.app->parsed()) return c.run();
  } catch (const kvcodec::error& e) {
    std::cerr << "kvcodec: " << e.what() << "\n";
    return exit_for(e);
  } catch (const std::bad_alloc&) {
    std::cerr << "kvcodec: out of memory\n";
    return bad_input;
  } catch (const std::exception& e) {
    std::cerr << "kvcodec: internal error: " << e.what() << "\n";
    return internal;
  }
  return usage;
}
