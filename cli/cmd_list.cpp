// kvcodec list
#include "common.hpp"

namespace kvcodec::cli {

command add_list(CLI::App& root) {
  auto* app = root.add_subcommand("list", "List every stage and preset with its parameters, defaults and a description");
  auto json = std::make_shared<bool>(false);
  app->add_flag("--json", *json, "Print JSON");
  return {app, [json] {
            const registry& r = builtin_registry();
            if (*json) {
              nlohmann::json j = nlohmann::json::array();
              for (const auto& e : r.stages()) {
                nlohmann::json p = nlohmann::json::array();
                for (const auto& x : e.params) p.push_back({{"key", x.key}, {"default", x.default_value}, {"help", x.help}});
                j.push_back({{"name", e.name},
                             {"kind", std::string(stage_kind_name(e.kind))},
                             {"summary", e.summary},
                             {"params", p},
                             {"cuda", {{"decode", e.cuda.decode}, {"encode", e.cuda.encode}, {"header", e.cuda.header}, {"limits", e.cuda.limits}}}});
              }
              for (const auto& e : r.presets()) {
                nlohmann::json p = nlohmann::json::array();
                for (const auto& x : e.params) p.push_back({{"key", x.key}, {"default", x.default_value}, {"help", x.help}});
                j.push_back({{"name", e.name}, {"kind", "preset"}, {"summary", e.summary}, {"params", p}});
              }
              std::cout << j.dump(2) << "\n";
              return 0;
            }
            std::printf("Codec spec: stages joined by '|', each 'name:key=value,key=value'; order drop -> transform -> quant -> entropy.\n");
            std::printf("Without a quant stage the cache is stored raw (lossless); without an entropy stage symbols are bit-packed.\n");
            for (stage_kind k : {stage_kind::drop, stage_kind::transform, stage_kind::quant, stage_kind::entropy}) {
              bool header = false;
              for (const auto& e : r.stages()) {
                if (e.kind != k) continue;
                if (!header) std::printf("\n[%s]\n", std::string(stage_kind_name(k)).c_str()), header = true;
                std::printf("  %-20s %s\n", e.name.c_str(), e.summary.c_str());
                if (!e.cuda.header.empty()) {
                  const std::string what = e.cuda.decode && e.cuda.encode ? "decode and encode"
                                           : e.cuda.decode                ? "decode"
                                           : e.cuda.encode                ? "encode"
                                                                          : "kernels";
                  std::printf("      [cuda: %s, cuda/include/kvcodec/cuda/%s%s%s]\n", what.c_str(), e.cuda.header.c_str(), e.cuda.limits.empty() ? "" : "; ",
                              e.cuda.limits.c_str());
                }
                for (const auto& p : e.params)
                  std::printf("      %-16s = %-10s %s\n", p.key.c_str(), p.default_value.c_str(), p.help.c_str());
              }
            }
            if (!r.presets().empty()) std::printf("\n[presets]\n");
            for (const auto& e : r.presets()) {
              std::printf("  %-20s %s\n", e.name.c_str(), e.summary.c_str());
              for (const auto& p : e.params) std::printf("      %-16s = %-10s %s\n", p.key.c_str(), p.default_value.c_str(), p.help.c_str());
            }
            return 0;
          }};
}

}  // namespace kvcodec::cli
