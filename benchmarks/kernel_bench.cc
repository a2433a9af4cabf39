#include "benchmarks/kernel_bench.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "worker/gpu/device_buffer.h"
#include "worker/gpu/gemm.h"
#include "worker/gpu/random_fill.h"

namespace moe {
namespace {

using gpu::bf16;

// Median time in ms of `reps` runs of fn(i), timed with events, after `warmup` runs.
template <typename Fn>
double MedianMs(cudaStream_t s, int warmup, int reps, Fn fn) {
  for (int i = 0; i < warmup; ++i) fn(i);
  cudaEvent_t a, b;
  MOE_CUDA_CHECK(cudaEventCreate(&a));
  MOE_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    MOE_CUDA_CHECK(cudaEventRecord(a, s));
    fn(warmup + i);
    MOE_CUDA_CHECK(cudaEventRecord(b, s));
    MOE_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    MOE_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

nlohmann::json KernelFigures(const ModelConfig& c) {
  nlohmann::json out;
  cudaStream_t s;
  MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  {
    // Copy bandwidth: 1 GiB device to device, bytes read plus written.
    const size_t bytes = size_t{1} << 30;
    gpu::DeviceBuffer<unsigned char> src(bytes), dst(bytes);
    MOE_CUDA_CHECK(cudaMemsetAsync(src.get(), 1, bytes, s));
    const double ms = MedianMs(s, 2, 10, [&](int) {
      MOE_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, s));
    });
    out["copy_bandwidth_gbps"] = 2.0 * bytes / (ms / 1e3) / 1e9;
  }
  {
    // The experts' two matrices, 8 copies of each so that successive runs read from memory, not
    // L2 (the cache holds 50 MB; one w13 is 235 MB at Mixtral-8x7B shape).
    const int64_t H = c.hidden_size, I = c.intermediate_size;
    constexpr int kCopies = 8;
    gpu::Gemm gemm(s);
    struct Shape {
      const char* name;
      int64_t N, K;
      gpu::SkinnyEpilogue epi;
      int64_t out_cols;
    };
    const Shape shapes[] = {{"w13_swiglu", I, H, gpu::SkinnyEpilogue::kSwiGluBf16, I},
                            {"w2", H, I, gpu::SkinnyEpilogue::kStoreBf16, H}};
    nlohmann::json rows = nlohmann::json::array();
    for (const Shape& sh : shapes) {
      const int64_t wrows = sh.epi == gpu::SkinnyEpilogue::kSwiGluBf16 ? 2 * sh.N : sh.N;
      const int64_t welems = wrows * sh.K;
      gpu::DeviceBuffer<bf16> w(static_cast<size_t>(welems * kCopies));
      gpu::FillNormal(w.get(), welems * kCopies, 7, 1, 0.f, 0.02f, s);
      constexpr int64_t kMaxRows = 64;
      gpu::DeviceBuffer<bf16> x(static_cast<size_t>(kMaxRows * sh.K)), y(static_cast<size_t>(kMaxRows * 2 * sh.N));
      gpu::FillNormal(x.get(), kMaxRows * sh.K, 8, 2, 0.f, 1.f, s);
      const double wbytes = 2.0 * welems;
      for (int64_t M : {1, 2, 8, 16, 32, 64}) {
        gpu::SkinnyGroups g;
        g.rows = M;
        const double skinny = MedianMs(s, 3, 16, [&](int i) {
          g.weight = w.get() + (i % kCopies) * welems;
          gpu::SkinnyGemm(x.get(), sh.K, g, sh.N, sh.epi, y.get(), M, s);
        });
        const double blas = MedianMs(s, 3, 16, [&](int i) {
          gemm.LinearBlas(x.get(), M, sh.K, w.get() + (i % kCopies) * welems, wrows, y.get());
        });
        rows.push_back({{"matrix", sh.name},
                        {"rows", M},
                        {"weight_mb", wbytes / 1e6},
                        {"skinny_us", skinny * 1e3},
                        {"skinny_gbps", wbytes / (skinny / 1e3) / 1e9},
                        {"cublas_us", blas * 1e3},
                        {"cublas_gbps", wbytes / (blas / 1e3) / 1e9}});
        std::printf("kernel %-10s rows %2lld: skinny %7.1f us (%6.0f GB/s)  cuBLAS %7.1f us (%6.0f GB/s)\n", sh.name,
                    static_cast<long long>(M), skinny * 1e3, wbytes / (skinny / 1e3) / 1e9, blas * 1e3,
                    wbytes / (blas / 1e3) / 1e9);
      }
    }
    out["expert_gemms"] = rows;
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(s));
  cudaStreamDestroy(s);
  std::printf("copy bandwidth: %.0f GB/s\n", out["copy_bandwidth_gbps"].get<double>());
  std::fflush(stdout);
  return out;
}

}  // namespace moe
