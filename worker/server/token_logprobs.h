// Log-probabilities reported to the coordinator, from one row of logits: the model's own
// distribution (log-softmax of the raw logits, before temperature, top-k or top-p), as vLLM and
// OpenAI report them.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "moe/v1/cluster.pb.h"

namespace moe {

class TokenLogprobs {
 public:
  // Computes the log-softmax of `logits` (kept until the next call).
  void Compute(std::span<const float> logits);

  float logprob(int32_t token) const { return lsm_[static_cast<size_t>(token)]; }
  // The `n` most probable tokens, most probable first, ties to the lower id.
  void TopAlternatives(uint32_t n, moe::v1::TopAlternatives& out);

 private:
  std::vector<float> lsm_;
  std::vector<int32_t> order_;
};

}  // namespace moe
