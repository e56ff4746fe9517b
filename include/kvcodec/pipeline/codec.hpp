// kvcodec/pipeline/codec.hpp — a type-erased codec: the ordered stages of one spec.
//
// Invariant: stages run drop* -> transform* -> quant -> entropy, at most one quant and entropy
// stage. A spec without a quantizer gets `raw:dtype=auto` (lossless); without an entropy stage it
// gets `pack`. Several drop stages ("streamingllm|snapkv") compose into one drop_chain: each later
// stage scores the survivors of the ones before. spec() prints every stage with every parameter, so
// a container that records it decodes with no flags.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/cpu/drop/gather.hpp"
#include "kvcodec/registry/builtin.hpp"
#include "kvcodec/registry/registry.hpp"

namespace kvcodec {

/// Several drop stages of one spec, run in order (kvpress ComposedPress): the first selects on the
/// cache; each later one scores the survivors of the compressed prefix, gathered into a dense cache
/// per head (cpu/drop/gather.hpp: every head must keep the same number), keeps its budget of them
/// (its keep is a fraction of the survivors) and the kept sets are mapped back. Tokens at or after
/// the first stage's obs_end are kept throughout; later stages take obs_end = -1.
class drop_chain final : public drop_stage {
 public:
  explicit drop_chain(std::vector<std::unique_ptr<drop_stage>> parts) : parts_(std::move(parts)) {
    for (const auto& d : parts_) name_ += (name_.empty() ? "" : "|") + std::string(d->name());
    for (const auto& [k, v] : parts_.front()->spec().params)
      if (k == "obs_end") obs_end_ = std::stoll(v);
  }
  std::string_view name() const override { return name_; }
  /// The first stage's parameters (codec::spec() prints every stage).
  stage_spec spec() const override { return parts_.front()->spec(); }
  const std::vector<std::unique_ptr<drop_stage>>& parts() const noexcept { return parts_; }

  kept_sets select(const kv_cache& kv) const override {
    kept_sets kept = parts_.front()->select(kv);
    const std::int64_t n = obs_end_ < 0 ? kv.shape.tokens : obs_end_;
    for (std::size_t i = 1; i < parts_.size(); ++i) {
      kept_sets prefix = kept;  // the survivors before n, the only ones a later stage may drop
      for (auto& layer : prefix)
        for (auto& h : layer) h.erase(std::lower_bound(h.begin(), h.end(), static_cast<std::int32_t>(n)), h.end());
      const std::string where = "drop stage '" + std::string(parts_[i]->name()) + "' after '" + std::string(parts_[i - 1]->name()) + "'";
      kept = cpu::drop_detail::ungather(parts_[i]->select(cpu::drop_detail::gather_tokens(kv, prefix, where)), prefix);
      for (auto& layer : kept)
        for (auto& h : layer)
          for (std::int64_t t = n; t < kv.shape.tokens; ++t) h.push_back(static_cast<std::int32_t>(t));
    }
    return kept;
  }

 private:
  std::vector<std::unique_ptr<drop_stage>> parts_;
  std::string name_;
  std::int64_t obs_end_ = -1;
};

class codec {
 public:
  std::unique_ptr<drop_stage> drop;
  std::vector<std::unique_ptr<transform_stage>> transforms;
  std::unique_ptr<quant_stage> quant;
  std::unique_ptr<entropy_stage> entropy;

