// kvcodec/store/tiered.hpp — a tiered KV store (AdaptCache / EVICPRESS): memory -> directory -> Redis, or
// any list of backends, fastest first, each with a byte capacity, over the kv_store of store.hpp.
//
// URL:  tiered://TIER,TIER,...   TIER = BACKEND[:CAPACITY][:BANDWIDTH][:LATENCY]
//   BACKEND   mem (this process's memory), file://DIR, redis://HOST:PORT[?opts], redis-cluster://H:P,H:P[?opts]
//   CAPACITY  e.g. 64MB, 1.5GiB, 4096B, inf (default: unbounded)
//   BANDWIDTH e.g. 10GBps, 800MBps   LATENCY e.g. 1us, 0.5ms   (the planner's figures for the tier; defaults
//             per kind: mem 10 GB/s 1 us, file 3 GB/s 20 us, redis 1.8 GB/s 50 us; `kvcodec store plan
//             --measure URL` measures them)
// e.g. tiered://mem:64MB,file:///var/kv:1GB,redis://127.0.0.1:6379
//
// Every tier is a kv_store of its own on its backend (same keys, markers and checks); a context lives
// whole in exactly one tier (all its chunks and markers there). The tiered store keeps an index of the
// contexts (tier, chunk keys and sizes, the level's profile, access weight), persisted per tier as one
// record `kvc:v1:t:<entry hash>` written after the context's markers (so it names only complete
// entries) and read back when the store opens (the memory tier starts empty). Chunks shared by contexts
// of one tier (a common prefix) are stored and counted once (reference counts).
//
// put(tokens, view, spec, profile, weight): the planner of plan.hpp chooses the level (spec "auto": among
// the profile's levels; a fixed spec: only the tier) and the tier, maximising
//   U = w * ( -KL(level) - alpha * ( latency_tier + bytes(level) / bandwidth_tier + decode_s(level) ) )
// over the new context and the residents of the bounded tiers (at their stored levels), with the
// tiers' capacities. Without a caller's profile the default proxy (default_profile) is used. The
// context is then written to that tier (or the next one with room).
// Capacity: before a context enters a tier, room is made by moving residents down, lowest "utility per
// byte" first: w * alpha * (delay in the next tier - delay here) / bytes (the utility lost per byte by
// the move; w = put weight + hits), ties to the least recently used; from the last tier (when bounded)
// residents are evicted, lowest w / bytes first. Moves are whole contexts: chunks copied, sync(),
// markers, record, then the old copy removed (so an interrupted move leaves the entry readable in its
// old tier; a duplicate found when the store opens is removed from the slower tier).
// get(tokens, view): serves the longest stored prefix from the fastest tier holding it, then promotes
// that context to the fastest tier whose room can be made by moving down only residents of a lower
// utility per byte than it. A tier whose backend fails during a get is reported in `problems` and
// counted (tier errors), and the next tier holding the prefix serves it (or the get is a miss): never
// wrong data (every chunk is checked by kv_store). put() and moves report a failing tier as an io error
// naming it (the context stays where it was).
// A tiered_store is used by one thread at a time, and one process should own a set of tiers (the
// capacity accounting is per store object). close() moves what volatile (mem) tiers hold down to the
// first persistent tier; the CLI calls it before it exits.
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcodec/store/memory_backend.hpp"
#include "kvcodec/store/open.hpp"
#include "kvcodec/store/plan.hpp"
#include "kvcodec/store/store.hpp"

