#include "worker/server/token_logprobs.h"

#include "worker/sampler.h"

namespace moe {

void TokenLogprobs::Compute(std::span<const float> logits) {
  lsm_.resize(logits.size());
  LogSoftmax(logits, lsm_);
}

}  // namespace moe
