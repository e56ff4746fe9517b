#include <kvcodec/kvcodec.hpp>

int main() {
  kvcodec::kv_cache kv = kvcodec::kv_cache::zeros({.layers = 1, .kv_heads = 1, .head_dim = 4, .tokens = 3});
  kv.keys[0][5] = 1.5f;
  const auto enc = kvcodec::encode("zstd:level=1", kv);
  return kvcodec::decode(enc.data).keys == kv.keys ? 0 : 1;
}