namespace kvcodec::store {

inline constexpr const char* tiered_scheme = "tiered://";

struct tier_config {
  std::string url;  ///< backend URL ("mem" for memory)
  double capacity_bytes = std::numeric_limits<double>::infinity();
  double bandwidth_bytes_s = 0;  ///< 0: the kind's default
  double latency_s = -1;         ///< < 0: the kind's default
};

struct tiered_options {
  store_options store;                  ///< model, chunk_tokens, threads (every tier's kv_store)
  double alpha = 1.0;                   ///< delay weight: KL units per second of expected loading delay
  std::vector<int> levels = {1, 3, 5, 7, 9};  ///< kvc levels of the default profile (spec "auto")
  std::size_t plan_residents = 64;      ///< residents of bounded tiers given to the planner per put (lowest utility per byte)
};

inline bool is_tiered_url(const std::string& url) { return url.rfind(tiered_scheme, 0) == 0; }

namespace detail {

inline std::optional<double> number_with_suffix(const std::string& s, const std::vector<std::pair<std::string, double>>& units) {
  for (const auto& [u, mult] : units) {
    if (s.size() <= u.size() || s.compare(s.size() - u.size(), u.size(), u) != 0) continue;
    const std::string num = s.substr(0, s.size() - u.size());
    if (num.empty() || !(std::isdigit(static_cast<unsigned char>(num[0])) || num[0] == '.')) continue;
    try {
      std::size_t used = 0;
      const double v = std::stod(num, &used);
      if (used == num.size() && v >= 0 && std::isfinite(v)) return v * mult;
    } catch (const std::exception&) {
    }
  }
  return std::nullopt;
}

inline bool tier_kind_is(const std::string& url, const char* kind) { return url.rfind(kind, 0) == 0; }

inline bool tier_starts_backend(const std::string& s) {
  return s == "mem" || tier_kind_is(s, "mem:") || tier_kind_is(s, "file://") || tier_kind_is(s, "redis://") || tier_kind_is(s, "redis-cluster://");
}

}  // namespace detail

/// The tiers of a tiered:// URL (see the file comment); throws usage naming the URL and the tier.
inline std::vector<tier_config> parse_tiered_url(const std::string& url) {
  if (!is_tiered_url(url)) throw_usage("store URL '" + url + "': expected tiered://TIER,TIER,...");
  const std::string body = url.substr(std::string(tiered_scheme).size());
  // Split at commas, re-joining pieces that do not start a backend (a redis-cluster seed list).
  std::vector<std::string> pieces;
  std::size_t at = 0;
  while (at <= body.size()) {
    auto c = body.find(',', at);
    if (c == std::string::npos) c = body.size();
    std::string p = body.substr(at, c - at);
    if (!pieces.empty() && !detail::tier_starts_backend(p)) pieces.back() += "," + p;
    else pieces.push_back(p);
    at = c + 1;
  }
  std::vector<tier_config> out;
  const std::vector<std::pair<std::string, double>> cap_units = {{"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0},
                                                                 {"KB", 1e3},     {"MB", 1e6},        {"GB", 1e9},          {"TB", 1e12},
                                                                 {"B", 1.0}};
  const std::vector<std::pair<std::string, double>> bw_units = {{"GBps", 1e9}, {"MBps", 1e6}};
  const std::vector<std::pair<std::string, double>> lat_units = {{"us", 1e-6}, {"ms", 1e-3}};
  for (std::string p : pieces) {
    if (p.empty() || !detail::tier_starts_backend(p))
      throw_usage("store URL '" + url + "': tier '" + p + "': expected mem, file://DIR, redis://HOST:PORT or redis-cluster://HOST:PORT,... followed by :CAPACITY (e.g. 64MB), :BANDWIDTH (e.g. 2GBps), :LATENCY (e.g. 100us)");
    tier_config t;
    bool have_cap = false, have_bw = false, have_lat = false;
    while (true) {
      const auto c = p.rfind(':');
      if (c == std::string::npos) break;
      const std::string suf = p.substr(c + 1);
      if (!have_bw && (have_bw = detail::number_with_suffix(suf, bw_units).has_value())) {
        t.bandwidth_bytes_s = *detail::number_with_suffix(suf, bw_units);
        if (!(t.bandwidth_bytes_s > 0)) throw_usage("store URL '" + url + "': tier '" + p + "': bandwidth must be > 0");
      } else if (!have_lat && (have_lat = detail::number_with_suffix(suf, lat_units).has_value())) {
        t.latency_s = *detail::number_with_suffix(suf, lat_units);
      } else if (!have_cap && suf == "inf") {
        have_cap = true;
      } else if (!have_cap && (have_cap = detail::number_with_suffix(suf, cap_units).has_value())) {
        t.capacity_bytes = *detail::number_with_suffix(suf, cap_units);
      } else {
        break;
      }
      p.resize(c);
    }
    if (p == "mem:" || p == "mem://") p = "mem";
    if (p != "mem" && p.rfind("mem", 0) == 0)
      throw_usage("store URL '" + url + "': tier '" + p + "': expected mem followed by :CAPACITY (e.g. 64MB), :BANDWIDTH (e.g. 2GBps), :LATENCY (e.g. 100us)");
    t.url = p;
    out.push_back(t);
  }
  if (out.empty()) throw_usage("store URL '" + url + "': no tiers");
  return out;
}

/// The planner's figures of a tier kind when the URL gives none (the order of the measurements on the
/// build machine, bench/results/store.txt and store_plan.md): mem 10 GB/s, 1 us; file 3 GB/s, 20 us (page
/// cache); redis and redis-cluster 1.8 GB/s (loopback GET of 8 MB chunk values), 50 us.
inline tier_spec tier_defaults(const tier_config& c) {
  tier_spec s;
  s.name = c.url;
  s.capacity_bytes = c.capacity_bytes;
  if (c.url == "mem") s.bandwidth_bytes_s = 10e9, s.latency_s = 1e-6;
  else if (detail::tier_kind_is(c.url, "file://")) s.bandwidth_bytes_s = 3e9, s.latency_s = 20e-6;
  else s.bandwidth_bytes_s = 1.8e9, s.latency_s = 50e-6;
  if (c.bandwidth_bytes_s > 0) s.bandwidth_bytes_s = c.bandwidth_bytes_s;
  if (c.latency_s >= 0) s.latency_s = c.latency_s;
  return s;
}

/// The default (proxy) profile of a context of `elements` KV elements over kvc levels, used when the
/// caller gives none: bits per element of kvc:level=1,3,5,7,9 = 7.7, 5.7, 4.6, 3.5, 2.4 (the kvlab
/// dumps, head_dim 64, bench/results/store_plan.md), attention KL = 2.0e-4, 3.4e-3, 1.4e-2, 6.3e-2,
/// 0.31 (the geometric mean of the two real models' measured KL per level there), decode time = bytes
/// / 0.35 GB/s (the kvc:level=5 decode rate of bench/results/store.txt). Other levels interpolate.
/// A non-kvc spec gets KL 0 and the raw f16 size (an upper bound).
inline level_profile proxy_level(const std::string& spec, double elements) {
  level_profile l;
  l.spec = spec;
  static const double lv[] = {1, 3, 5, 7, 9}, bits[] = {7.7, 5.7, 4.6, 3.5, 2.4}, kl[] = {2.0e-4, 3.4e-3, 1.4e-2, 6.3e-2, 0.31};
  int level = -1;
  if (spec.rfind("kvc:level=", 0) == 0) {
    try {
      std::size_t used = 0;
      level = std::stoi(spec.substr(10), &used);
      if (used != spec.size() - 10) level = -1;
    } catch (const std::exception&) {
      level = -1;
    }
  }
  if (level < 0) {
    l.bytes = elements * 2;
    l.kl = 0;
  } else {
    const double x = std::clamp(static_cast<double>(level), 1.0, 9.0);
    std::size_t i = 0;
    while (i + 2 < 5 && x > lv[i + 1]) ++i;
    const double f = (x - lv[i]) / (lv[i + 1] - lv[i]);
    l.bytes = elements * (bits[i] + f * (bits[i + 1] - bits[i])) / 8;
    l.kl = std::exp(std::log(kl[i]) + f * (std::log(kl[i + 1]) - std::log(kl[i])));
  }
  l.decode_s = l.bytes / 0.35e9;
  return l;
}
inline context_profile default_profile(double elements, const std::vector<int>& levels) {
  context_profile c;
  c.name = "context";
  for (int v : levels) c.levels.push_back(proxy_level("kvc:level=" + std::to_string(v), elements));
  return c;
}

/// One context of a tiered store.
struct tiered_entry {
  std::string key, spec;  ///< entry key (final marker) and stored spec (canonical)
  std::string level;      ///< the spec as the profile names it (e.g. "kvc:level=5")
  std::int64_t tokens = 0;
  store_shape shape;
  std::vector<std::string> chunk_keys;
  std::vector<std::size_t> chunk_bytes;
  std::size_t bytes = 0;  ///< sum of chunk_bytes
  double kl = 0, decode_s = 0, weight = 1;
  std::uint64_t hits = 0, last_use = 0;
  std::size_t tier = 0;
};

struct tier_stats {
  std::string url;
  double capacity_bytes = 0;
  double bandwidth_bytes_s = 0, latency_s = 0;
  std::size_t bytes = 0, contexts = 0;  ///< held now
  std::uint64_t hits = 0, puts = 0;     ///< gets served, contexts placed by put
  std::uint64_t promoted_in = 0, promoted_out = 0, demoted_in = 0, demoted_out = 0, evicted = 0;
  std::uint64_t errors = 0;  ///< backend failures seen (io errors)
};

struct tiered_put_result {
  put_result put;                 ///< of the tier's kv_store (put.spec: the level chosen)
  std::size_t tier = 0;           ///< where the context is after the put (and the moves it caused)
  std::size_t planned_tier = 0;   ///< the planner's tier
  std::string level;              ///< the level chosen, as the profile names it (e.g. "kvc:level=5")
  double utility = 0;             ///< U of the context at its level and tier
  bool already = false;           ///< the whole context was stored already (touched, not rewritten)
};

struct tiered_get_result {
  get_result get;                 ///< of the serving tier's kv_store; problems include failed tiers
  std::optional<std::size_t> tier;  ///< the serving tier (none on a miss)
  std::optional<std::size_t> promoted_to;
  std::string level;              ///< the served context's level as its profile named it (empty when unknown)
};

class tiered_store {
  /// Records the sizes of the values a kv_store writes (the chunk sizes of a put).
  class recording_backend final : public forwarding_backend {
   public:
    recording_backend(std::unique_ptr<backend> b, std::shared_ptr<std::map<std::string, std::size_t>> r)
        : forwarding_backend(std::move(b)), r_(std::move(r)) {}
    std::unique_ptr<backend> clone() const override { return std::make_unique<recording_backend>(inner().clone(), r_); }
    void put(const std::string& k, std::span<const std::uint8_t> v) override {
      inner().put(k, v);
      (*r_)[k] = v.size();
    }

   private:
    std::shared_ptr<std::map<std::string, std::size_t>> r_;
  };

  struct chunk_ref {
    std::size_t bytes = 0;
    int refs = 0;
  };
  struct tier {
    tier_spec perf;
    bool volatile_ = false;
    std::shared_ptr<std::map<std::string, std::size_t>> written = std::make_shared<std::map<std::string, std::size_t>>();
    std::unique_ptr<kv_store> kv;
    std::map<std::string, chunk_ref> chunks;
    std::size_t used = 0;
    tier_stats st;
  };

 public:
  /// Opens the tiers (backends given: URLs only name them; `backends[i]` may be null to open cfg[i].url).
  tiered_store(std::vector<tier_config> cfg, tiered_options o, std::vector<std::unique_ptr<backend>> backends = {}) : o_(std::move(o)) {
    if (cfg.empty()) throw_usage("tiered store: no tiers");
    if (o_.store.chunk_tokens < 1) throw_usage("tiered store: chunk_tokens must be >= 1");
    if (!(o_.alpha >= 0)) throw_usage("tiered store: alpha must be >= 0");
    backends.resize(cfg.size());
    for (std::size_t i = 0; i < cfg.size(); ++i) {
      tier t;
      t.perf = tier_defaults(cfg[i]);
      std::unique_ptr<backend> b = std::move(backends[i]);
      if (!b) b = cfg[i].url == "mem" ? std::make_unique<memory_backend>() : open_backend(cfg[i].url);
      t.volatile_ = cfg[i].url == "mem";
      t.kv = std::make_unique<kv_store>(std::make_unique<recording_backend>(std::move(b), t.written), o_.store);
      t.st.url = cfg[i].url;
      t.st.capacity_bytes = cfg[i].capacity_bytes;
      t.st.bandwidth_bytes_s = t.perf.bandwidth_bytes_s;
      t.st.latency_s = t.perf.latency_s;
      tiers_.push_back(std::move(t));
    }
    load();
  }

  std::size_t tier_count() const noexcept { return tiers_.size(); }
  const tiered_options& options() const noexcept { return o_; }
  backend& storage(std::size_t t) { return tiers_.at(t).kv->storage(); }
  const tier_spec& tier_perf(std::size_t t) const { return tiers_.at(t).perf; }

  /// Stores a context: spec "auto" (or empty) lets the planner choose the level among the profile's
  /// levels (default_profile when `profile` is null); any other spec is stored as given (the planner
  /// then chooses only the tier). `weight` is the context's expected uses.
  tiered_put_result put(std::span<const std::int32_t> tokens, const const_kv_view& view, std::string_view spec = "auto",
                        const context_profile* profile = nullptr, double weight = 1.0) {
    view.validate("tiered store put: KV view");
    if (tokens.empty()) throw_usage("tiered store put: no tokens (the tokens are the key)");
    if (static_cast<std::int64_t>(tokens.size()) != view.tokens)
      throw_bad_input("tiered store put", "tokens", std::to_string(view.tokens) + " ids (one per token of the view)", std::to_string(tokens.size()));
    if (!(weight >= 0)) throw_usage("tiered store put: weight must be >= 0");
    const store_shape sh{view.layers, view.kv_heads, view.head_dim};
    tiered_put_result res;
    ++clock_;
    // Stored in full already (any tier, any spec): touch it.
    for (std::size_t t = 0; t < tiers_.size(); ++t) {
      const auto [n, sp] = tiers_[t].kv->contains(tokens, sh);
      if (n == static_cast<std::int64_t>(tokens.size())) {
        const auto hs = chain_hashes(namespace_text(o_.store.model, sh, o_.store.chunk_tokens, sp), tokens, o_.store.chunk_tokens);
        const auto it = idx_.find(marker_key(hs.back()));
        if (it == idx_.end() || it->second.tier != t) continue;  // a prefix marker of a longer context, or not ours
        it->second.last_use = clock_;
        res.already = true;
        res.tier = res.planned_tier = t;
        res.put.spec = sp;
        res.level = it->second.level;
        res.put.entry_key = it->first;
        res.put.tokens = it->second.tokens;
        res.put.chunks = static_cast<std::int64_t>(it->second.chunk_keys.size());
        res.put.chunks_present = res.put.chunks;
        res.utility = utility(it->second, t);
        return res;
      }
    }
    // Candidate levels.
    const double elements = 2.0 * view.layers * view.kv_heads * static_cast<double>(view.tokens) * view.head_dim;
    context_profile cand;
    const bool automatic = spec.empty() || spec == "auto";
    if (profile) {
      if (profile->levels.empty()) throw_usage("tiered store put: the profile has no levels");
      cand = *profile;
    } else {
      cand = default_profile(elements, o_.levels);
    }
    if (!automatic) {
      const std::string canon = make_codec(spec).spec();
      level_profile only = proxy_level(std::string(spec), elements);
      for (const auto& l : cand.levels)
        if (l.spec == spec || make_codec(l.spec).spec() == canon) only = l;
      cand.levels = {only};
    } else {
      for (auto& l : cand.levels) (void)make_codec(l.spec);  // a bad spec in a profile: usage error now
    }
    cand.weight = weight;
    cand.name = "new";
    // The planner over the new context and the residents of bounded tiers.
    const std::size_t L = cand.levels.size(), T = tiers_.size();
    std::vector<context_profile> cs{cand};
    std::vector<tier_spec> ts;
    for (const auto& t : tiers_) ts.push_back(t.perf);
    std::vector<std::pair<double, const tiered_entry*>> res_list;
    for (const auto& [k, e] : idx_)
      if (e.tier + 1 < T) res_list.push_back({score(e, e.tier), &e});
    std::sort(res_list.begin(), res_list.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (std::size_t i = 0; i < res_list.size(); ++i) {
      const tiered_entry& e = *res_list[i].second;
      if (i < o_.plan_residents) {
        context_profile c;
        c.name = e.key;
        c.weight = e.weight + static_cast<double>(e.hits);
        c.levels.assign(L, level_profile{e.spec, static_cast<double>(e.bytes), e.kl, e.decode_s});
        cs.push_back(std::move(c));
      } else {
        ts[e.tier].capacity_bytes = std::max(0.0, ts[e.tier].capacity_bytes - static_cast<double>(e.bytes));
      }
    }
    for (std::size_t t = 0; t < T; ++t) ts[t].capacity_bytes = std::max(0.0, ts[t].capacity_bytes);
    const plan_result plan = plan_placement(cs, ts, o_.alpha);
    const level_profile lvl = cand.levels[plan.choice[0].level];
    res.planned_tier = plan.choice[0].tier;
    // Ties go to the faster tier when the context fits there as it is.
    {
      const double u = utility_of(cand, lvl, ts[res.planned_tier], o_.alpha);
      for (std::size_t t = 0; t < res.planned_tier; ++t)
        if (utility_of(cand, lvl, ts[t], o_.alpha) >= u - 1e-12 && static_cast<double>(tiers_[t].used) + lvl.bytes <= tiers_[t].perf.capacity_bytes) {
          res.planned_tier = t;
          break;
        }
    }
    // The planned tier, else the next one with room.
    std::optional<std::size_t> target;
    for (std::size_t t = res.planned_tier; t < T && !target; ++t)
      if (make_room(t, static_cast<std::size_t>(lvl.bytes), "", std::numeric_limits<double>::infinity())) target = t;
    if (!target)
      throw_usage("tiered store put: the context (about " + std::to_string(static_cast<long long>(lvl.bytes)) + " bytes as " + lvl.spec +
                  ") fits in no tier from '" + tiers_[res.planned_tier].st.url + "' down");
    tier& tt = tiers_[*target];
    tt.written->clear();
    try {
      res.put = tt.kv->put(tokens, view, lvl.spec);
      res.level = lvl.spec;
    } catch (const error& e) {
      if (e.kind() == error_kind::io) ++tt.st.errors;
      throw;
    }
    // Index it.
    tiered_entry e;
    e.key = res.put.entry_key;
    e.spec = res.put.spec;
    e.level = lvl.spec;
    e.tokens = res.put.tokens;
    e.shape = sh;
    const auto hs = chain_hashes(namespace_text(o_.store.model, sh, o_.store.chunk_tokens, e.spec), tokens, o_.store.chunk_tokens);
    for (const auto& h : hs) e.chunk_keys.push_back(chunk_key(h));
    for (const auto& ck : e.chunk_keys) {
      std::size_t b = 0;
      if (const auto w = tt.written->find(ck); w != tt.written->end()) b = w->second;
      else if (const auto c = tt.chunks.find(ck); c != tt.chunks.end()) b = c->second.bytes;
      else if (const auto v = tt.kv->storage().get(ck)) b = v->size();  // an orphan of an earlier put, reused
      e.chunk_bytes.push_back(b);
      e.bytes += b;
    }
    e.kl = lvl.kl;
    e.decode_s = lvl.decode_s * (lvl.bytes > 0 ? static_cast<double>(e.bytes) / lvl.bytes : 1.0);
    e.weight = weight;
    e.last_use = clock_;
    e.tier = *target;
    write_record(e, *target);
    add_refs(e, *target);
    ++tt.st.puts;
    auto& ent = idx_[e.key] = std::move(e);
    // The estimate may have been short: enforce the capacity with the real size.
    if (static_cast<double>(tt.used) > tt.perf.capacity_bytes) {
      bool fits = false;
      {
        pin_guard pin(pinned_, ent.key);
        fits = make_room(*target, 0, ent.key, std::numeric_limits<double>::infinity());
      }
      if (!fits) demote(ent);
    }
    res.tier = ent.tier;
    res.utility = utility(ent, ent.tier);
    return res;
  }

  /// The longest stored prefix, from the fastest tier holding it; then promotes its context.
  tiered_get_result get(std::span<const std::int32_t> tokens, const kv_view& view) {
    view.validate("tiered store get: destination view");
    if (static_cast<std::int64_t>(tokens.size()) != view.tokens)
      throw_bad_input("tiered store get", "tokens", std::to_string(view.tokens) + " ids (one per token of the view)", std::to_string(tokens.size()));
    ++clock_;
    ++gets_;
    tiered_get_result res;
    const store_shape sh{view.layers, view.kv_heads, view.head_dim};
    std::vector<std::string> problems;
    std::vector<std::int64_t> have(tiers_.size(), 0);
    for (std::size_t t = 0; t < tiers_.size(); ++t) {
      try {
        have[t] = tiers_[t].kv->contains(tokens, sh).first;
      } catch (const error& e) {
        if (e.kind() != error_kind::io) throw;
        ++tiers_[t].st.errors;
        problems.push_back("tier " + std::to_string(t) + " (" + tiers_[t].st.url + "): " + e.what());
      }
    }
    while (true) {
      std::size_t best = tiers_.size();
      for (std::size_t t = 0; t < tiers_.size(); ++t)
        if (have[t] > 0 && (best == tiers_.size() || have[t] > have[best])) best = t;
      if (best == tiers_.size()) break;
      try {
        res.get = tiers_[best].kv->get(tokens, view);
      } catch (const error& e) {
        if (e.kind() != error_kind::io) throw;
        ++tiers_[best].st.errors;
        problems.push_back("tier " + std::to_string(best) + " (" + tiers_[best].st.url + "): " + e.what());
        have[best] = 0;
        res.get = get_result{};
        continue;
      }
      if (!res.get.hit()) {  // its markers named chunks it no longer holds: try another tier
        for (auto& p : res.get.problems) problems.push_back(std::move(p));
        have[best] = 0;
        continue;
      }
      res.tier = best;
      break;
    }
    for (auto& p : res.get.problems) problems.push_back(std::move(p));
    res.get.problems = std::move(problems);
    if (!res.tier) {
      ++misses_;
      return res;
    }
    tier& src = tiers_[*res.tier];
    ++src.st.hits;
    // The context served: the exact entry, else the shortest one of that tier holding the last chunk.
    const auto hs = chain_hashes(namespace_text(o_.store.model, sh, o_.store.chunk_tokens, res.get.spec), tokens, o_.store.chunk_tokens);
    const std::size_t last = static_cast<std::size_t>(res.get.chunks) - 1;
    tiered_entry* e = nullptr;
    if (const auto it = idx_.find(marker_key(hs[last])); it != idx_.end() && it->second.tier == *res.tier) e = &it->second;
    if (!e) {
      const std::string ck = chunk_key(hs[last]);
      for (auto& [k, x] : idx_)
        if (x.tier == *res.tier && std::find(x.chunk_keys.begin(), x.chunk_keys.end(), ck) != x.chunk_keys.end() &&
            (!e || x.chunk_keys.size() < e->chunk_keys.size()))
          e = &x;
    }
    if (!e) return res;  // stored by someone else (no record): served, not moved
    ++e->hits;
    e->last_use = clock_;
    res.level = e->level;
    const std::string key = e->key;
    pin_guard pin(pinned_, key);  // moves cascading down never pick it
    for (std::size_t t = 0; t < *res.tier; ++t) {
      if (static_cast<double>(e->bytes) > tiers_[t].perf.capacity_bytes) continue;
      try {
        if (!make_room(t, e->bytes, key, score(*e, t))) continue;
        // (moves cascading down may have reached the context's own tier: look it up again)
        const auto it = idx_.find(key);
        if (it == idx_.end() || it->second.tier != *res.tier) break;
        e = &it->second;
        const std::size_t from = e->tier;
        move(*e, t);
        ++tiers_[from].st.promoted_out;
        ++tiers_[t].st.promoted_in;
        res.promoted_to = t;
      } catch (const error& x) {
        if (x.kind() != error_kind::io) throw;
        ++tiers_[t].st.errors;
        res.get.problems.push_back("promotion to tier " + std::to_string(t) + " (" + tiers_[t].st.url + ") failed: " + x.what());
      }
      break;
    }
    return res;
  }

  /// Tokens of the longest stored prefix over all tiers (markers only), its spec and tier.
  std::pair<std::int64_t, std::string> contains(std::span<const std::int32_t> tokens, const store_shape& sh, std::size_t* tier_out = nullptr) {
    std::pair<std::int64_t, std::string> best{0, {}};
    for (std::size_t t = 0; t < tiers_.size(); ++t) {
      auto r = tiers_[t].kv->contains(tokens, sh);
      if (r.first > best.first) {
        best = r;
        if (tier_out) *tier_out = t;
      }
    }
    return best;
  }

  /// Removes the context of `tokens` (every spec) from whichever tier holds it; returns contexts removed.
  /// Other contexts sharing its prefix keep their chunks.
  std::size_t remove(std::span<const std::int32_t> tokens, const store_shape& sh) {
    std::vector<std::string> keys;
    for (const auto& [k, e] : idx_)
      if (e.shape.layers == sh.layers && e.shape.kv_heads == sh.kv_heads && e.shape.head_dim == sh.head_dim &&
          e.tokens == static_cast<std::int64_t>(tokens.size())) {
        const auto hs = chain_hashes(namespace_text(o_.store.model, sh, o_.store.chunk_tokens, e.spec), tokens, o_.store.chunk_tokens);
        if (marker_key(hs.back()) == k) keys.push_back(k);
      }
    for (const auto& k : keys) remove_entry(k);
    return keys.size();
  }
  /// Removes the context under entry key `key`; false when the store has none.
  bool remove_entry(const std::string& key) {
    const auto it = idx_.find(key);
    if (it == idx_.end()) return false;
    drop_from_tier(it->second, it->second.tier);
    idx_.erase(it);
    return true;
  }

  /// Every context held, with its tier.
  std::vector<tiered_entry> entries() const {
    std::vector<tiered_entry> out;
    for (const auto& [k, e] : idx_) out.push_back(e);
    return out;
  }
  std::optional<tiered_entry> entry(const std::string& key) const {
    const auto it = idx_.find(key);
    if (it == idx_.end()) return std::nullopt;
    return it->second;
  }

  std::vector<tier_stats> stats() const {
    std::vector<tier_stats> out;
    for (std::size_t t = 0; t < tiers_.size(); ++t) {
      tier_stats s = tiers_[t].st;
      s.bytes = tiers_[t].used;
      s.contexts = 0;
      for (const auto& [k, e] : idx_) s.contexts += e.tier == t ? 1 : 0;
      out.push_back(s);
    }
    return out;
  }
  std::uint64_t gets() const noexcept { return gets_; }
  std::uint64_t misses() const noexcept { return misses_; }

  /// U of a context at its level in tier t (plan.hpp's utility, weight = put weight + hits).
  double utility(const tiered_entry& e, std::size_t t) const {
    return (e.weight + static_cast<double>(e.hits)) * (-e.kl - o_.alpha * delay(e, t));
  }

  /// Moves the contexts of volatile (mem) tiers down to the first persistent tier with room (the
  /// CLI's last step: a process's memory does not outlive it). Returns the contexts moved.
  std::size_t close() {
    std::size_t moved = 0;
    std::optional<std::size_t> dst;
    for (std::size_t t = 0; t < tiers_.size() && !dst; ++t)
      if (!tiers_[t].volatile_) dst = t;
    if (!dst) return 0;
    std::vector<std::string> keys;
    for (const auto& [k, e] : idx_)
      if (tiers_[e.tier].volatile_) keys.push_back(k);
    for (const auto& k : keys) {
      if (!idx_.count(k)) continue;
      const std::size_t from = idx_.at(k).tier;
      for (std::size_t t = *dst; t < tiers_.size(); ++t) {
        if (tiers_[t].volatile_) continue;
        if (make_room(t, idx_.at(k).bytes, k, std::numeric_limits<double>::infinity())) {
          const auto it = idx_.find(k);
          if (it == idx_.end() || it->second.tier != from) break;
          move(it->second, t);
          ++tiers_[from].st.demoted_out;
          ++tiers_[t].st.demoted_in;
          ++moved;
          break;
        }
      }
    }
    return moved;
  }

 private:
  double delay(const tiered_entry& e, std::size_t t) const {
    const tier_spec& p = tiers_[t].perf;
    return p.latency_s + static_cast<double>(e.bytes) / p.bandwidth_bytes_s + e.decode_s;
  }
  /// Utility per byte a context keeps by staying in tier t (see the file comment).
  double score(const tiered_entry& e, std::size_t t) const {
    const double w = e.weight + static_cast<double>(e.hits), b = std::max<double>(1.0, static_cast<double>(e.bytes));
    if (t + 1 < tiers_.size()) return w * o_.alpha * (delay(e, t + 1) - delay(e, t)) / b;
    return w / b;
  }
  static std::string record_key(const std::string& entry_key) {
    const std::string mp = std::string(key_prefix) + "m:";
    return std::string(key_prefix) + "t:" + (entry_key.rfind(mp, 0) == 0 ? entry_key.substr(mp.size()) : entry_key);
  }
  static std::string marker_of_chunk(const std::string& ck) {
    const std::string cp = std::string(key_prefix) + "c:";
    return std::string(key_prefix) + "m:" + ck.substr(cp.size());
  }

  void write_record(const tiered_entry& e, std::size_t t) {
    const nlohmann::json j{{"format", "kvcodec-store-tier-record"}, {"version", 1}, {"key", e.key}, {"spec", e.spec}, {"level", e.level}, {"tokens", e.tokens},
                           {"layers", e.shape.layers}, {"kv_heads", e.shape.kv_heads}, {"head_dim", e.shape.head_dim},
                           {"chunk_keys", e.chunk_keys}, {"chunk_bytes", e.chunk_bytes}, {"kl", e.kl}, {"decode_s", e.decode_s},
                           {"weight", e.weight}, {"hits", e.hits}};
    const std::string s = j.dump();
    tiers_[t].kv->storage().put(record_key(e.key), std::span(reinterpret_cast<const std::uint8_t*>(s.data()), s.size()));
    tiers_[t].kv->storage().sync();
  }

  void add_refs(const tiered_entry& e, std::size_t t) {
    tier& tt = tiers_[t];
    for (std::size_t k = 0; k < e.chunk_keys.size(); ++k) {
      chunk_ref& c = tt.chunks[e.chunk_keys[k]];
      if (c.refs++ == 0) {
        c.bytes = e.chunk_bytes[k];
        tt.used += c.bytes;
      }
    }
  }

  /// Removes a context's copy from tier t: its record, then the markers and chunks no other context of
  /// that tier uses (markers first). Does not touch the index entry.
  void drop_from_tier(const tiered_entry& e, std::size_t t) {
    tier& tt = tiers_[t];
    backend& b = tt.kv->storage();
    b.remove(record_key(e.key));
    std::vector<std::string> gone;
    for (const auto& ck : e.chunk_keys) {
      const auto it = tt.chunks.find(ck);
      if (it == tt.chunks.end()) continue;
      if (--it->second.refs == 0) {
        tt.used -= it->second.bytes;
        tt.chunks.erase(it);
        gone.push_back(ck);
      }
    }
    for (auto it = gone.rbegin(); it != gone.rend(); ++it) b.remove(marker_of_chunk(*it));
    for (const auto& ck : gone) b.remove(ck);
  }

  /// Copies a context whole into tier dst (chunks, sync, markers, record), then drops the old copy.
  void move(tiered_entry& e, std::size_t dst) {
    const std::size_t src = e.tier;
    if (src == dst) return;
    backend& S = tiers_[src].kv->storage();
    backend& D = tiers_[dst].kv->storage();
    const auto have = D.exists(e.chunk_keys);
    for (std::size_t k = 0; k < e.chunk_keys.size(); ++k) {
      if (have[k]) continue;
      auto v = S.get(e.chunk_keys[k]);
      if (!v) throw_corrupt(S.url(), "tiered store: chunk '" + e.chunk_keys[k] + "' of context '" + e.key + "' is missing from its tier");
      D.put(e.chunk_keys[k], *v);
      e.chunk_bytes[k] = v->size();
    }
    D.sync();
    D.set_add(specs_key(o_.store.model, e.shape, o_.store.chunk_tokens), e.spec);
    std::vector<std::string> mk;
    for (const auto& ck : e.chunk_keys) mk.push_back(marker_of_chunk(ck));
    const auto mhave = D.exists(mk);
    for (std::size_t k = 0; k < mk.size(); ++k) {
      const bool last = k + 1 == mk.size();
      if (mhave[k] && !last) continue;
      auto v = S.get(last ? e.key : mk[k]);
      if (!v) {
        if (last) throw_corrupt(S.url(), "tiered store: the entry marker '" + e.key + "' is missing from its tier");
        continue;  // a prefix marker removed meanwhile: the shorter prefix is not offered
      }
      D.put(last ? e.key : mk[k], *v);
    }
    D.sync();
    e.bytes = 0;
    for (auto b : e.chunk_bytes) e.bytes += b;
    write_record(e, dst);
    add_refs(e, dst);
    drop_from_tier(e, src);
    e.tier = dst;
  }

  /// Moves a context to the next tier with room (evicts it from the last).
  void demote(tiered_entry& e) {
    const std::size_t from = e.tier;
    for (std::size_t t = from + 1; t < tiers_.size(); ++t) {
      if (static_cast<double>(e.bytes) > tiers_[t].perf.capacity_bytes) continue;
      if (make_room(t, e.bytes, e.key, std::numeric_limits<double>::infinity())) {
        move(e, t);
        ++tiers_[from].st.demoted_out;
        ++tiers_[t].st.demoted_in;
        return;
      }
    }
    ++tiers_[from].st.evicted;
    const std::string k = e.key;
    drop_from_tier(e, from);
    idx_.erase(k);
  }

  /// Frees tier t until `need` more bytes fit, moving down (or evicting from the last tier) residents
  /// other than `protect` with a utility per byte below `limit`, lowest first (ties: least recently
  /// used). Returns false, moving nothing, when that cannot free enough.
  bool make_room(std::size_t t, std::size_t need, const std::string& protect, double limit) {
    tier& tt = tiers_[t];
    const double cap = tt.perf.capacity_bytes;
    if (static_cast<double>(need) > cap) return false;
    if (static_cast<double>(tt.used + need) <= cap) return true;
    std::vector<tiered_entry*> victims;
    for (auto& [k, e] : idx_)
      if (e.tier == t && k != protect && !pinned_.count(k) && score(e, t) < limit) victims.push_back(&e);
    std::sort(victims.begin(), victims.end(), [&](const tiered_entry* a, const tiered_entry* b) {
      const double sa = score(*a, t), sb = score(*b, t);
      return sa != sb ? sa < sb : a->last_use < b->last_use;
    });
    // Enough? (bytes a victim frees: its chunks no other context of the tier uses)
    double freeable = 0;
    for (const auto* v : victims)
      for (const auto& ck : v->chunk_keys)
        if (const auto it = tt.chunks.find(ck); it != tt.chunks.end() && it->second.refs == 1) freeable += static_cast<double>(it->second.bytes);
    if (static_cast<double>(tt.used + need) - freeable > cap) return false;
    for (auto* v : victims) {
      if (static_cast<double>(tt.used + need) <= cap) break;
      demote(*v);
    }
    return static_cast<double>(tt.used + need) <= cap;
  }

  /// Reads the tiers' records back (the memory tier starts empty).
  void load() {
    std::vector<std::pair<tiered_entry, std::size_t>> dups;
    for (std::size_t t = 0; t < tiers_.size(); ++t) {
      backend& b = tiers_[t].kv->storage();
      for (const auto& k : b.list(std::string(key_prefix) + "t:")) {
        const auto v = b.get(k);
        if (!v) continue;
        tiered_entry e;
        try {
          const auto j = nlohmann::json::parse(v->begin(), v->end());
          if (j.value("format", "") != "kvcodec-store-tier-record") throw std::runtime_error("not a kvcodec-store-tier-record");
          e.key = j.at("key").get<std::string>();
          e.spec = j.at("spec").get<std::string>();
          e.level = j.value("level", e.spec);
          e.tokens = j.at("tokens").get<std::int64_t>();
          e.shape = {j.at("layers").get<std::int32_t>(), j.at("kv_heads").get<std::int32_t>(), j.at("head_dim").get<std::int32_t>()};
          e.chunk_keys = j.at("chunk_keys").get<std::vector<std::string>>();
          e.chunk_bytes = j.at("chunk_bytes").get<std::vector<std::size_t>>();
          e.kl = j.at("kl").get<double>();
          e.decode_s = j.at("decode_s").get<double>();
          e.weight = j.at("weight").get<double>();
          e.hits = j.at("hits").get<std::uint64_t>();
          if (e.chunk_keys.size() != e.chunk_bytes.size() || e.chunk_keys.empty()) throw std::runtime_error("chunk_keys and chunk_bytes differ in length");
          if (record_key(e.key) != k) throw std::runtime_error("its entry key is not the one its name promises");
        } catch (const std::exception& x) {
          throw_bad_input(b.url() + ": tier record '" + k + "'", "", "a kvcodec-store-tier-record JSON object", std::string("a value that is not one (") + x.what() + ")");
        }
        for (auto s : e.chunk_bytes) e.bytes += s;
        e.tier = t;
        add_refs(e, t);
        if (idx_.count(e.key)) dups.push_back({std::move(e), t});
        else idx_[e.key] = std::move(e);
      }
    }
    // A context in two tiers (a move interrupted after its new copy was complete): keep the faster copy.
    for (const auto& [e, t] : dups) drop_from_tier(e, t);
  }

  struct pin_guard {
    std::set<std::string>& s;
    std::string k;
    bool added;
    pin_guard(std::set<std::string>& set, std::string key) : s(set), k(std::move(key)), added(s.insert(k).second) {}
    ~pin_guard() {
      if (added) s.erase(k);
    }
    pin_guard(const pin_guard&) = delete;
    pin_guard& operator=(const pin_guard&) = delete;
  };

  tiered_options o_;
  std::set<std::string> pinned_;  ///< contexts being promoted or placed: never chosen to move down
  std::vector<tier> tiers_;
  std::map<std::string, tiered_entry> idx_;
  std::uint64_t clock_ = 0, gets_ = 0, misses_ = 0;
};

/// A tiered store from a tiered:// URL.
inline std::unique_ptr<tiered_store> open_tiered(const std::string& url, tiered_options o) {
  return std::make_unique<tiered_store>(parse_tiered_url(url), std::move(o));
}

}  // namespace kvcodec::store
