// cli/eval_cuda.cu — see eval_cuda.hpp: the one CUDA translation unit of the kvcodec command.
#include "eval_cuda.hpp"

#include <cuda_runtime.h>

#include "kvcodec/cuda/eval/attention.cuh"

namespace kvcodec::cli {

eval::attention_backend gpu_attention_backend(std::string& device) {
  device.clear();
  if (kvcodec::cuda::device_count() == 0) return {};
  cudaDeviceProp p{};
  kvcodec::cuda::check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  if (p.major < 8) return {};  // the metrics kernel's ~102 KB of shared memory per block
  device = std::string("cuda: ") + p.name;
  return [](const kv_cache& original, const kv_cache& reconstructed, const eval::attention_options& opt) {
    return kvcodec::cuda::compare_attention(kvcodec::cuda::par, original, reconstructed, opt);
  };
}

}  // namespace kvcodec::cli
