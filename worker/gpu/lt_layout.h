// A cuBLASLt matrix layout that destroys itself (Gemm's products, and the benchmark that times
// cuBLASLt's candidate algorithms for them).
#pragma once

#include <cublasLt.h>

#include <cstdint>

#include "worker/gpu/device_buffer.h"

namespace moe::gpu {

// One column-major matrix layout, destroyed with the scope.
class LtLayout {
 public:
  LtLayout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
    MOE_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&l_, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  }
  ~LtLayout() { cublasLtMatrixLayoutDestroy(l_); }
  LtLayout(const LtLayout&) = delete;
  LtLayout& operator=(const LtLayout&) = delete;
  cublasLtMatrixLayout_t get() const { return l_; }

 private:
  cublasLtMatrixLayout_t l_ = nullptr;
};

}  // namespace moe::gpu
