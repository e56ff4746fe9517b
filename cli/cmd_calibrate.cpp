// kvcodec calibrate --model CKPT --context-tokens C DUMP... [--kstep K] [--vstep V] [--profile-out P [-f]] [--json]
// Measures, with the model in the loop, how much each layer's K and V add to the model KL at kvw's
// reference steps, and prints the kvw spec whose per-layer step multipliers balance them
// (include/kvcodec/eval/calibrate.hpp). With --profile-out it first fits the model's KV profile (the
// per-head transforms of the klt codec) on the dumps, writes it, and calibrates klt with it instead.
// Calibrate on dumps other than those you will measure on.
#include <filesystem>

#include <nlohmann/json.hpp>

#include "common.hpp"
#include "kvcodec/eval/calibrate.hpp"
#include "kvcodec/model/llama2c.hpp"

namespace kvcodec::cli {

command add_calibrate(CLI::App& root) {
  auto* app = root.add_subcommand("calibrate", "Per-layer kvw (or klt, with --profile-out) step multipliers from a model's sensitivity, measured on KV dumps of that model");
  struct opts {
    std::vector<std::string> dumps;
    std::string model;
    std::int64_t context = 0;
    double kstep = 0.2, vstep = 0.3;
    bool json = false;
    std::string profile_out;
    bool force = false;
  };
  auto o = std::make_shared<opts>();
  app->add_option("--model", o->model, "llama2.c checkpoint of the model the dumps come from")->required();
  app->add_option("--context-tokens", o->context, "Tokens [0, C) are the stored context, [C, T) are scored")->required()->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 40));
  app->add_option("--kstep", o->kstep, "Reference key step (kvw's kstep)")->capture_default_str()->check(CLI::Range(1e-6, 64.0));
  app->add_option("--vstep", o->vstep, "Reference value step (kvw's vstep)")->capture_default_str()->check(CLI::Range(1e-6, 64.0));
  app->add_option("--profile-out", o->profile_out,
                  "Fit the model's KV profile for the klt codec on the dumps (every token), write it here (safetensors), and calibrate klt with it instead of kvw");
  app->add_flag("-f,--force", o->force, "Overwrite the --profile-out file if it exists");
  app->add_flag("--json", o->json, "Print the sensitivities, multipliers and spec as JSON");
  app->add_option("DUMPS", o->dumps, "KV dumps of the model (with token ids and RoPE metadata)")->required();
  return {app, [o] {
            const auto m = std::make_shared<const model::llama2c_model>(model::load_llama2c(o->model));
            std::vector<io::kv_dump> ds;
            for (const auto& p : o->dumps) ds.push_back(io::read_kv_dump(p));
            std::vector<const kv_cache*> ptrs;
            for (const auto& d : ds) ptrs.push_back(&d.cache);
            if (!o->profile_out.empty() && !o->force && std::filesystem::exists(o->profile_out))
              throw_usage("calibrate: --profile-out " + o->profile_out + " exists; pass --force to overwrite it");
            std::string profile_hash;
            if (!o->profile_out.empty()) {
              std::string names;
              for (const auto& p : o->dumps) names += (names.empty() ? "" : ",") + std::filesystem::path(p).filename().string();
              const io::kv_profile pr = eval::build_profile(*m, ptrs, names);
              io::write_kv_profile(o->profile_out, pr, true);
              profile_hash = io::profile_hash_text(pr.hash);
              io::profile_registry::instance().add(pr);
            }
            const eval::calibration c = eval::calibrate_layers(m, ptrs, o->context, o->kstep, o->vstep, profile_hash);
            if (o->json) {
              nlohmann::json j;
              j["kstep"] = c.kstep;
              j["vstep"] = c.vstep;
              j["key_kl"] = c.ksens;
              j["value_kl"] = c.vsens;
              j["klayer"] = c.kmul;
              j["vlayer"] = c.vmul;
              j["spec"] = c.spec;
              if (!profile_hash.empty()) {
                j["profile"] = o->profile_out;
                j["profile_hash"] = profile_hash;
              }
              std::cout << j.dump(2) << "\n";
              return 0;
            }
            std::printf("model KL with one part lossy at kstep=%g, vstep=%g (mean over %zu dump%s):\n", c.kstep, c.vstep, ptrs.size(),
                        ptrs.size() == 1 ? "" : "s");
            std::printf("%-6s %12s %12s %8s %8s\n", "layer", "K only", "V only", "K mult", "V mult");
            for (std::size_t l = 0; l < c.ksens.size(); ++l)
              std::printf("%-6zu %12.4g %12.4g %8.3g %8.3g\n", l, c.ksens[l], c.vsens[l], c.kmul[l], c.vmul[l]);
            std::printf("spec: %s\n", c.spec.c_str());
            if (!profile_hash.empty())
              std::printf("profile: %s (hash %s; pass it with --profile to encode, decode and eval)\n", o->profile_out.c_str(), profile_hash.c_str());
            return 0;
          }};
}

}  // namespace kvcodec::cli
