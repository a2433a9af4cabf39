// The GEMMs of the GPU engine: bf16 inputs, float32 accumulation, and a bf16 or float32 output as
// each use needs (the residual stream, router logits and final logits are float32; activations
// between GEMMs are bf16).
//
// Every product is a linear layer y = x W^T with row-major x [M, K] and the weight as stored in
// the checkpoint, row-major W [N, K]; y is row-major [M, N]. Two implementations:
//   - few rows (M <= skinny_max_rows, K a multiple of 8): the skinny tensor-core kernel
//     (kernels.h SkinnyGemm), which streams each weight once at close to the copy bandwidth, the
//     decode case;
//   - otherwise cuBLASLt (in its column-major terms y^T (N x M) = W (K x N, transposed) * x^T
//     (K x M), so no copy or transpose is ever made), with the algorithm chosen once per (N, K,
//     output, M bucket) and reused: cuBLAS's own per-call heuristics cost
//     tens of microseconds of host time for every new M, which a prefill's varying per-expert row
//     counts hit on every call. The choice (AlgoChoice) is the heuristic's first candidate, or by
//     default, from 64 rows on, the fastest of its candidates timed on the first product of the
//     key (fewer rows keep the first: decode measured no better timed); timing only
//     chooses among candidates that do not split K (when the first one does not either), whose
//     sums all run over K in one order, so the choice never changes a result's bits (checked by
//     moe-bench's candidate figures) and ranks or runs that time differently still agree.
// Both are capturable in a CUDA graph (cuBLASLt gets a fixed workspace, so it never allocates).
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "kernels/kernels.h"
#include "worker/gpu/device_buffer.h"

namespace moe::gpu {

// A strided batch of products of one shape: product b reads x + b * M * K and the weight
// w + b * w_stride, and writes y + b * M * N. Count 1: a single product.
struct StridedBatch {
  int64_t count = 1;
  int64_t w_stride = 0;
};

class Gemm {
 public:
  // A cuBLAS handle bound to `stream`: every product is enqueued there and returns at once.
  explicit Gemm(cudaStream_t stream);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Rows up to which dense products take the skinny kernel (0: always cuBLAS).
  static constexpr int64_t kDefaultSkinnyMaxRows = 16;
  void set_skinny_max_rows(int64_t rows) { skinny_max_rows_ = rows; }
  int64_t skinny_max_rows() const { return skinny_max_rows_; }
  // Sizes the split-K workspace for a product of M rows, so that the product allocates nothing
  // (a CUDA graph capture may not). Returns true when the workspace was reallocated.
  bool Reserve(int64_t M, int64_t K, int64_t N, SkinnyEpilogue epi);

  // y[M, N] = bf16(x W^T).
  void Linear(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, bf16* y);
  // y[M, N] = x W^T in float32, or y += x W^T when `accumulate` (the residual stream).
  void LinearF32(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, float* y, bool accumulate = false);

  // y[M, N] = bf16(x W^T) through cuBLAS whatever M is (per-expert GEMMs, for comparison).
  void LinearBlas(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, bf16* y) {
    Run(x, M, K, w, N, y, CUDA_R_16BF, 0.f);
  }

  // y_b[M, N] = bf16(x_b W_b^T) for every b < batch.count, in one cuBLASLt call (the padded experts:
  // every expert the same rows, the weights of a layer's experts evenly spaced in the arena).
  void LinearBatched(const bf16* x, int64_t M, int64_t K, const bf16* w, const StridedBatch& batch, int64_t N,
                     bf16* y) {
    Run(x, M, K, w, N, y, CUDA_R_16BF, 0.f, batch);
  }

  // Grouped products through cuBLAS in one call (cublasGemmGroupedBatchedEx): for each of
  // `groups` problems i, y_i [m[i], N] = bf16(x_i W_i^T); the pointer arrays are in DEVICE memory,
  // the row counts on the host (every m[i] > 0).
  void LinearGrouped(const bf16* const* x, const int* m, int groups, int64_t K, const bf16* const* w, int64_t N,
                     bf16* const* y);

  // How cuBLASLt algorithms are chosen, for every Gemm of the process from the next new key on
  // (choices already made are kept, per choice: benchmarks switch between them).
  enum class AlgoChoice {
    kHeuristic,  // cuBLASLt's first candidate
    kTimed,      // from 64 rows: the fastest candidate that does not split K, timed once on the real operands
  };
  static void set_algo_choice(AlgoChoice choice);
  static AlgoChoice algo_choice();
  // Algorithm choices the process has made so far (every new key), and of those the timed ones
  // and those for one exact row count (a bucket's algorithm that could not run its rows).
  struct AlgoCounts {
    int64_t chosen = 0, timed = 0, exact = 0;
  };
  static AlgoCounts algo_counts();
  // The row counts algorithms are chosen for (each key's M bucket), from the smallest up to the
  // bucket of max_rows: multiples of 16 up to 512, of 64 up to 2048, then powers of two.
  static std::vector<int64_t> RowBuckets(int64_t max_rows);

