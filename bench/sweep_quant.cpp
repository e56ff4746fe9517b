// bench/sweep_quant.cpp — rate–distortion sweep of the quantizer family on one KV dump.
//
// Runs every quantizer stage over a grid of parameters through kvcodec::eval::evaluate and writes
// <out>/quant_sweep.md (table sorted by bits/element, Pareto points marked), <out>/quant_sweep.csv and
// <out>/quant_sweep.svg (bits/element vs attention KL, log scale, Pareto front drawn).
// Usage: sweep_quant [dump.safetensors] [out_dir]   (defaults: ../shared/kv/stories260K-s0.safetensors
// or /work/shared/..., and bench/results).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "kvcodec/eval/evaluate.hpp"
#include "kvcodec/io/kv_dump.hpp"

namespace {

struct row {
  std::string family, spec;
  double bpe = 0, krel = 0, vrel = 0, arel = 0, kl = 0;
  bool pareto = false;
};

std::vector<std::pair<std::string, std::string>> grid() {
  std::vector<std::pair<std::string, std::string>> g;
  for (int b = 2; b <= 8; ++b) g.push_back({"uniform per-token", "uniform:bits=" + std::to_string(b)});
  for (int b : {4, 8}) g.push_back({"uniform per-token", "uniform:bits=" + std::to_string(b) + ",mode=sym"});
  for (int b = 2; b <= 8; ++b) g.push_back({"uniform per-channel", "uniform:bits=" + std::to_string(b) + ",kaxis=channel,vaxis=channel,group=128"});
  for (int b = 2; b <= 4; ++b) g.push_back({"uniform per-channel", "uniform:bits=" + std::to_string(b) + ",kaxis=channel,vaxis=channel,group=32"});
  for (int b = 2; b <= 4; ++b)
    g.push_back({"uniform + outliers", "uniform:bits=" + std::to_string(b) + ",kaxis=channel,vaxis=channel,group=128,outliers=1"});
  g.push_back({"uniform schedule", "uniform:kbits=8/4,vbits=4/3,kaxis=channel,vaxis=channel,group=128"});
  for (int b : {2, 3, 4}) {
    g.push_back({"kivi", "kivi:bits=" + std::to_string(b) + ",residual=0"});
    g.push_back({"kivi", "kivi:bits=" + std::to_string(b) + ",group=128,residual=0"});
  }
  g.push_back({"kivi", "kivi:bits=2"});
  g.push_back({"kivi", "kivi:bits=4"});
  for (const char* f : {"e4m3", "e5m2"})
    for (const char* s : {"tensor", "head", "token"}) g.push_back({"fp8", std::string("fp8:format=") + f + ",scale=" + s});
  for (const char* t : {"q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "iq4_nl"}) g.push_back({"llama.cpp", t});
  g.push_back({"nf4", "nf4"});
  for (int b = 1; b <= 6; ++b) g.push_back({"kmeans", "kmeans:bits=" + std::to_string(b)});
  for (int b : {2, 3, 4}) {
    g.push_back({"hadamard", "hadamard:seed=1|uniform:bits=" + std::to_string(b) + ",kaxis=channel,vaxis=channel,group=128"});
    g.push_back({"hadamard", "hadamard:seed=1|kmeans:bits=" + std::to_string(b)});
    g.push_back({"derope", "derope|kivi:bits=" + std::to_string(b) + ",group=128,residual=0"});
  }
  for (int b = 2; b <= 8; ++b)
    g.push_back({"derope", "derope|uniform:bits=" + std::to_string(b) + ",kaxis=channel,vaxis=channel,group=128"});
  return g;
}

/// A spec inside a Markdown table cell: '|' must be escaped.
std::string md_cell(const std::string& s) {
  std::string o;
  for (char c : s) o += c == '|' ? std::string("\\|") : std::string(1, c);
  return o;
}

std::string fmt(double v, const char* f = "%.4g") {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

void mark_pareto(std::vector<row>& rows) {
  for (auto& r : rows) {
    r.pareto = true;
    for (const auto& o : rows)
      if (&o != &r && o.bpe <= r.bpe && o.kl <= r.kl && (o.bpe < r.bpe || o.kl < r.kl)) r.pareto = false;
  }
}

void write_svg(const std::vector<row>& rows, const std::string& path, const std::string& title) {
  const double W = 900, H = 560, L = 80, R = 220, T = 40, B = 60;
  double xmax = 0, kmin = 1e300, kmax = 0;
  for (const auto& r : rows) {
    xmax = std::max(xmax, r.bpe);
    if (r.kl > 0) kmin = std::min(kmin, r.kl), kmax = std::max(kmax, r.kl);
  }
  xmax = std::ceil(xmax + 0.5);
  const double lo = std::floor(std::log10(kmin)), hi = std::ceil(std::log10(kmax));
  auto X = [&](double v) { return L + v / xmax * (W - L - R); };
  auto Y = [&](double kl) { return T + (hi - std::log10(std::max(kl, kmin))) / (hi - lo) * (H - T - B); };
  std::vector<std::string> fams;
  for (const auto& r : rows)
    if (std::find(fams.begin(), fams.end(), r.family) == fams.end()) fams.push_back(r.family);
  const char* colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#000000"};
  std::ofstream o(path);
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << L << "\" y=\"24\" font-size=\"15\">" << title << "</text>\n";
  o << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B << "\" fill=\"none\" stroke=\"#444\"/>\n";
  for (int e = static_cast<int>(lo); e <= static_cast<int>(hi); ++e) {
    const double y = Y(std::pow(10.0, e));
    o << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << y << "\" y2=\"" << y << "\" stroke=\"#ddd\"/>\n";
    o << "<text x=\"" << L - 8 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">1e" << e << "</text>\n";
  }
  for (int x = 0; x <= static_cast<int>(xmax); x += 2) {
    o << "<line x1=\"" << X(x) << "\" x2=\"" << X(x) << "\" y1=\"" << T << "\" y2=\"" << H - B << "\" stroke=\"#eee\"/>\n";
    o << "<text x=\"" << X(x) << "\" y=\"" << H - B + 18 << "\" text-anchor=\"middle\">" << x << "</text>\n";
  }
  o << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 15 << "\" text-anchor=\"middle\">bits per element (all codec bytes)</text>\n";
  o << "<text transform=\"translate(20," << (T + H - B) / 2 << ") rotate(-90)\" text-anchor=\"middle\">attention KL (log scale)</text>\n";
  std::vector<const row*> front;
  for (const auto& r : rows)
    if (r.pareto) front.push_back(&r);
  std::sort(front.begin(), front.end(), [](const row* a, const row* b) { return a->bpe < b->bpe; });
  o << "<polyline fill=\"none\" stroke=\"#999\" stroke-dasharray=\"4 3\" points=\"";
  for (const auto* r : front) o << X(r->bpe) << "," << Y(r->kl) << " ";
  o << "\"/>\n";
  for (const auto& r : rows) {
    const std::size_t fi = static_cast<std::size_t>(std::find(fams.begin(), fams.end(), r.family) - fams.begin());
    o << "<circle cx=\"" << X(r.bpe) << "\" cy=\"" << Y(r.kl) << "\" r=\"" << (r.pareto ? 5 : 3.5) << "\" fill=\"" << colors[fi % 11]
      << "\"" << (r.pareto ? " stroke=\"black\"" : "") << "><title>" << r.spec << ": " << fmt(r.bpe) << " b/e, KL " << fmt(r.kl)
      << "</title></circle>\n";
  }
  for (std::size_t i = 0; i < fams.size(); ++i) {
    const double y = T + 10 + 20 * static_cast<double>(i);
    o << "<circle cx=\"" << W - R + 20 << "\" cy=\"" << y << "\" r=\"5\" fill=\"" << colors[i % 11] << "\"/>\n";
    o << "<text x=\"" << W - R + 32 << "\" y=\"" << y + 4 << "\">" << fams[i] << "</text>\n";
  }
  o << "<text x=\"" << W - R + 15 << "\" y=\"" << T + 20 + 20 * static_cast<double>(fams.size()) << "\">outlined: Pareto front</text>\n";
  o << "</svg>\n";
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::string dump = argc > 1 ? argv[1] : "";
  if (dump.empty())
    for (const char* c : {"../shared/kv/stories260K-s0.safetensors", "/work/shared/kv/stories260K-s0.safetensors"})
      if (fs::exists(c)) {
        dump = c;
        break;
      }
  const std::string out = argc > 2 ? argv[2] : "bench/results";
  if (dump.empty()) {
    std::cerr << "sweep_quant: no dump given and ../shared/kv/stories260K-s0.safetensors not found\n";
    return 2;
  }
  try {
    const kvcodec::kv_cache kv = kvcodec::io::read_kv_dump(dump).cache;
    std::vector<row> rows;
    for (const auto& [fam, spec] : grid()) {
      kvcodec::eval::eval_options opt;
      opt.repeats = 1;
      const auto r = kvcodec::eval::evaluate(spec, kv, opt);
      row x{fam, spec, r.bits_per_element, r.metrics.key.rel_fro_error, r.metrics.value.rel_fro_error, 0, 0, false};
      if (r.attention) x.arel = r.attention->rel_error, x.kl = r.attention->kl;
      std::cerr << spec << ": " << x.bpe << " b/e, KL " << x.kl << "\n";
      rows.push_back(x);
    }
    mark_pareto(rows);
    std::stable_sort(rows.begin(), rows.end(), [](const row& a, const row& b) { return a.bpe < b.bpe; });
    fs::create_directories(out);
    const std::string name = fs::path(dump).filename().string();
    std::ofstream csv(out + "/quant_sweep.csv");
    csv << "family,spec,bits_per_element,key_rel_error,value_rel_error,attention_rel_error,attention_kl,pareto\n";
    for (const auto& r : rows)
      csv << r.family << ",\"" << r.spec << "\"," << fmt(r.bpe, "%.6g") << "," << fmt(r.krel, "%.6g") << "," << fmt(r.vrel, "%.6g") << ","
          << fmt(r.arel, "%.6g") << "," << fmt(r.kl, "%.6g") << "," << (r.pareto ? 1 : 0) << "\n";
    std::ofstream md(out + "/quant_sweep.md");
    md << "# Quantizer rate–distortion sweep\n\nDump: `" << name << "` (" << kv.shape.layers << " layers, " << kv.shape.kv_heads
       << " KV heads, head_dim " << kv.shape.head_dim << ", " << kv.shape.tokens
       << " tokens, f32). Entropy stage: `pack` (fixed-width). Bits/element counts every codec byte (symbols, "
          "scales, outliers, residual tokens, stage state, stream framing) over the K+V elements. Errors are relative "
          "Frobenius errors; attention error and KL compare softmax(qK^T/sqrt(d))V and the attention "
          "distributions of every query row (causal). **P** marks the Pareto front of bits/element vs attention KL.\n"
          "Produced by `bench/sweep_quant.cpp`.\n\n";
    md << "| spec | family | bits/elem | K rel err | V rel err | attn rel err | attn KL | P |\n|---|---|---:|---:|---:|---:|---:|:-:|\n";
    for (const auto& r : rows)
      md << "| `" << md_cell(r.spec) << "` | " << r.family << " | " << fmt(r.bpe, "%.3f") << " | " << fmt(r.krel, "%.3g") << " | " << fmt(r.vrel, "%.3g")
         << " | " << fmt(r.arel, "%.3g") << " | " << fmt(r.kl, "%.3g") << " | " << (r.pareto ? "**P**" : "") << " |\n";
    write_svg(rows, out + "/quant_sweep.svg", "kvcodec quantizers on " + name + ": bits/element vs attention KL");
    std::cerr << "wrote " << out << "/quant_sweep.{md,csv,svg}\n";
  } catch (const std::exception& e) {
    std::cerr << "sweep_quant: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
