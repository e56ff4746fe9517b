// bench/drop_quant_size.cpp — size and attention error of token dropping + 4-bit quantization + rANS,
// against the same quantizer + rANS without dropping, on the real stories260K dumps and a synth cache.
//
// For each base quantizer Q (uniform:bits=4, kivi:bits=4, and two variants) the table compares "Q|rans" with
// "snapkv:keep=0.5|Q|rans" and "adakv:scorer=snapkv,keep=0.5|Q|rans" (bits/element over the ORIGINAL
// K+V element count, kept-token masks included) and reports each one's ratio to "Q|rans".
// Two protocols: (A) the whole cache is the compressed prefix (obs_end = -1, half of all tokens kept)
// and attention error is over every query; (B) disjoint window as bench/compare_drop.cpp: only the
// first 3/4 of the tokens are compressed (obs_end), selection sees queries before obs_end only,
// the last quarter is kept, and attention error is over the queries at or after obs_end.
// Attention metrics are kvcodec::eval::evaluate's (compare_attention: relative L2 error of the attention
// output, KL of the attention distribution, attention mass on dropped tokens).
// Usage: drop_quant_size [shared_dir]   (default: $KVCODEC_SHARED, ../shared, /work/shared)
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kvcodec/eval/evaluate.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/io/kv_dump.hpp"

namespace fs = std::filesystem;

namespace {

constexpr const char* k_command =
    "g++ -std=c++20 -O3 -Iinclude -I/usr/include/eigen3 bench/drop_quant_size.cpp -lzstd -lxxhash -lz -pthread "
    "-o /tmp/drop_quant_size && /tmp/drop_quant_size > bench/results/drop_quant_size.md";

std::string shared_dir(int argc, char** argv) {
  if (argc > 1) return argv[1];
  if (const char* e = std::getenv("KVCODEC_SHARED")) return e;
  if (fs::exists("../shared/kv")) return "../shared";
  return "/work/shared";
}
std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string s;
  std::getline(f, s);
  return s;
}

struct result {
  double bpe = 0, mask_bits = 0, rel = 0, kl = 0, dropped = 0;
};

result run(const std::string& spec, const kvcodec::kv_cache& kv, std::int64_t query_begin, std::int64_t max_rows) {
  kvcodec::eval::eval_options o;
  o.repeats = 1;
  o.attn.query_begin = query_begin;
  o.attn.max_rows = max_rows;
  const auto r = kvcodec::eval::evaluate(spec, kv, o);
  result x;
  x.bpe = r.bits_per_element;
  // mask bytes are part of codec_bytes; re-encode once to read them (evaluate does not keep the report).
  const auto e = kvcodec::encode(spec, kv);
  x.mask_bits = static_cast<double>(e.report.mask_bytes) * 8.0 / static_cast<double>(e.report.kv_elements);
  if (r.attention) x.rel = r.attention->rel_error, x.kl = r.attention->kl, x.dropped = r.attention->dropped_mass;
  return x;
}

/// A spec inside a Markdown table cell: '|' escaped (GFM splits cells on a bare '|', even in code).
std::string cell(const std::string& spec) {
  std::string o;
  for (const char ch : spec) {
    if (ch == '|') o += '\\';
    o += ch;
  }
  return o;
}

std::string with(const std::string& drop, const std::string& extra) {
  if (extra.empty()) return drop;
  return drop + (drop.find(':') == std::string::npos ? ":" : ",") + extra;
}

