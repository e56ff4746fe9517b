// kvcodec/eval/model_eval.hpp — model-in-the-loop fidelity of a codec (prefix-reuse protocol).
//
// Protocol: the first C tokens of a dump (K, V, queries, token ids) are the stored context. The codec
// encodes exactly that C-token slice as a cache of its own (it never sees later tokens) and its decoded
// output, kept masks applied, serves positions [0, C). Positions [C, T) are computed by the model
// from the dump's token ids (teacher forcing; exact K/V for new positions). The same run on the
// original slice is the reference. Metrics over positions p in [C, T):
//   top1_agreement = fraction of p where argmax(full logits) == argmax(lossy logits);
//   kl             = mean KL(softmax(full) || softmax(lossy)) in nats (double precision);
//   ppl_full/lossy = exp(mean NLL of tokens[p + 1]) for p in [C, T - 1);
//   first_divergence = first step at which greedy generation (tokens[C] fed at C) differs, or -1.
// Invariant: both runs use the same decoder code path (forward_batch), so the raw codec gives
// top1_agreement 1, kl 0 and identical perplexities bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcodec/core/error.hpp"
#include "kvcodec/model/decoder.hpp"
#include "kvcodec/pipeline/encode.hpp"
#include "kvcodec/pipeline/target.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::eval {

struct model_eval_options {
  std::int64_t context_tokens = 0;  ///< C: tokens [0, C) of the dump form the stored context
  int generate_steps = -1;          ///< greedy steps for first_divergence; -1 = min(T, seq_len) - C
  encode_options encode;
  registry const* reg = nullptr;    ///< nullptr = builtin_registry()
};

struct model_metrics {
  std::int64_t context_tokens = 0;
  std::int64_t positions = 0;       ///< T - C scored positions
  double top1_agreement = 0;
  double kl = 0;
  double ppl_full = 0;
  double ppl_lossy = 0;
  std::int64_t first_divergence = -1;  ///< -1: no divergence within generate_steps
  int generate_steps = 0;
  std::vector<int> greedy_full, greedy_lossy;
};

struct model_eval_result {
  std::string codec;      ///< canonical spec
  std::string requested;
  double bits_per_element = 0;
  model_metrics model;
};

/// Tokens [0, n) of `c` as a cache of its own (K, V, queries, ids, positions, kept sets, metadata).
inline kv_cache slice_tokens(const kv_cache& c, std::int64_t n) {
  c.validate("slice_tokens: cache");
  if (n <= 0 || n > c.shape.tokens)
    throw_bad_input("slice_tokens", "tokens", "1.." + std::to_string(c.shape.tokens), std::to_string(n));
  kv_shape s = c.shape;
  s.tokens = n;
  kv_cache out = kv_cache::zeros(s, c.source_dtype);
  const auto T = static_cast<std::size_t>(c.shape.tokens), N = static_cast<std::size_t>(n), D = static_cast<std::size_t>(s.head_dim);
  const auto copy_heads = [&](const std::vector<float>& src, std::vector<float>& dst, int heads) {
    for (std::size_t h = 0; h < static_cast<std::size_t>(heads); ++h)
      std::copy_n(src.begin() + static_cast<std::ptrdiff_t>(h * T * D), N * D, dst.begin() + static_cast<std::ptrdiff_t>(h * N * D));
  };
  for (std::size_t l = 0; l < static_cast<std::size_t>(s.layers); ++l) {
    copy_heads(c.keys[l], out.keys[l], s.kv_heads);
    copy_heads(c.values[l], out.values[l], s.kv_heads);
    if (c.has_queries()) copy_heads(c.queries[l], out.queries[l], s.q_heads);
  }
  if (!c.tokens.empty()) out.tokens.assign(c.tokens.begin(), c.tokens.begin() + static_cast<std::ptrdiff_t>(n));
  if (!c.positions.empty()) out.positions.assign(c.positions.begin(), c.positions.begin() + static_cast<std::ptrdiff_t>(n));
  if (!c.kept.empty()) {
    out.kept = c.kept;
    for (auto& layer : out.kept)
      for (auto& ks : layer) ks.erase(std::lower_bound(ks.begin(), ks.end(), static_cast<std::int32_t>(n)), ks.end());
  }
  out.metadata = c.metadata;
  if (out.metadata.count("tokens")) out.metadata["tokens"] = std::to_string(n);
  if (out.metadata.count("positions") && (c.positions.empty() || c.positions[0] == 0)) out.metadata["positions"] = "0.." + std::to_string(n - 1);
  return out;
}

namespace detail {

/// log-softmax of `n` float logits in double into `out`.
inline void log_softmax(const float* x, int n, double* out) noexcept {
  double mx = -std::numeric_limits<double>::infinity();
  for (int i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i]));
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - mx);
  const double lse = mx + std::log(s);
  for (int i = 0; i < n; ++i) out[i] = static_cast<double>(x[i]) - lse;
}

