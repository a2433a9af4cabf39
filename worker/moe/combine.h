// Stage 4 of the MoE layer: the expert outputs come back in send order and are summed per token
// with the routing weights, slot by slot in a fixed order, so the result does not depend on how
// many ranks computed it (beyond the experts' own float rounding).
#pragma once

#include <cstdint>

#include "worker/moe/dispatch.h"
#include "worker/moe/router.h"

namespace moe {

// out[t, :] = sum over s = 0..k-1 of weight[t*k+s] * returned[position[t*k+s], :]. out: [T, H].
void CombineRows(const float* returned, const DispatchLayout& layout, const Routing& r, int64_t H, float* out);

}  // namespace moe
