// kvcodec/registry/drop_stages.hpp — registers the token-dropping stages (kvpress family): random,
// streamingllm, knorm, keydiff, h2o, snapkv, tova, expected-attention, pyramidkv, adakv, lagkv,
// chunkkv, criticalkv, criticaladakv, block. Each one's CPU selector and scorer: cpu/drop/<name>.hpp
// (criticaladakv: criticalkv.hpp).
#pragma once

#include "kvcodec/cpu/drop/adakv.hpp"
#include "kvcodec/cpu/drop/block.hpp"
#include "kvcodec/cpu/drop/chunkkv.hpp"
#include "kvcodec/cpu/drop/criticalkv.hpp"
#include "kvcodec/cpu/drop/expected_attention.hpp"
#include "kvcodec/cpu/drop/h2o.hpp"
#include "kvcodec/cpu/drop/keydiff.hpp"
#include "kvcodec/cpu/drop/knorm.hpp"
#include "kvcodec/cpu/drop/lagkv.hpp"
#include "kvcodec/cpu/drop/pyramidkv.hpp"
#include "kvcodec/cpu/drop/random.hpp"
#include "kvcodec/cpu/drop/snapkv.hpp"
#include "kvcodec/cpu/drop/streamingllm.hpp"
#include "kvcodec/cpu/drop/tova.hpp"
#include "kvcodec/cpu/drop_stages.hpp"
#include "kvcodec/registry/registry.hpp"

namespace kvcodec {

inline void register_drop_stages(registry& r) {
  r.add<drop::random, cpu::drop_impl<drop::random>>();
  r.add<drop::streamingllm, cpu::drop_impl<drop::streamingllm>>();
  r.add<drop::knorm, cpu::drop_impl<drop::knorm>>();
  r.add<drop::keydiff, cpu::drop_impl<drop::keydiff>>();
  r.add<drop::h2o, cpu::drop_impl<drop::h2o>>();
  r.add<drop::snapkv, cpu::drop_impl<drop::snapkv>>();
  r.add<drop::tova, cpu::drop_impl<drop::tova>>();
  r.add<drop::expected_attention, cpu::drop_impl<drop::expected_attention>>();
  r.add<drop::pyramidkv, cpu::drop_impl<drop::pyramidkv>>();
  r.add<drop::adakv, cpu::drop_impl<drop::adakv>>();
  r.add<drop::lagkv, cpu::drop_impl<drop::lagkv>>();
  r.add<drop::chunkkv, cpu::drop_impl<drop::chunkkv>>();
  r.add<drop::criticalkv, cpu::drop_impl<drop::criticalkv>>();
  r.add<drop::criticaladakv, cpu::drop_impl<drop::criticaladakv>>();
  r.add<drop::block_press, cpu::drop_impl<drop::block_press>>();
}

}  // namespace kvcodec
