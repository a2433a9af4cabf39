// Stage 2 of the MoE layer: where each routed row goes. Rows are ordered by destination rank, then
// expert, then slot index, so that each destination receives one contiguous block per expert
// (ready for a grouped GEMM) and the order never depends on timing.
#pragma once

#include <cstdint>
#include <vector>

#include "coordinator/placement.h"
#include "worker/moe/router.h"

namespace moe {

struct DispatchLayout {
  int world = 1;
  int64_t num_experts = 0;
  std::vector<int64_t> send_counts;  // [world * E]: rows this rank sends to (rank, expert)
  std::vector<int64_t> send_rows;    // [world]: rows this rank sends to each rank
  std::vector<int64_t> order;        // send position -> routed slot index (t*k + s)
  std::vector<int64_t> position;     // routed slot index -> send position
};

// `rank` is the sending rank (replicas are chosen per row by plan.route).
DispatchLayout BuildDispatchLayout(const Routing& r, const PlacementPlan& plan, int64_t layer, int rank);

// send[p, :] = x[order[p] / k, :] for every send position p. x: [T, H].
void PermuteRows(const float* x, int64_t H, const DispatchLayout& layout, int64_t k, float* send);

}  // namespace moe
