// kvcodec/registry/cuda_rows.hpp — which stages have a CUDA implementation: one row per stage that
// has one, read by the CUDA seams' error messages and by `kvcodec list`. The rows are the truth the
// seams are tested against (tests/registry/test_cuda_rows.cpp): a row that claims more or less than
// cuda::decode_into / cuda::encode do fails that test.
#pragma once

#include "kvcodec/registry/registry.hpp"

namespace kvcodec {

inline void register_cuda_rows(registry& r) {
  // quantizers: decode into a device view and encode from one (cuda/encode.cuh)
  r.set_cuda("raw", {true, true, "raw.cuh", "decode: with pack"});
  r.set_cuda("cachegen-quant", {true, true, "cachegen.cuh", "decode: with rans or ac"});
  r.set_cuda("weighted-quant", {true, false, "cachegen.cuh (core/transform_rows.hpp)",
                                "decode: with rans; derope=on: dense caches, keys rotated in the decoder's last step"});
  for (const char* q : {"uniform", "kivi"}) r.set_cuda(q, {true, true, "affine.cuh", "decode: with pack or rans; outliers: selected per block on the GPU (CUB segmented sorts)"});
  r.set_cuda("fp8", {true, true, "fp8.cuh", "decode: with pack"});
  r.set_cuda("nf4", {true, true, "codebook.cuh", "decode: with pack or rans"});
  r.set_cuda("kmeans", {true, true, "codebook.cuh", "decode: with pack or rans; encode: its Lloyd fit runs on the host"});
  for (const char* q : {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"}) r.set_cuda(q, {true, true, "ggml.cuh", "decode: with pack"});
  // entropy stages: rans decodes and encodes on the GPU, ac decodes (CacheGen's range coder); pack is
  // read in place by the quantizers' decode kernels; any other entropy stage runs on the host in
  // cuda::encode
  r.set_cuda("rans", {true, true, "rans.cuh", "encode: pred=none; decode: planes coded with prediction restored after the batch (core/pred.hpp)"});
  r.set_cuda("ac", {true, false, "ac.cuh", "decode: after cachegen-quant, pred=none, prev or anchor (planes restored between decode and dequantize)"});
  r.set_cuda("pack", {true, false, "ggml.cuh fp8.cuh raw.cuh affine.cuh", "decode: after raw, uniform, kivi, fp8 or a block format"});
  // transforms: cuda::encode runs hadamard and derope on every row before the quantizer, cuda::decode_into
  // inverts them after it (an f32 copy of the rows in device memory, core/transform_rows.hpp)
  r.set_cuda("hadamard", {true, true, "encode.cuh decode.cuh (core/transform_rows.hpp)", "rows of at most 512 values"});
  r.set_cuda("derope", {true, true, "encode.cuh decode.cuh (core/transform_rows.hpp)", "rows of at most 512 values; cos/sin tables from the host"});
  // think: cuda::encode fits its masks on the GPU (cuda/think.cuh, from the queries view) and compacts
  // the key rows before the quantizer; cuda::decode_into decodes the key rows at their coded width and
  // puts each kept channel back in place (kv_finish_op)
  r.set_cuda("think", {true, true, "think.cuh encode.cuh decode.cuh (core/think.hpp, core/transform_rows.hpp)",
                       "the codec's only transform; encode: before cachegen-quant, raw, fp8, uniform, kivi or nf4, needs the queries view; decode: "
                       "before any quantizer but the block formats"});
  // drop stages: the scorers and the selection run on device views; cuda::encode runs them
  // (cuda/drop_select.cuh, composed stages in order) before raw, fp8, uniform, kivi or nf4;
  // cuda::decode_into takes their containers (kept rows decoded compact, then moved into the view, the
  // dropped tokens written as zeros) with every quantizer it decodes but the block formats
  const std::string in_encode =
      "in cuda::encode (before raw, fp8, uniform, kivi or nf4); decode: after raw, fp8, uniform, kivi, nf4, kmeans or cachegen-quant (not the block formats)";
  for (const char* d : {"knorm", "keydiff", "random", "streamingllm", "lagkv", "snapkv", "pyramidkv", "h2o", "tova"})
    r.set_cuda(d, {true, false, std::string("drop/") + d + ".cuh", "cuda::" + std::string(d) + "_select; " + in_encode});
  r.set_cuda("expected-attention", {true, false, "drop/expected_attention.cuh", "cuda::expected_attention_select; " + in_encode});
  r.set_cuda("adakv", {true, false, "drop/adakv.cuh", "any scorer; cuda::adakv_select (window scorers) or adakv_over a scorer's coder, kept sets as a mask; " + in_encode});
  r.set_cuda("criticalkv", {true, false, "drop/criticalkv.cuh", "any scorer; cuda::criticalkv_select (window scorers) or criticalkv_over a scorer's coder; " + in_encode});
  r.set_cuda("criticaladakv", {true, false, "drop/criticalkv.cuh",
                               "any scorer; cuda::criticaladakv_select (window scorers) or criticaladakv_over a scorer's coder, kept sets as a mask; " + in_encode});
  r.set_cuda("block", {true, false, "drop/block.cuh", "any scorer; each step on a gathered device sub-cache (drop/gather.cuh); " + in_encode});
  r.set_cuda("chunkkv", {true, false, "drop/chunkkv.cuh", "any scorer; cuda::chunkkv_select; " + in_encode});
}

}  // namespace kvcodec