inline int argmax(const std::vector<float>& v) noexcept {
  int b = 0;
  for (int i = 1; i < static_cast<int>(v.size()); ++i)
    if (v[static_cast<std::size_t>(i)] > v[static_cast<std::size_t>(b)]) b = i;
  return b;
}

/// Checks that the dump can feed the decoder: token ids, RoPE style, positions 0..T-1, shape.
inline void check_dump_for_model(const kv_cache& dump, const model::llama2c_config& c, std::int64_t context_tokens,
                                 const std::string& where) {
  dump.validate(where);
  const auto num = [](auto v) { return std::to_string(v); };
  if (dump.tokens.empty()) throw_bad_input(where, "tokens", "one token id per position", "none");
  if (dump.shape.layers != c.n_layers) throw_bad_input(where, "layers", num(c.n_layers) + " (the model's)", num(dump.shape.layers));
  if (dump.shape.kv_heads != c.n_kv_heads) throw_bad_input(where, "kv_heads", num(c.n_kv_heads) + " (the model's)", num(dump.shape.kv_heads));
  if (dump.shape.head_dim != c.head_dim()) throw_bad_input(where, "head_dim", num(c.head_dim()) + " (the model's)", num(dump.shape.head_dim));
  if (dump.shape.tokens > c.seq_len) throw_bad_input(where, "tokens", "<= the model's seq_len (" + num(c.seq_len) + ")", num(dump.shape.tokens));
  if (context_tokens < 1 || context_tokens >= dump.shape.tokens)
    throw_bad_input(where, "context_tokens", "1.." + num(dump.shape.tokens - 1) + " (at least one scored position)", num(context_tokens));
  for (std::size_t i = 0; i < dump.tokens.size(); ++i)
    if (dump.tokens[i] < 0 || dump.tokens[i] >= c.vocab_size)
      throw_bad_input(where, "tokens[" + num(i) + "]", "0.." + num(c.vocab_size - 1), num(dump.tokens[i]));
  const auto it = dump.metadata.find("rope");
  if (it != dump.metadata.end() && it->second != "interleaved-pairs")
    throw_bad_input(where, "metadata rope", "interleaved-pairs (llama2.c)", it->second);
  const auto pr = dump.metadata.find("post_rope");
  if (pr != dump.metadata.end() && pr->second != "true" && pr->second != "1")
    throw_bad_input(where, "metadata post_rope", "true (the decoder stores post-RoPE keys)", pr->second);
}

/// Teacher-forced logits of positions [C, T) and `steps` greedy ids after feeding tokens[C] at C,
/// with positions [0, C) served by `context`.
inline void run_with_context(model::decoder& dec, const kv_cache& context, std::int64_t C, const std::vector<std::int32_t>& ids,
                             int steps, std::vector<std::vector<float>>& logits, std::vector<int>& greedy) {
  dec.reset();
  dec.load_cache(context, C);
  const std::vector<int> forced(ids.begin() + static_cast<std::ptrdiff_t>(C), ids.end());
  logits = dec.forward_batch(forced, static_cast<int>(C));
  dec.truncate(static_cast<int>(C));
  greedy = steps > 0 ? dec.generate_greedy(ids[static_cast<std::size_t>(C)], steps) : std::vector<int>{};
}

}  // namespace detail

