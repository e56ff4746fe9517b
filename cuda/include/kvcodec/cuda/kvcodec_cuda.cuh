// kvcodec/cuda/kvcodec_cuda.cuh — umbrella of the CUDA backend (include from .cu files).
#pragma once

#include "kvcodec/cuda/convert.cuh"
#include "kvcodec/cuda/policy.cuh"
#include "kvcodec/kvcodec.hpp"
