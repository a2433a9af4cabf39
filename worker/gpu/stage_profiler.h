// Per-stage GPU time of the forward, measured with CUDA events recorded on the engine's stream at
// the stage boundaries of every layer (profiling mode only: off, Mark does nothing). The times are
// intervals of the stream's timeline, so host work that holds the stream up inside a stage (the
// per-layer routing copy and dispatch planning) counts in that stage.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe::gpu {

// Stage boundaries inside a layer, in stream order.
enum class Boundary : int {
  kLayerStart = 0,
  kAttentionEnd,  // input norm, QKV GEMM, RoPE, KV write, paged attention, output GEMM + residual
  kRouterEnd,     // post-attention norm with the router logits, softmax top-k (one rank: with the grouping)
  kDispatchEnd,   // several ranks: routing to the host, dispatch plan, row permutation, counts and
                  // rows all-to-all; one rank: nothing
  kExpertsEnd,    // w13 GEMMs with SwiGLU, w2 GEMMs (several ranks: regrouped, back in received order;
                  // one rank with cuBLAS experts: the per-expert counts to the host first)
  kCombineEnd,    // return all-to-all, weighted k-way combine into the residual
  kCount
};

struct StageTimes {
  double attention_ms = 0, router_ms = 0, dispatch_ms = 0, experts_ms = 0, combine_ms = 0;
  double other_ms = 0;  // outside the layers: input upload, embedding, final norm, LM head, logits copy
  double total_ms = 0;  // step start to step end
  int64_t steps = 0;
  int64_t layer_steps = 0;  // layers x steps
  nlohmann::json ToJson() const;
};

class StageProfiler {
 public:
  StageProfiler() = default;
  ~StageProfiler();
  StageProfiler(const StageProfiler&) = delete;
  StageProfiler& operator=(const StageProfiler&) = delete;

  // Enables (creating the events for `num_layers` layers) or disables profiling.
  void Enable(bool on, int64_t num_layers);
  bool enabled() const { return enabled_; }

  void StepStart(cudaStream_t s);
  void Mark(int64_t layer, Boundary b, cudaStream_t s);
  // Records the step's end, waits for it and adds the step's intervals to the totals.
  void StepEnd(cudaStream_t s, int64_t layers_run);

  const StageTimes& times() const { return times_; }
  void Reset() { times_ = StageTimes{}; }

 private:
  float Elapsed(cudaEvent_t a, cudaEvent_t b) const;
  void Destroy();

  bool enabled_ = false;
  int64_t num_layers_ = 0;
  cudaEvent_t start_ = nullptr, end_ = nullptr;
  std::vector<cudaEvent_t> events_;  // [layer][Boundary]
  StageTimes times_;
};

}  // namespace moe::gpu
