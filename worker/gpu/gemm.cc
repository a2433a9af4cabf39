#include "worker/gpu/gemm.h"

#include <limits>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace moe::gpu {
namespace {

// cuBLAS's own recommendation for Hopper is 32 MiB; a fixed workspace also keeps it from
// allocating inside a CUDA graph capture.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

// One column-major matrix layout, destroyed with the scope.
class Layout {
 public:
  Layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
    MOE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l_, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  }
  ~Layout() { cublasLtMatrixLayoutDestroy(l_); }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
  cublasLtMatrixLayout_t get() const { return l_; }

 private:
  cublasLtMatrixLayout_t l_ = nullptr;
};

// The M an algorithm is chosen for: M rounded up to a multiple of 16 up to 512, of 64 up to 2048,
// then to a power of two. Fine enough that a tile shape picked for the bucket fits M well (prefill
// expert GEMMs are partly arithmetic-bound: a 256-row tile for 130 rows wastes half), coarse enough
// that the heuristic runs a bounded number of times.
int64_t Bucket(int64_t m) {
  if (m <= 512) return (m + 15) / 16 * 16;
  if (m <= 2048) return (m + 63) / 64 * 64;
  int64_t b = 4096;
  while (b < m) b *= 2;
  return b;
}

}  // namespace

Gemm::Gemm(cudaStream_t stream) : stream_(stream), workspace_(kWorkspaceBytes) {
  MOE_CUBLAS_CHECK(cublasCreate(&handle_));
  MOE_CUBLAS_CHECK(cublasSetStream(handle_, stream));
  MOE_CUBLAS_CHECK(cublasSetWorkspace(handle_, workspace_.get(), kWorkspaceBytes));
  MOE_CUBLAS_CHECK(cublasLtCreate(&lt_));
  MOE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  MOE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  MOE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
}

Gemm::~Gemm() {
  if (desc_) cublasLtMatmulDescDestroy(desc_);
  if (lt_) cublasLtDestroy(lt_);
  if (handle_) cublasDestroy(handle_);
}

namespace {

// Chosen algorithms are shared by every Gemm of the process (the engine's and its side streams'),
// keyed with the device as well: a choice depends on the shapes and the device, not on the handle.
std::mutex algo_mutex;
std::map<std::pair<int, Gemm::AlgoKey>, cublasLtMatmulAlgo_t> algo_cache;

}  // namespace

const cublasLtMatmulAlgo_t* Gemm::FindAlgo(const AlgoKey& key, int64_t M, cudaDataType_t y_type) {
  auto it = algos_.find(key);
  if (it != algos_.end()) return &it->second;
  int device = 0;
  MOE_CUDA_CHECK(cudaGetDevice(&device));
  {
    std::lock_guard<std::mutex> lock(algo_mutex);
    auto shared = algo_cache.find({device, key});
    if (shared != algo_cache.end()) return &algos_.emplace(key, shared->second).first->second;
  }
  const int64_t N = std::get<0>(key), K = std::get<1>(key);
  const Layout a(CUDA_R_16BF, K, N, K), b(CUDA_R_16BF, K, M, K), c(y_type, N, M, N);
  cublasLtMatmulPreference_t pref = nullptr;
  MOE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspaceBytes;
  MOE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(lt_, desc_, a.get(), b.get(), c.get(), c.get(), pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) return nullptr;
  {
    std::lock_guard<std::mutex> lock(algo_mutex);
    algo_cache.emplace(std::make_pair(device, key), result.algo);
  }
  return &algos_.emplace(key, result.algo).first->second;
}

bool Gemm::Reserve(int64_t M, int64_t K, int64_t N, SkinnyEpilogue epi) {
  if (!Skinny(M, K) || M == 0) return false;
  bool grew = split_.EnsureSize(SkinnyWorkspaceFloats(M, N, epi, SkinnySplits(N, K, epi, 1)));
  if (counters_.EnsureSize(SkinnyCounters(N, epi, 1))) {
    MOE_CUDA_CHECK(cudaMemsetAsync(counters_.get(), 0, sizeof(int32_t) * counters_.size(), stream_));
    grew = true;
  }
  return grew;
}