/// Metrics of two teacher-forced logit sequences (positions [C, T)) and two greedy continuations;
/// `ids` are the dump's token ids (targets: ids[p + 1]).
inline model_metrics compare_model_runs(const std::vector<std::vector<float>>& full, const std::vector<std::vector<float>>& lossy,
                                        const std::vector<std::int32_t>& ids, std::int64_t C, const std::vector<int>& greedy_full,
                                        const std::vector<int>& greedy_lossy) {
  if (full.size() != lossy.size() || full.empty() || static_cast<std::int64_t>(ids.size()) != C + static_cast<std::int64_t>(full.size()))
    throw_usage("compare_model_runs: need equal, non-empty logit sequences covering ids[C..T)");
  model_metrics m;
  m.context_tokens = C;
  m.positions = static_cast<std::int64_t>(full.size());
  const int V = static_cast<int>(full[0].size());
  std::vector<double> lf(static_cast<std::size_t>(V)), ll(static_cast<std::size_t>(V));
  double agree = 0, kl = 0, nll_f = 0, nll_l = 0;
  std::int64_t targets = 0;
  for (std::size_t i = 0; i < full.size(); ++i) {
    if (static_cast<int>(full[i].size()) != V || static_cast<int>(lossy[i].size()) != V)
      throw_usage("compare_model_runs: logits of position " + std::to_string(C + static_cast<std::int64_t>(i)) + " differ in size");
    detail::log_softmax(full[i].data(), V, lf.data());
    detail::log_softmax(lossy[i].data(), V, ll.data());
    agree += detail::argmax(full[i]) == detail::argmax(lossy[i]) ? 1.0 : 0.0;
    double k = 0;
    for (int v = 0; v < V; ++v) k += std::exp(lf[static_cast<std::size_t>(v)]) * (lf[static_cast<std::size_t>(v)] - ll[static_cast<std::size_t>(v)]);
    kl += std::max(k, 0.0);
    const std::size_t next = static_cast<std::size_t>(C) + i + 1;
    if (next < ids.size()) {
      nll_f -= lf[static_cast<std::size_t>(ids[next])];
      nll_l -= ll[static_cast<std::size_t>(ids[next])];
      ++targets;
    }
  }
  const double n = static_cast<double>(full.size());
  m.top1_agreement = agree / n;
  m.kl = kl / n;
  m.ppl_full = targets > 0 ? std::exp(nll_f / static_cast<double>(targets)) : std::numeric_limits<double>::quiet_NaN();
  m.ppl_lossy = targets > 0 ? std::exp(nll_l / static_cast<double>(targets)) : std::numeric_limits<double>::quiet_NaN();
  m.generate_steps = static_cast<int>(std::min(greedy_full.size(), greedy_lossy.size()));
  m.first_divergence = -1;
  for (int s = 0; s < m.generate_steps; ++s)
    if (greedy_full[static_cast<std::size_t>(s)] != greedy_lossy[static_cast<std::size_t>(s)]) {
      m.first_divergence = s;
      break;
    }
  m.greedy_full = greedy_full;
  m.greedy_lossy = greedy_lossy;
  return m;
}

/// Model-in-the-loop metrics of `lossy_context` (what a codec returned for the first C tokens) against
/// the original `dump`; `dec` is reused for both runs.
inline model_metrics evaluate_context(model::decoder& dec, const kv_cache& dump, const kv_cache& lossy_context,
                                      const model_eval_options& opt) {
  const std::int64_t C = opt.context_tokens;
  detail::check_dump_for_model(dump, dec.config(), C, "model eval: dump");
  if (lossy_context.shape.tokens < C)
    throw_bad_input("model eval: lossy context", "tokens", ">= " + std::to_string(C), std::to_string(lossy_context.shape.tokens));
  const std::int64_t T = dump.shape.tokens;
  const int steps = opt.generate_steps >= 0 ? static_cast<int>(std::min<std::int64_t>(opt.generate_steps, dec.config().seq_len - C))
                                            : static_cast<int>(std::min<std::int64_t>(T, dec.config().seq_len) - C);
  std::vector<std::vector<float>> lf, ll;
  std::vector<int> gf, gl;
  detail::run_with_context(dec, dump, C, dump.tokens, steps, lf, gf);
  detail::run_with_context(dec, lossy_context, C, dump.tokens, steps, ll, gl);
  return compare_model_runs(lf, ll, dump.tokens, C, gf, gl);
}

/// Encodes tokens [0, C) of `dump` with `spec`, decodes, and scores the decoded context in the model.
inline model_eval_result evaluate_model(std::shared_ptr<const model::llama2c_model> m, const kv_cache& dump, const std::string& spec,
                                        const model_eval_options& opt) {
  if (!m) throw_usage("evaluate_model: null model");
  detail::check_dump_for_model(dump, m->config, opt.context_tokens, "model eval: dump");
  const registry& reg = opt.reg ? *opt.reg : builtin_registry();
  const kv_cache ctx = slice_tokens(dump, opt.context_tokens);
  codec c = make_codec(resolve_target(spec, ctx), reg);  // kvc:target=KL is chosen on the stored context
  const encoded enc = encode(cpu::par, c, ctx, opt.encode);
  const kv_cache back = decode(cpu::par, enc.data, decode_options{.name = "encoded " + spec}, reg);
  model::decoder dec(std::move(m));
  model_eval_result r;
  r.codec = enc.report.spec;
  r.requested = spec;
  r.bits_per_element = enc.report.bits_per_element;
  r.model = evaluate_context(dec, dump, back, opt);
  return r;
}

/// The `model` object of `kvcodec eval --model --json`.
inline nlohmann::json to_json(const model_metrics& m) {
  const auto num = [](double v) -> nlohmann::json {
    if (!std::isfinite(v)) return nullptr;
    return v;
  };
  nlohmann::json j;
  j["context_tokens"] = m.context_tokens;
  j["positions"] = m.positions;
  j["top1_agreement"] = num(m.top1_agreement);
  j["kl"] = num(m.kl);
  j["ppl_full"] = num(m.ppl_full);
  j["ppl_lossy"] = num(m.ppl_lossy);
  j["first_divergence"] = m.first_divergence < 0 ? nlohmann::json(nullptr) : nlohmann::json(m.first_divergence);
  j["generate_steps"] = m.generate_steps;
  return j;
}

}  // namespace kvcodec::eval
