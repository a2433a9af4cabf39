// cuBLASLt's candidate algorithms for the prefill products, each timed: whether the heuristic's
// first choice (what Gemm takes) leaves speed behind. Two timings per candidate: the product
// alone, and the experts' product as the engine runs it in a prefill (one GEMM per expert, the
// experts on separate streams at once). For the experts' products also the other way to run them
// all at once: one strided-batched call, every expert the same rows.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "benchmarks/kernel_bench.h"
#include "benchmarks/median_time.h"
#include "worker/gpu/cuda_stream.h"
#include "worker/gpu/device_buffer.h"
#include "worker/gpu/gemm.h"
#include "worker/gpu/random_fill.h"

namespace moe {
namespace {

using gpu::bf16;

constexpr int kCandidates = 16;

template <typename T>
T ConfigAttribute(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr) {
  T v{};
  size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &v, sizeof(v), &written) != CUBLAS_STATUS_SUCCESS) return T{};
  return v;
}

// All E experts' products as one strided-batched cuBLASLt call (Gemm::LinearBatched, the padded
// experts): every expert the same rows M, the weights E copies `welems` apart, as the engine's
// arena lays out the experts of a layer. Times the heuristic's candidates, each alone.
nlohmann::json StridedBatchedFigure(gpu::Gemm& gemm, const char* name, int64_t N, int64_t K, int64_t M, int64_t E,
                                    const bf16* w, int64_t welems, const bf16* x, bf16* y) {
  const gpu::StridedBatch batch{E, welems};
  const std::vector<cublasLtMatmulHeuristicResult_t> found =
      gemm.Candidates(N, K, M, CUDA_R_16BF, kCandidates, batch);
  nlohmann::json cands = nlohmann::json::array();
  double best = 0;
  for (size_t ci = 0; ci < found.size(); ++ci) {
    const cublasLtMatmulAlgo_t& algo = found[ci].algo;
    auto run = [&] { return gemm.RunWith(algo, x, M, K, w, N, y, CUDA_R_16BF, 0.f, batch); };
    if (run() != CUBLAS_STATUS_SUCCESS) continue;
    const double ms = MedianMs(gemm.stream(), 2, 8, [&](int) { MOE_CUBLAS_CHECK(run()); });
    best = best == 0 ? ms : std::min(best, ms);
    const double gbps = 2.0 * welems * E / (ms / 1e3) / 1e9;
    cands.push_back({{"rank", ci},
                     {"tile_id", ConfigAttribute<int>(algo, CUBLASLT_ALGO_CONFIG_TILE_ID)},
                     {"split_k", ConfigAttribute<int>(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM)},
                     {"us", ms * 1e3},
                     {"weight_gbps", gbps}});
  }
  std::printf("blas %-6s rows %3lld x %lld experts, one strided-batched call: best %7.1f us (%zu candidates)\n", name,
              static_cast<long long>(M), static_cast<long long>(E), best * 1e3, found.size());
  std::fflush(stdout);
  MOE_CUDA_CHECK(cudaStreamSynchronize(gemm.stream()));
  return {{"matrix", name}, {"rows_per_expert", M}, {"experts", E}, {"best_us", best * 1e3}, {"candidates", cands}};
}

}  // namespace

