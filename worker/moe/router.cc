#include "worker/moe/router.h"

#include <cmath>

namespace moe {

Routing RouteTopK(const float* router_logits, int64_t T, int64_t E, int64_t k) {
  Routing r;
  r.tokens = T;
  r.k = k;
  r.expert.resize(static_cast<size_t>(T * k));
  r.weight.resize(static_cast<size_t>(T * k));
  std::vector<float> prob(static_cast<size_t>(E));
  std::vector<char> taken(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* z = router_logits + t * E;
    float mx = z[0];
    for (int64_t e = 1; e < E; ++e) mx = z[e] > mx ? z[e] : mx;
    float sum = 0.f;
    for (int64_t e = 0; e < E; ++e) {
      prob[e] = std::exp(z[e] - mx);
      sum += prob[e];
    }
    for (int64_t e = 0; e < E; ++e) prob[e] /= sum;
    std::fill(taken.begin(), taken.end(), 0);
    float kept = 0.f;
    for (int64_t s = 0; s < k; ++s) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        if (!taken[e] && (best < 0 || prob[e] > prob[best])) best = e;
      }
      taken[best] = 1;
      r.expert[t * k + s] = static_cast<int32_t>(best);
      r.weight[t * k + s] = prob[best];
      kept += prob[best];
    }
    for (int64_t s = 0; s < k; ++s) r.weight[t * k + s] /= kept;
  }
  return r;
}

}  // namespace moe
