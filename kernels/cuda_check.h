// Error checks for CUDA calls: a failing call throws with file:line and the call's text.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace moe::gpu {

class CudaError : public std::runtime_error {
 public:
  CudaError(const char* file, int line, const char* call, cudaError_t e)
      : std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + call + ": " +
                           cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")") {}
};

}  // namespace moe::gpu

#define MOE_CUDA_CHECK(call)                                                     \
  do {                                                                           \
    cudaError_t moe_cuda_err_ = (call);                                          \
    if (moe_cuda_err_ != cudaSuccess)                                            \
      throw ::moe::gpu::CudaError(__FILE__, __LINE__, #call, moe_cuda_err_);     \
  } while (0)

// After a kernel launch: reports bad launch configurations at once.
#define MOE_CUDA_CHECK_LAUNCH() MOE_CUDA_CHECK(cudaGetLastError())
