#include "worker/moe/dispatch.h"

#include <algorithm>
#include <cstring>

namespace moe {

DispatchLayout BuildDispatchLayout(const Routing& r, const PlacementPlan& plan, int64_t layer, int rank) {
  DispatchLayout d;
  d.world = plan.world_size();
  d.num_experts = plan.num_experts();
  const int64_t E = d.num_experts, n = r.tokens * r.k;
  d.send_counts.assign(static_cast<size_t>(d.world * E), 0);
  d.send_rows.assign(static_cast<size_t>(d.world), 0);
  std::vector<int64_t> bucket(static_cast<size_t>(n));  // (dest, expert) bucket of each slot
  for (int64_t i = 0; i < n; ++i) {
    const int64_t e = r.expert[i];
    const int dest = plan.route(layer, e, rank, static_cast<uint64_t>(i));
    bucket[i] = dest * E + e;
    ++d.send_counts[bucket[i]];
  }
  // Counting sort: bucket starts by prefix sum, then slots in index order (stable).
  std::vector<int64_t> start(d.send_counts.size() + 1, 0);
  for (size_t b = 0; b < d.send_counts.size(); ++b) start[b + 1] = start[b] + d.send_counts[b];
  d.order.resize(static_cast<size_t>(n));
  d.position.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = start[bucket[i]]++;
    d.order[p] = i;
    d.position[i] = p;
  }
  for (int dest = 0; dest < d.world; ++dest) {
    for (int64_t e = 0; e < E; ++e) d.send_rows[dest] += d.send_counts[dest * E + e];
  }
  return d;
}

void PermuteRows(const float* x, int64_t H, const DispatchLayout& layout, int64_t k, float* send) {
  for (size_t p = 0; p < layout.order.size(); ++p) {
    std::memcpy(send + static_cast<int64_t>(p) * H, x + (layout.order[p] / k) * H, sizeof(float) * H);
  }
}

}  // namespace moe
