#include "worker/server/token_logprobs.h"

#include <algorithm>
#include <numeric>

#include "worker/sampler.h"

namespace moe {

void TokenLogprobs::Compute(std::span<const float> logits) {
  lsm_.resize(logits.size());
  LogSoftmax(logits, lsm_);
}

void TokenLogprobs::TopAlternatives(uint32_t n, moe::v1::TopAlternatives& out) {
  const size_t k = std::min<size_t>(n, lsm_.size());
  order_.resize(lsm_.size());
  std::iota(order_.begin(), order_.end(), 0);
  // NaN-free: LogSoftmax maps NaN logits to -inf.
  std::partial_sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(k), order_.end(),
                    [this](int32_t a, int32_t b) {
                      const float la = lsm_[static_cast<size_t>(a)], lb = lsm_[static_cast<size_t>(b)];
                      return la > lb || (la == lb && a < b);
                    });
  for (size_t i = 0; i < k; ++i) {
    moe::v1::WorkerTopLogprob* t = out.add_alternatives();
    t->set_token_id(order_[i]);
    t->set_logprob(lsm_[static_cast<size_t>(order_[i])]);
  }
}

}  // namespace moe
