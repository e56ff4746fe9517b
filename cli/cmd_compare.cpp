// kvcodec compare IN — a table over a set of codecs (every registered family by default).
#include <fstream>

#include "common.hpp"

namespace kvcodec::cli {

/// The default comparison set: baselines first, then each registered family (skipping what this
/// build does not register).
inline std::vector<std::string> default_compare_set() {
  const std::vector<std::string> wanted = {"raw:dtype=f16", "raw:dtype=bf16", "zstd:level=1", "zstd:level=3", "zstd:level=19",
                                           "fp8:format=e4m3", "q8_0", "q4_0", "kivi:bits=4", "kivi:bits=2", "cachegen",
                                           "cachegen-paper", "kvc:level=1", "kvc:level=5", "kvc:level=9"};
  std::vector<std::string> out;
  for (const auto& s : wanted) {
    try {
      make_codec(s);
      out.push_back(s);
    } catch (const error&) {
    }
  }
  return out;
}

command add_compare(CLI::App& root) {
  auto* app = root.add_subcommand("compare", "Compare a set of codecs on one KV dump (table, or --json / --markdown / --csv FILE)");
  struct opts {
    std::vector<std::string> specs;
    std::string in, csv, window;
    std::int64_t chunk = 256, attn_rows = 0;
    int threads = 0;
    bool json = false, markdown = false;
  };
  auto o = std::make_shared<opts>();
  app->add_option("-c,--codec", o->specs, "Codecs to compare (default: the baselines and every registered family)");
  app->add_option("--chunk", o->chunk, "Tokens per segment")->capture_default_str()->check(CLI::Range(1, 1 << 30));
  app->add_option("-j,--threads", o->threads, "Worker threads (0 = all cores)")->capture_default_str();
  app->add_option("--attention-rows", o->attn_rows, "Sample at most this many query rows for attention metrics (0 = all)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app->add_option("--query-window", o->window, "Measure attention only for query positions BEGIN:END");
  app->add_option("--csv", o->csv, "Also write the table as CSV to this file");
  app->add_flag("--json", o->json, "Print JSON");
  app->add_flag("--markdown", o->markdown, "Print a Markdown table");
  app->add_option("IN", o->in, "KV dump: .safetensors, .npz or .npy")->required();
  return {app, [o] {
            if (!o->csv.empty()) check_output(o->in, o->csv, true);
            io::kv_dump d = io::read_kv_dump(o->in);
            const auto specs = o->specs.empty() ? default_compare_set() : o->specs;
            eval::eval_options eo;
            eo.encode.chunk_tokens = o->chunk;
            eo.threads = o->threads;
            parse_window(o->window, eo.attn);
            eo.attn.max_rows = o->attn_rows;
            std::vector<eval::eval_result> rs;
            progress_bar bar("compare");
            auto cb = bar.callback();
            for (std::size_t i = 0; i < specs.size(); ++i) {
              rs.push_back(eval::evaluate(specs[i], d.cache, eo));
              rs.back().decoded = {};
              if (cb) cb(i + 1, specs.size());
            }
            if (o->json) {
              nlohmann::json arr = nlohmann::json::array();
              for (const auto& r : rs) arr.push_back(eval::to_json(r));
              std::cout << arr.dump(2) << "\n";
            } else {
              const auto& s = d.cache.shape;
              std::printf("%s: %d layers x %d kv heads x %lld tokens x %d head_dim, %s%s\n", o->in.c_str(), s.layers, s.kv_heads,
                          static_cast<long long>(s.tokens), s.head_dim, std::string(dtype_name(d.cache.source_dtype)).c_str(),
                          d.cache.has_queries() ? ", with queries" : ", no queries (no attention metrics)");
              print_eval_table(rs, o->markdown);
            }
            if (!o->csv.empty()) {
              std::ofstream f(o->csv);
              f << "codec,bits_per_element,ratio_vs_fp16,encode_mb_s,decode_mb_s,key_rel_fro_error,value_rel_fro_error,key_snr_db,value_snr_db,attention_rel_error,attention_kl\n";
              for (const auto& r : rs)
                f << '"' << r.requested << "\"," << r.bits_per_element << ',' << r.ratio_vs_fp16 << ',' << r.encode_mb_s << ',' << r.decode_mb_s << ','
                  << r.metrics.key.rel_fro_error << ',' << r.metrics.value.rel_fro_error << ',' << fmt_num(r.metrics.key.snr_db, "%.6g") << ','
                  << fmt_num(r.metrics.value.snr_db, "%.6g") << ',' << (r.attention ? fmt_num(r.attention->rel_error, "%.6g") : "") << ','
                  << (r.attention ? fmt_num(r.attention->kl, "%.6g") : "") << "\n";
              if (!f) throw error(error_kind::io, o->csv + ": write failed");
            }
            return 0;
          }};
}

}  // namespace kvcodec::cli
