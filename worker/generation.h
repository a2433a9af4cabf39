// Runs a rank's requests to completion on an engine (any StepEngine: the CPU Engine or the GPU
// engine), in lock step with the other ranks.
// Iteration-level batching: every step carries each active sequence's next chunk (its whole prompt
// first, then one token a step); a finished sequence leaves the batch and frees its KV blocks.
// Both functions are collectives: every rank calls them (with its own, possibly empty, requests)
// and they return on all ranks once every rank is done.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "worker/engine.h"
#include "worker/sampler.h"

namespace moe {

struct GenerateRequest {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 64;
  SamplingParams sampling;  // temperature 0: greedy
  bool ignore_eos = false;
  // Further ids that end generation as the config's EOS does (e.g. the tokenizer's EOS where
  // config.json names another); ignore_eos ignores them too.
  std::vector<int32_t> stop_token_ids;
};

// Whether `token` ends `req`'s generation: the config's end ids and req's stop ids, unless ignore_eos.
bool EndsGeneration(const ModelConfig& c, const GenerateRequest& req, int32_t token);

enum class FinishReason { kLength, kStop };
const char* FinishReasonName(FinishReason r);  // "length" | "stop"

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (an EOS that stopped generation included)
  FinishReason finish = FinishReason::kLength;
};

// on_token(request index, token id) is called as each token is produced.
absl::StatusOr<std::vector<GenerateResult>> GenerateAll(
    StepEngine& engine, const std::vector<GenerateRequest>& requests,
    const std::function<void(size_t, int32_t)>& on_token = nullptr);

struct ScoreResult {
  // logprobs[i] = log p(token i | tokens before it); logprobs[0] is NaN (no context).
  std::vector<float> logprobs;
};

absl::StatusOr<std::vector<ScoreResult>> ScoreAll(StepEngine& engine, const std::vector<std::vector<int32_t>>& sequences);

}  // namespace moe
