// tests/fuzz/fuzz_entry.hpp — the entry points shared by the libFuzzer targets (tests/fuzz/fuzz_*.cpp,
// built with KVCODEC_FUZZ=ON) and the doctest case that replays tests/fuzz/regressions/<target>/*
// (tests/fuzz/test_fuzz_regressions.cpp).
//
// Contract: an entry point returns normally or throws kvcodec::error (the clean refusal of a corrupt
// or lying input); anything else — another exception, a crash, a sanitizer report, a trap on a broken
// invariant — is a bug. The targets catch kvcodec::error only, so every other exception aborts the
// fuzzer as an "uncaught exception".
#pragma once

#include <xxhash.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/io/kv_dump.hpp"
#include "kvcodec/kvcodec.hpp"
#include "kvcodec/pipeline/batch.hpp"

namespace kvcodec::fuzz {

/// The targets, by the name of their directory under tests/fuzz/regressions/.
inline constexpr const char* targets[] = {"decode", "safetensors", "npz", "npy", "spec"};

namespace detail {
/// Recomputes every checksum a .kvc container holds (each segment's and state's xxh3 in the header
/// index, then the header's own), so mutations of the header and payload reach the stage decoders
/// instead of stopping at a checksum mismatch, whether or not the container reader honours
/// KVCODEC_FUZZ_NO_CHECKSUM. Anything it cannot make sense of is passed through unchanged.
inline std::vector<std::uint8_t> reseal_kvc(std::span<const std::uint8_t> in) {
  std::vector<std::uint8_t> out(in.begin(), in.end());
  if (in.size() < kvc_prefix_size || std::memcmp(in.data(), kvc_magic, 8) != 0) return out;
  std::uint32_t hlen = 0;
  std::memcpy(&hlen, in.data() + 12, 4);
  if (hlen > in.size() - kvc_prefix_size) return out;
  const auto* text = reinterpret_cast<const char*>(in.data() + kvc_prefix_size);
  nlohmann::json j = nlohmann::json::parse(text, text + hlen, nullptr, false);
  if (j.is_discarded()) return out;
  const std::span<const std::uint8_t> payload = in.subspan(kvc_prefix_size + hlen);
  const auto reseal_index = [&](const char* key, std::size_t off_i, std::size_t size_i, std::size_t sum_i) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_array()) return;
    for (auto& e : j[key]) {
      if (!e.is_array() || e.size() <= sum_i || !e[off_i].is_number_unsigned() || !e[size_i].is_number_unsigned()) continue;
      const auto off = e[off_i].get<std::uint64_t>(), size = e[size_i].get<std::uint64_t>();
      if (off > payload.size() || size > payload.size() - off) continue;
      e[sum_i] = checksum64(payload.subspan(static_cast<std::size_t>(off), static_cast<std::size_t>(size)));
    }
  };
  reseal_index("segments", 3, 4, 5);
  reseal_index("states", 1, 2, 3);
  std::string t;
  try {
    t = j.dump();
  } catch (const nlohmann::json::exception&) {  // invalid UTF-8 in a string: keep the original header
    t.assign(text, hlen);
  }
  out.resize(kvc_prefix_size);
  const auto new_len = static_cast<std::uint32_t>(t.size());
  const std::uint64_t sum = XXH3_64bits(t.data(), t.size());
  std::memcpy(out.data() + 12, &new_len, 4);
  std::memcpy(out.data() + 16, &sum, 8);
  out.insert(out.end(), t.begin(), t.end());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

/// Checks the invariants of a cache a reader accepted: a violation is a bug (trap), not a refusal.
inline void check_cache(const kv_cache& c) {
  try {
    c.validate("fuzz");
  } catch (const error&) {
    __builtin_trap();
  }
}

/// The batch decoders (the CUDA backend's element steps, run on the CPU) on a container the CPU decoder
/// accepted as `want`: where one takes the container and does not refuse it, its values must be the
/// CPU's, bit for bit (NaN matching any NaN); token-dropped containers too (dropped tokens as zeros).
inline void check_batch_decode(std::span<const std::uint8_t> file, const kv_cache& want) {
  const kvc_view v = parse_kvc(file, "fuzz.kvc");
  const kv_shape& s = v.header.shape;
  if (s.tokens <= 0) return;
  const std::size_t per = static_cast<std::size_t>(s.kv_heads) * static_cast<std::size_t>(s.tokens) * static_cast<std::size_t>(s.head_dim);
  std::vector<std::vector<float>> k(static_cast<std::size_t>(s.layers), std::vector<float>(per)), vv = k;
  std::vector<std::byte*> kp, vp;
  for (std::size_t l = 0; l < k.size(); ++l) {
    kp.push_back(reinterpret_cast<std::byte*>(k[l].data()));
    vp.push_back(reinterpret_cast<std::byte*>(vv[l].data()));
  }
  try {
    const segment_decoder dec(v.header, [&](std::size_t i) { return v.state_bytes(i); }, "fuzz.kvc");
    std::vector<std::size_t> all(v.header.segments.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
    decode_batch_emulated(dec, all, [&](std::size_t i) { return v.segment_bytes(i); }, 0, s.tokens,
                          kv_view::hf(kp, vp, dtype::f32, s.kv_heads, s.tokens, s.head_dim));
  } catch (const error&) {
    return;  // outside the batch decoders' scope, or refused
  }
  const auto same = [](float a, float b) {
    std::uint32_t x = 0, y = 0;
    std::memcpy(&x, &a, 4);
    std::memcpy(&y, &b, 4);
    return x == y || (a != a && b != b);
  };
  for (std::size_t l = 0; l < k.size(); ++l)
    for (std::size_t i = 0; i < per; ++i)
      if (!same(k[l][i], want.keys[l][i]) || !same(vv[l][i], want.values[l][i])) __builtin_trap();
}
}  // namespace detail

/// (a) The whole decode of a .kvc container held in memory, checksums resealed first; then, where they
/// take it, the batch decoders of the CUDA backend (emulated) must give the same values. Decoded caches
/// are capped at 16 MiB (every seed is far below) so that one input costs milliseconds.
inline void decode_kvc(const std::uint8_t* data, std::size_t size) {
  const std::vector<std::uint8_t> file = detail::reseal_kvc(std::span<const std::uint8_t>(data, size));
  decode_options opt;
  opt.name = "fuzz.kvc";
  opt.limits.max_decoded_bytes = std::uint64_t{16} << 20;
  const kv_cache c = decode(cpu::seq, file, opt);
  detail::check_cache(c);
  detail::check_batch_decode(file, c);
}

/// (b) The dump readers from memory, each followed by the layout recogniser on what it accepted.
inline void read_safetensors(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> b(data, size);
  const io::tensor_file f = io::read_safetensors_bytes(b, "fuzz.safetensors");
  for (const auto& t : f.tensors)
    if (t.bytes.size() != io::checked_byte_size(t.shape, t.type, "fuzz", t.name)) __builtin_trap();
  detail::check_cache(io::kv_from_tensor_file(f, "fuzz.safetensors", size).cache);
}
inline void read_npz(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> b(data, size);
  const io::tensor_file f = io::read_npz_bytes(b, "fuzz.npz");
  detail::check_cache(io::kv_from_tensor_file(f, "fuzz.npz", size).cache);
}
inline void read_npy(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> b(data, size);
  io::tensor_file f;
  f.tensors.push_back(io::read_npy_bytes(b, "fuzz.npy", "kv"));
  detail::check_cache(io::kv_from_tensor_file(f, "fuzz.npy", size).cache);
}

/// (c) The spec parser and make_codec; a codec that builds prints a canonical spec that builds the
/// same codec again (a fixpoint).
inline void parse_spec_and_make_codec(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const codec c = make_codec(text);
  const std::string canon = c.spec();
  const codec again = make_codec(canon);
  if (again.spec() != canon) __builtin_trap();
}

/// Runs target `name` on one input; false for an unknown name.
inline bool run(std::string_view name, const std::uint8_t* data, std::size_t size) {
  if (name == "decode") decode_kvc(data, size);
  else if (name == "safetensors") read_safetensors(data, size);
  else if (name == "npz") read_npz(data, size);
  else if (name == "npy") read_npy(data, size);
  else if (name == "spec") parse_spec_and_make_codec(data, size);
  else return false;
  return true;
}

}  // namespace kvcodec::fuzz
