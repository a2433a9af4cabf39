// Device and pinned host buffers that free themselves, and the cuBLAS error check. Plain
// cudaMalloc / cudaMallocHost: no pool, no managed memory. Buffers used as per-step scratch grow
// with EnsureSize and never shrink.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels/cuda_check.h"

namespace moe::gpu {

class CublasError : public std::runtime_error {
 public:
  CublasError(const char* file, int line, const char* call, cublasStatus_t s)
      : std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + call + ": " +
                           cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")") {}
};

}  // namespace moe::gpu

#define MOE_CUBLAS_CHECK(call)                                                 \
  do {                                                                         \
    cublasStatus_t moe_cublas_st_ = (call);                                    \
    if (moe_cublas_st_ != CUBLAS_STATUS_SUCCESS)                               \
      throw ::moe::gpu::CublasError(__FILE__, __LINE__, #call, moe_cublas_st_); \
  } while (0)

namespace moe::gpu {

// `n` elements of T in device memory (or none).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { Allocate(n); }
  ~DeviceBuffer() { Release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }

  // Grows to at least n elements (contents are not kept). Synchronises the device first when it
  // reallocates, so no queued kernel still uses the old memory. Returns true when it reallocated.
  bool EnsureSize(size_t n) {
    if (n <= n_) return false;
    if (p_) MOE_CUDA_CHECK(cudaDeviceSynchronize());
    Release();
    Allocate(n);
    return true;
  }

  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  void Allocate(size_t n) {
    if (n == 0) return;
    MOE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
    n_ = n;
  }
  void Release() {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }

  T* p_ = nullptr;
  size_t n_ = 0;
};

// Page-locked host memory, for asynchronous copies to and from the device.
template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { Release(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  // Grows to at least n elements (contents are not kept). The caller makes sure no copy still
  // reads or writes the old memory (the engine synchronises its stream before growing). Returns
  // true when it reallocated.
  bool EnsureSize(size_t n) {
    if (n <= n_) return false;
    Release();
    MOE_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&p_), n * sizeof(T)));
    n_ = n;
    return true;
  }
  T* get() const { return p_; }
  T& operator[](size_t i) const { return p_[i]; }
  size_t size() const { return n_; }

 private:
  void Release() {
    if (p_) cudaFreeHost(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace moe::gpu
