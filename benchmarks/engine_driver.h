// What the GPU benchmarks do to an engine: prefill a sequence, give a batch 128-token contexts,
// run decode steps, all with seeded random tokens, timed by the host wall clock around Step (which
// returns after the device has finished and the picks, or logits, are on the host). moe-bench drives one
// engine; moe-ep-bench drives one per rank, every rank stepping together (the steps are
// collectives: a rank with nothing to do takes an empty step).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "worker/gpu/gpu_engine.h"

namespace moe {

double NowMs();

// Dies with the error: a benchmark has no way around a failed step.
template <typename T>
T Check(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "benchmark: %s: %s\n", what, v.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(v).value();
}
void Check(const absl::Status& s, const char* what);

// Comma-separated positive integers ("1,16,64"); other items are dropped.
std::vector<int64_t> ParseList(const char* v);

// Per-layer stage split of what the engine's profiler collected, in ms per layer and step.
nlohmann::json PerLayer(const gpu::StageTimes& t);

class EngineDriver {
 public:
  // prefill_chunk: tokens per step when prefilling decode contexts.
  EngineDriver(gpu::GpuEngine& e, uint64_t seed, int64_t context, int64_t prefill_chunk)
      : e_(e), rng_(seed), context_(context), prefill_chunk_(prefill_chunk) {}

  std::vector<int32_t> Tokens(int64_t n);

  // One prefill of n tokens on a fresh sequence, ms. n == 0: an empty step (this rank idles while
  // others prefill).
  double Prefill(int64_t n);

  // B sequences with `context` tokens each, prefilled in steps of about prefill_chunk tokens
  // (ceil(B / (prefill_chunk / context)) steps: equal on ranks with equal B).
  std::vector<int64_t> AddContexts(int64_t B);

  // `steps` decode steps of every sequence in `ids` (empty steps when there are none), ms in all.
  double Decode(const std::vector<int64_t>& ids, int steps);

  void Free(const std::vector<int64_t>& ids);

  // What decode steps ask of the engine for each sequence: by default its greedy next token
  // sampled on the device (SequenceChunk::sample_next), as moe-worker asks for requests without
  // top alternatives; other parameters, or nullopt for the whole logits row on the host.
  void set_sample_next(std::optional<SamplingParams> p) { sample_next_ = p; }

 private:
  gpu::GpuEngine& e_;
  std::mt19937_64 rng_;
  int64_t context_, prefill_chunk_;
  int64_t next_id_ = 1;
  std::optional<SamplingParams> sample_next_ = SamplingParams{.temperature = 0.f};
};

}  // namespace moe
