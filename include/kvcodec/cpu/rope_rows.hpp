// kvcodec/cpu/rope_rows.hpp — RoPE applied to, or undone on, the key rows of a block at their
// positions (block.pos), for the quantizers that code keys before RoPE (`weighted-quant` derope=on,
// `klt`): the cache's RoPE from its metadata, and per-thread tables of per-channel factors
// (core/weighted_quant.hpp's rope_factors_run) refilled once per chunk, not once per row.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/core/weighted_quant.hpp"
#include "kvcodec/stage/interface.hpp"

namespace kvcodec::cpu::rope_rows {

struct rope {
  rope_pairs pairs = rope_pairs::none;
  double theta = 0;
};

/// The cache's RoPE (metadata `rope`, `rope_theta`); a usage error naming `what` (e.g.
/// "weighted-quant: parameter 'derope'") when the metadata is absent or says the keys carry none.
inline rope rope_of(const cache_info& info, int head_dim, std::string_view what) {
  const auto meta = [&](const char* k) {
    const auto it = info.metadata.find(k);
    return it == info.metadata.end() ? std::string() : it->second;
  };
  const std::string post = meta("post_rope");
  if (post == "false" || post == "0" || post == "no")
    throw_usage(std::string(what) + ": the cache metadata says post_rope=" + post + "; its keys carry no RoPE to undo");
  rope r;
  r.pairs = rope_pairs_of(meta("rope"), head_dim);
  if (r.pairs == rope_pairs::none)
    throw_usage(std::string(what) + ": expected cache metadata 'rope' = interleaved-pairs or rotate-half and an even head_dim, found '" +
                meta("rope") + "' with head_dim " + std::to_string(head_dim));
  const std::string t = meta("rope_theta");
  const auto res = std::from_chars(t.data(), t.data() + t.size(), r.theta);
  if (t.empty() || res.ec != std::errc() || res.ptr != t.data() + t.size() || !(r.theta > 1) || !std::isfinite(r.theta))
    throw_usage(std::string(what) + ": expected cache metadata 'rope_theta' > 1, found '" + t + "'");
  return r;
}

struct factors {
  const float* c;
  const float* s;
};

/// The factors of row i of `b` (position b.pos[i]) rotating forward (dir +1) or back (dir -1):
/// from a per-thread table of the positions of the current chunk, refilled when a block's positions
/// leave it (every layer of a chunk shares it).
inline factors factors_at(const rope& r, const block& b, std::size_t i, std::size_t D, double dir) {
  struct table {
    std::int64_t p0 = 0, n = 0;
    std::size_t D = 0;
    double theta = 0;
    rope_pairs pairs = rope_pairs::none;
    std::vector<float> c, s;
  };
  thread_local table tables[2];  // back (dir -1) and forward (dir +1)
  table& t = tables[dir > 0 ? 1 : 0];
  const std::int64_t p = b.pos[i];
  if (!(t.D == D && t.theta == r.theta && t.pairs == r.pairs && p >= t.p0 && p < t.p0 + t.n)) {
    // cover this block's positions when they form a run (dense chunks), else this one position
    const auto [lo, hi] = std::minmax_element(b.pos.begin(), b.pos.end());
    const std::int64_t span = static_cast<std::int64_t>(*hi) - *lo + 1;
    const bool run = span <= static_cast<std::int64_t>(4 * b.rows() + 64);
    t.p0 = run ? *lo : p;
    t.n = run ? span : 1;
    t.D = D;
    t.theta = r.theta;
    t.pairs = r.pairs;
    t.c.resize(static_cast<std::size_t>(t.n) * D);
    t.s.resize(t.c.size());
    rope_factors_run(t.p0, t.n, D, r.theta, r.pairs, dir, t.c.data(), t.s.data());
  }
  const std::size_t o = static_cast<std::size_t>(p - t.p0) * D;
  return {t.c.data() + o, t.s.data() + o};
}

/// Rotates every row of `b` in place by RoPE at its position (dir +1) or back (dir -1).
inline void rotate_rows(block& b, const rope& r, double dir) {
  const std::size_t D = static_cast<std::size_t>(b.head_dim);
  thread_local std::vector<float> row;
  row.resize(D);
  for (std::size_t i = 0; i < b.rows(); ++i) {
    const factors f = factors_at(r, b, i, D, dir);
    float* x = b.data.data() + i * D;
    std::copy_n(x, D, row.data());
    for (std::size_t d = 0; d < D; ++d) x[d] = rope_rotated(row.data(), static_cast<int>(d), static_cast<int>(D), r.pairs, f.c, f.s);
  }
}

}  // namespace kvcodec::cpu::rope_rows
