// The GEMMs of the GPU engine through cuBLAS: bf16 inputs, float32 accumulation, and a bf16 or
// float32 output as each use needs (the residual stream, router logits and final logits are
// float32; activations between GEMMs are bf16).
//
// Every product is a linear layer y = x W^T with row-major x [M, K] and the weight as stored in
// the checkpoint, row-major W [N, K]; y is row-major [M, N]. In cuBLAS's column-major terms that is
// y^T (N x M) = W (K x N, transposed) * x^T (K x M), so no copy or transpose is ever made.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/kernels.h"

namespace moe::gpu {

class Gemm {
 public:
  // A cuBLAS handle bound to `stream`: every product is enqueued there and returns at once.
  explicit Gemm(cudaStream_t stream);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // y[M, N] = bf16(x W^T).
  void Linear(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, bf16* y);
  // y[M, N] = x W^T in float32, or y += x W^T when `accumulate` (the residual stream).
  void LinearF32(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, float* y, bool accumulate = false);

  cublasHandle_t handle() const { return handle_; }

 private:
  void Run(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, void* y, cudaDataType_t y_type,
           float beta);
  cublasHandle_t handle_ = nullptr;
};

}  // namespace moe::gpu
