// kvcodec/cuda/memory.cuh — owning device buffers (cudaMalloc / cudaFree) with host copies in and out,
// for the backend's entry points and its tests, and the pieces of CUB's two-phase temp-storage
// convention that the entry points share (size_only, temp_cursor).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvcodec/cuda/policy.cuh"

namespace kvcodec::cuda {

/// n elements of T in device memory (uninitialised); move-only.
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  explicit device_buffer(std::size_t n) : n_(n) {
    if (n > 0) check(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)), "cudaMalloc");
  }
  /// A device copy of `h` (synchronous).
  explicit device_buffer(std::span<const T> h) : device_buffer(h.size()) { upload(h); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  device_buffer& operator=(device_buffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~device_buffer() { release(); }

  T* data() noexcept { return p_; }
  const T* data() const noexcept { return p_; }
  std::size_t size() const noexcept { return n_; }

  void upload(std::span<const T> h) {
    if (h.size() > n_) throw_bad_input("cuda::device_buffer::upload", "size", "<= " + std::to_string(n_), std::to_string(h.size()));
    if (!h.empty()) check(cudaMemcpy(p_, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    if (n_ > 0) check(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    return h;
  }

 private:
  void release() noexcept {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

namespace detail {

inline std::size_t align256(std::size_t x) { return (x + 255) / 256 * 256; }

/// CUB's two-phase temp-storage convention for an entry point `what` needing `need` bytes: true (and
/// temp_bytes = need) when temp is null, the caller only asking the size; a usage error when the given
/// storage is smaller; false when the entry point may run.
inline bool size_only(const void* temp, std::size_t& temp_bytes, std::size_t need, const char* what) {
  if (temp == nullptr) {
    temp_bytes = need;
    return true;
  }
  if (temp_bytes < need) throw_usage(std::string(what) + ": temp storage of " + std::to_string(temp_bytes) + " bytes, " + std::to_string(need) + " needed");
  return false;
}

/// Consecutive pieces of an entry point's temp storage, in the order its layout lists them.
struct temp_cursor {
  std::uint8_t* at;
  std::uint8_t* take(std::size_t bytes) {
    std::uint8_t* x = at;
    at += bytes;
    return x;
  }
};

}  // namespace detail

}  // namespace kvcodec::cuda