/// One table: rows for each base quantizer x {none, snapkv, adakv}, one protocol.
void table(const std::string& title, const std::vector<std::pair<std::string, const kvcodec::kv_cache*>>& caches,
           const std::vector<std::string>& bases, bool disjoint, std::int64_t max_rows) {
  std::printf("\n### %s\n\n", title.c_str());
  std::printf("| cache | codec | bits/elem | mask bits/elem | x no-drop | attn rel err | attn KL | dropped mass |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const auto& [name, kv] : caches) {
    const std::int64_t T = kv->shape.tokens;
    const std::int64_t obs_end = disjoint ? T * 3 / 4 : -1;
    const std::int64_t qb = disjoint ? obs_end : 0;
    const std::string obs = disjoint ? "obs_end=" + std::to_string(obs_end) : "";
    for (const auto& base : bases) {
      const std::vector<std::string> specs = {base, with("snapkv:keep=0.5", obs) + "|" + base,
                                              with("adakv:scorer=snapkv,keep=0.5", obs) + "|" + base};
      double ref = 0;
      for (const auto& spec : specs) {
        const result r = run(spec, *kv, qb, max_rows);
        if (spec == base) ref = r.bpe;
        std::printf("| %s | `%s` | %.4f | %.4f | %.3f | %.4f | %.5f | %.4f |\n", name.c_str(), cell(spec).c_str(), r.bpe, r.mask_bits,
                    r.bpe / ref, r.rel, r.kl, r.dropped);
        std::fflush(stdout);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvcodec;
  const std::string shared = shared_dir(argc, argv);
  std::printf("Command: `%s`\n\n", k_command);
  std::printf("# Token dropping + 4-bit quantization + rANS: size and attention error\n\n");
  std::printf("Built with g++ %s -O3 (no -march). Load average at start: %s. Encode/decode use all hardware threads "
              "(sizes do not depend on the thread count).\n\n",
              __VERSION__, loadavg().c_str());
  std::printf("bits/elem = codec bytes x 8 / K+V elements of the original cache (kept-token masks and stage state "
              "included); `x no-drop` = bits/elem / bits/elem of the same quantizer + rans without dropping (bar: "
              "well under 0.65 for keep=0.5). mask bits/elem = the kept-token bitmaps alone. Attention metrics: "
              "kvcodec::eval::evaluate (compare_attention).\n");

  std::vector<std::pair<std::string, kv_cache>> owned;
  for (const char* s : {"stories260K-s0", "stories260K-s1", "stories260K-s2"}) {
    const fs::path p = fs::path(shared) / "kv" / (std::string(s) + ".safetensors");
    if (!fs::exists(p)) {
      std::printf("\n(%s missing: skipped)\n", p.string().c_str());
      continue;
    }
    owned.emplace_back(s, io::read_kv_dump(p.string()).cache);
  }
  eval::synth_options so;
  so.layers = 32, so.kv_heads = 8, so.q_heads = 32, so.head_dim = 128, so.tokens = 2048, so.dtype = dtype::f16, so.seed = 0;
  owned.emplace_back("synth 32x8x128x2048 f16", eval::synth_cache(so));

  std::vector<std::pair<std::string, const kv_cache*>> real, synth;
  for (const auto& [n, kv] : owned) {
    (n.rfind("synth", 0) == 0 ? synth : real).emplace_back(n, &kv);
    std::printf("\n- %s: layers %d, kv_heads %d, q_heads %d, head_dim %d, tokens %lld", n.c_str(), kv.shape.layers, kv.shape.kv_heads,
                kv.shape.q_heads, kv.shape.head_dim, static_cast<long long>(kv.shape.tokens));
  }
  std::printf("\n");

  // Defaults first; then two configurations whose side information and full-precision residual do not
  // dominate on head_dim 8 (uniform's default group is the whole 8-channel head row; kivi keeps the last
  // 128 of 512 tokens in f32 by default).
  const std::vector<std::string> bases = {"uniform:bits=4|rans", "kivi:bits=4|rans", "kivi:bits=4,residual=0|rans",
                                          "uniform:bits=4,kaxis=channel,vaxis=channel,group=64|rans"};
  table("Real dumps, protocol A (obs_end = -1: half of all tokens kept; attention over every query)", real, bases, false, 0);
  table("Real dumps, protocol B (disjoint: first 384 of 512 tokens compressed, keep 0.5 of them; attention over queries "
        "384..511)",
        real, bases, true, 0);
  // Synth: attention on a sample of 32768 query rows (32 per layer x query head), to bound the O(T^2) cost.
  table("Synth cache, protocol A (attention on 32768 sampled query rows)", synth, {"uniform:bits=4|rans"}, false, 32768);
  table("Synth cache, protocol B (first 1536 of 2048 tokens compressed; attention on 32768 sampled rows of queries "
        "1536..2047)",
        synth, {"uniform:bits=4|rans"}, true, 32768);
  std::printf("\nLoad average at end: %s\n", loadavg().c_str());
  return 0;
}
