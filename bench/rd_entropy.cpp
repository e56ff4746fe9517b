// bench/rd_entropy.cpp — the "idealised CacheGen" of issue 13: CacheGen's quantizer (the `cachegen`
// preset's `cachegen-quant`, LMCache's default tiered bins) with its payload counted at the empirical
// entropy of its symbols under CacheGen's own context model, measured on the context a codec compresses
// under `kvcodec eval --model --context-tokens C` (tokens [0, C) of the dump, cut into --chunk segments).
//
// Per block (layer, K or V, chunk of tokens) the quantizer stage of the library (quant_stage::encode)
// gives one symbol plane of rows = tokens x cols = kv_heads * head_dim, alphabet A. CacheGen's coder
// (`ac:ctx=channel`, torchac) models each column (one (layer, K/V, channel) per chunk) with its own
// static CDF. With n_{c,s} = count of symbol s in column c of the block and n_c = rows:
//   entropy  = sum over blocks, columns c, symbols s of  -n_{c,s} log2(n_{c,s} / n_c)
//   cdf_code = sum of -log2(f_{c,s} / 2^16) over every symbol, f = CacheGen's stored 16-bit CDF
//              (cpu/ac.hpp cachegen_cdf; every symbol >= 2^-16): an ideal arithmetic coder on its own tables
//   scales   = 8 x the quantizer's side bytes (one f16 max-abs scale per (layer, K/V, token))
//   tables   = per block and column (A + 1) x 16 bits: the CDF CacheGen stores for every context
//   ideal    = entropy + scales + tables   (idealised CacheGen: LMCache's per-token u32 lengths and
//                                           per-token range-coder flushes removed, nothing else)
//   ideal_no_tables = entropy + scales     (a lower bound no static-table coder reaches)
// All divided by the number of K and V elements of the context (bits per element). Its model KL is
// that of the `cachegen` preset, whose reconstruction is the same (the coder is lossless).
// Cross-check: the same context is encoded with QUANT|ac:ctx=channel,streams=row through the library
// pipeline; its reported entropy_bound_bits must equal `entropy` and its quant_side_bits `scales`
// (relative difference <= 1e-9), else the program fails. `cachegen_bpe` is what that encoding spends.
//
// Usage: rd_entropy [--context-tokens C] [--chunk N] [--quant SPEC] [--json] DUMP...
//   C = 0 takes the whole dump. Default C 256, chunk 256, SPEC cachegen-quant (the preset's quantizer).
// Exit status (as the kvcodec CLI): 0; 1 bad arguments or spec; 2 bad input (the message names the file and
// field); 3 the cross-check failed or an internal error.
#include <cmath>
#include <cstdio>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcodec/cpu/ac.hpp"
#include "kvcodec/eval/model_eval.hpp"
#include "kvcodec/io/kv_dump.hpp"
#include "kvcodec/pipeline/codec.hpp"
#include "kvcodec/pipeline/encode.hpp"

