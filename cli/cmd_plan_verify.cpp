// kvcodec plan-verify [--preset llama-3-8b|llama-3-70b | --weight-bytes W --kv-bytes-per-token B]
//                     [--context C --batch N] [--hbm-gbps --hbm-gb --link-gbps --link-latency-us]
//                     (--curves VERIFY.json ... | --curve NAME:BITS:a0,a1,...) [--k-max K] [--json]
// Projects tokens/s of draft-and-verify for each codec and horizon against full-cache decoding.
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common.hpp"
#include "kvcodec/verify/planner.hpp"

namespace kvcodec::cli {

command add_plan_verify(CLI::App& root) {
  auto* app = root.add_subcommand("plan-verify", "Project draft-and-verify throughput per codec and horizon (VeriCache iteration model)");
  struct opts {
    std::string preset = "llama-3-8b";
    double weight_bytes = 0, kv_bytes = 0, context = 32768, hbm_gbps = 3350, hbm_gb = 80, link_gbps = 55, link_latency_us = 20;
    int batch = 8, k_max = 32;
    std::vector<std::string> curve_files, curves;
    bool json = false;
  };
  auto o = std::make_shared<opts>();
  app->add_option("--preset", o->preset, "Model: llama-3-8b or llama-3-70b (bf16 weights, GQA 8 KV heads)")
      ->capture_default_str()->check(CLI::IsMember({"llama-3-8b", "llama-3-70b"}));
  app->add_option("--weight-bytes", o->weight_bytes, "Override: model weight bytes");
  app->add_option("--kv-bytes-per-token", o->kv_bytes, "Override: full-precision K+V bytes per token (all layers)");
  app->add_option("--context", o->context, "Context tokens per sequence")->capture_default_str();
  app->add_option("--batch", o->batch, "Sequences decoded together")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  app->add_option("--hbm-gbps", o->hbm_gbps, "Accelerator memory bandwidth, GB/s")->capture_default_str();
  app->add_option("--hbm-gb", o->hbm_gb, "Accelerator memory for weights + KV, GB")->capture_default_str();
  app->add_option("--link-gbps", o->link_gbps, "Bandwidth of the link carrying the full cache, GB/s")->capture_default_str();
  app->add_option("--link-latency-us", o->link_latency_us, "Link latency, microseconds")->capture_default_str();
  app->add_option("--curves", o->curve_files, "JSON written by `kvcodec verify --json` (per-position acceptance + bits)");
  app->add_option("--curve", o->curves, "NAME:BITS:a0,a1,...  conditional acceptance per draft position");
  app->add_option("--k-max", o->k_max, "Largest horizon considered")->capture_default_str()->check(CLI::Range(0, 4096));
  app->add_flag("--json", o->json, "Print JSON");
  return {app, [o] {
            using namespace kvcodec::verify;
            model_desc md;
            if (o->preset == "llama-3-70b") {
              md.name = "llama-3-70b";
              md.weight_bytes = 70.6e9 * 2;
              md.kv_bytes_per_token = 80.0 * 8 * 128 * 2 * 2;
            } else {
              md.name = "llama-3-8b";
              md.weight_bytes = 8.03e9 * 2;
              md.kv_bytes_per_token = 32.0 * 8 * 128 * 2 * 2;
            }
            if (o->weight_bytes > 0) md.weight_bytes = o->weight_bytes;
            if (o->kv_bytes > 0) md.kv_bytes_per_token = o->kv_bytes;
            md.context_tokens = o->context;
            md.batch = o->batch;
            hardware_desc hw;
            hw.hbm_bw = o->hbm_gbps * 1e9;
            hw.hbm_capacity = o->hbm_gb * 1e9;
            hw.link_bw = o->link_gbps * 1e9;
            hw.link_latency_s = o->link_latency_us * 1e-6;
            std::vector<acceptance_curve> curves;
            for (const auto& f : o->curve_files) {
              std::ifstream in(f);
              if (!in) throw error(error_kind::io, f + ": cannot open");
              nlohmann::json j;
              try {
                in >> j;
                acceptance_curve c;
                c.codec = j.at("codec").get<std::string>();
                c.bits_per_element = j.at("bits_per_element").get<double>();
                c.conditional = j.at("per_position").at("rate").get<std::vector<double>>();
                curves.push_back(std::move(c));
              } catch (const nlohmann::json::exception& e) {
                throw_bad_input(f, "verify JSON", "codec, bits_per_element and per_position.rate", e.what());
              }
            }
            for (const auto& s : o->curves) {
              const auto a = s.find(':'), b = a == std::string::npos ? a : s.find(':', a + 1);
              if (b == std::string::npos) throw_usage("plan-verify --curve: expected NAME:BITS:a0,a1,..., found '" + s + "'");
              acceptance_curve c;
              c.codec = s.substr(0, a);
              try {
                c.bits_per_element = std::stod(s.substr(a + 1, b - a - 1));
                std::stringstream ss(s.substr(b + 1));
                std::string item;
                while (std::getline(ss, item, ',')) c.conditional.push_back(std::stod(item));
              } catch (const std::exception&) {
                throw_usage("plan-verify --curve: expected numbers in '" + s + "'");
              }
              curves.push_back(std::move(c));
            }
            if (curves.empty()) throw_usage("plan-verify: give at least one --curves FILE or --curve NAME:BITS:rates");
            const plan_result p = make_plan(hw, md, curves, o->k_max);
            if (o->json) {
              nlohmann::json j = to_json(p);
              j["model"] = {{"name", md.name}, {"weight_bytes", md.weight_bytes}, {"kv_bytes_per_token", md.kv_bytes_per_token},
                            {"context_tokens", md.context_tokens}, {"batch", md.batch}};
              j["hardware"] = {{"hbm_bw", hw.hbm_bw}, {"hbm_capacity", hw.hbm_capacity}, {"link_bw", hw.link_bw}, {"link_latency_s", hw.link_latency_s}};
              std::cout << j.dump(2) << "\n";
              return 0;
            }
            std::printf("PROJECTION (bandwidth model, not a measurement): %s, context %.0f, batch %d\n", md.name.c_str(), md.context_tokens, md.batch);
            std::printf("full-cache decoding (%s): %.1f tokens/s\n", p.full_mode.c_str(), p.full_tokens_per_s);
            std::printf("%-40s %8s %8s %10s %12s %8s\n", "codec", "bits/el", "horizon", "E[tokens]", "tokens/s", "speedup");
            for (const auto& r : p.best_per_codec)
              std::printf("%-40s %8.3f %8d %10.3f %12.1f %8.2f\n", r.codec.substr(0, 40).c_str(), r.bits_per_element, r.horizon,
                          r.expected_tokens, r.tokens_per_s, r.speedup);
            std::printf("best: %s at horizon %d (%.2fx)\n", p.best.codec.c_str(), p.best.horizon, p.best.speedup);
            return 0;
          }};
}

}  // namespace kvcodec::cli