nlohmann::json BlasCandidateFigures(const ModelConfig& c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts;
  const gpu::CudaStream stream;  // destroyed after the Gemms bound to it
  const cudaStream_t main = stream.get();
  // The products through Gemm's own cuBLASLt descriptor and workspace: alone on `main`, and, as the
  // engine runs the experts, on the side streams of a GemmFanout.
  gpu::Gemm alone_gemm(main);
  gpu::GemmFanout fanout(main, static_cast<int>(std::min<int64_t>(E, 8)));

  struct Shape {
    const char* name;
    int64_t N, K;
    std::vector<int64_t> rows;
    bool experts;  // one weight per expert, run on concurrent streams as the engine does
  };
  const Shape shapes[] = {{"w13", 2 * I, H, {64, 128, 256}, true},
                          {"w2", H, I, {64, 128, 256}, true},
                          {"qkv", c.q_dim() + 2 * c.kv_dim(), H, {512}, false},
                          {"o_proj", H, c.q_dim(), {512}, false}};
  nlohmann::json out = nlohmann::json::array();
  for (const Shape& sh : shapes) {
    // One weight per expert (E of them: successive runs read memory, not L2).
    const int64_t welems = sh.N * sh.K, copies = E;
    gpu::DeviceBuffer<bf16> w(static_cast<size_t>(welems * copies));
    gpu::FillNormal(w.get(), welems * copies, 11, 1, 0.f, 0.02f, main);
    const int64_t max_rows = *std::max_element(sh.rows.begin(), sh.rows.end());
    gpu::DeviceBuffer<bf16> x(static_cast<size_t>(max_rows * sh.K * copies)),
        y(static_cast<size_t>(max_rows * sh.N * copies));
    gpu::FillNormal(x.get(), max_rows * sh.K * copies, 11, 2, 0.f, 1.f, main);
    for (int64_t M : sh.rows) {
      const std::vector<cublasLtMatmulHeuristicResult_t> found = alone_gemm.Candidates(sh.N, sh.K, M, CUDA_R_16BF,
                                                                                        kCandidates);
      const int n = static_cast<int>(found.size());
      auto run = [&](gpu::Gemm& g, const cublasLtMatmulAlgo_t& algo, int64_t i) {
        return g.RunWith(algo, x.get() + (i % copies) * M * sh.K, M, sh.K, w.get() + (i % copies) * welems, sh.N,
                         y.get() + (i % copies) * M * sh.N, CUDA_R_16BF, 0.f);
      };
      nlohmann::json cands = nlohmann::json::array();
      // The first runnable candidate's output, which every other candidate's is compared with bit
      // for bit (Gemm's timed choice relies on those that do not split K agreeing).
      std::vector<uint16_t> first_bits, bits(static_cast<size_t>(M * sh.N));
      for (int ci = 0; ci < n; ++ci) {
        const cublasLtMatmulAlgo_t& algo = found[static_cast<size_t>(ci)].algo;
        MOE_CUDA_CHECK(cudaMemsetAsync(y.get(), 0xff, sizeof(bf16) * bits.size(), main));
        if (run(alone_gemm, algo, 0) != CUBLAS_STATUS_SUCCESS) continue;
        MOE_CUDA_CHECK(cudaMemcpyAsync(bits.data(), y.get(), sizeof(bf16) * bits.size(), cudaMemcpyDeviceToHost, main));
        MOE_CUDA_CHECK(cudaStreamSynchronize(main));
        if (first_bits.empty()) first_bits = bits;
        const bool same_bits = bits == first_bits;
        const double alone = MedianMs(main, 2, 10, [&](int i) { MOE_CUBLAS_CHECK(run(alone_gemm, algo, i)); });
        double together = 0;
        if (sh.experts) {
          // All E experts, each on a side stream in turn.
          together = MedianMs(main, 2, 8, [&](int) {
            fanout.Fork();
            for (int64_t e = 0; e < E; ++e) {
              MOE_CUBLAS_CHECK(run(fanout[static_cast<int>(e % fanout.width())], algo, e));
            }
            fanout.Join();
          });
        }
        const int tile = ConfigAttribute<int>(algo, CUBLASLT_ALGO_CONFIG_TILE_ID);
        const int stages = ConfigAttribute<int>(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID);
        const int splitk = ConfigAttribute<int>(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM);
        const int cluster = ConfigAttribute<int>(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID);
        const int id = ConfigAttribute<int>(algo, CUBLASLT_ALGO_CONFIG_ID);
        const double gbps = 2.0 * welems / (alone / 1e3) / 1e9;
        const double tflops = 2.0 * M * welems / (alone / 1e3) / 1e12;
        cands.push_back({{"rank", ci},
                         {"algo_id", id},
                         {"tile_id", tile},
                         {"stages_id", stages},
                         {"split_k", splitk},
                         {"cluster_shape_id", cluster},
                         {"us", alone * 1e3},
                         {"weight_gbps", gbps},
                         {"tflops", tflops},
                         {"experts_concurrent_us", together * 1e3},
                         {"same_bits_as_first", same_bits}});
        std::printf("blas %-6s rows %3lld cand %2d (algo %2d tile %3d stages %3d splitK %2d cluster %2d): %7.1f us "
                    "(%5.0f GB/s, %4.0f TFLOP/s)",
                    sh.name, static_cast<long long>(M), ci, id, tile, stages, splitk, cluster, alone * 1e3, gbps,
                    tflops);
        if (sh.experts) std::printf("  %lld experts at once %7.1f us", static_cast<long long>(E), together * 1e3);
        std::printf("  %s\n", same_bits ? "bits = first" : "bits differ");
      }
      nlohmann::json entry = {{"matrix", sh.name}, {"rows", M}, {"N", sh.N}, {"K", sh.K}, {"candidates", cands}};
      if (sh.experts) {
        entry["strided_batched"] =
            StridedBatchedFigure(alone_gemm, sh.name, sh.N, sh.K, M, E, w.get(), welems, x.get(), y.get());
      }
      out.push_back(entry);
      std::fflush(stdout);
    }
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(main));
  return out;
}

}  // namespace moe
