// kvcodec/registry/registry.hpp — name -> stage factory, for codecs built from spec strings.
//
// Adding a stage = one descriptor header + one implementation + one `add<D, Impl>()` line in its
// family's registry/*_stages.hpp. Presets (registry/presets.hpp) are named specs (possibly
// parameterised, e.g. `kvc:level=3`) that expand to a full stage list before construction.
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec {

/// A stage's CUDA implementation (cuda/include/kvcodec/cuda/), as its registry row declares it.
/// decode: cuda::decode_into takes containers made with the stage (a quantizer or entropy stage; a
/// transform it inverts; a drop stage: its token-dropped containers, with the quantizers its limits name).
/// encode: cuda::encode runs the stage on the GPU. A quantizer without it is a usage error there;
/// an entropy stage without it runs on the host over the symbols copied back.
/// tests/registry/test_cuda_rows.cpp checks every row against what the seams do.
struct cuda_support {
  bool decode = false;
  bool encode = false;
  std::string header;  ///< its CUDA code, relative to cuda/include/kvcodec/cuda/ (empty: none)
  std::string limits;  ///< what the CUDA path does not take, in spec terms (empty: nothing)
};

struct stage_entry {
  std::string name;
  stage_kind kind{};
  std::string summary;
  std::vector<param_info> params;
  std::function<std::unique_ptr<stage>(const stage_spec&)> make;
  cuda_support cuda;
};

struct preset_entry {
  std::string name;
  std::string summary;
  std::vector<param_info> params;
  std::function<std::string(const stage_spec&)> expand;  ///< returns a spec without presets
};

class registry {
 public:
  template <class D, class Impl>
  void add() {
    static_assert(std::is_base_of_v<stage, Impl>, "registry::add: Impl must implement a stage interface");
    static_assert(D::kind == Impl::descriptor::kind, "registry::add: descriptor and implementation disagree on the kind");
    param_lister l;
    D d{};
    d.visit(l);
    remove(D::name);
    stages_.push_back(stage_entry{std::string(D::name), D::kind, std::string(D::summary), std::move(l.out),
                                  [](const stage_spec& s) -> std::unique_ptr<stage> {
                                    return std::make_unique<Impl>(parse_params<D>(s));
                                  }});
  }
  /// A preset whose parameters are described by P (a struct with visit/validate).
  template <class P>
  void add_preset(std::string_view name, std::string_view summary, std::function<std::string(const P&)> expand) {
    param_lister l;
    P p{};
    p.visit(l);
    presets_.push_back(preset_entry{std::string(name), std::string(summary), std::move(l.out),
                                    [expand = std::move(expand)](const stage_spec& s) {
                                      P q{};
                                      param_reader r(s);
                                      q.visit(r);
                                      r.finish();
                                      q.validate();
                                      return expand(q);
                                    }});
  }

  /// Declares the CUDA implementation of a registered stage (usage error for an unknown name).
  void set_cuda(std::string_view name, cuda_support c) {
    for (auto& e : stages_)
      if (e.name == name) {
        e.cuda = std::move(c);
        return;
      }
    throw_usage("registry::set_cuda: no stage named '" + std::string(name) + "'");
  }
  /// The stages of kind k whose row declares CUDA decode (or encode), each with its limits in
  /// parentheses: "cachegen-quant (with rans), uniform (outliers=0), ...". For error messages.
  std::string cuda_stages(stage_kind k, bool encode) const {
    std::string out;
    for (const auto& e : stages_)
      if (e.kind == k && (encode ? e.cuda.encode : e.cuda.decode)) {
        if (!out.empty()) out += ", ";
        out += e.name;
        if (!e.cuda.limits.empty()) out += " (" + e.cuda.limits + ")";
      }
    return out.empty() ? "none" : out;
  }

  const stage_entry* find(std::string_view name) const {
    for (const auto& e : stages_)
      if (e.name == name) return &e;
    return nullptr;
  }
  const preset_entry* find_preset(std::string_view name) const {
    for (const auto& e : presets_)
      if (e.name == name) return &e;
    return nullptr;
  }
  const std::vector<stage_entry>& stages() const noexcept { return stages_; }
  const std::vector<preset_entry>& presets() const noexcept { return presets_; }

  /// Expands presets (recursively, depth-limited) into plain stage specs.
  std::vector<stage_spec> expand(const std::vector<stage_spec>& in, int depth = 0) const {
    if (depth > 8) throw_usage("codec spec: presets nest more than 8 deep");
    std::vector<stage_spec> out;
    for (const auto& s : in) {
      if (const auto* p = find_preset(s.name)) {
        auto sub = expand(parse_spec(p->expand(s)), depth + 1);
        out.insert(out.end(), sub.begin(), sub.end());
      } else if (find(s.name)) {
        out.push_back(s);
      } else {
        std::string names;
        for (const auto& e : stages_) names += (names.empty() ? "" : ", ") + e.name;
        for (const auto& e : presets_) names += ", " + e.name;
        throw_usage("codec spec: unknown stage '" + s.name + "' (known: " + names + "; see `kvcodec list`)");
      }
    }
    return out;
  }

 private:
  void remove(std::string_view name) {
    stages_.erase(std::remove_if(stages_.begin(), stages_.end(), [&](const stage_entry& e) { return e.name == name; }),
                  stages_.end());
  }
  std::vector<stage_entry> stages_;
  std::vector<preset_entry> presets_;
};

}  // namespace kvcodec
