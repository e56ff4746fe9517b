// kvcodec/io/kv_dump.hpp — recognises KV-cache layouts in safetensors / .npz / .npy files and converts
// them to and from kvcodec::kv_cache.
//
// Layouts (names follow Hugging Face `past_key_values`):
//   hf_4d      past_key_values.{l}.key / .value [1,H,T,D] for l = 0..L-1; optional queries.{l}
//              [1,Hq,T,D], past_key_values.{l}.kept U8 [1,H,T] (1 = kept), tokens I32 [T],
//              positions I32 [T].
//   hf_3d      the same without the batch dim: [H,T,D], queries [Hq,T,D], kept [H,T].
//   stacked    kv [L,2,H,T,D] (index 0 = key, 1 = value); optional queries [L,Hq,T,D], kept U8
//              [L,H,T], tokens, positions. A bare .npy file holds just this `kv` array.
//   hf_compact only the kept tokens of each (layer, head): past_key_values.{l}.h{h}.key / .value [n,D]
//              and past_key_values.{l}.h{h}.positions I32 [n] (ascending token indices), plus
//              past_key_values.num_tokens I32 [1] = T, and the optional queries.{l} [1,Hq,T,D],
//              tokens, positions of hf_4d. Read back, dropped tokens are zero and kept sets are set.
// Invariants: reading validates every shape, dtype and index against the others before converting
// (f16/bf16 widen to f32 exactly; source_dtype records the K/V dtype); the file's __metadata__ passes
// through unchanged in both directions. Writing a cache with kept sets in a dense layout stores
// dropped tokens as zeros plus the kept mask, so reading it back restores the same cache.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/io/file.hpp"
#include "kvcodec/io/npy.hpp"
#include "kvcodec/io/npz.hpp"
#include "kvcodec/io/safetensors.hpp"
#include "kvcodec/tensor/dtype.hpp"
#include "kvcodec/tensor/kv_cache.hpp"

