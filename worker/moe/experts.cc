#include "worker/moe/experts.h"

#include <cstring>

#include "common/status.h"
#include "worker/cpu/ops.h"

namespace moe {

void ExpertRunner::Run(const MoeWeights& weights, const float* recv, const std::vector<int64_t>& recv_counts,
                       int world, float* out) {
  const int64_t E = c_.num_experts, H = c_.hidden_size, I = c_.intermediate_size;
  // Offset of each (source, expert) block in received order.
  std::vector<int64_t> recv_offset(recv_counts.size() + 1, 0);
  for (size_t b = 0; b < recv_counts.size(); ++b) recv_offset[b + 1] = recv_offset[b] + recv_counts[b];
  const int64_t R = recv_offset.back();
  if (R == 0) return;
  grouped_.resize(static_cast<size_t>(R * H));
  result_.resize(static_cast<size_t>(R * H));

  int64_t row = 0;
  for (int64_t e = 0; e < E; ++e) {
    int64_t n = 0;
    for (int s = 0; s < world; ++s) n += recv_counts[s * E + e];
    if (n == 0) continue;
    auto it = weights.experts.find(e);
    MOE_CHECK(it != weights.experts.end(), "rows arrived for expert ", e, " which this rank does not hold");
    // Gather this expert's rows from every source into one contiguous block.
    const int64_t first = row;
    for (int s = 0; s < world; ++s) {
      const int64_t b = s * E + e;
      std::memcpy(grouped_.data() + row * H, recv + recv_offset[b] * H, sizeof(float) * recv_counts[b] * H);
      row += recv_counts[b];
    }
    gate_up_.resize(static_cast<size_t>(n * 2 * I));
    act_.resize(static_cast<size_t>(n * I));
    cpu::Linear(grouped_.data() + first * H, n, H, it->second.w13.data(), 2 * I, gate_up_.data());
    cpu::SwiGlu(gate_up_.data(), n, I, act_.data());
    cpu::Linear(act_.data(), n, I, it->second.w2.data(), H, result_.data() + first * H);
    // Scatter the results back to received order.
    row = first;
    for (int s = 0; s < world; ++s) {
      const int64_t b = s * E + e;
      std::memcpy(out + recv_offset[b] * H, result_.data() + row * H, sizeof(float) * recv_counts[b] * H);
      row += recv_counts[b];
    }
  }
}

}  // namespace moe