namespace {

using namespace kvcodec;

struct tally {
  double entropy = 0, cdf_code = 0, scales = 0, tables = 0, elements = 0;
};

/// Adds one symbol plane's per-column entropy, CDF code length and table bits to `t`.
void add_plane(const symbol_plane& p, tally& t) {
  const std::size_t A = p.alphabet, C = p.cols, R = p.rows;
  std::vector<std::uint32_t> h(A);
  for (std::size_t c = 0; c < C; ++c) {
    std::fill(h.begin(), h.end(), 0u);
    for (std::size_t r = 0; r < R; ++r) {
      const std::uint16_t s = p.sym[r * C + c];
      if (s >= A) throw_usage("rd_entropy: quantizer produced symbol " + std::to_string(s) + " >= alphabet " + std::to_string(A));
      ++h[s];
    }
    const auto cdf = cpu::cachegen_cdf(h.data(), static_cast<std::uint32_t>(A));
    for (std::size_t s = 0; s < A; ++s) {
      if (!h[s]) continue;
      const double n = static_cast<double>(h[s]);
      t.entropy -= n * std::log2(n / static_cast<double>(R));
      t.cdf_code -= n * std::log2(static_cast<double>(cdf[s + 1] - cdf[s]) / 65536.0);
    }
    t.tables += static_cast<double>(A + 1) * 16.0;
  }
}

bool close(double a, double b) { return std::fabs(a - b) <= 1e-9 * std::max({1.0, std::fabs(a), std::fabs(b)}); }

nlohmann::json measure(const std::string& path, std::int64_t context_tokens, std::int64_t chunk, const std::string& quant_spec) {
  const io::kv_dump d = io::read_kv_dump(path);
  if (context_tokens > d.cache.shape.tokens)
    throw_bad_input(path, "tokens", ">= --context-tokens " + std::to_string(context_tokens), std::to_string(d.cache.shape.tokens));
  const kv_cache ctx = context_tokens > 0 ? eval::slice_tokens(d.cache, context_tokens) : d.cache;
  const kv_shape& s = ctx.shape;

  // Independent count: the library's quantizer stage on every block, our own histograms.
  codec q = make_codec(quant_spec + "|ac:ctx=channel,streams=row");
  if (q.drop || !q.transforms.empty()) throw_usage("rd_entropy: --quant must be a quantizer stage alone, got '" + quant_spec + "'");
  const cache_info info{s, ctx.source_dtype, ctx.metadata};
  const const_kv_view view = view_of(ctx);
  std::vector<block> blocks;
  for (std::int64_t t0 = 0; t0 < s.tokens; t0 += chunk)
    for (int l = 0; l < s.layers; ++l)
      for (int k = 0; k < 2; ++k) blocks.push_back(detail::make_block(view, {}, l, k == 0, t0, std::min(s.tokens, t0 + chunk)));
  tally t;
  if (q.quant->fit_uses_blocks()) t.scales += static_cast<double>(q.quant->fit(blocks, info).size()) * 8.0;
  for (const block& b : blocks) {
    symbols sym;
    q.quant->encode(b, info, sym);
    for (const auto& p : sym.planes) add_plane(p, t);
    t.scales += static_cast<double>(sym.side.size()) * 8.0;
  }
  t.elements = static_cast<double>(s.kv_elements());

  // Cross-check against the pipeline's own accounting of the same encoding.
  encode_options eo;
  eo.chunk_tokens = chunk;
  const encoded enc = encode(cpu::par, q, ctx, eo);
  const coder_stats& st = enc.report.stats;
  if (!close(st.entropy_bound_bits, t.entropy) || !close(st.quant_side_bits, t.scales)) {
    std::fprintf(stderr, "rd_entropy: %s: cross-check failed: entropy %.6f vs the coder's bound %.6f bits, scales %.1f vs %.1f bits\n",
                 path.c_str(), t.entropy, st.entropy_bound_bits, t.scales, st.quant_side_bits);
    std::exit(3);
  }

  const double n = t.elements;
  nlohmann::json j;
  j["dump"] = path;
  const auto m = ctx.metadata.find("model");
  j["model"] = m != ctx.metadata.end() ? m->second : "";
  j["context_tokens"] = s.tokens;
  j["chunk_tokens"] = chunk;
  j["kv_elements"] = s.kv_elements();
  j["quant"] = format_spec({q.quant->spec()});
  j["codec"] = enc.report.spec;
  j["entropy_bpe"] = t.entropy / n;
  j["cdf_code_bpe"] = t.cdf_code / n;
  j["scale_bpe"] = t.scales / n;
  j["table_bpe"] = t.tables / n;
  j["ideal_bpe"] = (t.entropy + t.scales + t.tables) / n;
  j["ideal_no_tables_bpe"] = (t.entropy + t.scales) / n;
  j["cachegen_bpe"] = enc.report.bits_per_element;
  j["coder_payload_bpe"] = st.payload_bits / n;
  j["coder_side_bpe"] = st.side_info_bits / n;
  return j;
}

int usage(const std::string& why) {
  std::fprintf(stderr, "rd_entropy: %s\nusage: rd_entropy [--context-tokens C] [--chunk N] [--quant SPEC] [--json] DUMP...\n", why.c_str());
  return 1;
}

bool parse_int(const std::string& s, std::int64_t& v) {
  try {
    std::size_t used = 0;
    v = std::stoll(s, &used);
    return used == s.size();
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t C = 256, chunk = 256;
  std::string quant = "cachegen-quant";
  bool json = false;
  std::vector<std::string> dumps;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&](const char* what) -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(std::string(what) + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--context-tokens") {
        if (!parse_int(value("--context-tokens"), C) || C < 0) return usage("--context-tokens: expected an integer >= 0, found '" + std::string(argv[i]) + "'");
      } else if (a == "--chunk") {
        if (!parse_int(value("--chunk"), chunk) || chunk < 1) return usage("--chunk: expected an integer >= 1, found '" + std::string(argv[i]) + "'");
      } else if (a == "--quant") {
        quant = value("--quant");
      } else if (a == "--json") {
        json = true;
      } else if (a == "-h" || a == "--help") {
        std::printf("usage: rd_entropy [--context-tokens C] [--chunk N] [--quant SPEC] [--json] DUMP...\n");
        return 0;
      } else if (!a.empty() && a[0] == '-') {
        return usage("unknown option '" + a + "'");
      } else {
        dumps.push_back(a);
      }
    } catch (const std::invalid_argument& e) {
      return usage(e.what());
    }
  }
  if (dumps.empty()) return usage("no dump given");
  nlohmann::json out = nlohmann::json::array();
  try {
    for (const auto& d : dumps) out.push_back(measure(d, C, chunk, quant));
  } catch (const kvcodec::error& e) {
    std::fprintf(stderr, "rd_entropy: %s\n", e.what());
    return e.kind() == kvcodec::error_kind::usage ? 1 : 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rd_entropy: internal error: %s\n", e.what());
    return 3;
  }
  if (json) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::printf("%-44s %7s %8s %8s %8s %8s %8s %9s %9s\n", "dump", "tokens", "entropy", "cdfcode", "scales", "tables", "ideal",
              "no-table", "cachegen");
  for (const auto& j : out)
    std::printf("%-44s %7lld %8.4f %8.4f %8.4f %8.4f %8.4f %9.4f %9.4f\n", j["dump"].get<std::string>().c_str(),
                static_cast<long long>(j["context_tokens"].get<std::int64_t>()), j["entropy_bpe"].get<double>(),
                j["cdf_code_bpe"].get<double>(), j["scale_bpe"].get<double>(), j["table_bpe"].get<double>(), j["ideal_bpe"].get<double>(),
                j["ideal_no_tables_bpe"].get<double>(), j["cachegen_bpe"].get<double>());
  return 0;
}
