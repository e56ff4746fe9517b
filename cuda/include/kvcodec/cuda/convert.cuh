// kvcodec/cuda/convert.cuh — f32 <-> f16 / bf16 conversion on the GPU, mirroring
// kvcodec::encode_floats / decode_floats on the CPU: the same KVCODEC_HD functions per element,
// one element per thread, so CPU and GPU produce identical bits.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcodec/cuda/policy.cuh"
#include "kvcodec/tensor/dtype.hpp"

namespace kvcodec::cuda {

namespace detail {
__global__ void to_16bit_kernel(const float* in, std::size_t n, int bf16, std::uint16_t* out) {
  const std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = bf16 ? f32_to_bf16_bits(in[i]) : f32_to_f16_bits(in[i]);
}
__global__ void from_16bit_kernel(const std::uint16_t* in, std::size_t n, int bf16, float* out) {
  const std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = bf16 ? bf16_bits_to_f32(in[i]) : f16_bits_to_f32(in[i]);
}
}  // namespace detail

/// Converts n device floats to f16 or bf16 bits (device memory), asynchronously on policy.stream.
inline void encode_floats(const par_t& p, const float* d_in, std::size_t n, dtype t, std::uint16_t* d_out) {
  if (t != dtype::f16 && t != dtype::bf16) throw_usage("cuda::encode_floats: dtype must be f16 or bf16");
  if (n == 0) return;
  const unsigned threads = 256;
  const unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
  detail::to_16bit_kernel<<<blocks, threads, 0, p.stream>>>(d_in, n, t == dtype::bf16, d_out);
  check(cudaGetLastError(), "to_16bit_kernel launch");
}

inline void decode_floats(const par_t& p, const std::uint16_t* d_in, std::size_t n, dtype t, float* d_out) {
  if (t != dtype::f16 && t != dtype::bf16) throw_usage("cuda::decode_floats: dtype must be f16 or bf16");
  if (n == 0) return;
  const unsigned threads = 256;
  const unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
  detail::from_16bit_kernel<<<blocks, threads, 0, p.stream>>>(d_in, n, t == dtype::bf16, d_out);
  check(cudaGetLastError(), "from_16bit_kernel launch");
}

}  // namespace kvcodec::cuda
