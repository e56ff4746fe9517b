// kvcodec compare IN — a table over a set of codecs; by default one or more rows for every stage and
// preset the registry holds (see compare_coverage below and default_compare_set).
#include <fstream>
#include <map>

#include "common.hpp"

namespace kvcodec::cli {

/// What the default set covers, for --help and the README.
inline constexpr const char* compare_coverage =
    "Without -c, every stage and preset registered in this build gets a row, read from the registry: the lossless "
    "baselines raw:dtype=f16, raw:dtype=bf16 and zstd:level=1/3/19; every quantizer with its defaults (kivi at bits=4 "
    "and bits=2, uniform:bits=4, fp8:format=e4m3); every transform as NAME|uniform:bits=4; every other entropy coder "
    "as kivi:bits=4|NAME (pack, the default coder, ends every spec without one); every preset with its defaults (kvc "
    "at levels 1, 5 and 9); every token-dropping stage as NAME:keep=0.5|kivi:bits=4|rans. A default row the dump "
    "cannot run (query-based dropping without queries, block formats whose rows are not whole blocks) is reported "
    "as skipped with the reason.";

/// The default comparison set, built by iterating the registry so that a newly registered stage or
/// preset gets a row without editing this list: the specs below name the representative variants of
/// the well-known stages; every other stage gets its defaults, composed by kind.
inline std::vector<std::string> default_compare_set(const registry& reg = builtin_registry()) {
  const std::map<std::string, std::vector<std::string>> variants = {
      {"raw", {"raw:dtype=f16", "raw:dtype=bf16"}},
      {"zstd", {"zstd:level=1", "zstd:level=3", "zstd:level=19"}},
      {"uniform", {"uniform:bits=4"}},
      {"kivi", {"kivi:bits=4", "kivi:bits=2"}},
      {"fp8", {"fp8:format=e4m3"}},
      {"pack", {}},  // the default coder: every spec above without a coder ends in |pack
      {"kvc", {"kvc:level=1", "kvc:level=5", "kvc:level=9"}},
  };
  auto by_default = [](const stage_entry& e) -> std::string {
    switch (e.kind) {
      case stage_kind::transform: return e.name + "|uniform:bits=4";
      case stage_kind::entropy: return "kivi:bits=4|" + e.name;
      case stage_kind::drop: {
        const bool has_keep = std::any_of(e.params.begin(), e.params.end(), [](const param_info& p) { return p.key == "keep"; });
        return e.name + (has_keep ? ":keep=0.5" : "") + "|kivi:bits=4|rans";
      }
      default: return e.name;
    }
  };
  std::vector<std::string> out;
  auto add = [&](const std::string& name, const std::string& fallback) {
    const auto it = variants.find(name);
    for (const auto& s : it != variants.end() ? it->second : std::vector<std::string>{fallback}) {
      make_codec(s, reg);  // every default spec builds (a bad one is a bug: tests/cli/test_cli.sh runs them all)
      out.push_back(s);
    }
  };
  auto stages = [&](auto&& pick) {
    for (const auto& e : reg.stages())
      if (pick(e)) add(e.name, by_default(e));
  };
  const auto baseline = [](const stage_entry& e) { return e.name == "raw" || e.name == "zstd"; };
  stages([&](const stage_entry& e) { return e.name == "raw"; });  // lossless baselines
  stages([&](const stage_entry& e) { return e.name == "zstd"; });
  stages([&](const stage_entry& e) { return e.kind == stage_kind::quant && !baseline(e); });
  stages([&](const stage_entry& e) { return e.kind == stage_kind::transform; });
  stages([&](const stage_entry& e) { return e.kind == stage_kind::entropy && !baseline(e); });
  for (const auto& p : reg.presets()) add(p.name, p.name);
  stages([&](const stage_entry& e) { return e.kind == stage_kind::drop; });
  return out;
}

command add_compare(CLI::App& root) {
  auto* app = root.add_subcommand("compare", "Compare a set of codecs on one KV dump (table, or --json / --markdown / --csv FILE); "
                                             "by default every registered stage and preset (see below)");
  app->footer(compare_coverage);
  struct opts {
    std::vector<std::string> specs;
    std::string in, csv, window;
    std::int64_t chunk = 256, attn_rows = 0;
    int threads = 0, repeats = 0;
    bool json = false, markdown = false;
  };
  auto o = std::make_shared<opts>();
  app->add_option("-c,--codec", o->specs, "Codec spec, one per flag (repeat for several; default: every registered stage and preset)")
      ->allow_extra_args(false);
  app->add_option("--chunk", o->chunk, "Tokens per segment")->capture_default_str()->check(CLI::Range(1, 1 << 30));
  app->add_option("-j,--threads", o->threads, "Worker threads (0 = all cores)")->capture_default_str();
  app->add_option("--repeats", o->repeats, "Timed runs per codec, best kept (0 = until 0.3 s or 5 runs)")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
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
            const bool defaults = o->specs.empty();
            const auto specs = defaults ? default_compare_set() : o->specs;
            if (!defaults)
              for (const auto& s : specs)
              if (!kvc_target_of(s)) make_codec(s);  // fail fast on a bad spec (a kvc target is resolved on the cache)
            eval::eval_options eo;
            eo.encode.chunk_tokens = o->chunk;
            eo.threads = o->threads;
            eo.repeats = o->repeats;
            parse_window(o->window, eo.attn);
            eo.attn.max_rows = o->attn_rows;
            std::vector<eval::eval_result> rs;
            std::vector<std::pair<std::string, std::string>> skipped;  // default rows this dump cannot run
            progress_bar bar("compare");
            auto cb = bar.callback();
            for (std::size_t i = 0; i < specs.size(); ++i) {
              try {
                rs.push_back(eval::evaluate(specs[i], d.cache, eo));
                rs.back().decoded = {};
              } catch (const error& e) {
                // Only the default set skips, and only a spec that does not fit this dump (the specs themselves
                // were built above): a spec the user named must run or fail, and a corrupt round trip always fails.
                const bool unfit = e.kind() == error_kind::bad_input || e.kind() == error_kind::usage || e.kind() == error_kind::unsupported;
                if (!defaults || !unfit) throw;
                skipped.emplace_back(specs[i], e.what());
              }
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
            for (const auto& [spec, why] : skipped) std::fprintf(o->json ? stderr : stdout, "skipped %s: %s\n", spec.c_str(), why.c_str());
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
