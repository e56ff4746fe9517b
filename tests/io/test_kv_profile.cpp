// Tests of KV profiles (io/kv_profile.hpp): file round trip, the hash names the numbers, clear
// errors for files that are not profiles, no silent overwrite, the process registry.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>

#include "kvcodec/core/error.hpp"
#include "kvcodec/io/kv_profile.hpp"

namespace kvcodec_test_io_kv_profile {

using namespace kvcodec;

namespace {
io::kv_profile small_profile(float salt = 0) {
  io::kv_profile p;
  p.model = "t";
  p.rope = "interleaved-pairs";
  p.rope_theta = "10000";
  p.layers = 2;
  p.kv_heads = 1;
  p.head_dim = 2;
  for (auto* v : {&p.key_forward, &p.key_inverse, &p.value_forward, &p.value_inverse}) v->assign(8, 0.0f);
  for (std::size_t i = 0; i < 8; ++i) p.key_forward[i] = static_cast<float>(i) + salt;
  p.hash = p.compute_hash();
  return p;
}
std::filesystem::path tmp(const char* name) {
  return std::filesystem::temp_directory_path() / (std::string("kvcodec_test_profile_") + name + ".safetensors");
}
}  // namespace

TEST_CASE("kv profile: write - read back the same numbers and hash - the hash changes with any number") {
  const auto path = tmp("rt");
  std::filesystem::remove(path);
  const io::kv_profile p = small_profile();
  io::write_kv_profile(path.string(), p);
  const io::kv_profile q = io::read_kv_profile(path.string());
  CHECK(q.hash == p.hash);
  CHECK(q.key_forward == p.key_forward);
  CHECK(q.layers == 2);
  CHECK(q.model == "t");
  CHECK(q.matrix(1, true, 0, true)[0] == 4.0f);
  CHECK(small_profile(0.5f).hash != p.hash);
  CHECK(io::profile_hash_text(0xabcull) == "0000000000000abc");
  // never replaces a file unless asked
  CHECK_THROWS_AS(io::write_kv_profile(path.string(), p), error);
  io::write_kv_profile(path.string(), small_profile(1.0f), true);
  CHECK(io::read_kv_profile(path.string()).hash == small_profile(1.0f).hash);
  std::filesystem::remove(path);
}

TEST_CASE("kv profile: a file that is not a profile is refused with its name and the field") {
  const auto path = tmp("bad");
  std::filesystem::remove(path);
  io::tensor_file f;
  f.metadata["kvcodec_profile"] = "1";
  const float one[4] = {1, 0, 0, 1};
  f.tensors.push_back(io::make_float_tensor("key.forward", {1, 1, 2, 2}, one, dtype::f32));
  io::write_safetensors(path.string(), f);
  CHECK_THROWS_WITH_AS(io::read_kv_profile(path.string()), doctest::Contains("tensor 'key.inverse'"), error);
  CHECK_THROWS_WITH_AS(io::read_kv_profile(path.string()), doctest::Contains(path.string().c_str()), error);
  f.tensors.push_back(io::make_float_tensor("key.inverse", {1, 1, 2, 2}, one, dtype::f32));
  const float nan4[4] = {1, std::numeric_limits<float>::quiet_NaN(), 0, 1};
  f.tensors.push_back(io::make_float_tensor("value.forward", {1, 1, 2, 2}, one, dtype::f32));
  const float eight[8] = {};
  f.tensors.push_back(io::make_float_tensor("value.inverse", {1, 2, 2, 2}, eight, dtype::f32));
  io::write_safetensors(path.string(), f, true);
  CHECK_THROWS_WITH_AS(io::read_kv_profile(path.string()), doctest::Contains("shape of 'value.inverse'"), error);
  f.tensors.back() = io::make_float_tensor("value.inverse", {1, 1, 2, 2}, nan4, dtype::f32);
  io::write_safetensors(path.string(), f, true);
  CHECK_THROWS_WITH_AS(io::read_kv_profile(path.string()), doctest::Contains("finite numbers"), error);
  f.metadata.clear();
  io::write_safetensors(path.string(), f, true);
  CHECK_THROWS_WITH_AS(io::read_kv_profile(path.string()), doctest::Contains("kvcodec_profile"), error);
  std::filesystem::remove(path);
}

TEST_CASE("kv profile registry: one entry per hash - found by hash") {
  auto& r = io::profile_registry::instance();
  r.clear();
  const auto a = r.add(small_profile());
  const auto b = r.add(small_profile());
  CHECK(a.get() == b.get());
  CHECK(r.all().size() == 1);
  CHECK(r.find(a->hash) == a);
  CHECK(r.find(a->hash + 1) == nullptr);
  r.clear();
  CHECK(r.all().empty());
}

}  // namespace kvcodec_test_io_kv_profile
