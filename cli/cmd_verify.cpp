// kvcodec verify --model CKPT --tokenizer TOK -c SPEC (--context DUMP --context-tokens C | --prompt TEXT)
//                --tokens N [--horizon K|auto] [--temperature T --seed S] [--source memory|file|link] [--json]
// Draft-and-verify (VeriCache): draft with the SPEC-compressed context, verify with the full one.
#include <memory>
#include <string>

#include "common.hpp"
#include "kvcodec/eval/model_eval.hpp"
#include "kvcodec/model/tokenizer.hpp"
#include "kvcodec/verify/decoding.hpp"
#include "kvcodec/verify/llama2c_adapter.hpp"
#include "kvcodec/verify/session.hpp"

namespace kvcodec::cli {

command add_verify(CLI::App& root) {
  auto* app = root.add_subcommand("verify", "Draft with a compressed context, verify with the full one (output = full-cache decoding)");
  struct opts {
    std::string model, tokenizer, spec, context, prompt, horizon = "auto", source = "memory", cost, decoding_spec;
    std::int64_t context_tokens = 0;
    int tokens = 64, k_max = 32, decoding_every = 0;
    double temperature = 0, link_gbps = 16, link_latency_ms = 0.05;
    std::uint64_t seed = 0;
    bool json = false, check_exact = false;
  };
  auto o = std::make_shared<opts>();
  app->add_option("--model", o->model, "llama2.c checkpoint")->required();
  app->add_option("--tokenizer", o->tokenizer, "llama2.c tokenizer.bin")->required();
  app->add_option("-c,--codec", o->spec, "Codec spec for the drafter's context")->required();
  auto* ctx = app->add_option("--context", o->context, "KV dump whose tokens [0, C) are the context");
  auto* pr = app->add_option("--prompt", o->prompt, "Text: the model prefills it; all but its last token form the context");
  ctx->excludes(pr);
  app->add_option("--context-tokens", o->context_tokens, "C (with --context)");
  app->add_option("--tokens", o->tokens, "Tokens to generate")->capture_default_str()->check(CLI::Range(0, 1 << 20));
  app->add_option("--horizon", o->horizon, "Draft length per round: a number, or auto (adaptive)")->capture_default_str();
  app->add_option("--k-max", o->k_max, "Largest horizon auto may pick")->capture_default_str()->check(CLI::Range(0, 4096));
  app->add_option("--cost", o->cost, "Cost model DRAFT,VERIFY,FETCH in any unit: auto optimises it and modeled_s reports it "
                                     "(default: learned from measured times)");
  app->add_option("--temperature", o->temperature, "0 = greedy (exact match); > 0 = rejection sampling")->capture_default_str();
  app->add_option("--seed", o->seed, "Seed of the counter-based sampler")->capture_default_str();
  app->add_option("--source", o->source, "Full cache source: memory, file (re-read each round), link (simulated)")
      ->capture_default_str()->check(CLI::IsMember({"memory", "file", "link"}));
  app->add_option("--link-gbps", o->link_gbps, "Simulated link bandwidth, GB/s")->capture_default_str();
  app->add_option("--link-latency-ms", o->link_latency_ms, "Simulated link latency, ms")->capture_default_str();
  app->add_option("--decoding-every", o->decoding_every,
                  "Decoding compression: compress the drafter's generated rows every N adopted positions (0 = off)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  app->add_option("--decoding-codec", o->decoding_spec, "Codec spec of decoding compression (default: --codec)");
  app->add_flag("--check-exact", o->check_exact, "Replay each verified block token by token and count bitwise mismatches");
  app->add_flag("--json", o->json, "Print a JSON object");
  return {app, [o] {
            using namespace kvcodec::verify;
            if (o->context.empty() == o->prompt.empty()) throw_usage("verify: give exactly one of --context DUMP and --prompt TEXT");
            auto m = std::make_shared<const model::llama2c_model>(model::load_llama2c(o->model));
            const model::tokenizer tok = model::tokenizer::load(o->tokenizer, m->config.vocab_size);
            kv_cache full;
            std::int64_t C = 0;
            int first = 0;
            if (!o->context.empty()) {
              const kv_cache dump = io::read_kv_dump(o->context).cache;
              C = o->context_tokens;
              eval::detail::check_dump_for_model(dump, m->config, C, o->context);
              full = eval::slice_tokens(dump, C);
              first = dump.tokens[static_cast<std::size_t>(C)];
            } else {
              const auto ids = tok.encode(o->prompt, true, false);
              if (ids.size() < 2) throw_usage("verify: --prompt must tokenize to at least 2 tokens (BOS + text)");
              model::decoder pre(m, model::decoder_options{.record_queries = true});
              pre.forward_batch(std::vector<int>(ids.begin(), ids.end() - 1), 0);
              full = pre.export_cache();
              C = full.shape.tokens;
              first = ids.back();
            }
            const encoded enc = encode(o->spec, full);
            const kv_cache lossy = decode(enc.data);
            std::shared_ptr<full_cache_source> src = std::make_shared<memory_source>(full, C);
            std::string tmp_path;
            if (o->source == "file") {
              tmp_path = (std::filesystem::temp_directory_path() / ("kvcodec_verify_" + std::to_string(::getpid()) + ".kvc")).string();
              io::write_file_atomic(tmp_path, encode("raw", full).data, true);
              src = std::make_shared<file_source>(tmp_path, C);
            } else if (o->source == "link") {
              src = std::make_shared<link_source>(src, o->link_gbps * 1e9, o->link_latency_ms * 1e-3);
            }
            std::optional<cost_model> cm;
            if (!o->cost.empty()) {
              double a = 0, b = 0, c = 0;
              if (std::sscanf(o->cost.c_str(), "%lf,%lf,%lf", &a, &b, &c) != 3)
                throw_usage("verify --cost: expected DRAFT,VERIFY,FETCH numbers, found '" + o->cost + "'");
              cm = cost_model{a, b, 0.0, c, true};
              cm->validate();
            }
            std::unique_ptr<horizon_policy> hp;
            if (o->horizon == "auto") {
              adaptive_options ao;
              ao.k_max = o->k_max;
              ao.learn_costs = !cm;
              hp = std::make_unique<adaptive_horizon>(cm ? *cm : cost_model{1e-4, 1e-4, 0.0, 0.0, true}, ao);
            } else {
              int k = -1;
              try {
                k = std::stoi(o->horizon);
              } catch (const std::exception&) {
              }
              if (k < 0) throw_usage("verify --horizon: expected a number >= 0 or auto, found '" + o->horizon + "'");
              hp = std::make_unique<fixed_horizon>(k);
            }
            std::unique_ptr<acceptance_policy> pol;
            if (o->temperature > 0) pol = std::make_unique<rejection_sampling>(o->seed, o->temperature);
            else pol = std::make_unique<greedy_acceptance>();
            // Decoding compression scores generated rows with their queries: both decoders record them.
            const model::decoder_options dopt{.record_queries = o->decoding_every > 0};
            decoder_verifier v(m, o->check_exact, dopt);
            decoder_drafter d(m, dopt);
            d.load(lossy, C);
            std::shared_ptr<decoding_compressor> dc;
            if (o->decoding_every > 0) {
              dc = std::make_shared<decoding_compressor>(o->decoding_spec.empty() ? o->spec : o->decoding_spec, o->decoding_every, static_cast<int>(C));
              d.set_after_adopt([dc](model::decoder& dec) { (*dc)(dec); });
            }
            session_options so;
            so.max_length = m->config.seq_len;
            so.model = cm;
            session_result r;
            try {
              r = draft_and_verify(d, v, *src, *pol, *hp, first, o->tokens, so);
            } catch (...) {
              if (!tmp_path.empty()) std::filesystem::remove(tmp_path);
              throw;
            }
            if (!tmp_path.empty()) std::filesystem::remove(tmp_path);
            decoder_verifier ref(m);
            memory_source ref_src(full, C);
            ref.install(ref_src.fetch());
            const auto t0 = std::chrono::steady_clock::now();
            const std::vector<int> plain = reference_decode(ref, *pol, first, o->tokens);
            const double plain_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            const bool identical = plain == r.tokens;
            nlohmann::json j = r.stats.to_json();
            j["tokens"] = r.tokens;
            j["text"] = tok.decode(r.tokens, first);
            j["identical"] = identical;
            j["codec"] = enc.report.spec;
            j["bits_per_element"] = enc.report.bits_per_element;
            j["context_tokens"] = C;
            j["horizon"] = o->horizon;
            j["acceptance"] = pol->name();
            j["source"] = src->describe();
            j["timings"]["full_cache_decode_s"] = plain_s;
            if (dc) {
              const decoding_stats& ds = dc->stats();
              j["decoding"] = {{"codec", make_codec(dc->spec()).spec()}, {"every", dc->every()}, {"compressions", ds.compressions},
                               {"positions", ds.positions}, {"rows_dropped", ds.rows_dropped}, {"rows", ds.rows},
                               {"bits_per_element", ds.bits_per_element()}};
            }
            if (o->json) {
              std::cout << j.dump(2) << "\n";
            } else {
              std::cout << tok.decode(r.tokens, first) << "\n\n";
              std::printf("codec %s (%.3f bits/element), context %lld tokens, %s acceptance, horizon %s\n", enc.report.spec.c_str(),
                          enc.report.bits_per_element, static_cast<long long>(C), pol->name().c_str(), o->horizon.c_str());
              std::printf("identical to full-cache decoding: %s\n", identical ? "yes" : "no");
              if (dc)
                std::printf("decoding compression every %d positions: %lld chunks, %lld positions, %.1f%% of rows dropped, %.3f bits/element\n",
                            dc->every(), static_cast<long long>(dc->stats().compressions), static_cast<long long>(dc->stats().positions),
                            dc->stats().rows > 0 ? 100.0 * static_cast<double>(dc->stats().rows_dropped) / static_cast<double>(dc->stats().rows) : 0.0,
                            dc->stats().bits_per_element());
              std::printf("rounds %lld, mean accepted %.3f, acceptance rate %.3f\n", static_cast<long long>(r.stats.rounds),
                          r.stats.mean_accepted(), r.stats.acceptance_rate());
              std::printf("draft %.4f s, verify %.4f s, fetch %.4f s (exposed %.4f s, hidden %.4f s), total %.4f s; plain full-cache %.4f s\n",
                          r.stats.draft_s, r.stats.verify_s, r.stats.fetch_s, r.stats.fetch_exposed_s, r.stats.fetch_hidden_s,
                          r.stats.total_s, plain_s);
            }
            return identical || !pol->deterministic() ? 0 : 3;
          }};
}

}  // namespace kvcodec::cli
