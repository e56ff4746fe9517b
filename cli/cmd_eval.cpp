// kvcodec eval -c SPEC [-c SPEC ...] IN [--json]
#include "common.hpp"
#include "model_eval.hpp"
#if defined(KVCODEC_CLI_CUDA)
#include "eval_cuda.hpp"
#endif

namespace kvcodec::cli {

command add_eval(CLI::App& root) {
  auto* app = root.add_subcommand("eval", "Encode + decode a KV dump with each codec; report size, speed and fidelity");
  struct opts {
    std::vector<std::string> specs;
    std::string in, window, attn_device = "auto";
    std::int64_t chunk = 256, attn_rows = 0;
    int threads = 0, repeats = 0;
    bool json = false, markdown = false;
    model_eval_cli mo;
  };
  auto o = std::make_shared<opts>();
  app->add_option("-c,--codec", o->specs, "Codec spec, one per flag (repeat for several: -c A -c B)")->required()->allow_extra_args(false);
  app->add_option("--chunk", o->chunk, "Tokens per segment")->capture_default_str()->check(CLI::Range(1, 1 << 30));
  app->add_option("-j,--threads", o->threads, "Worker threads (0 = all cores)")->capture_default_str();
  app->add_option("--repeats", o->repeats, "Timed runs per codec, best kept (0 = until 0.3 s or 5 runs)")->capture_default_str();
  app->add_option("--attention-rows", o->attn_rows, "Sample at most this many query rows for attention metrics (0 = all)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app->add_option("--query-window", o->window, "Measure attention only for query positions BEGIN:END (e.g. 448:512)");
  app->add_option("--attention-device", o->attn_device,
                  "Where the attention metrics run: auto (a CUDA GPU when this build has the CUDA backend and the machine one), cpu or cuda")
      ->capture_default_str()->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app->add_flag("--json", o->json, "Print a JSON array, one object per codec");
  app->add_flag("--markdown", o->markdown, "Print a Markdown table");
  add_model_eval_options(app, o->mo);
  app->add_option("IN", o->in, "KV dump: .safetensors, .npz or .npy")->required();
  return {app, [o] {
            io::kv_dump d = io::read_kv_dump(o->in);
            eval::eval_options eo;
            eo.encode.chunk_tokens = o->chunk;
            eo.threads = o->threads;
            eo.repeats = o->repeats;
            parse_window(o->window, eo.attn);
            eo.attn.max_rows = o->attn_rows;
#if defined(KVCODEC_CLI_CUDA)
            if (o->attn_device != "cpu") {
              eo.attention_on = gpu_attention_backend(eo.attention_device);
              if (!eo.attention_on) eo.attention_device = "cpu";
              if (!eo.attention_on && o->attn_device == "cuda")
                throw_usage("eval --attention-device cuda: no CUDA device of compute capability 8.0 or later on this machine");
            }
#else
            if (o->attn_device == "cuda")
              throw_usage("eval --attention-device cuda: this kvcodec was built without the CUDA backend (no nvcc at build time, or -DKVCODEC_CUDA=OFF)");
#endif
            for (const auto& s : o->specs)
              if (!kvc_target_of(s)) make_codec(s);  // fail fast on a bad spec (a kvc target is resolved on the cache)
            if (!o->mo.model.empty()) return run_model_eval(o->mo, o->specs, o->in, eo, o->json, o->markdown);
            std::vector<eval::eval_result> rs;
            nlohmann::json arr = nlohmann::json::array();
            for (const auto& s : o->specs) {
              rs.push_back(eval::evaluate(s, d.cache, eo));
              rs.back().decoded = {};
              if (o->json) arr.push_back(eval::to_json(rs.back()));
            }
            if (o->json)
              std::cout << arr.dump(2) << "\n";
            else
              print_eval_table(rs, o->markdown);
            return 0;
          }};
}

}  // namespace kvcodec::cli