  /// Canonical full spec: every stage, every parameter.
  std::string spec() const {
    std::vector<stage_spec> s;
    for (const drop_stage* d : drops()) s.push_back(d->spec());
    for (const auto& t : transforms) s.push_back(t->spec());
    s.push_back(quant->spec());
    s.push_back(entropy->spec());
    return format_spec(s);
  }
  /// True when decode(encode(x)) == x for the cache the codec is bound to.
  bool lossless() const {
    if (drop) return false;
    for (const auto& t : transforms)
      if (!t->lossless()) return false;
    return quant->lossless() && entropy->lossless();
  }
  /// The drop stages, in order (a drop_chain's parts, or the one drop stage, or none).
  std::vector<drop_stage*> drops() const {
    std::vector<drop_stage*> v;
    if (const auto* chain = dynamic_cast<const drop_chain*>(drop.get()))
      for (const auto& d : chain->parts()) v.push_back(d.get());
    else if (drop)
      v.push_back(drop.get());
    return v;
  }
  /// True when a stage reads cache_info::query_energy (callers holding queries should supply them).
  bool wants_query_energy() const {
    for (const auto& t : transforms)
      if (t->wants_query_energy()) return true;
    return quant && quant->wants_query_energy();
  }
  /// Every stage, in pipeline order.
  std::vector<stage*> all() const {
    std::vector<stage*> v;
    for (drop_stage* d : drops()) v.push_back(d);
    for (const auto& t : transforms) v.push_back(t.get());
    v.push_back(quant.get());
    v.push_back(entropy.get());
    return v;
  }
};

namespace detail {
template <class T>
std::unique_ptr<T> downcast(std::unique_ptr<stage> p) {
  return std::unique_ptr<T>(static_cast<T*>(p.release()));
}
}  // namespace detail

/// Builds a codec from a spec string using `reg` (presets expanded first).
inline codec make_codec(std::string_view spec_text, const registry& reg) {
  const auto specs = reg.expand(parse_spec(spec_text));
  codec c;
  std::vector<std::unique_ptr<drop_stage>> drops;
  int last = -1;
  std::string last_name;
  for (const auto& s : specs) {
    const stage_entry* e = reg.find(s.name);
    const int k = static_cast<int>(e->kind);
    const bool repeatable = e->kind == stage_kind::transform || e->kind == stage_kind::drop;
    if (k < last || (k == last && !repeatable))
      throw_usage("codec spec '" + std::string(spec_text) + "': stage '" + s.name + "' (" + std::string(stage_kind_name(e->kind)) +
                  ") cannot follow '" + last_name + "': stages run drop -> transform -> quant -> entropy, at most one quant and one entropy stage");
    last = k;
    last_name = s.name;
    auto st = e->make(s);
    switch (e->kind) {
      case stage_kind::drop: drops.push_back(detail::downcast<drop_stage>(std::move(st))); break;
      case stage_kind::transform: c.transforms.push_back(detail::downcast<transform_stage>(std::move(st))); break;
      case stage_kind::quant: c.quant = detail::downcast<quant_stage>(std::move(st)); break;
      case stage_kind::entropy: c.entropy = detail::downcast<entropy_stage>(std::move(st)); break;
    }
  }
  for (std::size_t i = 1; i < drops.size(); ++i)
    for (const auto& [k, v] : drops[i]->spec().params)
      if (k == "obs_end" && v != "-1")
        throw_usage("codec spec '" + std::string(spec_text) + "': drop stage '" + std::string(drops[i]->name()) +
                    "' follows another drop stage, so it compresses what that one kept up to its obs_end; obs_end must be -1 there (found " + v + ")");
  // think stores key rows narrower: a quantizer that reads per-channel cache statistics would index them wrongly.
  for (const auto& t : c.transforms)
    if (t->name() == "think" && c.quant && (c.quant->wants_query_energy() || c.quant->name() == "klt"))
      throw_usage("codec spec '" + std::string(spec_text) + "': '" + std::string(c.quant->name()) +
                  "' reads per-channel statistics of the whole head_dim, and 'think' before it removes key channels; put think with another quantizer");
  if (drops.size() == 1) c.drop = std::move(drops.front());
  if (drops.size() > 1) c.drop = std::make_unique<drop_chain>(std::move(drops));
  if (!c.quant) c.quant = detail::downcast<quant_stage>(reg.find("raw")->make(stage_spec{"raw", {}}));
  if (!c.entropy) c.entropy = detail::downcast<entropy_stage>(reg.find("pack")->make(stage_spec{"pack", {}}));
  return c;
}

/// Builds a codec from a spec string using the built-in registry (registry/builtin.hpp).
inline codec make_codec(std::string_view spec_text) { return make_codec(spec_text, builtin_registry()); }

}  // namespace kvcodec
