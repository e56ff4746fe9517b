// kvcodec/model/llama2c.hpp — loader for llama2.c "legacy" checkpoints (Karpathy's run.c format).
//
// Format: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
// vocab_size < 0 means a separate classifier follows at the end), then float32 arrays: token embedding
// [vocab, dim], rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim], wv [L, kv_dim, dim],
// wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim],
// rms_final [dim], the legacy RoPE table (seq_len * head_dim floats, skipped), then wcls [vocab, dim]
// when not shared. Matrices are row-major (out x in).
// Invariant: every count is validated against the file size before anything is allocated; the file
// must end exactly where the header says, so a lying header or a truncated file is a bad_input that
// names the file and the first field that does not fit.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "kvcodec/core/random.hpp"
#include "kvcodec/core/error.hpp"

namespace kvcodec::model {

static_assert(std::endian::native == std::endian::little, "llama2c loader assumes a little-endian host");

using matrix_rm = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using vector_f = Eigen::VectorXf;

struct llama2c_config {
  std::int32_t dim = 0;
  std::int32_t hidden_dim = 0;
  std::int32_t n_layers = 0;
  std::int32_t n_heads = 0;
  std::int32_t n_kv_heads = 0;
  std::int32_t vocab_size = 0;  ///< always positive here; `shared_classifier` keeps the sign's meaning
  std::int32_t seq_len = 0;
  bool shared_classifier = true;

  std::int32_t head_dim() const noexcept { return n_heads > 0 ? dim / n_heads : 0; }
  std::int32_t kv_dim() const noexcept { return n_heads > 0 ? dim / n_heads * n_kv_heads : 0; }
  std::int32_t kv_group() const noexcept { return n_kv_heads > 0 ? n_heads / n_kv_heads : 0; }
};

struct llama2c_layer {
  vector_f rms_att, rms_ffn;
  matrix_rm wq, wk, wv, wo;  ///< [dim,dim], [kv_dim,dim], [kv_dim,dim], [dim,dim]
  matrix_rm w1, w2, w3;      ///< [hidden,dim], [dim,hidden], [hidden,dim]
};

struct llama2c_model {
  llama2c_config config;
  matrix_rm token_embedding;  ///< [vocab, dim]
  std::vector<llama2c_layer> layers;
  vector_f rms_final;  ///< [dim]
  matrix_rm wcls;      ///< [vocab, dim]; empty when the classifier shares the embedding

