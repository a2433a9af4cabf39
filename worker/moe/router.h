// Stage 1 of the MoE layer: Mixtral's routing rule. Softmax over all experts, keep the k most
// probable (ties to the lower expert id, like torch.topk on distinct values), renormalise the k
// weights to sum to one.
#pragma once

#include <cstdint>
#include <vector>

namespace moe {

struct Routing {
  int64_t tokens = 0;
  int64_t k = 0;
  // [tokens * k]: slot s of token t is index t*k + s; slots in descending probability.
  std::vector<int32_t> expert;
  std::vector<float> weight;
};

// router_logits: [T, E].
Routing RouteTopK(const float* router_logits, int64_t T, int64_t E, int64_t k);

}  // namespace moe
