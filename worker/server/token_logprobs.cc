#include "worker/server/token_logprobs.h"

#include <algorithm>

#include "worker/sampler.h"

namespace moe {

void TokenLogprobs::Compute(std::span<const float> logits) {
  lsm_.resize(logits.size());
  LogSoftmax(logits, lsm_);
}

uint32_t TokenLogprobs::rank(int32_t token) const {
  const float x = logprob(token);
  uint32_t n = 0;
  for (const float v : lsm_) n += v >= x;
  return std::max<uint32_t>(n, 1);  // a NaN row counts the token itself
}

}  // namespace moe
