// kvcodec/pipeline/typed.hpp — compile-time checked pipelines built from stage descriptors.
//
//   auto p = quant::raw{.dtype = "f16"} | entropy::zstd{.level = 5};
//   codec c = p.make();            // the same runtime codec the spec string would build
//
// Adjacent stages must agree on the data kind (KV -> KV -> symbols -> bytes); a meaningless
// pipeline (e.g. an entropy coder before a quantizer) fails to compile with a readable message.
#pragma once

#include <string>
#include <tuple>
#include <utility>

#include "kvcodec/pipeline/codec.hpp"
#include "kvcodec/registry/builtin.hpp"

namespace kvcodec {

/// A stage descriptor: a parameter struct with a name, a kind, visit() and validate().
template <class D>
concept stage_descriptor = requires(D d) {
  { D::name } -> std::convertible_to<std::string_view>;
  { D::kind } -> std::convertible_to<stage_kind>;
  d.validate();
};

template <class A, class B>
concept composable = stage_descriptor<A> && stage_descriptor<B> &&
                     std::same_as<typename stage_io<A::kind>::produces, typename stage_io<B::kind>::consumes>;

template <stage_descriptor... S>
struct pipeline {
  std::tuple<S...> stages;

  /// The canonical spec string of this pipeline.
  std::string spec() const {
    std::string out;
    std::apply([&](const auto&... s) { ((out += (out.empty() ? "" : "|") + format_stage(to_stage_spec(s))), ...); }, stages);
    return out;
  }
  /// Builds the runtime codec (validating every stage's parameters).
  codec make(const registry& reg = builtin_registry()) const { return make_codec(spec(), reg); }
};

template <class T> struct is_pipeline : std::false_type {};
template <class... S> struct is_pipeline<pipeline<S...>> : std::true_type {};

template <class P> struct last_stage;
template <class... S> struct last_stage<pipeline<S...>> { using type = std::tuple_element_t<sizeof...(S) - 1, std::tuple<S...>>; };

template <stage_descriptor A, stage_descriptor B>
constexpr auto operator|(A a, B b) {
  static_assert(composable<A, B>,
                "kvcodec: these stages cannot be joined: the left stage's output kind differs from the right stage's "
                "input kind (order is drop -> transform -> quant -> entropy)");
  return pipeline<A, B>{std::tuple<A, B>{std::move(a), std::move(b)}};
}

template <stage_descriptor... S, stage_descriptor B>
constexpr auto operator|(pipeline<S...> p, B b) {
  using A = typename last_stage<pipeline<S...>>::type;
  static_assert(composable<A, B>,
                "kvcodec: these stages cannot be joined: the left stage's output kind differs from the right stage's "
                "input kind (order is drop -> transform -> quant -> entropy)");
  return pipeline<S..., B>{std::tuple_cat(std::move(p.stages), std::tuple<B>{std::move(b)})};
}

}  // namespace kvcodec
