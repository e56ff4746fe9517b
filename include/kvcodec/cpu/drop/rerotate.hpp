// kvcodec/cpu/drop/rerotate.hpp — key re-rotation after token dropping (kvpress KeyRerotationPress;
// the SinkCache of Hugging Face transformers): the r-th kept key of each (layer, kv head) is moved
// from its original RoPE position to position base + r, so a compacted cache continues generation
// with contiguous positions 0..n-1.
//
// For a key stored post-RoPE at position p, undoing RoPE at p and applying it at p' is one rotation by
// p' - p (rotations of one pair compose); it is done with core/rope.hpp's rope_apply at that offset,
// so each element is rounded once. Keys stay in their slots (the kept sets and kv.positions still
// describe the original tokens); metadata "key_positions" = "kept-rank+<base>" records the change.
// Invariant: values, queries and dropped slots are untouched; re-rotating keys at their own positions
// changes nothing.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "kvcodec/core/error.hpp"
#include "kvcodec/core/rope.hpp"
#include "kvcodec/stage/params.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::cpu {

struct rerotate_options {
  std::string rope;        ///< "" = the cache's metadata `rope`; else interleaved-pairs / rotate-half
  double theta = 0.0;      ///< 0 = the cache's metadata `rope_theta` (10000 when absent)
  std::int64_t base = 0;   ///< new position of the first kept token
};

/// Re-rotates the kept keys of every (layer, kv head) to positions base, base + 1, ... in place.
/// A dense cache is treated as keeping every token. Throws bad_input when the cache's RoPE is
/// unknown or declared absent (post_rope = false) and none is given, usage for a bad option.
inline void rerotate_kept_keys(kv_cache& kv, const rerotate_options& opt = {}) {
  const std::string where = "rerotate_kept_keys";
  kv.validate(where + " input");
  std::string style_text = opt.rope;
  if (style_text.empty()) {
    const auto it = kv.metadata.find("rope");
    if (it == kv.metadata.end())
      throw_bad_input(where, "metadata 'rope'", "the cache's RoPE style (interleaved-pairs or rotate-half), or rerotate_options::rope", "none");
    const auto pr = kv.metadata.find("post_rope");
    if (pr != kv.metadata.end() && (pr->second == "false" || pr->second == "0"))
      throw_bad_input(where, "metadata 'post_rope'", "true (keys stored with RoPE applied)", pr->second);
    style_text = it->second;
  }
  const auto style = parse_rope_style(style_text);
  if (!style) throw_bad_input(where, "rope", "interleaved-pairs or rotate-half", "'" + style_text + "'");
  double theta = opt.theta;
  if (theta == 0.0) {
    theta = 10000.0;
    const auto it = kv.metadata.find("rope_theta");
    if (it != kv.metadata.end() && !kvcodec::detail::from_text(it->second, theta))
      throw_bad_input(where, "metadata 'rope_theta'", "a number", "'" + it->second + "'");
  }
  check_rope(static_cast<std::size_t>(kv.shape.head_dim), theta, where);
  if (opt.base < 0) throw_usage(where + ": base must be >= 0, found " + std::to_string(opt.base));
  const std::size_t D = static_cast<std::size_t>(kv.shape.head_dim), T = static_cast<std::size_t>(kv.shape.tokens);
  const auto pos = [&](std::int64_t t) -> std::int64_t { return kv.positions.empty() ? t : kv.positions[static_cast<std::size_t>(t)]; };
  for (int l = 0; l < kv.shape.layers; ++l)
    for (int h = 0; h < kv.shape.kv_heads; ++h) {
      float* K = kv.keys[static_cast<std::size_t>(l)].data() + static_cast<std::size_t>(h) * T * D;
      const std::int64_t n = kv.kept_count(l, h);
      for (std::int64_t r = 0; r < n; ++r) {
        const std::int64_t t = kv.kept.empty() ? r : kv.kept[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)][static_cast<std::size_t>(r)];
        const std::int64_t delta = opt.base + r - pos(t);
        if (delta != 0) rope_apply(K + static_cast<std::size_t>(t) * D, D, delta, theta, *style);
      }
    }
  kv.metadata["key_positions"] = "kept-rank+" + std::to_string(opt.base);
}

}  // namespace kvcodec::cpu