  const matrix_rm& classifier() const noexcept { return config.shared_classifier ? token_embedding : wcls; }
};

namespace detail {

inline constexpr std::size_t llama2c_header_bytes = 7 * sizeof(std::int32_t);

/// One float array of the file: its name, first float index after the header, and float count.
struct llama2c_field {
  std::string name;
  std::uint64_t offset = 0;
  std::uint64_t count = 0;
};

/// Parses and checks the header; `file_bytes` is the whole file size.
inline llama2c_config llama2c_parse_header(const unsigned char* h, std::uint64_t file_bytes, const std::string& where) {
  if (file_bytes < llama2c_header_bytes)
    throw_bad_input(where, "header", std::to_string(llama2c_header_bytes) + " bytes", std::to_string(file_bytes) + " bytes");
  std::int32_t v[7];
  std::memcpy(v, h, sizeof v);
  llama2c_config c;
  c.dim = v[0];
  c.hidden_dim = v[1];
  c.n_layers = v[2];
  c.n_heads = v[3];
  c.n_kv_heads = v[4];
  c.shared_classifier = v[5] > 0;
  c.vocab_size = v[5];
  c.seq_len = v[6];
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i) {
    if (i == 5) {
      if (v[i] == 0 || v[i] == INT32_MIN) throw_bad_input(where, names[i], "a nonzero count", std::to_string(v[i]));
    } else if (v[i] <= 0) {
      throw_bad_input(where, names[i], "> 0", std::to_string(v[i]));
    }
  }
  if (c.vocab_size < 0) c.vocab_size = -c.vocab_size;
  if (c.n_heads % c.n_kv_heads != 0)
    throw_bad_input(where, "n_kv_heads", "a divisor of n_heads (" + std::to_string(c.n_heads) + ")", std::to_string(c.n_kv_heads));
  if (c.dim % c.n_heads != 0)
    throw_bad_input(where, "n_heads", "a divisor of dim (" + std::to_string(c.dim) + ")", std::to_string(c.n_heads));
  if (c.head_dim() % 2 != 0)
    throw_bad_input(where, "head_dim (dim / n_heads)", "an even number", std::to_string(c.head_dim()));
  return c;
}

/// The float arrays in file order, each checked to fit inside `file_bytes`; the file must end exactly
/// after the last one.
inline std::vector<llama2c_field> llama2c_layout(const llama2c_config& c, std::uint64_t file_bytes, const std::string& where) {
  const std::uint64_t avail = (file_bytes - llama2c_header_bytes) / 4;
  std::vector<llama2c_field> f;
  std::uint64_t off = 0;
  const auto add = [&](const std::string& name, std::initializer_list<std::int64_t> dims) {
    std::uint64_t n = 1;
    std::string shape;
    for (std::int64_t d : dims) {
      const auto u = static_cast<std::uint64_t>(d);
      shape += (shape.empty() ? "" : "x") + std::to_string(d);
      n = (n > avail / u) ? avail + 1 : n * u;  // saturates past the file, never overflows
    }
    if (n > avail - off)
      throw_bad_input(where, name, shape + " floats inside the file (" + std::to_string(file_bytes) + " bytes)",
                      std::to_string(avail - off) + " floats left at that point");
    f.push_back({name, off, n});
    off += n;
  };
  const std::int64_t L = c.n_layers, d = c.dim, kv = c.kv_dim(), hid = c.hidden_dim, V = c.vocab_size;
  add("token_embedding", {V, d});
  add("rms_att", {L, d});
  add("wq", {L, d, d});
  add("wk", {L, kv, d});
  add("wv", {L, kv, d});
  add("wo", {L, d, d});
  add("rms_ffn", {L, d});
  add("w1", {L, hid, d});
  add("w2", {L, d, hid});
  add("w3", {L, hid, d});
  add("rms_final", {d});
  add("freq_cis (legacy RoPE table)", {c.seq_len, c.head_dim()});
  if (!c.shared_classifier) add("wcls", {V, d});
  const std::uint64_t expect = llama2c_header_bytes + off * 4;
  if (expect != file_bytes)
    throw_bad_input(where, "file size", std::to_string(expect) + " bytes (what the header implies)",
                    std::to_string(file_bytes) + " bytes");
  return f;
}

/// Builds the model; `read(float_offset, count, dst)` copies `count` floats starting at float index
/// `float_offset` (after the header) into dst.
inline llama2c_model llama2c_build(const llama2c_config& c, const std::vector<llama2c_field>& fields,
                                   const std::function<void(std::uint64_t, std::uint64_t, float*)>& read) {
  llama2c_model m;
  m.config = c;
  const auto field = [&](const char* name) -> const llama2c_field& {
    for (const auto& x : fields)
      if (x.name == name) return x;
    throw_usage(std::string("llama2c: internal layout has no field ") + name);
  };
  const std::int64_t L = c.n_layers, d = c.dim, kv = c.kv_dim(), hid = c.hidden_dim, V = c.vocab_size;
  m.token_embedding.resize(V, d);
  read(field("token_embedding").offset, static_cast<std::uint64_t>(V * d), m.token_embedding.data());
  m.layers.resize(static_cast<std::size_t>(L));
  const auto per_layer = [&](const char* name, auto member, std::int64_t rows, std::int64_t cols) {
    const llama2c_field& x = field(name);
    const auto n = static_cast<std::uint64_t>(rows * cols);
    for (std::int64_t l = 0; l < L; ++l) {
      auto& dst = m.layers[static_cast<std::size_t>(l)].*member;
      if constexpr (std::is_same_v<std::remove_reference_t<decltype(dst)>, vector_f>) dst.resize(rows * cols);
      else dst.resize(rows, cols);
      read(x.offset + static_cast<std::uint64_t>(l) * n, n, dst.data());
    }
  };
  per_layer("rms_att", &llama2c_layer::rms_att, 1, d);
  per_layer("wq", &llama2c_layer::wq, d, d);
  per_layer("wk", &llama2c_layer::wk, kv, d);
  per_layer("wv", &llama2c_layer::wv, kv, d);
  per_layer("wo", &llama2c_layer::wo, d, d);
  per_layer("rms_ffn", &llama2c_layer::rms_ffn, 1, d);
  per_layer("w1", &llama2c_layer::w1, hid, d);
  per_layer("w2", &llama2c_layer::w2, d, hid);
  per_layer("w3", &llama2c_layer::w3, hid, d);
  m.rms_final.resize(d);
  read(field("rms_final").offset, static_cast<std::uint64_t>(d), m.rms_final.data());
  if (!c.shared_classifier) {
    m.wcls.resize(V, d);
    read(field("wcls").offset, static_cast<std::uint64_t>(V * d), m.wcls.data());
  }
  return m;
}

}  // namespace detail

