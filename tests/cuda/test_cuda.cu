// CUDA backend tests. Compiling this file proves the umbrella header builds under nvcc; the checks
// run only where a GPU is present (exit code 77 = skipped for ctest otherwise).
#include <cstdio>
#include <random>
#include <vector>

#include "kvcodec/cuda/kvcodec_cuda.cuh"

int main() {
  using namespace kvcodec;
  if (cuda::device_count() == 0) {
    std::printf("SKIP: no CUDA device; compile-only check passed\n");
    return 77;
  }
  std::mt19937 rng(5);
  std::vector<float> x(1 << 20);
  for (auto& v : x) v = std::bit_cast<float>(static_cast<std::uint32_t>(rng()));  // every bit pattern class
  int failures = 0;
  for (dtype t : {dtype::f16, dtype::bf16}) {
    float* d_x;
    std::uint16_t* d_h;
    float* d_back;
    cuda::check(cudaMalloc(&d_x, x.size() * 4), "malloc");
    cuda::check(cudaMalloc(&d_h, x.size() * 2), "malloc");
    cuda::check(cudaMalloc(&d_back, x.size() * 4), "malloc");
    cuda::check(cudaMemcpy(d_x, x.data(), x.size() * 4, cudaMemcpyHostToDevice), "copy");
    cuda::encode_floats(cuda::par, d_x, x.size(), t, d_h);
    cuda::decode_floats(cuda::par, d_h, x.size(), t, d_back);
    std::vector<std::uint16_t> h(x.size());
    std::vector<float> back(x.size());
    cuda::check(cudaMemcpy(h.data(), d_h, h.size() * 2, cudaMemcpyDeviceToHost), "copy");
    cuda::check(cudaMemcpy(back.data(), d_back, back.size() * 4, cudaMemcpyDeviceToHost), "copy");
    std::vector<std::uint8_t> cpu(x.size() * 2);
    encode_floats(x.data(), x.size(), t, cpu.data());
    std::vector<float> cpu_back(x.size());
    decode_floats(cpu.data(), x.size(), t, cpu_back.data());
    for (std::size_t i = 0; i < x.size(); ++i) {
      std::uint16_t c;
      std::memcpy(&c, cpu.data() + 2 * i, 2);
      if (c != h[i] || std::bit_cast<std::uint32_t>(cpu_back[i]) != std::bit_cast<std::uint32_t>(back[i])) ++failures;
    }
    cudaFree(d_x);
    cudaFree(d_h);
    cudaFree(d_back);
  }
  std::printf("cuda conversions: %d mismatches against the CPU reference\n", failures);
  std::printf("%d passed, %d failed\n", failures == 0 ? 1 : 0, failures == 0 ? 0 : 1);
  return failures == 0 ? 0 : 1;
}
