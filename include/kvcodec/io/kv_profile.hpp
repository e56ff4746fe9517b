// kvcodec/io/kv_profile.hpp — a model's KV profile: the per-(layer, kv head) transforms of `klt`
// (core/klt.hpp), fitted once per model by `kvcodec calibrate --profile-out` on dumps of that model
// and shared by its encoders and decoders, the way a zstd dictionary is: a container coded with `klt`
// records the profile's 64-bit hash and decodes only where that profile is loaded (`--profile FILE`;
// C++: io::profile_registry::instance().load(path)). At 256 tokens a transform per head costs as many numbers as a quarter of
// the cache it codes; per model it is paid once.
//
// File: safetensors with F32 tensors `key.forward`, `key.inverse`, `value.forward`, `value.inverse`,
// each [layers, kv_heads, head_dim, head_dim] (row-major D x D per head; y = x forward, x = y inverse),
// and __metadata__ `kvcodec_profile` = "1", `model`, `rope`, `rope_theta`, `dumps` (what it was fitted on).
// The hash is XXH3-64 of the dimensions and the four tensors' bytes, so it names the numbers, not the file.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kvcodec/core/error.hpp"
#include "kvcodec/format/hash.hpp"
#include "kvcodec/io/safetensors.hpp"

namespace kvcodec::io {

struct kv_profile {
  std::string model;  ///< the model it was fitted on (metadata `model` of the dumps)
  std::string rope;   ///< RoPE style of the dumps (keys are transformed before RoPE)
  std::string rope_theta;
  std::string dumps;  ///< what it was fitted on (file names), for people
  std::int32_t layers = 0, kv_heads = 0, head_dim = 0;
  std::vector<float> key_forward, key_inverse, value_forward, value_inverse;  ///< [layers][kv_heads][D][D]
  std::uint64_t hash = 0;

  std::size_t matrix_floats() const noexcept { return static_cast<std::size_t>(head_dim) * static_cast<std::size_t>(head_dim); }
  /// The D x D matrix of (layer, head) for K or V, forward or inverse.
  const float* matrix(int layer, bool key, int head, bool forward) const noexcept {
    const std::vector<float>& v = key ? (forward ? key_forward : key_inverse) : (forward ? value_forward : value_inverse);
    return v.data() + (static_cast<std::size_t>(layer) * static_cast<std::size_t>(kv_heads) + static_cast<std::size_t>(head)) * matrix_floats();
  }
  std::uint64_t compute_hash() const {
    std::vector<std::uint8_t> buf;
    const std::int32_t dims[3] = {layers, kv_heads, head_dim};
    const auto put = [&](const void* p, std::size_t n) {
      const auto* b = static_cast<const std::uint8_t*>(p);
      buf.insert(buf.end(), b, b + n);
    };
    put(dims, sizeof dims);
    for (const auto* v : {&key_forward, &key_inverse, &value_forward, &value_inverse}) put(v->data(), v->size() * sizeof(float));
    return xxh3_64(buf.data(), buf.size());
  }
};

inline std::string profile_hash_text(std::uint64_t h) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
  return b;
}

inline void write_kv_profile(const std::string& path, const kv_profile& p, bool overwrite = false) {
  tensor_file f;
  f.metadata = {{"kvcodec_profile", "1"}, {"model", p.model}, {"rope", p.rope}, {"rope_theta", p.rope_theta}, {"dumps", p.dumps},
                {"hash", profile_hash_text(p.compute_hash())}};
  const std::vector<std::int64_t> shape{p.layers, p.kv_heads, p.head_dim, p.head_dim};
  f.tensors.push_back(make_float_tensor("key.forward", shape, p.key_forward.data(), dtype::f32));
  f.tensors.push_back(make_float_tensor("key.inverse", shape, p.key_inverse.data(), dtype::f32));
  f.tensors.push_back(make_float_tensor("value.forward", shape, p.value_forward.data(), dtype::f32));
  f.tensors.push_back(make_float_tensor("value.inverse", shape, p.value_inverse.data(), dtype::f32));
  write_safetensors(path, f, overwrite);
}

