#include "worker/gpu/stage_profiler.h"

#include "kernels/cuda_check.h"

namespace moe::gpu {

nlohmann::json StageTimes::ToJson() const {
  return {{"attention_ms", attention_ms}, {"router_ms", router_ms}, {"dispatch_ms", dispatch_ms},
          {"experts_ms", experts_ms},     {"combine_ms", combine_ms}, {"other_ms", other_ms},
          {"total_ms", total_ms},         {"steps", steps},           {"layer_steps", layer_steps}};
}

StageProfiler::~StageProfiler() { Destroy(); }

void StageProfiler::Destroy() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
  events_.clear();
  if (start_) cudaEventDestroy(start_);
  if (end_) cudaEventDestroy(end_);
  start_ = end_ = nullptr;
}

void StageProfiler::Enable(bool on, int64_t num_layers) {
  enabled_ = on;
  if (!on || (num_layers_ == num_layers && start_)) return;
  Destroy();
  num_layers_ = num_layers;
  MOE_CUDA_CHECK(cudaEventCreate(&start_));
  MOE_CUDA_CHECK(cudaEventCreate(&end_));
  events_.resize(static_cast<size_t>(num_layers * static_cast<int>(Boundary::kCount)));
  for (cudaEvent_t& e : events_) MOE_CUDA_CHECK(cudaEventCreate(&e));
}

void StageProfiler::StepStart(cudaStream_t s) {
  if (enabled_) MOE_CUDA_CHECK(cudaEventRecord(start_, s));
}

void StageProfiler::Mark(int64_t layer, Boundary b, cudaStream_t s) {
  if (!enabled_) return;
  MOE_CUDA_CHECK(cudaEventRecord(events_[layer * static_cast<int>(Boundary::kCount) + static_cast<int>(b)], s));
}

float StageProfiler::Elapsed(cudaEvent_t a, cudaEvent_t b) const {
  float ms = 0.f;
  MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  return ms;
}

void StageProfiler::StepEnd(cudaStream_t s, int64_t layers_run) {
  if (!enabled_) return;
  MOE_CUDA_CHECK(cudaEventRecord(end_, s));
  MOE_CUDA_CHECK(cudaEventSynchronize(end_));
  const int n = static_cast<int>(Boundary::kCount);
  double in_layers = 0;
  for (int64_t l = 0; l < layers_run; ++l) {
    const cudaEvent_t* ev = events_.data() + l * n;
    auto at = [&](Boundary b) { return ev[static_cast<int>(b)]; };
    const double att = Elapsed(at(Boundary::kLayerStart), at(Boundary::kAttentionEnd));
    const double rou = Elapsed(at(Boundary::kAttentionEnd), at(Boundary::kRouterEnd));
    const double dis = Elapsed(at(Boundary::kRouterEnd), at(Boundary::kDispatchEnd));
    const double exp = Elapsed(at(Boundary::kDispatchEnd), at(Boundary::kExpertsEnd));
    const double com = Elapsed(at(Boundary::kExpertsEnd), at(Boundary::kCombineEnd));
    times_.attention_ms += att;
    times_.router_ms += rou;
    times_.dispatch_ms += dis;
    times_.experts_ms += exp;
    times_.combine_ms += com;
    in_layers += att + rou + dis + exp + com;
  }
  const double total = Elapsed(start_, end_);
  times_.total_ms += total;
  times_.other_ms += total - in_layers;
  times_.steps += 1;
  times_.layer_steps += layers_run;
}

}  // namespace moe::gpu
