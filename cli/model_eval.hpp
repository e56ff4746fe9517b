// cli/model_eval.hpp — `kvcodec eval --model CKPT --tokenizer TOK --context-tokens C`: the
// model-in-the-loop part of eval (include/kvcodec/eval/model_eval.hpp), called from cmd_eval.cpp.
//
// Per codec: the usual eval object (size, speed, tensor and attention fidelity on the whole dump)
// plus a `model` object (top1_agreement, kl, ppl_full, ppl_lossy, first_divergence, ...) from the
// prefix-reuse protocol on the first C tokens.
#pragma once

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "kvcodec/eval/model_eval.hpp"
#include "kvcodec/model/tokenizer.hpp"

namespace kvcodec::cli {

struct model_eval_cli {
  std::string model, tokenizer;
  std::int64_t context_tokens = 0;
  int steps = -1;
};

/// Adds --model, --tokenizer, --context-tokens, --generate-steps to `app` (the eval subcommand).
inline void add_model_eval_options(CLI::App* app, model_eval_cli& o) {
  app->add_option("--model", o.model, "llama2.c checkpoint: also score each codec with the model in the loop");
  app->add_option("--tokenizer", o.tokenizer, "llama2.c tokenizer.bin (with --model; used to print the continuations)");
  app->add_option("--context-tokens", o.context_tokens, "With --model: tokens [0, C) are the compressed context, [C, T) are scored")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 40));
  app->add_option("--generate-steps", o.steps, "With --model: greedy steps for first_divergence (-1 = to the end of the dump)")
      ->capture_default_str();
}

/// Runs eval + model-in-the-loop fidelity for every spec; prints a JSON array or a table. Returns 0.
inline int run_model_eval(const model_eval_cli& mo, const std::vector<std::string>& specs, const std::string& in,
                          const eval::eval_options& eo, bool json, bool markdown) {
  if (mo.model.empty()) throw_usage("eval: --model is required for model-in-the-loop fidelity");
  if (mo.context_tokens <= 0) throw_usage("eval --model: --context-tokens C is required (tokens [0, C) form the context)");
  const io::kv_dump d = io::read_kv_dump(in);
  auto m = std::make_shared<const model::llama2c_model>(model::load_llama2c(mo.model));
  std::unique_ptr<model::tokenizer> tok;
  if (!mo.tokenizer.empty()) tok = std::make_unique<model::tokenizer>(model::tokenizer::load(mo.tokenizer, m->config.vocab_size));
  for (const auto& s : specs)
    if (!kvc_target_of(s)) make_codec(s, eo.reg ? *eo.reg : builtin_registry());  // a kvc target is resolved on the cache
  eval::model_eval_options opt;
  opt.context_tokens = mo.context_tokens;
  opt.generate_steps = mo.steps;
  opt.encode = eo.encode;
  opt.reg = eo.reg;
  nlohmann::json arr = nlohmann::json::array();
  std::vector<eval::eval_result> rs;
  std::vector<eval::model_eval_result> ms;
  for (const auto& s : specs) {
    rs.push_back(eval::evaluate(s, d.cache, eo));
    rs.back().decoded = {};
    ms.push_back(eval::evaluate_model(m, d.cache, s, opt));
    nlohmann::json j = eval::to_json(rs.back());
    j["model"] = eval::to_json(ms.back().model);
    j["model"]["context_bits_per_element"] = ms.back().bits_per_element;
    arr.push_back(std::move(j));
  }
  if (json) {
    std::cout << arr.dump(2) << "\n";
    return 0;
  }
  print_eval_table(rs, markdown);
  const char* sep = markdown ? " | " : "  ";
  std::printf("\nmodel in the loop: context [0, %lld), scored [%lld, %lld)\n", static_cast<long long>(mo.context_tokens),
              static_cast<long long>(mo.context_tokens), static_cast<long long>(d.cache.shape.tokens));
  if (markdown) std::printf("| ");
  std::printf("%-44s%s%8s%s%10s%s%9s%s%9s%s%9s", "codec", sep, "top1", sep, "KL", sep, "ppl full", sep, "ppl lossy", sep, "diverge@");
  if (markdown) std::printf(" |\n|---|---:|---:|---:|---:|---:|");
  std::printf("\n");
  for (const auto& r : ms) {
    if (markdown) std::printf("| ");
    const std::string name = r.requested.size() > 44 ? r.requested.substr(0, 41) + "..." : r.requested;
    std::printf("%-44s%s%8.4f%s%10s%s%9.4f%s%9.4f%s%9s", name.c_str(), sep, r.model.top1_agreement, sep, fmt_num(r.model.kl).c_str(), sep,
                r.model.ppl_full, sep, r.model.ppl_lossy, sep,
                r.model.first_divergence < 0 ? "never" : std::to_string(r.model.first_divergence).c_str());
    if (markdown) std::printf(" |");
    std::printf("\n");
  }
  if (tok && !ms.empty() && !d.cache.tokens.empty()) {
    const int prev = d.cache.tokens[static_cast<std::size_t>(mo.context_tokens)];
    std::printf("\nfull-cache greedy: %s\n", tok->decode(ms.front().model.greedy_full, prev).c_str());
    for (const auto& r : ms) std::printf("%s: %s\n", r.requested.c_str(), tok->decode(r.model.greedy_lossy, prev).c_str());
  }
  return 0;
}

}  // namespace kvcodec::cli
