// kvcodec/pipeline/codec.hpp — a type-erased codec: the ordered stages of one spec.
//
// Invariant: stages run drop? -> transform* -> quant -> entropy, at most one drop, quant and
// entropy stage. A spec without a quantizer gets `raw:dtype=auto` (lossless); without an entropy
// stage it gets `pack`. spec() prints every stage with every parameter, so a container that
// records it decodes with no flags.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/registry/builtin.hpp"
#include "kvcodec/registry/registry.hpp"

namespace kvcodec {

class codec {
 public:
  std::unique_ptr<drop_stage> drop;
  std::vector<std::unique_ptr<transform_stage>> transforms;
  std::unique_ptr<quant_stage> quant;
  std::unique_ptr<entropy_stage> entropy;

  /// Canonical full spec: every stage, every parameter.
  std::string spec() const {
    std::vector<stage_spec> s;
    if (drop) s.push_back(drop->spec());
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
  /// Every stage, in pipeline order.
  std::vector<stage*> all() const {
    std::vector<stage*> v;
    if (drop) v.push_back(drop.get());
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
  int last = -1;
  std::string last_name;
  for (const auto& s : specs) {
    const stage_entry* e = reg.find(s.name);
    const int k = static_cast<int>(e->kind);
    const bool repeatable = e->kind == stage_kind::transform;
    if (k < last || (k == last && !repeatable))
      throw_usage("codec spec '" + std::string(spec_text) + "': stage '" + s.name + "' (" + std::string(stage_kind_name(e->kind)) +
                  ") cannot follow '" + last_name + "': stages run drop -> transform -> quant -> entropy, at most one of each but transform");
    last = k;
    last_name = s.name;
    auto st = e->make(s);
    switch (e->kind) {
      case stage_kind::drop: c.drop = detail::downcast<drop_stage>(std::move(st)); break;
      case stage_kind::transform: c.transforms.push_back(detail::downcast<transform_stage>(std::move(st))); break;
      case stage_kind::quant: c.quant = detail::downcast<quant_stage>(std::move(st)); break;
      case stage_kind::entropy: c.entropy = detail::downcast<entropy_stage>(std::move(st)); break;
    }
  }
  if (!c.quant) c.quant = detail::downcast<quant_stage>(reg.find("raw")->make(stage_spec{"raw", {}}));
  if (!c.entropy) c.entropy = detail::downcast<entropy_stage>(reg.find("pack")->make(stage_spec{"pack", {}}));
  return c;
}

/// Builds a codec from a spec string using the built-in registry (registry/builtin.hpp).
inline codec make_codec(std::string_view spec_text) { return make_codec(spec_text, builtin_registry()); }

}  // namespace kvcodec
