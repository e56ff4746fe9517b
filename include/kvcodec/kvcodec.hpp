// kvcodec/kvcodec.hpp — umbrella header: everything a library user needs.
//
//   kvcodec::kv_cache kv = kvcodec::read_kv_dump("dump.safetensors").cache;
//   auto enc = kvcodec::encode("kivi:bits=4|rans", kv);      // bytes + exact bits/element
//   kvcodec::kv_cache back = kvcodec::decode(enc.data);
#pragma once

#include "kvcodec/core/config.hpp"
#include "kvcodec/core/error.hpp"
#include "kvcodec/cpu/policy.hpp"
#include "kvcodec/format/bytes.hpp"
#include "kvcodec/format/container.hpp"
#include "kvcodec/pipeline/codec.hpp"
#include "kvcodec/pipeline/decode.hpp"
#include "kvcodec/pipeline/encode.hpp"
#include "kvcodec/pipeline/target.hpp"
#include "kvcodec/pipeline/typed.hpp"
#include "kvcodec/registry/builtin.hpp"
#include "kvcodec/registry/registry.hpp"
#include "kvcodec/stage/interface.hpp"
#include "kvcodec/stage/params.hpp"
#include "kvcodec/tensor/dtype.hpp"
#include "kvcodec/tensor/kv_cache.hpp"
#include "kvcodec/tensor/kv_view.hpp"
#include "kvcodec/tensor/view.hpp"