/// Parses a checkpoint held in memory; `where` names it in error messages.
inline llama2c_model parse_llama2c(const void* data, std::size_t size, const std::string& where = "llama2c checkpoint") {
  const auto* p = static_cast<const unsigned char*>(data);
  if (size > 0 && p == nullptr) throw_usage(where + ": null data pointer with nonzero size");
  unsigned char header[detail::llama2c_header_bytes] = {};
  if (size >= sizeof header) std::memcpy(header, p, sizeof header);
  const llama2c_config c = detail::llama2c_parse_header(header, size, where);
  const auto fields = detail::llama2c_layout(c, size, where);
  return detail::llama2c_build(c, fields, [&](std::uint64_t off, std::uint64_t n, float* dst) {
    std::memcpy(dst, p + detail::llama2c_header_bytes + off * 4, static_cast<std::size_t>(n) * 4);
  });
}

/// Loads a checkpoint file; errors name `path`.
inline llama2c_model load_llama2c(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(error_kind::io, path + ": cannot open llama2.c checkpoint");
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  if (end < 0) throw error(error_kind::io, path + ": cannot determine file size");
  const auto size = static_cast<std::uint64_t>(end);
  in.seekg(0, std::ios::beg);
  unsigned char header[detail::llama2c_header_bytes] = {};
  if (size >= sizeof header && !in.read(reinterpret_cast<char*>(header), sizeof header))
    throw error(error_kind::io, path + ": read of the header failed");
  const llama2c_config c = detail::llama2c_parse_header(header, size, path);
  const auto fields = detail::llama2c_layout(c, size, path);
  return detail::llama2c_build(c, fields, [&](std::uint64_t off, std::uint64_t n, float* dst) {
    in.seekg(static_cast<std::streamoff>(detail::llama2c_header_bytes + off * 4), std::ios::beg);
    if (!in.read(reinterpret_cast<char*>(dst), static_cast<std::streamsize>(n * 4)))
      throw error(error_kind::io, path + ": read failed at float " + std::to_string(off));
  });
}

/// Serialises a model back into the legacy format (the RoPE table is written as zeros); used to
/// build test checkpoints. Throws usage when the model's arrays disagree with its config.
inline std::vector<unsigned char> serialize_llama2c(const llama2c_model& m) {
  const llama2c_config& c = m.config;
  std::vector<unsigned char> out;
  const auto put = [&](const void* src, std::size_t bytes) {
    const std::size_t at = out.size();
    out.resize(at + bytes);
    if (bytes > 0) std::memcpy(out.data() + at, src, bytes);
  };
  const auto put_floats = [&](const float* src, Eigen::Index n, Eigen::Index expect, const char* name) {
    if (n != expect) throw_usage(std::string("serialize_llama2c: ") + name + " has " + std::to_string(n) +
                                 " floats, config implies " + std::to_string(expect));
    put(src, static_cast<std::size_t>(n) * 4);
  };
  const std::int32_t h[7] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                             c.shared_classifier ? c.vocab_size : -c.vocab_size, c.seq_len};
  put(h, sizeof h);
  if (m.layers.size() != static_cast<std::size_t>(c.n_layers)) throw_usage("serialize_llama2c: layer count differs from config");
  const Eigen::Index d = c.dim, kv = c.kv_dim(), hid = c.hidden_dim, V = c.vocab_size;
  put_floats(m.token_embedding.data(), m.token_embedding.size(), V * d, "token_embedding");
