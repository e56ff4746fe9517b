// kvcodec store put|get|ls|stat|rm — a KV store keyed by token prefixes (include/kvcodec/store/).
//   put  --url URL -c SPEC DUMP        stores DUMP's KV under its tokens
//   get  --url URL DUMP OUT            the longest stored prefix of DUMP's tokens -> OUT (exit 4 on a miss)
//   ls   --url URL [--all]             stored contexts (--all: every prefix marker)
//   stat --url URL [KEY|DUMP...]       totals, an entry, or how much of a dump's context is stored
//   rm   --url URL KEY|DUMP...         removes entries (by key) or contexts (by dump)
//   plan DUMP...                       a kvc level and a tier per dump maximising the utility of store/plan.hpp
// The model name (part of the key space) is --model, else the dump's `model` metadata.
#include <filesystem>

#include "common.hpp"
#include "kvcodec/eval/evaluate.hpp"
#include "kvcodec/store/open.hpp"
#include "kvcodec/store/plan.hpp"
#include "kvcodec/store/store.hpp"
#include "kvcodec/store/tiered.hpp"
#include "kvcodec/store/measure.hpp"

namespace kvcodec::cli {

namespace {

constexpr int store_miss = 4;

/// What the store commands need of a dump: its tokens, shape, model and dtype (and a view to put).
struct store_dump {
  std::optional<io::kv_dump_view> dv;
  std::optional<io::kv_dump> d;
  const_kv_view view;
  std::vector<std::int32_t> tokens;
  std::map<std::string, std::string> metadata;
  dtype source = dtype::f32;
  io::kv_layout layout = io::kv_layout::hf_4d;
};

store_dump open_store_dump(const std::string& path) {
  store_dump s;
  s.dv = io::open_kv_dump_view(path);
  if (s.dv) {
    s.view = s.dv->view;
    s.tokens = s.dv->extras.tokens;
    s.metadata = s.dv->extras.metadata;
    s.source = s.dv->extras.source_dtype.value_or(s.view.dt);
    s.layout = s.dv->layout;
  } else {
    s.d = io::read_kv_dump(path);
    if (!s.d->cache.is_dense()) throw error(error_kind::bad_input, path + ": a token-dropped (sparse) dump cannot be stored: a stored prefix holds every token");
    s.view = view_of(static_cast<const kv_cache&>(s.d->cache));
    s.tokens = s.d->cache.tokens;
    s.metadata = s.d->cache.metadata;
    s.source = s.d->cache.source_dtype;
    s.layout = s.d->layout;
  }
  if (s.tokens.empty()) throw_bad_input(path, "tokens", "one token id per position (the tokens are the store's key)", "no tokens tensor");
  return s;
}

struct store_common {
  std::string url, model;
  std::int64_t chunk = 256;
  int threads = 0;
};

void add_common(CLI::App* app, store_common& c) {
  app->add_option("--url", c.url, "Store: file://DIR, redis://HOST:PORT[?opts], redis-cluster://HOST:PORT,...[?opts], tiered://TIER,TIER,... (docs/STORE.md)")->required();
  app->add_option("--model", c.model, "Model name (part of the key space; default: the dump's `model` metadata)");
  app->add_option("--chunk", c.chunk, "Tokens per stored chunk")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  app->add_option("-j,--threads", c.threads, "Worker threads (0 = all cores)")->capture_default_str();
}

store::kv_store open_store(const store_common& c, const std::string& model) {
  store::store_options o;
  o.model = model;
  o.chunk_tokens = c.chunk;
  o.threads = c.threads;
  return store::kv_store(store::open_backend(c.url), o);
}

std::string model_of(const store_common& c, const store_dump& d, const std::string& path) {
  if (!c.model.empty()) return c.model;
  const auto it = d.metadata.find("model");
  if (it == d.metadata.end() || it->second.empty())
    throw_usage(path + ": the dump names no model (metadata 'model'); pass --model NAME (the model is part of the store's key space)");
  return it->second;
}

bool is_key(const std::string& arg) { return arg.rfind(store::key_prefix, 0) == 0; }

void print_entry(const store::entry_info& e) {
  std::printf("%s  %s  %lld tokens  %lld chunks of %lld  %dx%dx%d  %s%s\n", e.key.c_str(), e.model.c_str(), static_cast<long long>(e.tokens),
              static_cast<long long>(e.chunks), static_cast<long long>(e.chunk_tokens), e.layers, e.kv_heads, e.head_dim, e.spec.c_str(),
              e.final ? "" : "  (prefix)");
}

/// "NAME:CAPACITY_MB:GBPS:LATENCY_US" (CAPACITY_MB "inf" for the last tier).
store::tier_spec parse_tier(const std::string& t) {
  std::vector<std::string> f;
  std::size_t at = 0;
  while (true) {
    const auto c = t.find(':', at);
    f.push_back(t.substr(at, c == std::string::npos ? std::string::npos : c - at));
    if (c == std::string::npos) break;
    at = c + 1;
  }
  if (f.size() != 4 || f[0].empty()) throw_usage("--tier: expected NAME:CAPACITY_MB:GBPS:LATENCY_US, found '" + t + "'");
  store::tier_spec s;
  s.name = f[0];
  try {
    s.capacity_bytes = f[1] == "inf" ? std::numeric_limits<double>::infinity() : std::stod(f[1]) * 1e6;
    s.bandwidth_bytes_s = std::stod(f[2]) * 1e9;
    s.latency_s = std::stod(f[3]) * 1e-6;
  } catch (const std::exception&) {
    throw_usage("--tier: expected numbers in NAME:CAPACITY_MB:GBPS:LATENCY_US, found '" + t + "'");
  }
  if (!(s.capacity_bytes >= 0) || !(s.bandwidth_bytes_s > 0) || !(s.latency_s >= 0)) throw_usage("--tier '" + t + "': capacity >= 0, bandwidth > 0, latency >= 0");
  return s;
}

struct store_opts {
  store_common c;
  std::string spec = "kvc:level=5", dump, out;
  std::vector<std::string> args;
  bool force = false, all = false, markdown = false;
  std::vector<int> levels = {1, 3, 5, 7, 9};
  std::vector<std::string> tiers = {"dram:2:10:1", "disk:8:1:100", "redis:inf:0.2:500"};
  std::vector<double> weights, capacities;
  double alpha = 1.0;
  std::vector<std::string> measure;
  double measure_mb = 4;
};

/// Writes rows [0, n) of `out` (a cache of d's shape) as a dump of d's layout, with d's first n tokens.
void write_prefix(const store_dump& d, const kv_cache& out, std::int64_t served, const std::string& path, bool force) {
  const kv_shape s = d.view.shape();
  // Keep the served prefix: rows [0, served) of every (layer, head).
  kv_shape ps = s;
  ps.tokens = served;
  kv_cache pre = kv_cache::zeros(ps, d.source);
  const std::size_t D = static_cast<std::size_t>(s.head_dim), T = static_cast<std::size_t>(s.tokens), n = static_cast<std::size_t>(served);
  for (int l = 0; l < s.layers; ++l)
    for (int h = 0; h < s.kv_heads; ++h) {
      const std::size_t from = static_cast<std::size_t>(h) * T * D, to = static_cast<std::size_t>(h) * n * D;
      std::copy_n(out.keys[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(from), n * D,
                  pre.keys[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(to));
      std::copy_n(out.values[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(from), n * D,
                  pre.values[static_cast<std::size_t>(l)].begin() + static_cast<std::ptrdiff_t>(to));
    }
  pre.tokens.assign(d.tokens.begin(), d.tokens.begin() + static_cast<std::ptrdiff_t>(n));
  pre.metadata = d.metadata;
  pre.metadata["tokens"] = std::to_string(n);
  io::kv_layout layout = d.layout == io::kv_layout::hf_compact ? io::kv_layout::hf_4d : d.layout;
  io::write_kv_dump(path, pre, layout, d.source, false, force);
}

/// `kvcodec store put|get|ls|stat|rm` on a tiered:// URL (store/tiered.hpp). The memory tier lives as long
/// as this process: before it exits, what it holds is moved down to the first persistent tier (close()).
int run_tiered(const store_opts& o, const std::string& cmd, bool spec_given) {
  const store_common& c = o.c;
  const auto open = [&](const std::string& model) {
    store::tiered_options to;
    to.store.model = model;
    to.store.chunk_tokens = c.chunk;
    to.store.threads = c.threads;
    to.alpha = o.alpha;
    to.levels = o.levels;
    return store::open_tiered(c.url, to);
  };
  const auto finish = [&](store::tiered_store& st) {
    const std::size_t moved = st.close();
    if (moved) std::printf("moved %zu context(s) from the memory tier down before exit\n", moved);
  };
  const auto print_tiered_entry = [](const store::tiered_entry& e, const store::tiered_store& st) {
    std::printf("%s  %lld tokens  %zu chunks  %dx%dx%d  %s  %zu bytes  tier %zu (%s)  hits %llu\n", e.key.c_str(), static_cast<long long>(e.tokens),
                e.chunk_keys.size(), e.shape.layers, e.shape.kv_heads, e.shape.head_dim, e.level.c_str(), e.bytes, e.tier, st.stats()[e.tier].url.c_str(),
                static_cast<unsigned long long>(e.hits));
  };
  if (cmd == "put") {
    store_dump d = open_store_dump(o.dump);
    auto st = open(model_of(c, d, o.dump));
    const auto r = st->put(d.tokens, d.view, spec_given ? o.spec : "auto");
    if (r.already)
      std::printf("%s: already stored (%lld tokens as %s in tier %zu, %s)\n", o.dump.c_str(), static_cast<long long>(r.put.tokens), r.level.c_str(), r.tier,
                  st->stats()[r.tier].url.c_str());
    else
      std::printf("%s: stored %lld tokens as %lld chunks (%lld written, %lld already in the tier), %zu bytes, %s, tier %zu (%s; planned %zu), utility %.6g, entry %s\n",
                  o.dump.c_str(), static_cast<long long>(r.put.tokens), static_cast<long long>(r.put.chunks), static_cast<long long>(r.put.chunks_written),
                  static_cast<long long>(r.put.chunks_present), r.put.bytes_written, r.level.c_str(), r.tier, st->stats()[r.tier].url.c_str(), r.planned_tier,
                  r.utility, r.put.entry_key.c_str());
    finish(*st);
    return 0;
  }
  if (cmd == "get") {
    check_output(o.dump, o.out, o.force);
    store_dump d = open_store_dump(o.dump);
    auto st = open(model_of(c, d, o.dump));
    kv_cache out = kv_cache::zeros(d.view.shape(), d.source);
    const auto r = st->get(d.tokens, view_of(out));
    for (const auto& p : r.get.problems) std::fprintf(stderr, "kvcodec: store get: %s\n", p.c_str());
    if (!r.tier) {
      std::printf("%s: miss (0 of %zu tokens stored)\n", o.dump.c_str(), d.tokens.size());
      finish(*st);
      return store_miss;
    }
    write_prefix(d, out, r.get.tokens, o.out, o.force);
    std::printf("%s: served %lld of %zu tokens (%lld chunks, %zu bytes, %s) from tier %zu (%s)%s -> %s\n", o.dump.c_str(),
                static_cast<long long>(r.get.tokens), d.tokens.size(), static_cast<long long>(r.get.chunks), r.get.bytes, (r.level.empty() ? r.get.spec : r.level).c_str(), *r.tier,
                st->stats()[*r.tier].url.c_str(), r.promoted_to ? (", promoted to tier " + std::to_string(*r.promoted_to)).c_str() : "", o.out.c_str());
    finish(*st);
    return 0;
  }
  if (cmd == "ls") {
    auto st = open(c.model);
    for (const auto& e : st->entries()) print_tiered_entry(e, *st);
    return 0;
  }
  if (cmd == "stat") {
    auto st = open(c.model);
    if (o.args.empty()) {
      const auto ss = st->stats();
      for (std::size_t t = 0; t < ss.size(); ++t)
        std::printf("tier %zu  %s  %zu contexts  %zu of %s bytes  %.3g GB/s  %.3g us\n", t, ss[t].url.c_str(), ss[t].contexts, ss[t].bytes,
                    std::isinf(ss[t].capacity_bytes) ? "unbounded" : fmt_num(ss[t].capacity_bytes).c_str(), ss[t].bandwidth_bytes_s / 1e9, ss[t].latency_s * 1e6);
      return 0;
    }
    int rc = 0;
    for (const auto& a : o.args) {
      if (is_key(a)) {
        const auto e = st->entry(a);
        if (!e) {
          std::printf("%s: no such entry\n", a.c_str());
          rc = store_miss;
          continue;
        }
        print_tiered_entry(*e, *st);
        continue;
      }
      store_dump d = open_store_dump(a);
      auto sd = open(model_of(c, d, a));
      std::size_t tier = 0;
      const auto [n, spec] = sd->contains(d.tokens, {d.view.layers, d.view.kv_heads, d.view.head_dim}, &tier);
      if (n == 0) {
        std::printf("%s: 0 of %zu tokens stored\n", a.c_str(), d.tokens.size());
        rc = store_miss;
      } else {
        std::printf("%s: %lld of %zu tokens stored as %s in tier %zu (%s)\n", a.c_str(), static_cast<long long>(n), d.tokens.size(), spec.c_str(), tier,
                    sd->stats()[tier].url.c_str());
      }
    }
    return rc;
  }
  if (cmd == "rm") {
    auto st = open(c.model);
    std::size_t removed = 0;
    for (const auto& a : o.args) {
      if (is_key(a)) {
        removed += st->remove_entry(a) ? 1 : 0;
        continue;
      }
      store_dump d = open_store_dump(a);
      auto sd = open(model_of(c, d, a));
      removed += sd->remove(d.tokens, {d.view.layers, d.view.kv_heads, d.view.head_dim});
    }
    std::printf("removed %zu contexts\n", removed);
    return removed ? 0 : store_miss;
  }
  return 1;
}
}  // namespace

command add_store(CLI::App& root) {
  auto* app = root.add_subcommand("store", "A KV store keyed by token prefixes: put, get, ls, stat, rm (file://, redis://, redis-cluster://)");
  app->require_subcommand(1);
  auto o = std::make_shared<store_opts>();

  auto* put = app->add_subcommand("put", "Store a dump's KV under its tokens");
  add_common(put, o->c);
  put->add_option("-c,--codec", o->spec, "Codec spec of the stored chunks")->capture_default_str();
  put->add_option("--alpha", o->alpha, "tiered:// only: the planner's delay weight (KL units per second of expected loading delay)")->capture_default_str();
  put->add_option("DUMP", o->dump, "KV dump with a tokens tensor: .safetensors, .npz")->required();

  auto* get = app->add_subcommand("get", "Write the longest stored prefix of a dump's tokens to OUT (exit 4 on a miss)");
  add_common(get, o->c);
  get->add_flag("-f,--force", o->force, "Overwrite OUT if it exists");
  get->add_option("DUMP", o->dump, "KV dump whose tokens are looked up")->required();
  get->add_option("OUT", o->out, "Output KV dump (the served prefix)")->required();

  auto* ls = app->add_subcommand("ls", "List stored contexts");
  add_common(ls, o->c);
  ls->add_flag("--all", o->all, "Every prefix marker, not only whole contexts");

  auto* stat = app->add_subcommand("stat", "Totals, an entry (KEY), or how much of a dump's context is stored (DUMP)");
  add_common(stat, o->c);
  stat->add_option("ARGS", o->args, "Entry keys (kvc:v1:m:...) or dumps");

  auto* rm = app->add_subcommand("rm", "Remove entries (KEY) or a dump's context (DUMP) with their chunks");
  add_common(rm, o->c);
  rm->add_option("ARGS", o->args, "Entry keys (kvc:v1:m:...) or dumps")->required();

  auto* plan = app->add_subcommand("plan", "Choose a kvc level and a storage tier per dump (utility: quality minus weighted loading delay; docs/STORE.md)");
  plan->add_option("--levels", o->levels, "kvc levels to consider (comma-separated)")->capture_default_str()->delimiter(',')->allow_extra_args(false);
  plan->add_option("--tier", o->tiers, "Tiers, fastest first: NAME:CAPACITY_MB:GBPS:LATENCY_US (the last one's capacity is taken as unbounded)")
      ->capture_default_str()
      ->allow_extra_args(false);
  plan->add_option("--first-tier-mb", o->capacities,
                   "Plan once per capacity of the first tier (comma-separated MB), all with the same measured profiles")
      ->delimiter(',')
      ->allow_extra_args(false);
  plan->add_option("--alpha", o->alpha, "Delay weight: attention-KL units per second of expected loading delay")->capture_default_str();
  plan->add_option("--weights", o->weights, "Access weight per dump, comma-separated (default 1 each)")->delimiter(',')->allow_extra_args(false);
  plan->add_option("-j,--threads", o->c.threads, "Worker threads (0 = all cores)")->capture_default_str();
  plan->add_flag("--markdown", o->markdown, "Markdown tables");
  plan->add_option("--measure", o->measure,
                   "Measure each tier's latency and bandwidth on a real backend instead of the --tier figures: one URL per --tier, in order "
                   "(mem, file://DIR, redis://HOST:PORT, redis-cluster://...; '-' keeps that tier's figures)")
      ->allow_extra_args(false);
  plan->add_option("--measure-mb", o->measure_mb, "Payload of the --measure bandwidth test (MB)")->capture_default_str();
  plan->add_option("DUMPS", o->args, "KV dumps with queries (attention KL is measured on them)")->required();

  return {app, [o, put, get, ls, stat, rm, plan] {
            const store_common& c = o->c;
            if (!plan->parsed() && store::is_tiered_url(c.url)) {
              const std::string cmd = put->parsed() ? "put" : get->parsed() ? "get" : ls->parsed() ? "ls" : stat->parsed() ? "stat" : "rm";
              return run_tiered(*o, cmd, put->count("--codec") > 0);
            }
            if (put->parsed()) {
              store_dump d = open_store_dump(o->dump);
              auto st = open_store(c, model_of(c, d, o->dump));
              const auto r = st.put(d.tokens, d.view, o->spec);
              std::printf("%s: stored %lld tokens as %lld chunks (%lld written, %lld already stored), %zu bytes, %s, entry %s\n", o->dump.c_str(),
                          static_cast<long long>(r.tokens), static_cast<long long>(r.chunks), static_cast<long long>(r.chunks_written),
                          static_cast<long long>(r.chunks_present), r.bytes_written, r.spec.c_str(), r.entry_key.c_str());
              return 0;
            }
            if (get->parsed()) {
              check_output(o->dump, o->out, o->force);
              store_dump d = open_store_dump(o->dump);
              auto st = open_store(c, model_of(c, d, o->dump));
              const kv_shape s = d.view.shape();
              kv_cache out = kv_cache::zeros(s, d.source);
              const auto r = st.get(d.tokens, view_of(out));
              for (const auto& p : r.problems) std::fprintf(stderr, "kvcodec: store get: %s\n", p.c_str());
              if (!r.hit()) {
                std::printf("%s: miss (0 of %zu tokens stored)\n", o->dump.c_str(), d.tokens.size());
                return store_miss;
              }
              write_prefix(d, out, r.tokens, o->out, o->force);
              std::printf("%s: served %lld of %zu tokens (%lld chunks, %zu bytes, %s) -> %s\n", o->dump.c_str(), static_cast<long long>(r.tokens),
                          d.tokens.size(), static_cast<long long>(r.chunks), r.bytes, r.spec.c_str(), o->out.c_str());
              return 0;
            }
            if (ls->parsed()) {
              auto st = open_store(c, c.model);
              auto es = st.entries(o->all);
              std::sort(es.begin(), es.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
              for (const auto& e : es) print_entry(e);
              return 0;
            }
            if (stat->parsed()) {
              auto st = open_store(c, c.model);
              if (o->args.empty()) {
                const auto chunks = st.storage().list(std::string(store::key_prefix) + "c:").size();
                const auto es = st.entries(true);
                std::size_t finals = 0;
                for (const auto& e : es) finals += e.final ? 1 : 0;
                std::printf("%s: %zu contexts, %zu prefix markers, %zu chunks\n", st.storage().url().c_str(), finals, es.size(), chunks);
                return 0;
              }
              int rc = 0;
              for (const auto& a : o->args) {
                if (is_key(a)) {
                  const auto e = st.entry(a);
                  if (!e) {
                    std::printf("%s: no such entry\n", a.c_str());
                    rc = store_miss;
                    continue;
                  }
                  print_entry(*e);
                  if (e->final) std::printf("  %zu chunk keys, %zu bytes written by its put\n", e->chunk_keys.size(), e->bytes);
                  continue;
                }
                store_dump d = open_store_dump(a);
                auto sd = open_store(c, model_of(c, d, a));
                const auto [n, spec] = sd.contains(d.tokens, {d.view.layers, d.view.kv_heads, d.view.head_dim});
                std::printf("%s: %lld of %zu tokens stored%s%s\n", a.c_str(), static_cast<long long>(n), d.tokens.size(), spec.empty() ? "" : " as ",
                            spec.c_str());
                if (n == 0) rc = store_miss;
              }
              return rc;
            }
            if (rm->parsed()) {
              auto st = open_store(c, c.model);
              std::size_t removed = 0;
              for (const auto& a : o->args) {
                if (is_key(a)) {
                  removed += st.remove_entry(a);
                  continue;
                }
                store_dump d = open_store_dump(a);
                auto sd = open_store(c, model_of(c, d, a));
                removed += sd.remove(d.tokens, {d.view.layers, d.view.kv_heads, d.view.head_dim});
              }
              std::printf("removed %zu keys\n", removed);
              return removed ? 0 : store_miss;
            }
            if (plan->parsed()) {
              std::vector<store::tier_spec> ts;
              for (const auto& t : o->tiers) ts.push_back(parse_tier(t));
              if (!o->measure.empty()) {
                if (o->measure.size() != ts.size())
                  throw_usage("--measure: " + std::to_string(o->measure.size()) + " URLs for " + std::to_string(ts.size()) + " tiers (one per --tier, '-' to keep one)");
                if (!(o->measure_mb > 0)) throw_usage("--measure-mb: must be > 0");
                std::printf("%s\n", o->markdown ? "### Tiers (measured: GET of a 64 B value, median of 31; GET and SET of the payload, best of 5)" : "tiers measured:");
                if (o->markdown) std::printf("| tier | backend | payload MB | latency us | get GB/s | put GB/s |\n|---|---|---:|---:|---:|---:|\n");
                for (std::size_t t = 0; t < ts.size(); ++t) {
                  if (o->measure[t] == "-") continue;
                  std::unique_ptr<store::backend> b = o->measure[t] == "mem" ? std::make_unique<store::memory_backend>() : store::open_backend(o->measure[t]);
                  const auto m = store::measure_backend(*b, static_cast<std::size_t>(o->measure_mb * 1e6));
                  ts[t].bandwidth_bytes_s = m.get_bandwidth_bytes_s;
                  ts[t].latency_s = m.latency_s;
                  std::printf(o->markdown ? "| %s | %s | %.3g | %.4g | %.4g | %.4g |\n" : "  %s  %s  payload %.3g MB  latency %.4g us  get %.4g GB/s  put %.4g GB/s\n",
                              ts[t].name.c_str(), m.url.c_str(), static_cast<double>(m.payload_bytes) / 1e6, m.latency_s * 1e6, m.get_bandwidth_bytes_s / 1e9,
                              m.put_bandwidth_bytes_s / 1e9);
                }
                std::printf("\n");
              }
              if (!o->weights.empty() && o->weights.size() != o->args.size())
                throw_usage("--weights: " + std::to_string(o->weights.size()) + " weights for " + std::to_string(o->args.size()) + " dumps");
              std::vector<store::context_profile> cs;
              for (std::size_t i = 0; i < o->args.size(); ++i) {
                const io::kv_dump d = io::read_kv_dump(o->args[i]);
                if (!d.cache.has_queries())
                  throw_bad_input(o->args[i], "queries", "a queries tensor (attention KL is the planner's quality measure)", "none");
                store::context_profile cp;
                cp.name = std::filesystem::path(o->args[i]).filename().string();
                cp.weight = o->weights.empty() ? 1.0 : o->weights[i];
                for (int l : o->levels) {
                  eval::eval_options eo;
                  eo.threads = c.threads;
                  eo.repeats = 5;  // decode time: best of 5 (the machine may be busy)
                  const auto r = eval::evaluate("kvc:level=" + std::to_string(l), d.cache, eo);
                  const double decode_s = r.decode_mb_s > 0 ? static_cast<double>(r.kv_elements) * 2.0 / 1e6 / r.decode_mb_s : 0;
                  cp.levels.push_back({"kvc:level=" + std::to_string(l), static_cast<double>(r.container_bytes), r.attention ? r.attention->kl : 0.0, decode_s});
                }
                cs.push_back(std::move(cp));
              }
              const char* sep = o->markdown ? " | " : "  ";
              const auto row_begin = [&] { if (o->markdown) std::printf("| "); };
              const auto row_end = [&] { std::printf(o->markdown ? " |\n" : "\n"); };
              std::printf("%s\n", o->markdown ? "### Profiles (measured: container bytes, attention KL, decode time)" : "profiles:");
              row_begin();
              std::printf("%-32s%s%-12s%s%12s%s%12s%s%10s", "context", sep, "level", sep, "bytes", sep, "attn KL", sep, "decode ms");
              row_end();
              if (o->markdown) std::printf("|---|---|---:|---:|---:|\n");
              for (const auto& c : cs)
                for (const auto& l : c.levels) {
                  row_begin();
                  std::printf("%-32s%s%-12s%s%12.0f%s%12.4g%s%10.3f", c.name.c_str(), sep, l.spec.c_str(), sep, l.bytes, sep, l.kl, sep, l.decode_s * 1e3);
                  row_end();
                }
              std::vector<double> caps = o->capacities;
              if (caps.empty()) caps.push_back(ts[0].capacity_bytes / 1e6);
              bool beats_everywhere = true;
              for (const double cap_mb : caps) {
                if (!(cap_mb >= 0)) throw_usage("--first-tier-mb: capacities must be >= 0");
                ts[0].capacity_bytes = cap_mb * 1e6;
                const auto p = store::plan_placement(cs, ts, o->alpha);
                if (o->markdown) std::printf("\n### Plan, %s capacity %s MB\n", ts[0].name.c_str(), fmt_num(ts[0].capacity_bytes / 1e6).c_str());
                else std::printf("\nplan (%s capacity %s MB):\n", ts[0].name.c_str(), fmt_num(ts[0].capacity_bytes / 1e6).c_str());
                row_begin();
                std::printf("%-32s%s%-12s%s%-8s%s%12s", "context", sep, "level", sep, "tier", sep, "utility");
                row_end();
                if (o->markdown) std::printf("|---|---|---|---:|\n");
                for (std::size_t i = 0; i < cs.size(); ++i) {
                  const auto& ch = p.choice[i];
                  row_begin();
                  std::printf("%-32s%s%-12s%s%-8s%s%12.6g", cs[i].name.c_str(), sep, cs[i].levels[ch.level].spec.c_str(), sep, ts[ch.tier].name.c_str(), sep,
                              store::utility_of(cs[i], cs[i].levels[ch.level], ts[ch.tier], o->alpha));
                  row_end();
                }
                std::printf("%s\n", o->markdown ? "\n### Total utility: planner against every single fixed level (same tiers and capacities)" : "\nutility:");
                row_begin();
                std::printf("%-28s%s%14s%s%s", "plan", sep, "utility", sep, "planner better");
                row_end();
                if (o->markdown) std::printf("|---|---:|---|\n");
                row_begin();
                std::printf("%-28s%s%14.6g%s%s", ("planner (" + p.source + ")").c_str(), sep, p.utility, sep, "");
                row_end();
                bool beats_all = true;
                for (std::size_t l = 0; l < p.fixed_utility.size(); ++l) {
                  const bool better = p.utility > p.fixed_utility[l] + 1e-12 * std::abs(p.fixed_utility[l]);
                  beats_all = beats_all && better;
                  row_begin();
                  std::printf("%-28s%s%14.6g%s%s", ("fixed " + cs[0].levels[l].spec).c_str(), sep, p.fixed_utility[l], sep, better ? "yes" : "no (equal)");
                  row_end();
                }
                std::printf("\ntiers:");
                for (std::size_t t = 0; t < ts.size(); ++t)
                  std::printf(" %s %.3g/%s MB at %.3g GB/s + %.3g us%s", ts[t].name.c_str(), p.tier_bytes[t] / 1e6,
                              t + 1 == ts.size() ? "inf" : fmt_num(ts[t].capacity_bytes / 1e6).c_str(), ts[t].bandwidth_bytes_s / 1e9, ts[t].latency_s * 1e6,
                              t + 1 == ts.size() ? "" : ";");
                std::printf("; alpha %.4g KL/s; planner beats every fixed level: %s\n", o->alpha, beats_all ? "yes" : "no");
                beats_everywhere = beats_everywhere && beats_all;
              }
              if (caps.size() > 1) std::printf("\nplanner beats every fixed level at every capacity: %s\n", beats_everywhere ? "yes" : "no");
              return 0;
            }
            return 1;
          }};
}

}  // namespace kvcodec::cli