namespace kvcodec::io {

enum class kv_layout : std::uint8_t { hf_4d = 0, hf_3d = 1, stacked = 2, hf_compact = 3 };

inline constexpr std::string_view kv_layout_name(kv_layout l) noexcept {
  switch (l) {
    case kv_layout::hf_4d: return "hf_4d";
    case kv_layout::hf_3d: return "hf_3d";
    case kv_layout::stacked: return "stacked";
    case kv_layout::hf_compact: return "hf_compact";
  }
  return "?";
}

inline std::optional<kv_layout> parse_kv_layout(std::string_view s) noexcept {
  for (auto l : {kv_layout::hf_4d, kv_layout::hf_3d, kv_layout::stacked, kv_layout::hf_compact})
    if (s == kv_layout_name(l)) return l;
  return std::nullopt;
}

struct kv_dump {
  kv_cache cache;
  kv_layout layout = kv_layout::hf_4d;
};

enum class file_format { safetensors, npz, npy, unknown };

/// Recognises a file by its first bytes.
inline file_format detect_format(std::span<const std::uint8_t> b) noexcept {
  if (is_npy(b)) return file_format::npy;
  if (is_zip(b)) return file_format::npz;
  if (b.size() >= 10 && load_le64(b.data()) <= b.size() - 8 && b[8] == '{') return file_format::safetensors;
  return file_format::unknown;
}

inline constexpr std::string_view accepted_kv_layouts =
    "one KV layout: (hf) past_key_values.{l}.key/.value [1,H,T,D] or [H,T,D] for l = 0..L-1 "
    "(optional queries.{l}, past_key_values.{l}.kept, tokens, positions); (stacked) kv [L,2,H,T,D] "
    "(optional queries [L,Hq,T,D], kept, tokens, positions); (compact) past_key_values.{l}.h{h}.key/.value "
    "[n,D] with past_key_values.{l}.h{h}.positions [n]";

namespace detail {

struct kv_name {
  enum kind_t { none, key, value, kept, query, c_key, c_value, c_pos } kind = none;
  std::int64_t layer = -1, head = -1;
};

/// Parses a decimal index without sign or leading zeros (at most 9 digits) from the front of `s`.
inline std::optional<std::int64_t> take_index(std::string_view& s) {
  std::size_t n = 0;
  while (n < s.size() && s[n] >= '0' && s[n] <= '9') ++n;
  if (n == 0 || n > 9 || (n > 1 && s[0] == '0')) return std::nullopt;
  std::int64_t v = 0;
  for (std::size_t i = 0; i < n; ++i) v = v * 10 + (s[i] - '0');
  s.remove_prefix(n);
  return v;
}

inline kv_name parse_kv_name(std::string_view s) {
  kv_name r;
  constexpr std::string_view pkv = "past_key_values.", q = "queries.";
  if (s.substr(0, pkv.size()) == pkv) {
    s.remove_prefix(pkv.size());
    const auto l = take_index(s);
    if (!l) return r;
    r.layer = *l;
    if (s == ".key") r.kind = kv_name::key;
    else if (s == ".value") r.kind = kv_name::value;
    else if (s == ".kept") r.kind = kv_name::kept;
    else if (s.substr(0, 2) == ".h") {
      s.remove_prefix(2);
      const auto h = take_index(s);
      if (!h) return r;
      r.head = *h;
      if (s == ".key") r.kind = kv_name::c_key;
      else if (s == ".value") r.kind = kv_name::c_value;
      else if (s == ".positions") r.kind = kv_name::c_pos;
    }
  } else if (s.substr(0, q.size()) == q) {
    s.remove_prefix(q.size());
    const auto l = take_index(s);
    if (l && s.empty()) {
      r.kind = kv_name::query;
      r.layer = *l;
    }
  }
  return r;
}

/// "name DTYPE [shape], ..." for the first 10 tensors.
inline std::string describe_tensors(const tensor_file& f) {
  std::string s = std::to_string(f.tensors.size()) + " tensor(s)";
  for (std::size_t i = 0; i < f.tensors.size() && i < 10; ++i) {
    const auto& t = f.tensors[i];
    s += (i ? ", " : ": ") + t.name + " " + std::string(safetensors_dtype_name(t.type)) + " " + shape_string(t.shape);
  }
  if (f.tensors.size() > 10) s += ", ... (" + std::to_string(f.tensors.size() - 10) + " more)";
  return s;
}

inline bool is_float(dtype t) noexcept { return t == dtype::f32 || t == dtype::f16 || t == dtype::bf16; }

inline void decode_slice(const tensor& t, std::uint64_t first, std::size_t n, float* dst) {
  if (n != 0) decode_floats(t.bytes.data() + first * dtype_size(t.type), n, t.type, dst);
}

/// Reads optional I32 `name` of shape [T] (or [1,T]) into `dst`.
inline void read_ids(const tensor_file& f, const char* name, std::int64_t T, std::vector<std::int32_t>& dst, const std::string& where) {
  const tensor* t = f.find(name);
  if (!t) return;
  const bool ok_shape = (t->shape.size() == 1 && t->shape[0] == T) || (t->shape.size() == 2 && t->shape[0] == 1 && t->shape[1] == T);
  if (t->type != dtype::i32 || !ok_shape)
    throw_bad_input(where, name, "I32 [" + std::to_string(T) + "]",
                    std::string(safetensors_dtype_name(t->type)) + " " + shape_string(t->shape));
  dst = tensor_to_i32(*t, where);
}

/// Converts a U8 0/1 mask [H,T] (flattened) to kept sets of one layer.
inline std::vector<std::vector<std::int32_t>> mask_to_kept(const tensor& t, std::int64_t H, std::int64_t T, const std::string& where) {
  std::vector<std::vector<std::int32_t>> out(static_cast<std::size_t>(H));
  for (std::int64_t h = 0; h < H; ++h)
    for (std::int64_t j = 0; j < T; ++j) {
      const std::uint8_t v = t.bytes[static_cast<std::size_t>(h * T + j)];
      if (v > 1) throw_bad_input(where, t.name, "values 0 (dropped) or 1 (kept)", std::to_string(v));
      if (v) out[static_cast<std::size_t>(h)].push_back(static_cast<std::int32_t>(j));
    }
  return out;
}

inline void check_dims(const std::string& where, const std::string& what, std::int64_t H, std::int64_t T, std::int64_t D) {
  constexpr std::int64_t imax = std::numeric_limits<std::int32_t>::max();
  if (T <= 0) throw_bad_input(where, "tokens of " + what, "> 0", std::to_string(T));
  if (H <= 0 || H > imax) throw_bad_input(where, "heads of " + what, "in [1, 2^31)", std::to_string(H));
  if (D <= 0 || D > imax) throw_bad_input(where, "head_dim of " + what, "in [1, 2^31)", std::to_string(D));
  if (T > imax) throw_bad_input(where, "tokens of " + what, "< 2^31", std::to_string(T));
}

}  // namespace detail

/// A compact dump stores only the kept tokens, so nothing in it backs the dense cache it expands to
/// but a token count: that cache (2 x layers x heads x tokens x head_dim f32) may be at most this many
/// times the dump's bytes (the .kvc container's max_expansion), else the dump is refused (bad_input).
inline constexpr std::uint64_t max_compact_expansion = 4096;

/// Bytes of the file `f` came from, estimated from its tensors (data, names, ~64 bytes of header each)
/// when the caller does not know them.
inline std::uint64_t tensor_file_bytes(const tensor_file& f) {
  std::uint64_t n = 8;
  for (const auto& t : f.tensors) n += t.bytes.size() + t.name.size() + 64;
  for (const auto& [k, v] : f.metadata) n += k.size() + v.size() + 6;
  return n;
}

/// Recognises the layout of `f` and builds the cache; `where` names the source in errors. `source_bytes`
/// is the size of the file `f` was read from (0: estimated by tensor_file_bytes); it bounds what a
/// compact dump may expand to (max_compact_expansion).
inline kv_dump kv_from_tensor_file(const tensor_file& f, const std::string& where, std::uint64_t source_bytes = 0) {
  using detail::kv_name;
  struct head_parts {
    const tensor *k = nullptr, *v = nullptr, *pos = nullptr;
  };
  struct layer_parts {
    const tensor *k = nullptr, *v = nullptr, *kept = nullptr, *q = nullptr;
    std::map<std::int64_t, head_parts> heads;
  };
  std::map<std::int64_t, layer_parts> layers;
  bool any_dense = false, any_compact = false;
  const auto set = [&](const tensor*& slot, const tensor& t) {
    if (slot) throw_bad_input(where, "tensor name", "unique names", "'" + t.name + "' twice");
    slot = &t;
  };
  for (const auto& t : f.tensors) {
    const kv_name n = detail::parse_kv_name(t.name);
    if (n.kind == kv_name::none) continue;
    auto& lp = layers[n.layer];
    switch (n.kind) {
      case kv_name::key: set(lp.k, t); any_dense = true; break;
      case kv_name::value: set(lp.v, t); any_dense = true; break;
      case kv_name::kept: set(lp.kept, t); break;
      case kv_name::query: set(lp.q, t); break;
      case kv_name::c_key: set(lp.heads[n.head].k, t); any_compact = true; break;
      case kv_name::c_value: set(lp.heads[n.head].v, t); any_compact = true; break;
      case kv_name::c_pos: set(lp.heads[n.head].pos, t); any_compact = true; break;
      case kv_name::none: break;
    }
  }
  const tensor* kv = f.find("kv");
  const int found = int(any_dense) + int(any_compact) + int(kv != nullptr);
  if (found == 0) throw_bad_input(where, "layout", std::string(accepted_kv_layouts), detail::describe_tensors(f));
  if (found > 1)
    throw_bad_input(where, "layout", "exactly " + std::string(accepted_kv_layouts),
                    std::string("a mix of") + (any_dense ? " hf" : "") + (kv ? " stacked" : "") + (any_compact ? " compact" : "") +
                        " tensors; " + detail::describe_tensors(f));

  kv_dump out;
  kv_cache& c = out.cache;
  c.metadata = f.metadata;
  const auto shp = [](const tensor* t) { return std::string(safetensors_dtype_name(t->type)) + " " + shape_string(t->shape); };

  if (kv) {
    out.layout = kv_layout::stacked;
    const auto& s = kv->shape;
    if (s.size() != 5 || s[1] != 2 || s[0] <= 0)
      throw_bad_input(where, "shape of kv", "[L, 2, H, T, D] with L > 0", shape_string(s));
    if (!detail::is_float(kv->type)) throw_bad_input(where, "dtype of kv", "F32, F16 or BF16", shp(kv));
    if (s[0] > 1'000'000) throw_bad_input(where, "layers of kv", "at most 1000000", std::to_string(s[0]));
    detail::check_dims(where, "kv", s[2], s[3], s[4]);
    const std::int64_t L = s[0], H = s[2], T = s[3], D = s[4];
    c.shape = kv_shape{static_cast<std::int32_t>(L), static_cast<std::int32_t>(H), 0, static_cast<std::int32_t>(D), T};
    c.source_dtype = kv->type;
    const auto per = static_cast<std::size_t>(H * T * D);
    c.keys.assign(static_cast<std::size_t>(L), std::vector<float>(per));
    c.values.assign(static_cast<std::size_t>(L), std::vector<float>(per));
    for (std::int64_t l = 0; l < L; ++l) {
      detail::decode_slice(*kv, static_cast<std::uint64_t>(2 * l) * per, per, c.keys[static_cast<std::size_t>(l)].data());
      detail::decode_slice(*kv, static_cast<std::uint64_t>(2 * l + 1) * per, per, c.values[static_cast<std::size_t>(l)].data());
    }
    if (const tensor* q = f.find("queries")) {
      const auto& qs = q->shape;
      if (!detail::is_float(q->type) || qs.size() != 4 || qs[0] != L || qs[1] <= 0 || qs[1] % H != 0 || qs[2] != T || qs[3] != D)
        throw_bad_input(where, "queries", "F32/F16/BF16 [" + std::to_string(L) + ", Hq, " + std::to_string(T) + ", " + std::to_string(D) +
                                              "] with Hq a multiple of " + std::to_string(H), shp(q));
      c.shape.q_heads = static_cast<std::int32_t>(qs[1]);
      const auto qn = static_cast<std::size_t>(qs[1] * T * D);
      c.queries.assign(static_cast<std::size_t>(L), std::vector<float>(qn));
      for (std::int64_t l = 0; l < L; ++l)
        detail::decode_slice(*q, static_cast<std::uint64_t>(l) * qn, qn, c.queries[static_cast<std::size_t>(l)].data());
    }
    if (const tensor* k = f.find("kept")) {
      if (k->type != dtype::u8 || k->shape != std::vector<std::int64_t>{L, H, T})
        throw_bad_input(where, "kept", "U8 [" + std::to_string(L) + ", " + std::to_string(H) + ", " + std::to_string(T) + "]", shp(k));
      for (std::int64_t l = 0; l < L; ++l) {
        tensor slice{k->name, dtype::u8, {H, T}, {}};
        const auto first = k->bytes.begin() + static_cast<std::ptrdiff_t>(l * H * T);
        slice.bytes.assign(first, first + static_cast<std::ptrdiff_t>(H * T));
        c.kept.push_back(detail::mask_to_kept(slice, H, T, where));
      }
    }
  } else {
    const auto L = static_cast<std::int64_t>(layers.size());
    if (layers.rbegin()->first != L - 1) {
      std::int64_t missing = 0;
      while (layers.count(missing)) ++missing;
      throw_bad_input(where, "layers", "contiguous layer indices 0.." + std::to_string(layers.rbegin()->first),
                      "layer " + std::to_string(missing) + " missing");
    }
    const auto lname = [](std::int64_t l) { return "past_key_values." + std::to_string(l); };
    std::int64_t H = 0, T = 0, D = 0;
    dtype src = dtype::f32;
    if (any_dense) {
      const layer_parts& l0 = layers.begin()->second;
      if (!l0.k || !l0.v) throw_bad_input(where, lname(0), "a key and a value tensor", std::string("only a ") + (l0.k ? "key" : "value"));
      const auto& s0 = l0.k->shape;
      if (s0.size() == 4 && s0[0] == 1) out.layout = kv_layout::hf_4d;
      else if (s0.size() == 3) out.layout = kv_layout::hf_3d;
      else throw_bad_input(where, "shape of " + lname(0) + ".key", "[1, H, T, D] or [H, T, D]", shape_string(s0));
      src = l0.k->type;
      if (!detail::is_float(src)) throw_bad_input(where, "dtype of " + lname(0) + ".key", "F32, F16 or BF16", shp(l0.k));
      H = s0[s0.size() - 3];
      T = s0[s0.size() - 2];
      D = s0[s0.size() - 1];
      detail::check_dims(where, lname(0) + ".key", H, T, D);
    } else {
      out.layout = kv_layout::hf_compact;
      const auto& heads0 = layers.begin()->second.heads;
      H = static_cast<std::int64_t>(heads0.size());
      if (H == 0) throw_bad_input(where, lname(0), "compact heads h0..", "none");
      const head_parts& hp = heads0.begin()->second;
      const tensor* any = hp.k ? hp.k : (hp.v ? hp.v : nullptr);
      if (!any || any->shape.size() != 2)
        throw_bad_input(where, lname(0) + ".h0", "key/value [n, D]", any ? shp(any) : std::string("no key or value"));
      D = any->shape[1];
      src = any->type;
      if (!detail::is_float(src)) throw_bad_input(where, "dtype of " + any->name, "F32, F16 or BF16", shp(any));
      if (const tensor* nt = f.find("past_key_values.num_tokens")) {
        if (nt->type != dtype::i32 || nt->shape != std::vector<std::int64_t>{1})
          throw_bad_input(where, "past_key_values.num_tokens", "I32 [1]", shp(nt));
        T = tensor_to_i32(*nt, where)[0];
      } else if (const tensor* tk = f.find("tokens")) {
        T = tk->shape.empty() ? 0 : tk->shape.back();
      } else if (const tensor* q0 = layers.begin()->second.q; q0 && q0->shape.size() >= 2) {
        T = q0->shape[q0->shape.size() - 2];
      } else {
        throw_bad_input(where, "past_key_values.num_tokens", "I32 [1] (the token count of a compact dump)", "nothing");
      }
      detail::check_dims(where, "compact layout", H, T, D);
      // The dense K and V this dump expands to, in f32, before anything of that size is allocated.
      const std::uint64_t budget = max_compact_expansion * std::max<std::uint64_t>(source_bytes ? source_bytes : tensor_file_bytes(f), 256);
      long double dense = 2.0L * 4.0L;
      for (const std::int64_t d : {L, H, T, D}) dense *= static_cast<long double>(d);
      if (dense > static_cast<long double>(budget)) {
        const std::string shape = std::to_string(L) + " layers x " + std::to_string(H) + " heads x " + std::to_string(T) + " tokens x " +
                                  std::to_string(D) + " head_dim";
        throw_bad_input(where, "shape of the compact layout (past_key_values.num_tokens, tokens and head_dim)",
                        "a dense cache of at most " + std::to_string(max_compact_expansion) + " x the dump's " +
                            std::to_string(budget / max_compact_expansion) + " bytes",
                        shape + " (" + std::to_string(static_cast<double>(dense) / 1e9) + " GB)");
      }
    }
    c.shape = kv_shape{static_cast<std::int32_t>(L), static_cast<std::int32_t>(H), 0, static_cast<std::int32_t>(D), T};
    c.source_dtype = src;
    const auto per = static_cast<std::size_t>(H * T * D);
    std::size_t with_q = 0, with_kept = 0;
    for (const auto& [l, lp] : layers) {
      with_q += lp.q != nullptr;
      with_kept += lp.kept != nullptr;
    }
    if (with_q != 0 && with_q != layers.size())
      throw_bad_input(where, "queries", "queries.{l} for all " + std::to_string(L) + " layers or none", std::to_string(with_q) + " layers");
    if (with_kept != 0 && (with_kept != layers.size() || !any_dense))
      throw_bad_input(where, "kept", "past_key_values.{l}.kept for all " + std::to_string(L) + " layers of a dense dump, or none",
                      std::to_string(with_kept) + " layers");
    for (const auto& [l, lp] : layers) {
      std::vector<float> keys(per, 0.0f), values(per, 0.0f);
      if (any_dense) {
        if (!lp.k || !lp.v)
          throw_bad_input(where, lname(l), "a key and a value tensor", lp.k ? "no value" : (lp.v ? "no key" : "neither"));
        if (!lp.heads.empty()) throw_bad_input(where, lname(l), "dense key/value only", "compact per-head tensors too");
        if (lp.k->shape != lp.v->shape)
          throw_bad_input(where, lname(l), "key and value of equal shape",
                          "key " + shape_string(lp.k->shape) + " vs value " + shape_string(lp.v->shape));
        if (lp.k->shape != layers.begin()->second.k->shape)
          throw_bad_input(where, lname(l) + ".key", "the shape of layer 0 " + shape_string(layers.begin()->second.k->shape),
                          shape_string(lp.k->shape));
        if (lp.k->type != src || lp.v->type != src)
          throw_bad_input(where, lname(l), "key and value in one dtype (" + std::string(safetensors_dtype_name(src)) + ")",
                          "key " + std::string(safetensors_dtype_name(lp.k->type)) + ", value " +
                              std::string(safetensors_dtype_name(lp.v->type)));
        detail::decode_slice(*lp.k, 0, per, keys.data());
        detail::decode_slice(*lp.v, 0, per, values.data());
        if (lp.kept) {
          const auto& ks = lp.kept->shape;
          const bool ok = lp.kept->type == dtype::u8 && ((ks.size() == 3 && ks[0] == 1 && ks[1] == H && ks[2] == T) ||
                                                         (ks.size() == 2 && ks[0] == H && ks[1] == T));
          if (!ok) throw_bad_input(where, lname(l) + ".kept", "U8 [1, " + std::to_string(H) + ", " + std::to_string(T) + "]", shp(lp.kept));
          c.kept.push_back(detail::mask_to_kept(*lp.kept, H, T, where));
        }
      } else {
        if (lp.k || lp.v) throw_bad_input(where, lname(l), "compact per-head tensors only", "dense key/value too");
        if (static_cast<std::int64_t>(lp.heads.size()) != H || lp.heads.rbegin()->first != H - 1)
          throw_bad_input(where, lname(l), "heads h0..h" + std::to_string(H - 1), std::to_string(lp.heads.size()) + " heads up to h" +
                          (lp.heads.empty() ? std::string("-") : std::to_string(lp.heads.rbegin()->first)));
        std::vector<std::vector<std::int32_t>> kept_l;
        for (const auto& [h, hp] : lp.heads) {
          const std::string hn = lname(l) + ".h" + std::to_string(h);
          if (!hp.k || !hp.v || !hp.pos) throw_bad_input(where, hn, "key, value and positions", "a missing tensor");
          if (hp.k->shape.size() != 2 || hp.k->shape[1] != D || hp.k->shape != hp.v->shape)
            throw_bad_input(where, hn, "key and value of shape [n, " + std::to_string(D) + "]",
                            "key " + shape_string(hp.k->shape) + " vs value " + shape_string(hp.v->shape));
          if (hp.k->type != src || hp.v->type != src)
            throw_bad_input(where, hn, "key and value in " + std::string(safetensors_dtype_name(src)),
                            shp(hp.k) + " / " + shp(hp.v));
          const std::int64_t n = hp.k->shape[0];
          if (hp.pos->type != dtype::i32 || hp.pos->shape != std::vector<std::int64_t>{n})
            throw_bad_input(where, hn + ".positions", "I32 [" + std::to_string(n) + "]", shp(hp.pos));
          auto pos = tensor_to_i32(*hp.pos, where);
          std::int64_t prev = -1;
          std::vector<float> kr(static_cast<std::size_t>(n * D)), vr(kr.size());
          detail::decode_slice(*hp.k, 0, kr.size(), kr.data());
          detail::decode_slice(*hp.v, 0, vr.size(), vr.data());
          for (std::int64_t i = 0; i < n; ++i) {
            const std::int64_t t = pos[static_cast<std::size_t>(i)];
            if (t <= prev || t >= T)
              throw_bad_input(where, hn + ".positions", "strictly increasing token indices < " + std::to_string(T), std::to_string(t));
            prev = t;
            const auto dst = static_cast<std::size_t>((h * T + t) * D);
            std::copy_n(kr.begin() + i * D, D, keys.begin() + static_cast<std::ptrdiff_t>(dst));
            std::copy_n(vr.begin() + i * D, D, values.begin() + static_cast<std::ptrdiff_t>(dst));
          }
          kept_l.push_back(std::move(pos));
        }
        c.kept.push_back(std::move(kept_l));
      }
      c.keys.push_back(std::move(keys));
      c.values.push_back(std::move(values));
      if (lp.q) {
        const auto& qs = lp.q->shape;
        const bool rank_ok = (qs.size() == 4 && qs[0] == 1) || qs.size() == 3;
        const std::int64_t Hq = rank_ok ? qs[qs.size() - 3] : 0;
        if (!rank_ok || !detail::is_float(lp.q->type) || Hq <= 0 || Hq % H != 0 || qs[qs.size() - 2] != T || qs.back() != D ||
            (c.shape.q_heads != 0 && Hq != c.shape.q_heads))
          throw_bad_input(where, "queries." + std::to_string(l),
                          "F32/F16/BF16 [1, Hq, " + std::to_string(T) + ", " + std::to_string(D) + "] with Hq a multiple of " +
                              std::to_string(H) + (c.shape.q_heads ? " equal in all layers" : ""),
                          shp(lp.q));
        c.shape.q_heads = static_cast<std::int32_t>(Hq);
        std::vector<float> qv(static_cast<std::size_t>(Hq * T * D));
        detail::decode_slice(*lp.q, 0, qv.size(), qv.data());
        c.queries.push_back(std::move(qv));
      }
    }
  }
  detail::read_ids(f, "tokens", c.shape.tokens, c.tokens, where);
  detail::read_ids(f, "positions", c.shape.tokens, c.positions, where);
  c.validate(where);
  return out;
}

/// Builds the tensors of `layout` for `c`: K/V/queries stored as `out` (f32, f16 or bf16), tokens and
/// positions as I32, metadata unchanged. `compact` (or layout hf_compact) stores only kept tokens.
inline tensor_file to_tensor_file(const kv_cache& c, kv_layout layout, dtype out, bool compact = false) {
  c.validate("to_tensor_file");
  if (!detail::is_float(out)) throw_usage("KV dump dtype must be f32, f16 or bf16, not " + std::string(dtype_name(out)));
  if (layout == kv_layout::hf_compact) compact = true;
  if (compact && layout == kv_layout::stacked) throw_usage("the compact KV dump is a per-layer (hf) layout, not stacked");
  const std::int64_t L = c.shape.layers, H = c.shape.kv_heads, T = c.shape.tokens, D = c.shape.head_dim, Hq = c.shape.q_heads;
  const auto per = static_cast<std::size_t>(H * T * D);
  tensor_file f;
  f.metadata = c.metadata;

  const auto kept_mask = [&](std::size_t l) {
    std::vector<std::uint8_t> m(static_cast<std::size_t>(H * T), 0);
    for (std::size_t h = 0; h < static_cast<std::size_t>(H); ++h)
      for (auto t : c.kept[l][h]) m[h * static_cast<std::size_t>(T) + static_cast<std::size_t>(t)] = 1;
    return m;
  };
  const auto masked = [&](const std::vector<float>& src, const std::vector<std::uint8_t>& m) {
    std::vector<float> r = src;
    for (std::size_t i = 0; i < m.size(); ++i)
      if (!m[i]) std::fill_n(r.begin() + static_cast<std::ptrdiff_t>(i * static_cast<std::size_t>(D)), D, 0.0f);
    return r;
  };

  if (layout == kv_layout::stacked) {
    std::vector<float> all(2 * static_cast<std::size_t>(L) * per);
    std::vector<std::uint8_t> kept_all;
    for (std::size_t l = 0; l < static_cast<std::size_t>(L); ++l) {
      if (c.is_dense()) {
        std::copy(c.keys[l].begin(), c.keys[l].end(), all.begin() + static_cast<std::ptrdiff_t>(2 * l * per));
        std::copy(c.values[l].begin(), c.values[l].end(), all.begin() + static_cast<std::ptrdiff_t>((2 * l + 1) * per));
      } else {
        const auto m = kept_mask(l);
        const auto k = masked(c.keys[l], m), v = masked(c.values[l], m);
        std::copy(k.begin(), k.end(), all.begin() + static_cast<std::ptrdiff_t>(2 * l * per));
        std::copy(v.begin(), v.end(), all.begin() + static_cast<std::ptrdiff_t>((2 * l + 1) * per));
        kept_all.insert(kept_all.end(), m.begin(), m.end());
      }
    }
    f.tensors.push_back(make_float_tensor("kv", {L, 2, H, T, D}, all.data(), out));
    if (c.has_queries()) {
      std::vector<float> q;
      q.reserve(static_cast<std::size_t>(L * Hq * T * D));
      for (const auto& ql : c.queries) q.insert(q.end(), ql.begin(), ql.end());
      f.tensors.push_back(make_float_tensor("queries", {L, Hq, T, D}, q.data(), out));
    }
    if (!c.is_dense()) f.tensors.push_back(make_u8_tensor("kept", {L, H, T}, kept_all.data()));
  } else {
    const bool d4 = layout != kv_layout::hf_3d;
    const auto dims = [&](std::vector<std::int64_t> s) {
      if (d4) s.insert(s.begin(), 1);
      return s;
    };
    for (std::size_t l = 0; l < static_cast<std::size_t>(L); ++l) {
      const std::string p = "past_key_values." + std::to_string(l);
      if (compact) {
        for (std::size_t h = 0; h < static_cast<std::size_t>(H); ++h) {
          std::vector<std::int32_t> pos;
          if (c.is_dense()) {
            pos.resize(static_cast<std::size_t>(T));
            for (std::size_t t = 0; t < pos.size(); ++t) pos[t] = static_cast<std::int32_t>(t);
          } else {
            pos = c.kept[l][h];
          }
          const auto n = static_cast<std::int64_t>(pos.size());
          std::vector<float> k(static_cast<std::size_t>(n * D)), v(k.size());
          for (std::size_t i = 0; i < pos.size(); ++i) {
            const auto src = static_cast<std::ptrdiff_t>((h * static_cast<std::size_t>(T) + static_cast<std::size_t>(pos[i])) * static_cast<std::size_t>(D));
            std::copy_n(c.keys[l].begin() + src, D, k.begin() + static_cast<std::ptrdiff_t>(i * static_cast<std::size_t>(D)));
            std::copy_n(c.values[l].begin() + src, D, v.begin() + static_cast<std::ptrdiff_t>(i * static_cast<std::size_t>(D)));
          }
          const std::string hp = p + ".h" + std::to_string(h);
          f.tensors.push_back(make_float_tensor(hp + ".key", {n, D}, k.data(), out));
          f.tensors.push_back(make_float_tensor(hp + ".value", {n, D}, v.data(), out));
          f.tensors.push_back(make_i32_tensor(hp + ".positions", {n}, pos.data()));
        }
      } else if (c.is_dense()) {
        f.tensors.push_back(make_float_tensor(p + ".key", dims({H, T, D}), c.keys[l].data(), out));
        f.tensors.push_back(make_float_tensor(p + ".value", dims({H, T, D}), c.values[l].data(), out));
      } else {
        const auto m = kept_mask(l);
        f.tensors.push_back(make_float_tensor(p + ".key", dims({H, T, D}), masked(c.keys[l], m).data(), out));
        f.tensors.push_back(make_float_tensor(p + ".value", dims({H, T, D}), masked(c.values[l], m).data(), out));
        f.tensors.push_back(make_u8_tensor(p + ".kept", dims({H, T}), m.data()));
      }
      if (c.has_queries())
        f.tensors.push_back(make_float_tensor("queries." + std::to_string(l), dims({Hq, T, D}), c.queries[l].data(), out));
    }
    if (compact) {
      const auto nt = static_cast<std::int32_t>(T);
      f.tensors.push_back(make_i32_tensor("past_key_values.num_tokens", {1}, &nt));
    }
  }
  if (!c.tokens.empty()) f.tensors.push_back(make_i32_tensor("tokens", {T}, c.tokens.data()));
  if (!c.positions.empty()) f.tensors.push_back(make_i32_tensor("positions", {T}, c.positions.data()));
  return f;
}

/// Reads a KV dump from memory: the format comes from the magic bytes; when they are not recognised,
/// `ext_hint` (".safetensors", ".npz", ".npy") selects the parser whose specific error is reported.
inline kv_dump read_kv_dump_bytes(std::span<const std::uint8_t> b, const std::string& where, std::string_view ext_hint = "") {
  file_format fmt = detect_format(b);
  if (fmt == file_format::unknown) {
    if (ext_hint == ".safetensors") fmt = file_format::safetensors;
    else if (ext_hint == ".npz") fmt = file_format::npz;
    else if (ext_hint == ".npy") fmt = file_format::npy;
    else
      throw_bad_input(where, "file format",
                      "a KV dump: safetensors (u64 header length + JSON), .npz (zip of .npy) or .npy (\\x93NUMPY)",
                      "unrecognised first bytes " + hex_prefix(b) + (ext_hint.empty() ? "" : " (extension " + std::string(ext_hint) + ")"));
  }
  tensor_file f;
  if (fmt == file_format::safetensors) {
    f = read_safetensors_bytes(b, where);
  } else if (fmt == file_format::npz) {
    f = read_npz_bytes(b, where);
  } else {
    f.tensors.push_back(read_npy_bytes(b, where, "kv"));
  }
  return kv_from_tensor_file(f, where, b.size());
}

inline kv_dump read_kv_dump(const std::string& path) {
  const auto bytes = read_file(path);
  return read_kv_dump_bytes(bytes, path, lower_extension(path));
}

/// Writes `c` to `path` in the format of its extension (.safetensors, .npz, or .npy for the bare
/// stacked `kv` array: dense caches without queries only; tokens, positions and metadata are not kept
/// in a .npy). Refuses to replace an existing file unless `overwrite`.
inline void write_kv_dump(const std::string& path, const kv_cache& c, kv_layout layout, dtype out, bool compact = false,
                          bool overwrite = false) {
  const std::string ext = lower_extension(path);
  if (ext == ".safetensors") {
    write_safetensors(path, to_tensor_file(c, layout, out, compact), overwrite);
  } else if (ext == ".npz") {
    write_npz(path, to_tensor_file(c, layout, out, compact), overwrite);
  } else if (ext == ".npy") {
    if (layout != kv_layout::stacked || compact)
      throw_usage(path + ": a .npy KV dump holds one stacked kv [L,2,H,T,D] array; use layout stacked or a .safetensors/.npz file");
    if (c.has_queries() || !c.is_dense())
      throw_usage(path + ": a .npy KV dump cannot hold queries or kept sets; use .safetensors or .npz");
    if (out == dtype::bf16) npy_descr(out, path);
    const tensor_file f = to_tensor_file(c, layout, out, false);
    write_npy(path, *f.find("kv"), overwrite);
  } else {
    throw_usage(path + ": unknown KV dump extension '" + ext + "'; expected .safetensors, .npz or .npy");
  }
}

}  // namespace kvcodec::io
