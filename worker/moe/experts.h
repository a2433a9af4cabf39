// Stage 3 of the MoE layer: the experts this rank owns, over the rows it received.
// Received rows come as one block per source rank, each ordered by expert. They are regrouped so
// that each expert's rows are contiguous (one GEMM per expert: the CPU form of a grouped GEMM),
// computed as w2(silu(w1 x) * w3 x), and put back in received order for the return trip.
#pragma once

#include <cstdint>
#include <vector>

#include "worker/model/config.h"
#include "worker/model/weights.h"

namespace moe {

class ExpertRunner {
 public:
  explicit ExpertRunner(const ModelConfig& c) : c_(c) {}

  // recv: rows as received; recv_counts: [world * E], rows from (source, expert).
  // out: results, same order as recv. Every row must be for an expert in `weights`.
  void Run(const MoeWeights& weights, const float* recv, const std::vector<int64_t>& recv_counts, int world,
           float* out);

 private:
  const ModelConfig& c_;
  std::vector<float> grouped_, gate_up_, act_, result_;  // scratch, reused across layers
};

}  // namespace moe
