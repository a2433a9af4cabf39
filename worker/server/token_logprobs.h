// Log-probabilities of a scored prompt reported to the coordinator, from one row of logits: the
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

 private:
  std::vector<float> lsm_;
};

}  // namespace moe
