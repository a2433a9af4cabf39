#include "worker/gpu/gemm.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "worker/gpu/lt_layout.h"

namespace moe::gpu {
namespace {

// cuBLAS's own recommendation for Hopper is 32 MiB; a fixed workspace also keeps it from
// allocating inside a CUDA graph capture.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

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

// Candidates asked of the heuristic when the choice is timed: at the Mixtral prefill shapes the
// fastest was always among the first four of eight (moe-bench's candidate figures), and each new
// key's timing (every candidate a few times) delays its first product by about a millisecond.
constexpr int kTimedCandidates = 4;

int SplitK(const cublasLtMatmulAlgo_t& algo) {
  int splits = 1;
  size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof(splits),
                                           &written) != CUBLAS_STATUS_SUCCESS) {
    return 0;  // unknown: never timed against the others
  }
  return splits;
}

// Products with fewer rows (decode) keep the heuristic's first: at 2-16 rows per expert the timed
// choice measured 2-3% slower in decode steps (batch 16 / 64, experts on concurrent streams), the
// candidates' differences there being within the timing's noise; from 64 rows on it was faster.
constexpr int64_t kTimedMinRows = 64;

std::atomic<int> process_algo_choice{static_cast<int>(Gemm::AlgoChoice::kTimed)};
std::atomic<int64_t> algos_chosen{0}, algos_timed{0}, algos_exact{0};

}  // namespace

void Gemm::set_algo_choice(AlgoChoice choice) { process_algo_choice = static_cast<int>(choice); }
Gemm::AlgoChoice Gemm::algo_choice() { return static_cast<AlgoChoice>(process_algo_choice.load()); }
std::vector<int64_t> Gemm::RowBuckets(int64_t max_rows) {
  std::vector<int64_t> out;
  for (int64_t b = Bucket(1); b <= Bucket(std::max<int64_t>(1, max_rows)); b = Bucket(b + 1)) out.push_back(b);
  return out;
}

Gemm::AlgoCounts Gemm::algo_counts() { return {algos_chosen.load(), algos_timed.load(), algos_exact.load()}; }

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

const cublasLtMatmulAlgo_t* Gemm::FindAlgo(const AlgoKey& key, int64_t heuristic_m, cudaDataType_t y_type,
                                           const Operands& op) {
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
  const bool accumulate = std::get<3>(key);
  const bool timed = static_cast<AlgoChoice>(std::get<5>(key)) == AlgoChoice::kTimed;
  const std::vector<cublasLtMatmulHeuristicResult_t> results =
      Candidates(N, K, heuristic_m, y_type, timed ? kTimedCandidates : 1, op.batch);
  if (results.empty()) return nullptr;
  cublasLtMatmulAlgo_t chosen = results[0].algo;
  // Timing runs the product in place, so not for an accumulating one (y += ...), and a timed
  // choice keeps the first candidate's order of sums: only when that one does not split K either.
  if (timed && !accumulate && heuristic_m >= kTimedMinRows && SplitK(chosen) == 1) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    MOE_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
    if (capture != cudaStreamCaptureStatusNone) {
      // No timing inside a graph capture; nothing cached, so a product of this key outside one
      // times the candidates (with the same result bits either way).
      uncached_algo_ = chosen;
      return &uncached_algo_;
    }
    std::vector<cublasLtMatmulAlgo_t> same_order;
    for (const cublasLtMatmulHeuristicResult_t& r : results) {
      if (r.state == CUBLAS_STATUS_SUCCESS && SplitK(r.algo) == 1) same_order.push_back(r.algo);
    }
    if (same_order.size() > 1) {
      chosen = FastestOf(same_order, N, K, y_type, op);
      ++algos_timed;
    }
  }
  ++algos_chosen;
  if (std::get<4>(key) < 0) ++algos_exact;
  {
    std::lock_guard<std::mutex> lock(algo_mutex);
    algo_cache.emplace(std::make_pair(device, key), chosen);
  }
  return &algos_.emplace(key, chosen).first->second;
}

namespace {

// The three layouts of y^T (N x M) = W (K x N, transposed) * x^T (K x M), column-major, batched.
struct ProductLayouts {
  ProductLayouts(int64_t N, int64_t K, int64_t M, cudaDataType_t y_type, const StridedBatch& batch)
      : a(CUDA_R_16BF, K, N, K), b(CUDA_R_16BF, K, M, K), c(y_type, N, M, N) {
    a.SetBatch(batch.count, batch.w_stride);
    b.SetBatch(batch.count, M * K);
    c.SetBatch(batch.count, M * N);
  }
  LtLayout a, b, c;
};

}  // namespace

std::vector<cublasLtMatmulHeuristicResult_t> Gemm::Candidates(int64_t N, int64_t K, int64_t M, cudaDataType_t y_type,
                                                              int count, const StridedBatch& batch) const {
  const ProductLayouts l(N, K, M, y_type, batch);
  cublasLtMatmulPreference_t pref = nullptr;
  MOE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspaceBytes;
  MOE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(std::max(1, count)));
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt_, desc_, l.a.get(), l.b.get(), l.c.get(), l.c.get(), pref,
                                                           static_cast<int>(results.size()), results.data(), &found);
  cublasLtMatmulPreferenceDestroy(pref);
  results.resize(st == CUBLAS_STATUS_SUCCESS ? static_cast<size_t>(found) : 0);
  return results;
}

cublasStatus_t Gemm::RunWith(const cublasLtMatmulAlgo_t& algo, const bf16* x, int64_t M, int64_t K, const bf16* w,
                             int64_t N, void* y, cudaDataType_t y_type, float beta, const StridedBatch& batch) {
  const ProductLayouts l(N, K, M, y_type, batch);
  const float alpha = 1.f;
  return cublasLtMatmul(lt_, desc_, &alpha, w, l.a.get(), x, l.b.get(), &beta, y, l.c.get(), y, l.c.get(), &algo,
                        workspace_.get(), kWorkspaceBytes, stream_);
}

