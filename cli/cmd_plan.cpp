// kvcodec plan IN --gbps G --deadline S [--recompute S] [--levels 1,3,5,7,9] [--chunk N] [--json]
// Encodes the dump at each kvc level, measures every token chunk's size and each level's attention
// KL, then plans a level (or recomputation) per chunk to meet the deadline (pipeline/plan.hpp).
#include <nlohmann/json.hpp>

#include "common.hpp"
#include "kvcodec/eval/evaluate.hpp"
#include "kvcodec/pipeline/plan.hpp"

namespace kvcodec::cli {

command add_plan(CLI::App& root) {
  auto* app = root.add_subcommand("plan", "Pick a kvc level (or recompute) per token chunk to load a KV dump within a deadline");
  struct opts {
    std::string in;
    double gbps = 1, deadline = 1, recompute = -1;
    std::vector<int> levels{1, 3, 5, 7, 9};
    std::int64_t chunk = 256;
    bool json = false;
  };
  auto o = std::make_shared<opts>();
  app->add_option("--gbps", o->gbps, "Link bandwidth in Gbit/s")->capture_default_str()->check(CLI::PositiveNumber);
  app->add_option("--deadline", o->deadline, "Deadline in seconds")->capture_default_str()->check(CLI::PositiveNumber);
  app->add_option("--recompute", o->recompute, "Seconds to recompute one chunk (negative: never recompute)")->capture_default_str();
  app->add_option("--levels", o->levels, "kvc levels to choose from")->delimiter(',')->allow_extra_args(false)->capture_default_str()->check(CLI::Range(1, 9));
  app->add_option("--chunk", o->chunk, "Tokens per chunk")->capture_default_str()->check(CLI::Range(1, 1 << 30));
  app->add_flag("--json", o->json, "Print the plan as JSON");
  app->add_option("IN", o->in, "KV dump: .safetensors, .npz or .npy")->required();
  return {app, [o] {
            io::kv_dump d = io::read_kv_dump(o->in);
            std::vector<int> levels = o->levels;
            std::sort(levels.begin(), levels.end());
            levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
            plan::plan_input pin;
            pin.bandwidth = o->gbps * 1e9 / 8.0;
            pin.deadline_s = o->deadline;
            pin.allow_recompute = o->recompute >= 0;
            const std::int64_t T = d.cache.shape.tokens;
            const std::size_t nchunks = static_cast<std::size_t>((T + o->chunk - 1) / o->chunk);
            pin.chunks.assign(nchunks, plan::chunk_costs{});
            for (auto& c : pin.chunks) c.recompute_s = std::max(o->recompute, 0.0);
            eval::eval_options eo;
            eo.encode.chunk_tokens = o->chunk;
            eo.repeats = 1;
            for (int lv : levels) {
              const std::string spec = "kvc:level=" + std::to_string(lv);
              const eval::eval_result er = eval::evaluate(spec, d.cache, eo);
              pin.level_loss.push_back(er.attention ? er.attention->kl : er.metrics.key.rel_fro_error + er.metrics.value.rel_fro_error);
              codec c = make_codec(spec);
              const encoded e = encode(c, d.cache, eo.encode);
              const kvc_view v = parse_kvc(e.data, spec);
              for (auto& ch : pin.chunks) ch.bytes.push_back(0);
              for (std::size_t s = 0; s < v.header.segments.size(); ++s) {
                const auto& se = v.header.segments[s];
                pin.chunks[static_cast<std::size_t>(se.t0 / o->chunk)].bytes.back() += static_cast<double>(se.size);
              }
              if (!pin.chunks.empty()) pin.chunks[0].bytes.back() += static_cast<double>(e.report.state_bytes);  // sent first
            }
            const plan::plan_result r = plan::plan(pin);
            if (o->json) {
              nlohmann::json j;
              j["levels"] = levels;
              j["level_loss"] = pin.level_loss;
              j["feasible"] = r.feasible;
              j["delay_s"] = r.delay_s;
              j["transfer_s"] = r.transfer_s;
              j["recompute_s"] = r.recompute_s;
              j["total_loss"] = r.total_loss;
              nlohmann::json ch = nlohmann::json::array();
              for (std::size_t i = 0; i < nchunks; ++i) {
                const int c = r.choice[i];
                ch.push_back({{"chunk", i}, {"choice", c < 0 ? std::string("recompute") : "kvc:level=" + std::to_string(levels[static_cast<std::size_t>(c)])},
                              {"bytes", c < 0 ? 0.0 : pin.chunks[i].bytes[static_cast<std::size_t>(c)]}});
              }
              j["chunks"] = ch;
              std::cout << j.dump(2) << "\n";
            } else {
              std::printf("levels:");
              for (std::size_t k = 0; k < levels.size(); ++k) std::printf(" %d (attention KL %.4g)", levels[k], pin.level_loss[k]);
              std::printf("\n%-6s %-16s %12s\n", "chunk", "choice", "bytes");
              for (std::size_t i = 0; i < nchunks; ++i) {
                const int c = r.choice[i];
                std::printf("%-6zu %-16s %12.0f\n", i, c < 0 ? "recompute" : ("kvc:level=" + std::to_string(levels[static_cast<std::size_t>(c)])).c_str(),
                            c < 0 ? 0.0 : pin.chunks[i].bytes[static_cast<std::size_t>(c)]);
              }
              std::printf("expected delay %.6f s (transfer %.6f s, recompute %.6f s), deadline %.6f s: %s; total loss %.4g\n", r.delay_s, r.transfer_s,
                          r.recompute_s, pin.deadline_s, r.feasible ? "met" : "MISSED", r.total_loss);
            }
            return r.feasible ? 0 : 2;
          }};
}

}  // namespace kvcodec::cli
