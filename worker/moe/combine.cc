#include "worker/moe/combine.h"

namespace moe {

void CombineRows(const float* returned, const DispatchLayout& layout, const Routing& r, int64_t H, float* out) {
  for (int64_t t = 0; t < r.tokens; ++t) {
    float* o = out + t * H;
    for (int64_t h = 0; h < H; ++h) o[h] = 0.f;
    for (int64_t s = 0; s < r.k; ++s) {
      const int64_t i = t * r.k + s;
      const float w = r.weight[i];
      const float* y = returned + layout.position[i] * H;
      for (int64_t h = 0; h < H; ++h) o[h] += w * y[h];
    }
  }
}

}  // namespace moe