void Gemm::RunSkinny(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, SkinnyEpilogue epi, void* y) {
  if (M == 0 || N == 0) return;
  SkinnyGroups g;
  g.rows = M;
  g.weight = w;
  const int splits = SkinnySplits(N, K, epi, 1);
  Reserve(M, K, N, epi);
  // Up to 8 rows (one pass of the smallest tile) the split-K sums are added by the last CTA of each
  // tile, with no second launch; with more rows that serial sum costs more than the launch.
  SkinnyGemm(x, K, g, N, epi, y, M, splits, split_.get(), M, M <= 8 ? counters_.get() : nullptr, stream_);
}

void Gemm::Linear(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, bf16* y) {
  if (Skinny(M, K)) {
    RunSkinny(x, M, K, w, N, SkinnyEpilogue::kStoreBf16, y);
    return;
  }
  Run(x, M, K, w, N, y, CUDA_R_16BF, 0.f);
}

void Gemm::LinearF32(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, float* y, bool accumulate) {
  if (Skinny(M, K)) {
    RunSkinny(x, M, K, w, N, accumulate ? SkinnyEpilogue::kAddF32 : SkinnyEpilogue::kStoreF32, y);
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
  const Layout a(CUDA_R_16BF, K, N, K), b(CUDA_R_16BF, K, M, K), c(y_type, N, M, N);
  // The algorithm chosen for this shape's M bucket; if it cannot run this M, one chosen for M itself.
  const AlgoKey key{N, K, static_cast<int>(y_type), beta != 0.f, Bucket(M)};
  const cublasLtMatmulAlgo_t* algo = FindAlgo(key, Bucket(M), y_type);
  cublasStatus_t st = CUBLAS_STATUS_NOT_SUPPORTED;
  if (algo != nullptr) {
    st = cublasLtMatmul(lt_, desc_, &alpha, w, a.get(), x, b.get(), &beta, y, c.get(), y, c.get(), algo,
                        workspace_.get(), kWorkspaceBytes, stream_);
  }
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {
    const AlgoKey exact{N, K, static_cast<int>(y_type), beta != 0.f, -M};
    algo = FindAlgo(exact, M, y_type);
    if (algo == nullptr) throw std::runtime_error("Gemm: cuBLASLt has no algorithm for this product");
    st = cublasLtMatmul(lt_, desc_, &alpha, w, a.get(), x, b.get(), &beta, y, c.get(), y, c.get(), algo,
                        workspace_.get(), kWorkspaceBytes, stream_);
  }
  MOE_CUBLAS_CHECK(st);
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

GemmFanout::GemmFanout(cudaStream_t main, int width) : main_(main) {
  for (int i = 0; i < width; ++i) {
    cudaStream_t st = nullptr;
    MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    streams_.push_back(st);
    gemms_.push_back(std::make_unique<Gemm>(st));
  }
  for (int i = 0; i <= width; ++i) {
    cudaEvent_t e = nullptr;
    MOE_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    events_.push_back(e);
  }
}

GemmFanout::~GemmFanout() {
  for (cudaStream_t st : streams_) cudaStreamSynchronize(st);
  gemms_.clear();
  for (cudaStream_t st : streams_) cudaStreamDestroy(st);
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

void GemmFanout::Fork() {
  MOE_CUDA_CHECK(cudaEventRecord(events_[0], main_));
  for (cudaStream_t st : streams_) MOE_CUDA_CHECK(cudaStreamWaitEvent(st, events_[0], 0));
}

void GemmFanout::Join() {
  for (size_t i = 0; i < streams_.size(); ++i) {
    MOE_CUDA_CHECK(cudaEventRecord(events_[i + 1], streams_[i]));
    MOE_CUDA_CHECK(cudaStreamWaitEvent(main_, events_[i + 1], 0));
  }
}

}  // namespace moe::gpu
