// kvcodec/pipeline/decode_dropped.hpp — decoding a token-dropped container with its kept keys moved to
// contiguous RoPE positions (cpu/drop/rerotate.hpp; the CLI's `decode --rerotate-keys`).
#pragma once

#include <cstdint>
#include <span>

#include "kvcodec/cpu/drop/rerotate.hpp"
#include "kvcodec/pipeline/decode.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::cpu {

/// Decode option for token-dropped containers (the CLI's `decode --rerotate-keys`).
struct drop_decode_options {
  bool rerotate_keys = false;
  rerotate_options rerotate;
};

/// decode(), then optionally re-rotate the kept keys to contiguous positions.
inline kv_cache decode_dropped(std::span<const std::uint8_t> file, const decode_options& opt = {}, const drop_decode_options& dopt = {}) {
  kv_cache out = decode(file, opt);
  if (dopt.rerotate_keys) rerotate_kept_keys(out, dopt.rerotate);
  return out;
}

}  // namespace kvcodec::cpu
