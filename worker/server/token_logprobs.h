// Log-probabilities of a scored prompt (or of a generation's prompt, Assign.prompt_logprobs)
// reported to the coordinator, from one row of logits: the
// model's own distribution (log-softmax of the raw logits), as vLLM and OpenAI report them. (A
// generation's come from the engine with its pick: SequenceChunk::sample_next.)
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace moe {

class TokenLogprobs {
 public:
  // Computes the log-softmax of `logits` (kept until the next call).
  void Compute(std::span<const float> logits);

  float logprob(int32_t token) const { return lsm_[static_cast<size_t>(token)]; }
  // vLLM's rank: how many ids have a log-probability at least the token's (1: the most probable).
  uint32_t rank(int32_t token) const;

 private:
  std::vector<float> lsm_;
};

}  // namespace moe