/// Reads and checks a profile: the four tensors, F32, one shape [L, H, D, D] with L, H, D in
/// 1..4096 (D even), every number finite; bad_input naming the file and field otherwise.
inline kv_profile read_kv_profile(const std::string& path) {
  const tensor_file f = read_safetensors(path);
  const auto meta = [&](const char* k) {
    const auto it = f.metadata.find(k);
    return it == f.metadata.end() ? std::string() : it->second;
  };
  if (meta("kvcodec_profile") != "1")
    throw_bad_input(path, "__metadata__.kvcodec_profile", "\"1\" (a profile written by `kvcodec calibrate --profile-out`)",
                    meta("kvcodec_profile").empty() ? "nothing" : "\"" + meta("kvcodec_profile") + "\"");
  kv_profile p;
  p.model = meta("model");
  p.rope = meta("rope");
  p.rope_theta = meta("rope_theta");
  p.dumps = meta("dumps");
  std::vector<std::int64_t> shape;
  const char* names[4] = {"key.forward", "key.inverse", "value.forward", "value.inverse"};
  std::vector<float>* dst[4] = {&p.key_forward, &p.key_inverse, &p.value_forward, &p.value_inverse};
  for (int i = 0; i < 4; ++i) {
    const tensor* t = f.find(names[i]);
    if (!t) throw_bad_input(path, std::string("tensor '") + names[i] + "'", "present", "missing");
    if (t->type != dtype::f32) throw_bad_input(path, std::string("dtype of '") + names[i] + "'", "F32", std::string(safetensors_dtype_name(t->type)));
    if (i == 0) {
      shape = t->shape;
      const bool ok = shape.size() == 4 && shape[2] == shape[3] && shape[2] % 2 == 0 && [&] {
        for (auto d : shape)
          if (d < 1 || d > 4096) return false;
        return true;
      }();
      if (!ok) throw_bad_input(path, "shape of 'key.forward'", "[layers, kv_heads, D, D] with each in 1..4096 and D even", shape_string(shape));
    } else if (t->shape != shape) {
      throw_bad_input(path, std::string("shape of '") + names[i] + "'", shape_string(shape) + " (as key.forward)", shape_string(t->shape));
    }
    *dst[i] = tensor_to_floats(*t, path);
    for (float x : *dst[i])
      if (!std::isfinite(x)) throw_bad_input(path, std::string("tensor '") + names[i] + "'", "finite numbers", "NaN or infinity");
  }
  p.layers = static_cast<std::int32_t>(shape[0]);
  p.kv_heads = static_cast<std::int32_t>(shape[1]);
  p.head_dim = static_cast<std::int32_t>(shape[2]);
  p.hash = p.compute_hash();
  return p;
}

/// The profiles this process has loaded, by hash: `klt` finds its profile here when it encodes
/// (profile=auto: the only one loaded; profile=<hash>) and when it decodes (the hash its container records).
class profile_registry {
 public:
  static profile_registry& instance() {
    static profile_registry r;
    return r;
  }
  std::shared_ptr<const kv_profile> add(kv_profile p) {
    if (p.hash == 0) p.hash = p.compute_hash();
    const std::lock_guard<std::mutex> lock(m_);
    auto& slot = by_hash_[p.hash];
    if (!slot) slot = std::make_shared<const kv_profile>(std::move(p));
    return slot;
  }
  std::shared_ptr<const kv_profile> load(const std::string& path) { return add(read_kv_profile(path)); }
  std::shared_ptr<const kv_profile> find(std::uint64_t h) const {
    const std::lock_guard<std::mutex> lock(m_);
    const auto it = by_hash_.find(h);
    return it == by_hash_.end() ? nullptr : it->second;
  }
  std::vector<std::shared_ptr<const kv_profile>> all() const {
    const std::lock_guard<std::mutex> lock(m_);
    std::vector<std::shared_ptr<const kv_profile>> v;
    for (const auto& [h, p] : by_hash_) v.push_back(p);
    return v;
  }
  void clear() {
    const std::lock_guard<std::mutex> lock(m_);
    by_hash_.clear();
  }

 private:
  mutable std::mutex m_;
  std::map<std::uint64_t, std::shared_ptr<const kv_profile>> by_hash_;
};

}  // namespace kvcodec::io
