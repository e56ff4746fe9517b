// kvcodec/io/kv_dump_view.hpp — KV dumps without copies: a view of a mapped safetensors dump (read
// side), and the tensor layout a dense dump is written in, so a decoder can fill it piece by piece.
//
// open_kv_dump_view() maps a `.safetensors` dump whose K/V tensors are dense hf_4d, hf_3d or stacked
// floats of one dtype and hands out a const_kv_view of the file's bytes. Anything else (npz/npy,
// token-dropped or compact dumps, mixed dtypes, a layout it does not recognise) returns nullopt: the
// copying reader (kv_dump.hpp) then reads it and reports any error in full.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvcodec/io/kv_dump.hpp"
#include "kvcodec/io/stream_file.hpp"
#include "kvcodec/pipeline/encode.hpp"

namespace kvcodec::io {

struct kv_dump_view {
  std::shared_ptr<mapped_file> file;  ///< keeps the mapping alive
  const_kv_view view;
  kv_layout layout = kv_layout::hf_4d;
  kv_extras extras;  ///< source dtype, q_heads, tokens, positions, metadata
};

namespace detail {
inline std::vector<std::int32_t> i32_of(std::span<const std::uint8_t> data, const safetensors_index& idx, const safetensors_entry& e) {
  std::vector<std::int32_t> v(static_cast<std::size_t>((e.end - e.begin) / 4));
  if (!v.empty()) std::memcpy(v.data(), data.data() + idx.data_offset + e.begin, v.size() * 4);
  return v;
}
}  // namespace detail

/// Maps `path` and views its K/V in place when the layout allows (see the file comment).
inline std::optional<kv_dump_view> open_kv_dump_view(const std::string& path) {
  if (lower_extension(path) != ".safetensors") return std::nullopt;
  auto file = std::make_shared<mapped_file>(path);
  const auto data = file->bytes();
  if (detect_format(data) != file_format::safetensors) return std::nullopt;
  safetensors_index idx;
  try {
    idx = read_safetensors_index(data, path);
  } catch (const error&) {
    return std::nullopt;  // the copying reader reports it
  }
  kv_dump_view out;
  out.file = file;
  const std::uint8_t* base = data.data() + idx.data_offset;
  auto ptr = [&](const safetensors_entry& e) { return reinterpret_cast<const std::byte*>(base + e.begin); };
  std::int64_t H = 0, T = 0, D = 0;
  dtype dt = dtype::f32;
  std::vector<const std::byte*> ks, vs;
  std::int32_t q_heads = 0;
  if (const auto* kv = idx.find("kv")) {  // stacked [L, 2, H, T, D]
    if (idx.find("kept") || !io::detail::is_float(kv->type) || kv->shape.size() != 5 || kv->shape[1] != 2) return std::nullopt;
    const auto& s = kv->shape;
    if (s[0] < 1 || s[2] < 1 || s[3] < 1 || s[4] < 1) return std::nullopt;
    H = s[2], T = s[3], D = s[4], dt = kv->type;
    out.view = const_kv_view::stacked(ptr(*kv), dt, static_cast<std::int32_t>(s[0]), static_cast<std::int32_t>(H), T, static_cast<std::int32_t>(D));
    out.layout = kv_layout::stacked;
    if (const auto* q = idx.find("queries"); q && q->shape.size() == 4) q_heads = static_cast<std::int32_t>(q->shape[1]);
  } else {
    for (const auto& e : idx.entries) {
      const auto n = io::detail::parse_kv_name(e.name);
      if (n.kind != io::detail::kv_name::none && n.kind != io::detail::kv_name::key && n.kind != io::detail::kv_name::value &&
          n.kind != io::detail::kv_name::query)
        return std::nullopt;  // kept masks, compact heads...
    }
    for (std::int64_t l = 0;; ++l) {
      const std::string p = "past_key_values." + std::to_string(l);
      const auto *k = idx.find(p + ".key"), *v = idx.find(p + ".value");
      if (!k && !v) break;
      if (!k || !v || k->shape != v->shape || k->type != v->type || !io::detail::is_float(k->type)) return std::nullopt;
      const auto& s = k->shape;
      const bool d4 = s.size() == 4;
      if (!(d4 && s[0] == 1) && s.size() != 3) return std::nullopt;
      const std::int64_t h = s[d4 ? 1 : 0], t = s[d4 ? 2 : 1], d = s[d4 ? 3 : 2];
      if (l == 0) {
        H = h, T = t, D = d, dt = k->type;
        out.layout = d4 ? kv_layout::hf_4d : kv_layout::hf_3d;
      } else if (h != H || t != T || d != D || k->type != dt || (d4 != (out.layout == kv_layout::hf_4d))) {
        return std::nullopt;
      }
      ks.push_back(ptr(*k));
      vs.push_back(ptr(*v));
      if (const auto* q = idx.find("queries." + std::to_string(l)); q && q->shape.size() >= 3) q_heads = static_cast<std::int32_t>(q->shape[q->shape.size() - 3]);
    }
    if (ks.empty() || H < 1 || T < 1 || D < 1 || H > (1 << 16) || D > (1 << 16)) return std::nullopt;
    // Every layer tensor must be accounted for (no gaps such as layers 0, 2).
    std::size_t kv_tensors = 0;
    for (const auto& e : idx.entries) {
      const auto n = io::detail::parse_kv_name(e.name);
      kv_tensors += n.kind == io::detail::kv_name::key || n.kind == io::detail::kv_name::value;
    }
    if (kv_tensors != 2 * ks.size()) return std::nullopt;
    out.view = const_kv_view::hf(std::move(ks), std::move(vs), dt, static_cast<std::int32_t>(H), T, static_cast<std::int32_t>(D));
  }
  out.view.validate(path);
  out.extras.source_dtype = dt;
  out.extras.q_heads = q_heads;
  out.extras.metadata = idx.metadata;
  for (const char* name : {"tokens", "positions"}) {
    if (const auto* e = idx.find(name)) {
      if (e->type != dtype::i32 || e->shape.size() != 1 || e->shape[0] != T) return std::nullopt;
      (std::string(name) == "tokens" ? out.extras.tokens : out.extras.positions) = detail::i32_of(data, idx, *e);
    }
  }
  return out;
}

/// Mean squared queries per (layer, kv head, channel) (see query_energy(kv_cache)) from the dump
/// `dv` was opened from, read a (layer, query head) at a time with pread: what a quantizer whose steps
/// follow the queries needs, without reading the whole dump into memory. Empty when the dump has no
/// queries; queries of the wrong shape or dtype are bad input naming `path` and the tensor.
inline std::vector<float> dump_query_energy(const kv_dump_view& dv, const std::string& path) {
  const auto data = dv.file->bytes();
  const safetensors_index idx = read_safetensors_index(data, path);
  const kv_shape s = dv.view.shape();
  const std::int64_t L = s.layers, H = s.kv_heads, T = s.tokens, D = s.head_dim;
  const auto check = [&](const safetensors_entry& e, std::int64_t hq, const std::string& name, const std::string& want) {
    if (!io::detail::is_float(e.type) || hq < H || hq % H != 0) throw_bad_input(path + ": " + name, "shape", want, shape_string(e.shape));
  };
  std::vector<const safetensors_entry*> per_layer(static_cast<std::size_t>(L), nullptr);
  std::int64_t Hq = 0;
  std::uint64_t layer_stride = 0;
  if (dv.layout == kv_layout::stacked) {
    const auto* q = idx.find("queries");
    if (!q) return {};
    const std::string want = "F32/F16/BF16 [" + std::to_string(L) + ", Hq, " + std::to_string(T) + ", " + std::to_string(D) + "], Hq a multiple of " + std::to_string(H);
    if (q->shape.size() != 4 || q->shape[0] != L || q->shape[2] != T || q->shape[3] != D) throw_bad_input(path + ": queries", "shape", want, shape_string(q->shape));
    Hq = q->shape[1];
    check(*q, Hq, "queries", want);
    for (auto& e : per_layer) e = q;
    layer_stride = static_cast<std::uint64_t>(Hq * T * D) * dtype_size(q->type);
  } else {
    for (std::int64_t l = 0; l < L; ++l) {
      const std::string name = "queries." + std::to_string(l);
      const auto* q = idx.find(name);
      if (!q) {
        if (l == 0) return {};
        throw_bad_input(path, name, "a queries tensor for every layer (layer 0 has one)", "none");
      }
      const bool d4 = q->shape.size() == 4;
      const std::int64_t hq = q->shape.empty() ? 0 : q->shape[d4 ? 1 : 0];
      const std::string want = "F32/F16/BF16 [1, Hq, " + std::to_string(T) + ", " + std::to_string(D) + "], Hq a multiple of " + std::to_string(H);
      if (!(d4 && q->shape[0] == 1) && q->shape.size() != 3) throw_bad_input(path + ": " + name, "shape", want, shape_string(q->shape));
      if (q->shape[d4 ? 2 : 1] != T || q->shape[d4 ? 3 : 2] != D || (l > 0 && hq != Hq)) throw_bad_input(path + ": " + name, "shape", want, shape_string(q->shape));
      Hq = hq;
      check(*q, Hq, name, want);
      per_layer[static_cast<std::size_t>(l)] = q;
    }
  }
  const std::size_t g = static_cast<std::size_t>(Hq / H), n = static_cast<std::size_t>(T * D);
  std::vector<float> out(static_cast<std::size_t>(L * H * D), 0.0f), row(n);
  std::vector<std::uint8_t> buf;
  std::vector<double> acc(static_cast<std::size_t>(D));
  std::vector<std::size_t> cnt(static_cast<std::size_t>(D));
  for (std::int64_t l = 0; l < L; ++l) {
    const safetensors_entry& e = *per_layer[static_cast<std::size_t>(l)];
    const std::uint64_t es = dtype_size(e.type);
    const std::uint64_t base = idx.data_offset + e.begin + (dv.layout == kv_layout::stacked ? static_cast<std::uint64_t>(l) * layer_stride : 0);
    for (std::int64_t h = 0; h < H; ++h) {
      std::fill(acc.begin(), acc.end(), 0.0);
      std::fill(cnt.begin(), cnt.end(), std::size_t{0});
      for (std::size_t qh = static_cast<std::size_t>(h) * g; qh < static_cast<std::size_t>(h + 1) * g; ++qh) {
        buf.resize(n * es);
        dv.file->file().read_at(base + qh * n * es, buf, "queries");
        decode_floats(buf.data(), n, e.type, row.data());
        for (std::size_t i = 0; i < n; ++i)
          if (std::isfinite(row[i])) acc[i % static_cast<std::size_t>(D)] += static_cast<double>(row[i]) * row[i], ++cnt[i % static_cast<std::size_t>(D)];
      }
      for (std::int64_t d = 0; d < D; ++d)
        out[static_cast<std::size_t>((l * H + h) * D + d)] = cnt[static_cast<std::size_t>(d)] ? static_cast<float>(acc[static_cast<std::size_t>(d)] / static_cast<double>(cnt[static_cast<std::size_t>(d)])) : 0.0f;
    }
  }
  return out;
}

/// The tensors of a dense dump of `s` written in `layout` and dtype `t` (the same names, shapes and
/// order as write_kv_dump), with the header bytes and where each (layer, K/V, head, token) row goes.
struct dense_dump_plan {
  std::vector<safetensors_entry> entries;
  bytes header;  ///< the file's first bytes; data follows
  kv_layout layout = kv_layout::hf_4d;
  kv_shape shape;
  dtype type = dtype::f16;
  std::vector<std::size_t> key_entry, value_entry;  ///< hf layouts: entry index per layer
  /// Byte offset in the file of row (layer, K/V, head, token).
  std::uint64_t row_offset(int l, bool key, int h, std::int64_t t) const {
    const std::uint64_t es = dtype_size(type), D = static_cast<std::uint64_t>(shape.head_dim), T = static_cast<std::uint64_t>(shape.tokens);
    const std::uint64_t H = static_cast<std::uint64_t>(shape.kv_heads);
    if (layout == kv_layout::stacked) {
      const std::uint64_t plane = (static_cast<std::uint64_t>(l) * 2 + (key ? 0 : 1)) * H + static_cast<std::uint64_t>(h);
      return header.size() + entries[0].begin + ((plane * T + static_cast<std::uint64_t>(t)) * D) * es;
    }
    const auto& e = entries[(key ? key_entry : value_entry)[static_cast<std::size_t>(l)]];
    return header.size() + e.begin + ((static_cast<std::uint64_t>(h) * T + static_cast<std::uint64_t>(t)) * D) * es;
  }
};

inline dense_dump_plan plan_dense_dump(const kv_shape& s, kv_layout layout, dtype t, bool tokens, bool positions,
                                       const std::map<std::string, std::string>& metadata, const std::string& where) {
  if (layout == kv_layout::hf_compact) throw_usage(where + ": the compact layout is not a dense dump");
  dense_dump_plan p;
  p.layout = layout, p.shape = s, p.type = t;
  const std::int64_t L = s.layers, H = s.kv_heads, T = s.tokens, D = s.head_dim;
  if (layout == kv_layout::stacked) {
    p.entries.push_back({"kv", t, {L, 2, H, T, D}, 0, 0});
  } else {
    const bool d4 = layout != kv_layout::hf_3d;
    for (std::int64_t l = 0; l < L; ++l) {
      const std::string pre = "past_key_values." + std::to_string(l);
      std::vector<std::int64_t> shape = {H, T, D};
      if (d4) shape.insert(shape.begin(), 1);
      p.key_entry.push_back(p.entries.size());
      p.entries.push_back({pre + ".key", t, shape, 0, 0});
      p.value_entry.push_back(p.entries.size());
      p.entries.push_back({pre + ".value", t, shape, 0, 0});
    }
  }
  if (tokens) p.entries.push_back({"tokens", dtype::i32, {T}, 0, 0});
  if (positions) p.entries.push_back({"positions", dtype::i32, {T}, 0, 0});
  p.header = safetensors_header_bytes(p.entries, metadata, where);
  return p;
}

}  // namespace kvcodec::io
