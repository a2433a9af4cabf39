// An independent float64 Mixtral forward, written straight from the math of Hugging Face
// transformers' MixtralForCausalLM (eager attention). Tests use it as the outside reference for
// configurations the shipped golden data does not cover. It shares nothing with the engine but
// the config and checkpoint readers, and favours obviousness over speed: plain loops, no BLAS.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "common/status.h"
#include "worker/model/config.h"
#include "worker/model/safetensors.h"

namespace moe::testing_ref {

struct ReferenceOutput {
  int64_t T = 0;
  int64_t vocab = 0;
  int64_t layers = 0;
  int64_t experts = 0;
  std::vector<double> logits;         // [T, vocab]
  std::vector<double> router_logits;  // [layers, T, experts]
  // topk[layer][t]: the experts token t is routed to, in descending routing probability
  // (equal probabilities: lower expert index first, as torch.topk does on CPU).
  std::vector<std::vector<std::vector<int>>> topk;

  double logit(int64_t t, int64_t v) const { return logits[t * vocab + v]; }
  double router_logit(int64_t l, int64_t t, int64_t e) const {
    return router_logits[(l * T + t) * experts + e];
  }
};

// The top-k set (sorted) of E router logits (a reference's, or anything that routes like it) and its margin (gap between the k-th and (k+1)-th
// routing probability).
template <typename F>
std::pair<std::vector<int64_t>, double> ReferenceTopK(const F* z, int64_t E, int64_t k) {
  std::vector<double> prob(E);
  double mx = z[0], sum = 0;
  for (int64_t x = 1; x < E; ++x) mx = std::max<double>(mx, z[x]);
  for (int64_t x = 0; x < E; ++x) sum += prob[x] = std::exp(double(z[x]) - mx);
  std::vector<int64_t> order(E);
  for (int64_t x = 0; x < E; ++x) order[x] = x;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return prob[a] > prob[b]; });
  std::vector<int64_t> top(order.begin(), order.begin() + k);
  std::sort(top.begin(), top.end());
  return {top, k < E ? (prob[order[k - 1]] - prob[order[k]]) / sum : 1.0};
}

// Runs the whole model over `tokens` (positions 0..T-1, one sequence, no cache). Weights are read
// with Checkpoint::ReadF32 (so BF16/F16/F32 checkpoints all work) and promoted to double.
// Errors: a missing or misshapen tensor, an empty prompt, a token id outside the vocabulary.
absl::StatusOr<ReferenceOutput> ReferenceForward(const ModelConfig& c, const Checkpoint& ckpt,
                                                 const std::vector<int32_t>& tokens);

}  // namespace moe::testing_ref
