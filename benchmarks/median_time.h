// Timing for the kernel figures: the median of several runs, each between two CUDA events.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "worker/gpu/device_buffer.h"

namespace moe {

// Median time in ms of `reps` runs of fn(i) on stream `s`, timed with events, after `warmup`
// runs (fn may fork onto other streams as long as it joins back into `s`).
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

}  // namespace moe
