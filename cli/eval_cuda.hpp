// cli/eval_cuda.hpp — `kvcodec eval`'s attention metrics on the GPU (cli/eval_cuda.cu, built into the
// command when the CUDA backend is: KVCODEC_CLI_CUDA). `--attention-device auto` (the default) uses it
// when the machine has a CUDA device of compute capability 8.0 or later, else the CPU.
#pragma once

#include <string>

#include "kvcodec/eval/evaluate.hpp"

namespace kvcodec::cli {

/// cuda::compare_attention on device 0 as an eval::attention_backend, and the device's name in `device`;
/// an empty function (and an empty `device`) when there is no usable CUDA device.
eval::attention_backend gpu_attention_backend(std::string& device);

}  // namespace kvcodec::cli