cublasLtMatmulAlgo_t Gemm::FastestOf(const std::vector<cublasLtMatmulAlgo_t>& candidates, int64_t N, int64_t K,
                                     cudaDataType_t y_type, const Operands& op) {
  // Rounds over all candidates in turn, so that whatever else runs on the device meanwhile (the
  // other experts' streams) slows them alike; the first round warms up, the fastest run counts.
  constexpr int kRounds = 3;
  const size_t n = candidates.size();
  std::vector<cudaEvent_t> events(2 * n * kRounds);
  for (cudaEvent_t& e : events) MOE_CUDA_CHECK(cudaEventCreate(&e));
  std::vector<bool> runs(n, true);
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (int r = 0; r < kRounds; ++r) {
    for (size_t i = 0; i < n; ++i) {
      cudaEvent_t* ev = &events[2 * (static_cast<size_t>(r) * n + i)];
      MOE_CUDA_CHECK(cudaEventRecord(ev[0], stream_));
      if (runs[i] &&
          RunWith(candidates[i], op.x, op.M, K, op.w, N, op.y, y_type, 0.f, op.batch) != CUBLAS_STATUS_SUCCESS) {
        runs[i] = false;  // e.g. a candidate for the bucket that cannot take these rows
      }
      MOE_CUDA_CHECK(cudaEventRecord(ev[1], stream_));
    }
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::vector<float> best(n, std::numeric_limits<float>::infinity());
  for (int r = 1; r < kRounds; ++r) {
    for (size_t i = 0; i < n; ++i) {
      const cudaEvent_t* ev = &events[2 * (static_cast<size_t>(r) * n + i)];
      float ms = 0.f;
      MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
      best[i] = std::min(best[i], ms);
    }
  }
  for (cudaEvent_t e : events) cudaEventDestroy(e);
  // The fastest that ran; the first of those (the heuristic's preference) unless the fastest is at
  // least 1% faster (timing noise is not a reason to differ between runs).
  size_t first = 0;
  while (first < n && !runs[first]) ++first;
  if (first == n) return candidates[0];  // none ran these rows: Run falls back to an exact choice
  size_t pick = first;
  for (size_t i = first + 1; i < n; ++i) {
    if (runs[i] && best[i] < best[pick]) pick = i;
  }
  return best[pick] < 0.99f * best[first] ? candidates[pick] : candidates[first];
}

bool Gemm::Reserve(int64_t M, int64_t K, int64_t N, SkinnyEpilogue epi) {
  if (!Skinny(M, K) || M == 0) return false;
  return ReserveSplits(M, N, epi, SkinnySplits(N, K, epi, 1, M));
}

bool Gemm::ReserveSplits(int64_t M, int64_t N, SkinnyEpilogue epi, int splits) {
  bool grew = split_.EnsureSize(SkinnyWorkspaceFloats(M, N, epi, splits));
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
  const int splits = SkinnySplits(N, K, epi, 1, M);
  ReserveSplits(M, N, epi, splits);
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
               float beta, const StridedBatch& batch) {
  if (M == 0 || N == 0 || batch.count == 0) return;
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (M > kMax || N > kMax || K > kMax || batch.count > kMax) {
    throw std::invalid_argument("Gemm: a dimension exceeds INT_MAX");
  }
  // The algorithm chosen for this shape's M bucket; if it cannot run this M, one chosen for M itself.
  const int choice = static_cast<int>(algo_choice());
  const Operands op{x, M, w, y, batch};
  const AlgoKey key{N, K, static_cast<int>(y_type), beta != 0.f, Bucket(M), choice, batch.count, batch.w_stride};
  const cublasLtMatmulAlgo_t* algo = FindAlgo(key, Bucket(M), y_type, op);
  cublasStatus_t st =
      algo != nullptr ? RunWith(*algo, x, M, K, w, N, y, y_type, beta, batch) : CUBLAS_STATUS_NOT_SUPPORTED;
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {
    const AlgoKey exact{N, K, static_cast<int>(y_type), beta != 0.f, -M, choice, batch.count, batch.w_stride};
    algo = FindAlgo(exact, M, y_type, op);
    if (algo == nullptr) throw std::runtime_error("Gemm: cuBLASLt has no algorithm for this product");
    st = RunWith(*algo, x, M, K, w, N, y, y_type, beta, batch);
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
  taken_.assign(static_cast<size_t>(width), true);  // nothing to wait for before the first Fork
}

GemmFanout::~GemmFanout() {
  for (cudaStream_t st : streams_) cudaStreamSynchronize(st);
  gemms_.clear();
  for (cudaStream_t st : streams_) cudaStreamDestroy(st);
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

Gemm& GemmFanout::operator[](int i) {
  const size_t s = static_cast<size_t>(i);
  if (!taken_[s]) {
    MOE_CUDA_CHECK(cudaStreamWaitEvent(streams_[s], events_[0], 0));
    taken_[s] = true;
  }
  return *gemms_[s];
}

void GemmFanout::Fork() {
  MOE_CUDA_CHECK(cudaEventRecord(events_[0], main_));
  taken_.assign(taken_.size(), false);
}

void GemmFanout::Join() {
  for (size_t i = 0; i < streams_.size(); ++i) {
    if (!taken_[i]) continue;  // nothing issued there since the Fork
    MOE_CUDA_CHECK(cudaEventRecord(events_[i + 1], streams_[i]));
    MOE_CUDA_CHECK(cudaStreamWaitEvent(main_, events_[i + 1], 0));
  }
}

}  // namespace moe::gpu
