// kvcodec/cuda/kvcodec_cuda.cuh — umbrella of the CUDA backend (include from .cu files). It brings only
// what device code needs (the policy, device buffers and the kernels with their core/ math), not the
// CPU codecs or Eigen; a .cu file that also runs the CPU codec includes those headers itself.
#pragma once

#include "kvcodec/cuda/convert.cuh"
#include "kvcodec/cuda/memory.cuh"
#include "kvcodec/cuda/policy.cuh"
#include "kvcodec/cuda/rans.cuh"
