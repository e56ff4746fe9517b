// kvcodec/stage/rans.hpp — `rans`: interleaved rANS (core/rans.hpp) with static context models.
//
// Per symbol plane: optional symbol-domain token prediction (pred/group), a context model per
// sub-plane (which columns share a table, histogram or 2-number geometric tables, see
// cpu/entropy_model.hpp), and one rANS stream per sub-plane over `lanes` interleaved lanes.
// tables=chunk stores the models in every segment (each chunk stands alone); tables=shared fits
// them once on the whole cache and keeps them in the container's stage state (read before any
// segment, so chunks still decode independently). Stream format: cpu/rans.hpp.
#pragma once

#include <string>
#include <string_view>

#include "kvcodec/stage/interface.hpp"

namespace kvcodec::entropy {

struct rans {
  static constexpr std::string_view name = "rans";
  static constexpr stage_kind kind = stage_kind::entropy;
  static constexpr std::string_view summary = "interleaved rANS over static per-context tables (grouping, prediction, shared tables)";
  int lanes = 32;
  int prob_bits = 12;
  std::string ctx = "auto";
  std::string model = "auto";
  std::string tables = "chunk";
  std::string pred = "none";
  int group = 10;

  template <class V> void visit(V& v) {
    v("lanes", lanes, "interleaved rANS lanes, a multiple of 32 in 32..1024, or 0 = auto per stream (64 from 65536 symbols, else 32; stored)");
    v("prob_bits", prob_bits, "table precision in bits, 10..15");
    v("ctx", ctx, "which columns share a table: channel, pooled, or auto (fewest payload + table bits)");
    v("model", model, "table kind: hist (normalised histogram), geometric (2 numbers per table), auto");
    v("tables", tables, "chunk (tables in every segment) or shared (fitted once, stored in the stage state)");
    v("pred", pred, "symbol-domain token prediction: none, prev (previous row), anchor (CacheGen anchor groups), linear (per-channel linear prediction from the previous row)");
    v("group", group, "rows per anchor group (pred=anchor)");
  }
  void validate() const {
    check_param(lanes == 0 || (lanes >= 32 && lanes <= 1024 && lanes % 32 == 0), name, "lanes", "0 (auto) or a multiple of 32 in 32..1024", lanes);
    check_param(prob_bits >= 10 && prob_bits <= 15, name, "prob_bits", "10..15", prob_bits);
    check_param(ctx == "channel" || ctx == "pooled" || ctx == "auto", name, "ctx", "channel, pooled or auto", ctx);
    check_param(model == "hist" || model == "geometric" || model == "auto", name, "model", "hist, geometric or auto", model);
    check_param(tables == "chunk" || tables == "shared", name, "tables", "chunk or shared", tables);
    check_param(pred == "none" || pred == "prev" || pred == "anchor" || pred == "linear", name, "pred", "none, prev, anchor or linear", pred);
    check_param(group >= 2 && group <= 65536, name, "group", "2..65536", group);
  }
};

}  // namespace kvcodec::entropy
