// The README's library example: build a cache, compress it, decode it, check the size and error.
#include <cstdio>

#include "kvcodec/kvcodec.hpp"

int main() {
  using namespace kvcodec;
  kv_cache kv = kv_cache::zeros(kv_shape{.layers = 2, .kv_heads = 4, .head_dim = 64, .tokens = 512}, dtype::f16);
  for (auto& layer : kv.keys)
    for (std::size_t i = 0; i < layer.size(); ++i) layer[i] = round_to_dtype(static_cast<float>((i * 7919) % 1000) / 1000.0f, dtype::f16);
  encoded enc = encode("zstd:level=3", kv);  // any spec from `kvcodec list`
  kv_cache back = decode(enc.data);
  const bool exact = back.keys == kv.keys && back.values == kv.values;
  std::printf("%s: %zu bytes, %.3f bits/element, exact=%s\n", enc.report.spec.c_str(), enc.data.size(), enc.report.bits_per_element,
              exact ? "yes" : "no");
  return exact ? 0 : 1;
}
