#include "worker/gpu/gemm.h"

#include <limits>
#include <stdexcept>

#include "worker/gpu/device_buffer.h"

namespace moe::gpu {

Gemm::Gemm(cudaStream_t stream) {
  MOE_CUBLAS_CHECK(cublasCreate(&handle_));
  MOE_CUBLAS_CHECK(cublasSetStream(handle_, stream));
}

Gemm::~Gemm() {
  if (handle_) cublasDestroy(handle_);
}

void Gemm::Linear(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, bf16* y) {
  Run(x, M, K, w, N, y, CUDA_R_16BF, 0.f);
}

void Gemm::LinearF32(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, float* y, bool accumulate) {
  Run(x, M, K, w, N, y, CUDA_R_32F, accumulate ? 1.f : 0.f);
}

void Gemm::Run(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, void* y, cudaDataType_t y_type,
               float beta) {
  if (M == 0 || N == 0) return;
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (M > kMax || N > kMax || K > kMax) throw std::invalid_argument("Gemm: a dimension exceeds INT_MAX");
  const float alpha = 1.f;
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  MOE_CUBLAS_CHECK(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w, CUDA_R_16BF, k, x,
                                CUDA_R_16BF, k, &beta, y, y_type, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace moe::gpu
