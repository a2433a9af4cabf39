#include "worker/moe/moe_layer.h"

#include "worker/cpu/ops.h"
#include "worker/moe/combine.h"
#include "worker/moe/dispatch.h"

namespace moe {

void MoeLayer::Forward(int64_t layer, const MoeWeights& w, const float* h, int64_t T, float* out, Record* record) {
  const int64_t H = c_.hidden_size, E = c_.num_experts, k = c_.experts_per_token;
  const int W = comm_.size();

  // Route.
  logits_.resize(static_cast<size_t>(T * E));
  cpu::Linear(h, T, H, w.router.data(), E, logits_.data());
  Routing routing = RouteTopK(logits_.data(), T, E, k);

  // Dispatch: permute rows by destination and expert, exchange counts, then rows.
  const DispatchLayout layout = BuildDispatchLayout(routing, plan_, layer, comm_.rank());
  stats_.AddLocal(layer, layout);
  send_.resize(static_cast<size_t>(T * k * H));
  PermuteRows(h, H, layout, k, send_.data());
  recv_counts_.resize(static_cast<size_t>(W * E));
  comm_.AllToAll(layout.send_counts, recv_counts_, E);
  recv_rows_.assign(static_cast<size_t>(W), 0);
  for (int s = 0; s < W; ++s) {
    for (int64_t e = 0; e < E; ++e) recv_rows_[s] += recv_counts_[s * E + e];
  }
  int64_t R = 0;
  for (int64_t r : recv_rows_) R += r;
  recv_.resize(static_cast<size_t>(R * H));
  comm_.AllToAllRows(send_.data(), layout.send_rows, recv_.data(), recv_rows_, H);

  // Experts of this rank.
  computed_.resize(static_cast<size_t>(R * H));
  experts_.Run(w, recv_.data(), recv_counts_, W, computed_.data());

  // Combine: the reverse exchange brings results back in send order, then the weighted sum.
  returned_.resize(send_.size());
  comm_.AllToAllRows(computed_.data(), recv_rows_, returned_.data(), layout.send_rows, H);
  CombineRows(returned_.data(), layout, routing, H, out);

  if (record) {
    record->router_logits = logits_;
    record->routing = std::move(routing);
  }
}

}  // namespace moe
