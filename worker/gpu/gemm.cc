#include "worker/gpu/gemm.h"

#include <limits>
#include <stdexcept>
#include <vector>

namespace moe::gpu {
namespace {

// cuBLAS's own recommendation for Hopper is 32 MiB; a fixed workspace also keeps it from
// allocating inside a CUDA graph capture.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

}  // namespace

Gemm::Gemm(cudaStream_t stream) : stream_(stream), workspace_(kWorkspaceBytes) {
  MOE_CUBLAS_CHECK(cublasCreate(&handle_));
  MOE_CUBLAS_CHECK(cublasSetStream(handle_, stream));
  MOE_CUBLAS_CHECK(cublasSetWorkspace(handle_, workspace_.get(), kWorkspaceBytes));
}

Gemm::~Gemm() {
  if (handle_) cublasDestroy(handle_);
}

void Gemm::Linear(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, bf16* y) {
  if (Skinny(M, K)) {
    if (M == 0 || N == 0) return;
    SkinnyGroups g;
    g.rows = M;
    g.weight = w;
    SkinnyGemm(x, K, g, N, SkinnyEpilogue::kStoreBf16, y, M, stream_);
    return;
  }
  Run(x, M, K, w, N, y, CUDA_R_16BF, 0.f);
}

void Gemm::LinearF32(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, float* y, bool accumulate) {
  if (Skinny(M, K)) {
    if (M == 0 || N == 0) return;
    SkinnyGroups g;
    g.rows = M;
    g.weight = w;
    SkinnyGemm(x, K, g, N, accumulate ? SkinnyEpilogue::kAddF32 : SkinnyEpilogue::kStoreF32, y, M, stream_);
    return;
  }
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

void Gemm::LinearGrouped(const bf16* const* x, const int* m, int groups, int64_t K, const bf16* const* w, int64_t N,
                         bf16* const* y) {
  if (groups == 0 || N == 0) return;
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (N > kMax || K > kMax) throw std::invalid_argument("Gemm: a dimension exceeds INT_MAX");
  // Column-major: problem i is y_i^T (N x m_i) = W_i (K x N, transposed) * x_i^T (K x m_i).
  const size_t G = static_cast<size_t>(groups);
  std::vector<cublasOperation_t> ta(G, CUBLAS_OP_T), tb(G, CUBLAS_OP_N);
  std::vector<int> mm(G, static_cast<int>(N)), kk(G, static_cast<int>(K)), ld_w(G, static_cast<int>(K)),
      ld_x(G, static_cast<int>(K)), ld_y(G, static_cast<int>(N)), size(G, 1);
  std::vector<float> alpha(G, 1.f), beta(G, 0.f);
  MOE_CUBLAS_CHECK(cublasGemmGroupedBatchedEx(
      handle_, ta.data(), tb.data(), mm.data(), m, kk.data(), alpha.data(), reinterpret_cast<const void* const*>(w),
      CUDA_R_16BF, ld_w.data(), reinterpret_cast<const void* const*>(x), CUDA_R_16BF, ld_x.data(), beta.data(),
      reinterpret_cast<void* const*>(y), CUDA_R_16BF, ld_y.data(), groups, size.data(), CUBLAS_COMPUTE_32F));
}

}  // namespace moe::gpu