  // cuBLASLt's candidate algorithms for y[M, N] = x W^T with this Gemm's descriptor and workspace
  // (up to `count`, best first by its heuristic; empty when it has none).
  std::vector<cublasLtMatmulHeuristicResult_t> Candidates(int64_t N, int64_t K, int64_t M, cudaDataType_t y_type,
                                                          int count, const StridedBatch& batch = {}) const;
  // y = x W^T (+ beta y) with `algo`, on this Gemm's stream; cuBLAS's status (NOT_SUPPORTED when
  // the algorithm cannot take these rows).
  cublasStatus_t RunWith(const cublasLtMatmulAlgo_t& algo, const bf16* x, int64_t M, int64_t K, const bf16* w,
                         int64_t N, void* y, cudaDataType_t y_type, float beta, const StridedBatch& batch = {});

  cublasHandle_t handle() const { return handle_; }
  cudaStream_t stream() const { return stream_; }

  // A cached cuBLASLt algorithm's key: (N, K, output type, accumulate, M bucket, AlgoChoice, batch
  // count, weight stride).
  using AlgoKey = std::tuple<int64_t, int64_t, int, bool, int64_t, int, int64_t, int64_t>;

 private:
  void Run(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, void* y, cudaDataType_t y_type,
           float beta, const StridedBatch& batch = {});
  bool Skinny(int64_t M, int64_t K) const { return M <= skinny_max_rows_ && K % 8 == 0; }
  void RunSkinny(const bf16* x, int64_t M, int64_t K, const bf16* w, int64_t N, SkinnyEpilogue epi, void* y);
  // Reserve's work once the split count is known (RunSkinny needs it too: computed once).
  bool ReserveSplits(int64_t M, int64_t N, SkinnyEpilogue epi, int splits);

  // The operands of the product an algorithm is being chosen for (timing runs it on them).
  struct Operands {
    const bf16* x;
    int64_t M;  // the product's rows (the key's bucket may be larger)
    const bf16* w;
    void* y;
    StridedBatch batch;
  };
  // The algorithm for `key`, chosen the first time among cuBLASLt's candidates for `heuristic_m`
  // rows (null if none), by the process's AlgoChoice.
  const cublasLtMatmulAlgo_t* FindAlgo(const AlgoKey& key, int64_t heuristic_m, cudaDataType_t y_type,
                                       const Operands& op);
  // The fastest of `candidates` on `op` (each run a few times, interleaved; the minimum counts).
  // The product writes y (with beta 0, the values the real call writes again).
  cublasLtMatmulAlgo_t FastestOf(const std::vector<cublasLtMatmulAlgo_t>& candidates, int64_t N, int64_t K,
                                 cudaDataType_t y_type, const Operands& op);

  cudaStream_t stream_;
  cublasHandle_t handle_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;
  std::map<AlgoKey, cublasLtMatmulAlgo_t> algos_;
  cublasLtMatmulAlgo_t uncached_algo_{};  // FindAlgo's answer inside a graph capture
  DeviceBuffer<unsigned char> workspace_;  // cuBLAS's
  DeviceBuffer<float> split_;              // the skinny kernel's split-K partial sums
  DeviceBuffer<int32_t> counters_;         // and its per-tile arrival counters (kept zeroed)
  int64_t skinny_max_rows_ = kDefaultSkinnyMaxRows;
};

// Several cuBLAS handles, each on a stream of its own, for independent products that should overlap
// (the experts of a prefill, whose small grids would leave most SMs idle one after another). Fork
// marks the main stream's work so far; a side stream waits for that mark when it is first taken
// after the Fork (operator[]), so the first product is issued after one wait, not `width` of them;
// Join makes the main stream wait for the side streams taken since the Fork.
class GemmFanout {
 public:
  GemmFanout(cudaStream_t main, int width);
  ~GemmFanout();
  GemmFanout(const GemmFanout&) = delete;
  GemmFanout& operator=(const GemmFanout&) = delete;

  int width() const { return static_cast<int>(gemms_.size()); }
  Gemm& operator[](int i);
  void Fork();
  void Join();

 private:
  cudaStream_t main_;
  std::vector<cudaStream_t> streams_;
  std::vector<std::unique_ptr<Gemm>> gemms_;  // destroyed before their streams
  std::vector<cudaEvent_t> events_;           // [0]: fork; [1 + i]: side stream i done
  std::vector<bool> taken_;                   // side stream i waited for the fork since the last Fork
};

}  // namespace moe::gpu
