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
  // `count` matrices `stride` elements apart (a strided-batched product); count 1 changes nothing.
  void SetBatch(int64_t count, int64_t stride) {
    if (count <= 1) return;
    const int32_t n = static_cast<int32_t>(count);
    MOE_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l_, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &n, sizeof(n)));
    MOE_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(l_, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }

 private:
  cublasLtMatrixLayout_t l_ = nullptr;
};

}  // namespace moe::gpu
