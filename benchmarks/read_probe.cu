// read-probe: how fast the GPU's memory serves reads in the skinny GEMM's pattern, alone (no MMA,
// no epilogue), so that the products' measured rate can be set against what the memory gives.
// A CTA of 128 threads streams ROWS weight rows through a 3-stage cp.async pipeline of 32 KB
// stages (as SkinnyGemmKernel with one token tile: 128 rows x 256 bytes of each row a stage), over
// the shape of batch 1's gate/up product (two experts' 2 x 14336 rows of 4096, 470 MB) and its down
// product (two experts' 4096 rows of 14336, K split over CTAs); for each, the contiguous bytes read
// from a row per stage vary from 128 to 2,048 at the same stage size. The last line is a plain
// contiguous read of the same 470 MB. Prints one line a shape: median of 25 runs, TB/s.
// (benchmarks/NOTES.md, session 19: every pattern from 256 bytes a row reads at the rate of the
// contiguous read, about 4.2 TB/s on the lent H200s.)
#include <cuda_runtime.h>

#include "kernels/cuda_check.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <vector>

namespace {

__device__ __forceinline__ void CopyAsync16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void Commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void WaitGroups() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// CTA (x, y) streams rows [x ROWS, (x + 1) ROWS) over K range y of `splits`, BK elements a stage.
template <int ROWS, int BK, int STAGES>
__global__ void __launch_bounds__(128) PatternRead(const uint16_t* w, int K, int splits, float* sink) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int kChunks = BK / 8, kRowsPerPass = 128 / kChunks, kPasses = ROWS / kRowsPerPass;
  const int tid = threadIdx.x, chunk = tid % kChunks;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * ROWS;
  const int per_split = K / splits, k_begin = blockIdx.y * per_split, steps = per_split / BK;
  auto load = [&](int slot, int step) {
    if (step < steps) {
      unsigned char* s = smem + slot * ROWS * BK * 2;
#pragma unroll
      for (int j = 0; j < kPasses; ++j) {
        const int r = tid / kChunks + kRowsPerPass * j;
        CopyAsync16(static_cast<uint32_t>(__cvta_generic_to_shared(s + (r * kChunks + chunk) * 16)),
                    w + (row0 + r) * K + k_begin + step * BK + 8 * chunk);
      }
    }
    Commit();
  };
  for (int s = 0; s < STAGES - 1; ++s) load(s, s);
  float acc = 0.f;
  for (int it = 0; it < steps; ++it) {
    WaitGroups<STAGES - 2>();
    __syncthreads();
    load((it + STAGES - 1) % STAGES, it + STAGES - 1);
    acc += reinterpret_cast<const float*>(smem + (it % STAGES) * ROWS * BK * 2)[tid];
  }
  if (acc == 12345.f) sink[0] = acc;  // keeps the reads
}

__global__ void ContiguousRead(const uint4* w, int64_t n, float* sink) {
  uint32_t a = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(w + i);
    a ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (a == 0x12345u) sink[0] = static_cast<float>(a);
}

template <typename Launch>
float MedianMs(Launch launch) {
  cudaEvent_t a, b;
  MOE_CUDA_CHECK(cudaEventCreate(&a));
  MOE_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < 25; ++i) {
    MOE_CUDA_CHECK(cudaEventRecord(a));
    launch();
    MOE_CUDA_CHECK(cudaEventRecord(b));
    MOE_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  MOE_CUDA_CHECK(cudaEventDestroy(a));
  MOE_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

template <int ROWS, int BK, int STAGES>
void Pattern(const char* shape, const uint16_t* w, int64_t rows, int K, int splits, float* sink) {
  const size_t shared = static_cast<size_t>(STAGES) * ROWS * BK * 2;
  auto kernel = PatternRead<ROWS, BK, STAGES>;
  MOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
  int per_sm = 0;
  MOE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 128, shared));
  const dim3 grid(static_cast<unsigned>(rows / ROWS), static_cast<unsigned>(splits));
  const float ms = MedianMs([&] { kernel<<<grid, 128, shared>>>(w, K, splits, sink); });
  MOE_CUDA_CHECK(cudaGetLastError());
  std::printf("%-7s %4d bytes a row a stage, %3d rows a CTA, %d stages, %5u CTAs (%d an SM): %7.1f us  %.3f TB/s\n",
              shape, BK * 2, ROWS, STAGES, grid.x * grid.y, per_sm, ms * 1e3, 2.0 * rows * K / (ms * 1e-3) / 1e12);
}

int Probe() {
  const int K = 4096, I = 14336, H = 4096;
  const int64_t rows = 2 * 2 * static_cast<int64_t>(I);  // two experts' gate and up rows of H
  const size_t bytes = sizeof(uint16_t) * rows * K;
  uint16_t* w = nullptr;
  float* sink = nullptr;
  MOE_CUDA_CHECK(cudaMalloc(&w, bytes));
  MOE_CUDA_CHECK(cudaMalloc(&sink, sizeof(float)));
  MOE_CUDA_CHECK(cudaMemset(w, 1, bytes));
  Pattern<128, 128, 3>("warm-up", w, rows, K, 1, sink);
  Pattern<256, 64, 3>("gate/up", w, rows, K, 1, sink);
  Pattern<128, 128, 3>("gate/up", w, rows, K, 1, sink);  // SkinnyGemmKernel's one-tile shape
  Pattern<64, 256, 3>("gate/up", w, rows, K, 1, sink);
  Pattern<32, 512, 3>("gate/up", w, rows, K, 1, sink);
  Pattern<16, 1024, 3>("gate/up", w, rows, K, 1, sink);
  Pattern<64, 256, 4>("gate/up", w, rows, K, 1, sink);
  Pattern<128, 128, 4>("gate/up", w, rows, K, 1, sink);
  Pattern<128, 128, 3>("down", w, 2 * H, I, 4, sink);  // the engine's split count at batch 1
  Pattern<64, 256, 3>("down", w, 2 * H, I, 4, sink);
  const float ms = MedianMs([&] {
    ContiguousRead<<<132 * 8, 512>>>(reinterpret_cast<const uint4*>(w), static_cast<int64_t>(bytes / 16), sink);
  });
  MOE_CUDA_CHECK(cudaGetLastError());
  std::printf("contiguous read of %.0f MB: %7.1f us  %.3f TB/s\n", bytes / 1e6, ms * 1e3, bytes / (ms * 1e-3) / 1e12);
  MOE_CUDA_CHECK(cudaFree(w));
  MOE_CUDA_CHECK(cudaFree(sink));
  return 0;
}

}  // namespace

int main() {
  try {
    return Probe();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "read-probe: %s\n", e.what());
    return 1;
  }
}
