// A non-blocking CUDA stream that destroys itself (the engine's stream; the benchmarks' and tests'
// own streams).
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda_check.h"

namespace moe::gpu {

class CudaStream {
 public:
  CudaStream() { MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~CudaStream() { cudaStreamDestroy(s_); }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

}  // namespace moe::gpu
