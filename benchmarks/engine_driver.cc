#include "benchmarks/engine_driver.h"

#include <algorithm>
#include <chrono>
#include <sstream>
#include <string>

namespace moe {

double NowMs() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "benchmark: %s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

std::vector<int64_t> ParseList(const char* v) {
  std::vector<int64_t> out;
  std::stringstream ss(v);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const int64_t x = std::atoll(item.c_str());
    if (x > 0) out.push_back(x);
  }
  return out;
}

nlohmann::json PerLayer(const gpu::StageTimes& t) {
  const double n = std::max<int64_t>(1, t.layer_steps), steps = std::max<int64_t>(1, t.steps);
  return {{"attention_ms", t.attention_ms / n},
          {"router_ms", t.router_ms / n},
          {"dispatch_ms", t.dispatch_ms / n},
          {"experts_ms", t.experts_ms / n},
          {"combine_ms", t.combine_ms / n},
          {"outside_layers_ms_per_step", t.other_ms / steps},
          {"step_ms", t.total_ms / steps},
          {"steps", t.steps}};
}

std::vector<int32_t> EngineDriver::Tokens(int64_t n) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng_() % static_cast<uint64_t>(e_.config().vocab_size));
  return t;
}

double EngineDriver::Prefill(int64_t n) {
  std::vector<SequenceChunk> chunks;
  if (n > 0) {
    Check(e_.AddSequence(next_id_), "AddSequence");
    chunks.push_back({next_id_, Tokens(n), false});
  }
  MOE_CUDA_CHECK(cudaDeviceSynchronize());
  const double t0 = NowMs();
  Check(e_.Step(chunks), "prefill step");
  const double ms = NowMs() - t0;
  if (n > 0) e_.FreeSequence(next_id_++);
  return ms;
}

std::vector<int64_t> EngineDriver::AddContexts(int64_t B) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < B; ++i) {
    Check(e_.AddSequence(next_id_), "AddSequence");
    ids.push_back(next_id_++);
  }
  const int64_t per_step = std::max<int64_t>(1, prefill_chunk_ / context_);
  for (int64_t i = 0; i < B; i += per_step) {
    std::vector<SequenceChunk> chunks;
    for (int64_t j = i; j < std::min(B, i + per_step); ++j) chunks.push_back({ids[j], Tokens(context_), false});
    Check(e_.Step(chunks), "context prefill step");
  }
  return ids;
}

double EngineDriver::Decode(const std::vector<int64_t>& ids, int steps) {
  MOE_CUDA_CHECK(cudaDeviceSynchronize());
  const double t0 = NowMs();
  for (int s = 0; s < steps; ++s) {
    std::vector<SequenceChunk> chunks;
    for (int64_t id : ids) {
      chunks.push_back({id, Tokens(1), false});
      if (sample_next_) chunks.back().sample_next = SampleNext{*sample_next_, static_cast<uint64_t>(s)};
    }
    Check(e_.Step(chunks), "decode step");
  }
  return NowMs() - t0;
}

void EngineDriver::Free(const std::vector<int64_t>& ids) {
  for (int64_t id : ids) e_.FreeSequence(id);
}

}  // namespace moe
