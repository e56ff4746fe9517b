// Tests of stage `klt` (cpu/klt.hpp): round trip through a profile's transforms (keys before RoPE),
// the fused f16 rows equal decode() converted, the container names the profile it needs, and usage
// errors for a missing, ambiguous or mismatched profile.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kvcodec/core/half.hpp"
#include "kvcodec/core/klt.hpp"
#include "kvcodec/core/simd.hpp"
#include "kvcodec/cpu/klt.hpp"
#include "kvcodec/eval/synth.hpp"
#include "kvcodec/io/kv_profile.hpp"
#include "kvcodec/kvcodec.hpp"

namespace kvcodec_test_cpu_klt {

using namespace kvcodec;

namespace {
kv_cache small_cache() {
  eval::synth_options o;
  o.layers = 2;
  o.kv_heads = 2;
  o.q_heads = 4;
  o.head_dim = 16;
  o.tokens = 96;
  o.dtype = dtype::f32;
  kv_cache c = eval::synth_cache(o);
  c.metadata["rope"] = "interleaved-pairs";
  c.metadata["rope_theta"] = "10000";
  return c;
}
/// A profile of random well-conditioned transforms (a KLT of a random covariance under a random
/// diagonal metric) for the cache's shape.
io::kv_profile random_profile(const kv_cache& c, std::uint32_t seed) {
  io::kv_profile p;
  p.model = "synth";
  p.rope = "interleaved-pairs";
  p.rope_theta = "10000";
  p.layers = c.shape.layers;
  p.kv_heads = c.shape.kv_heads;
  p.head_dim = c.shape.head_dim;
  const std::size_t D = static_cast<std::size_t>(p.head_dim), n = static_cast<std::size_t>(p.layers * p.kv_heads);
  for (auto* v : {&p.key_forward, &p.key_inverse, &p.value_forward, &p.value_inverse}) v->resize(n * D * D);
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  std::uniform_real_distribution<double> u(0.5, 2.0);
  for (std::size_t m = 0; m < 2 * n; ++m) {
    std::vector<double> A(D * D), C(D * D, 0.0), S(D * D, 0.0), Si(D * D, 0.0);
    for (auto& x : A) x = g(rng);
    for (std::size_t i = 0; i < D; ++i)
      for (std::size_t j = 0; j < D; ++j)
        for (std::size_t k = 0; k < D; ++k) C[i * D + j] += A[i * D + k] * A[j * D + k];
    for (std::size_t i = 0; i < D; ++i) S[i * D + i] = u(rng), Si[i * D + i] = 1.0 / S[i * D + i];
    const std::size_t o = (m % n) * D * D;
    klt_from_covariance(C, S, Si, D, (m < n ? p.key_forward : p.value_forward).data() + o, (m < n ? p.key_inverse : p.value_inverse).data() + o);
  }
  p.hash = p.compute_hash();
  return p;
}
double rel_err(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  double e = 0, s = 0;
  for (std::size_t l = 0; l < a.size(); ++l)
    for (std::size_t i = 0; i < a[l].size(); ++i) {
      e += (a[l][i] - b[l][i]) * (a[l][i] - b[l][i]);
      s += static_cast<double>(a[l][i]) * a[l][i];
    }
  return std::sqrt(e / s);
}
}  // namespace

TEST_CASE("klt: round trip through the profile - error set by the steps - the container names the profile") {
  auto& reg = io::profile_registry::instance();
  reg.clear();
  const kv_cache c = small_cache();
  const auto pr = reg.add(random_profile(c, 1));
  const auto fine = encode("klt:kstep=0.02,vstep=0.02|rans", c);
  const auto coarse = encode("klt:kstep=0.2,vstep=0.2|rans", c);
  const kv_cache df = decode(fine.data), dc = decode(coarse.data);
  MESSAGE("relative error: fine K " << rel_err(c.keys, df.keys) << " V " << rel_err(c.values, df.values) << "; coarse K " << rel_err(c.keys, dc.keys));
  CHECK(rel_err(c.keys, df.keys) < 0.03);
  CHECK(rel_err(c.values, df.values) < 0.03);
  CHECK(rel_err(c.keys, dc.keys) > 3 * rel_err(c.keys, df.keys));
  CHECK(coarse.data.size() < fine.data.size());
  // the same profile named by its hash gives the same cache back
  CHECK(decode(encode("klt:profile=" + io::profile_hash_text(pr->hash) + ",kstep=0.2,vstep=0.2|rans", c).data).keys == dc.keys);
  // without the profile the container cannot be decoded, and says which one it needs
  reg.clear();
  CHECK_THROWS_WITH_AS(decode(coarse.data), doctest::Contains(io::profile_hash_text(pr->hash).c_str()), error);
  reg.add(random_profile(c, 2));  // another profile of the same shape is not taken instead
  CHECK_THROWS_WITH_AS(decode(coarse.data), doctest::Contains("not loaded"), error);
  reg.add(random_profile(c, 1));
  CHECK(rel_err(c.keys, decode(coarse.data).keys) == rel_err(c.keys, dc.keys));
  // auto with two profiles loaded is ambiguous
  CHECK_THROWS_WITH_AS(encode("klt|rans", c), doctest::Contains("exactly one profile"), error);
  reg.clear();
  CHECK_THROWS_WITH_AS(encode("klt|rans", c), doctest::Contains("found 0"), error);
  CHECK_THROWS_WITH_AS(encode("klt:profile=0123456789abcdef|rans", c), doctest::Contains("no loaded profile"), error);
  CHECK_THROWS_AS(make_codec("klt:profile=xyz"), error);
}

TEST_CASE("klt: a profile for another shape or RoPE - or a cache without RoPE metadata - is a usage error") {
  auto& reg = io::profile_registry::instance();
  reg.clear();
  const kv_cache c = small_cache();
  io::kv_profile p = random_profile(c, 3);
  p.layers = 1;
  p.key_forward.resize(p.key_forward.size() / 2);
  p.key_inverse.resize(p.key_inverse.size() / 2);
  p.value_forward.resize(p.value_forward.size() / 2);
  p.value_inverse.resize(p.value_inverse.size() / 2);
  p.hash = p.compute_hash();
  reg.add(p);
  CHECK_THROWS_WITH_AS(encode("klt|rans", c), doctest::Contains("layers x kv_heads x head_dim = 1 x 2 x 16"), error);
  reg.clear();
  reg.add(random_profile(c, 3));
  kv_cache half = c;
  half.metadata["rope"] = "rotate-half";
  CHECK_THROWS_WITH_AS(encode("klt|rans", half), doctest::Contains("rope 'interleaved-pairs'"), error);
  kv_cache none = c;
  none.metadata["post_rope"] = "false";
  CHECK_THROWS_WITH_AS(encode("klt|rans", none), doctest::Contains("no RoPE to undo"), error);
  reg.clear();
}

TEST_CASE("klt: fused f16 rows equal decode() converted - dense and ragged blocks") {
  auto& reg = io::profile_registry::instance();
  reg.clear();
  const kv_cache c = small_cache();
  reg.add(random_profile(c, 4));
  cache_info info;
  info.shape = c.shape;
  info.metadata = c.metadata;
  quant::klt p;
  p.kstep = 0.1;
  p.vstep = 0.1;
  cpu::klt_quant st(p);
  const bytes state = st.fit({}, info);
  CHECK(state.size() == 8);
  for (const bool ragged : {false, true})
    for (const bool key : {true, false}) {
      const std::size_t H = 2, D = 16, T = 96;
      block b;
      b.layer = 1;
      b.key = key;
      b.heads = 2;
      b.head_dim = 16;
      b.t0 = 0;
      b.t1 = 96;
      const auto& src = key ? c.keys[1] : c.values[1];
      for (std::size_t h = 0; h < H; ++h) {
        std::uint32_t n = 0;
        for (std::size_t t = 0; t < T; ++t) {
          if (ragged && h == 1 && t % 3 == 0) continue;
          b.pos.push_back(static_cast<std::int32_t>(t));
          b.data.insert(b.data.end(), src.begin() + static_cast<std::ptrdiff_t>((h * T + t) * D), src.begin() + static_cast<std::ptrdiff_t>((h * T + t + 1) * D));
          ++n;
        }
        b.count.push_back(n);
      }
      symbols s;
      st.encode(b, info, s);
      block d = b;
      d.data.clear();
      st.decode(s, info, d);
      REQUIRE(d.data.size() == b.data.size());
      std::vector<std::uint16_t> h16(b.data.size());
      std::vector<std::byte*> rows(b.rows());
      for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = reinterpret_cast<std::byte*>(h16.data() + i * D);
      REQUIRE(st.decode_rows(s, info, b, dtype::f16, rows.data()));
      bool same = true;
      double e = 0, n2 = 0;
      for (std::size_t i = 0; i < h16.size(); ++i) {
        same = same && h16[i] == f32_to_f16_bits(d.data[i]);
        e += (d.data[i] - b.data[i]) * (d.data[i] - b.data[i]);
        n2 += static_cast<double>(b.data[i]) * b.data[i];
      }
      CHECK(same);
      CHECK(std::sqrt(e / n2) < 0.1);
      // scales: one per block plus the raised ones; damaged side bytes are corrupt input, never a crash
      CHECK(s.side.size() < 2 * H * D);
      symbols bad = s;
      bad.side.pop_back();
      CHECK_THROWS_WITH_AS(st.decode(bad, info, d), doctest::Contains("bytes of scales"), error);
      bad = s;
      bad.side[2] = static_cast<std::uint8_t>(bad.side[2] ^ 1u);  // flag or unflag column 0's own scale
      CHECK_THROWS_AS(st.decode(bad, info, d), error);
      bad.side.resize(1);
      CHECK_THROWS_AS(st.decode(bad, info, d), error);
    }
  // a decoder restores the profile from the state
  cpu::klt_quant other(p);
  other.load_state(state, info);
  const std::uint8_t short_state[3] = {1, 2, 3};
  CHECK_THROWS_AS(other.load_state(short_state, info), error);
  reg.clear();
}

TEST_CASE("klt: the row product used by the stage is x M - bit for bit klt_row's with AVX2 or without") {
  std::mt19937 rng(9);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (const std::size_t D : {8u, 16u, 40u, 64u, 128u}) {
    std::vector<float> x(D), M(D * D), a(D), b(D);
    for (auto& v : x) v = n(rng);
    for (auto& v : M) v = n(rng);
    klt_row(x.data(), M.data(), D, a.data());
    for (std::size_t d = 0; d < D; ++d) {
      double want = 0;
      for (std::size_t j = 0; j < D; ++j) want += static_cast<double>(x[j]) * M[j * D + d];
      CHECK(a[d] == doctest::Approx(want).epsilon(1e-4).scale(1.0));
    }
#if KVCODEC_X86_DISPATCH
    if (simd::avx2()) {
      cpu::klt_detail::row_avx2(x.data(), M.data(), D, b.data());
      CHECK(std::memcmp(a.data(), b.data(), D * sizeof(float)) == 0);
    }
#endif
  }
}

}  // namespace kvcodec_test_cpu_klt