#define KVCODEC_LLAMA2C_PUT(member, n)                                    \
  for (const auto& ly : m.layers) put_floats(ly.member.data(), ly.member.size(), n, #member);
  KVCODEC_LLAMA2C_PUT(rms_att, d)
  KVCODEC_LLAMA2C_PUT(wq, d * d)
  KVCODEC_LLAMA2C_PUT(wk, kv * d)
  KVCODEC_LLAMA2C_PUT(wv, kv * d)
  KVCODEC_LLAMA2C_PUT(wo, d * d)
  KVCODEC_LLAMA2C_PUT(rms_ffn, d)
  KVCODEC_LLAMA2C_PUT(w1, hid * d)
  KVCODEC_LLAMA2C_PUT(w2, d * hid)
  KVCODEC_LLAMA2C_PUT(w3, hid * d)
#undef KVCODEC_LLAMA2C_PUT
  put_floats(m.rms_final.data(), m.rms_final.size(), d, "rms_final");
  out.resize(out.size() + static_cast<std::size_t>(c.seq_len) * static_cast<std::size_t>(c.head_dim()) * 4, 0);
  if (!c.shared_classifier) put_floats(m.wcls.data(), m.wcls.size(), V * d, "wcls");
  return out;
}

/// A model with deterministic pseudo-random weights (uniform, scaled by 1/sqrt(fan-in); norm weights
/// near 1) for tests and benchmarks. Throws bad_input for an invalid config, as the loader would.
inline llama2c_model random_llama2c(llama2c_config c, std::uint64_t seed) {
  const std::int32_t h[7] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                             c.shared_classifier ? c.vocab_size : -c.vocab_size, c.seq_len};
  c = detail::llama2c_parse_header(reinterpret_cast<const unsigned char*>(h), detail::llama2c_header_bytes, "random_llama2c");
  std::uint64_t s = seed;
  const auto next = [&]() {  // splitmix64 -> uniform in [-1, 1)
    const std::uint64_t z = splitmix64_next(s);
    return static_cast<float>(static_cast<double>(z >> 40) / static_cast<double>(1ull << 23) - 1.0);
  };
  const auto fill = [&](auto& a, Eigen::Index rows, Eigen::Index cols, float scale, float bias) {
    if constexpr (std::is_same_v<std::remove_reference_t<decltype(a)>, vector_f>) a.resize(rows * cols);
    else a.resize(rows, cols);
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = bias + scale * next();
  };
  llama2c_model m;
  m.config = c;
  const Eigen::Index d = c.dim, kv = c.kv_dim(), hid = c.hidden_dim, V = c.vocab_size;
  const float sd = 1.0f / std::sqrt(static_cast<float>(d)), sh = 1.0f / std::sqrt(static_cast<float>(hid));
  fill(m.token_embedding, V, d, 1.0f, 0.0f);
  m.layers.resize(static_cast<std::size_t>(c.n_layers));
  for (auto& ly : m.layers) {
    fill(ly.rms_att, 1, d, 0.2f, 1.0f);
    fill(ly.wq, d, d, sd, 0.0f);
    fill(ly.wk, kv, d, sd, 0.0f);
    fill(ly.wv, kv, d, sd, 0.0f);
    fill(ly.wo, d, d, sd, 0.0f);
    fill(ly.rms_ffn, 1, d, 0.2f, 1.0f);
    fill(ly.w1, hid, d, sd, 0.0f);
    fill(ly.w2, d, hid, sh, 0.0f);
    fill(ly.w3, hid, d, sd, 0.0f);
  }
  fill(m.rms_final, 1, d, 0.2f, 1.0f);
  if (!c.shared_classifier) fill(m.wcls, V, d, sd, 0.0f);
  return m;
}

}  // namespace kvcodec::model
