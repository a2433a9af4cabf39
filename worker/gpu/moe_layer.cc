#include "worker/gpu/moe_layer.h"

#include <algorithm>
#include <numeric>

#include "common/status.h"
#include "worker/moe/dispatch.h"
#include "worker/moe/router.h"

namespace moe::gpu {

GpuMoeLayer::GpuMoeLayer(const ModelConfig& c, const PlacementPlan& plan, Communicator& comm, LoadStats& stats,
                         Gemm& gemm, cudaStream_t stream, bool force_host_staging, NcclExchange* nccl)
    : c_(c),
      plan_(plan),
      comm_(comm),
      stats_(stats),
      gemm_(gemm),
      stream_(stream),
      staging_(force_host_staging),
      nccl_(nccl) {
  if (nccl_ != nullptr) {
    MOE_CHECK(nccl_->size() == comm_.size() && nccl_->rank() == comm_.rank(), "NCCL rank ", nccl_->rank(), " of ",
              nccl_->size(), " but Communicator rank ", comm_.rank(), " of ", comm_.size());
  }
}

void GpuMoeLayer::Forward(int64_t layer, const DeviceMoeWeights& w, const bf16* h, int64_t T, float* residual,
                          StageProfiler& prof, MoeLayer::Record* record) {
  const int64_t H = c_.hidden_size, E = c_.num_experts, k = c_.experts_per_token, I = c_.intermediate_size;
  const int W = comm_.size();
  const int64_t n = T * k;  // routed rows this rank sends
  const bool direct = W == 1 && !staging_;                      // one rank: the exchange is the identity
  const bool use_nccl = !direct && !staging_ && nccl_ != nullptr;  // rows device to device

  // Route.
  logits_.EnsureSize(static_cast<size_t>(T * E));
  experts_.EnsureSize(static_cast<size_t>(n));
  weights_.EnsureSize(static_cast<size_t>(n));
  gemm_.LinearF32(h, T, H, w.router, E, logits_.get());
  RouterTopK(logits_.get(), T, E, k, experts_.get(), weights_.get(), stream_);
  prof.Mark(layer, Boundary::kRouterEnd, stream_);

  // Dispatch plan. First version: the expert ids come to the host (one stream synchronisation per
  // layer) and the CPU BuildDispatchLayout orders the rows; a device-side layout replaces this later.
  h_experts_.EnsureSize(static_cast<size_t>(n));
  if (n > 0) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(h_experts_.get(), experts_.get(), sizeof(int32_t) * n, cudaMemcpyDeviceToHost,
                                   stream_));
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  Routing routing;
  routing.tokens = T;
  routing.k = k;
  routing.expert.assign(h_experts_.get(), h_experts_.get() + n);  // the weights stay on the device
  if (record) {
    record->router_logits.resize(static_cast<size_t>(T * E));
    routing.weight.resize(static_cast<size_t>(n));
    MOE_CUDA_CHECK(cudaMemcpy(record->router_logits.data(), logits_.get(), sizeof(float) * T * E,
                              cudaMemcpyDeviceToHost));
    MOE_CUDA_CHECK(cudaMemcpy(routing.weight.data(), weights_.get(), sizeof(float) * n, cudaMemcpyDeviceToHost));
    record->routing = routing;
  }
  const DispatchLayout layout = BuildDispatchLayout(routing, plan_, layer, comm_.rank());
  stats_.AddLocal(layer, layout);
  recv_counts_.resize(static_cast<size_t>(W * E));
  if (use_nccl) {
    ExchangeCountsNccl(layout.send_counts, recv_counts_, E);
  } else {
    comm_.AllToAll(layout.send_counts, recv_counts_, E);
  }
  recv_rows_.assign(static_cast<size_t>(W), 0);
  for (int s = 0; s < W; ++s) {
    for (int64_t e = 0; e < E; ++e) recv_rows_[s] += recv_counts_[s * E + e];
  }
  const int64_t R = std::accumulate(recv_rows_.begin(), recv_rows_.end(), int64_t{0});

  // Received rows come as one block per (source, expert), source-major; the experts want them
  // expert-major. group_src[g] = received row of grouped row g; expert e owns grouped rows
  // [expert_start[e], expert_start[e + 1]). With one source this is the identity.
  std::vector<int64_t> recv_offset(recv_counts_.size() + 1, 0);
  for (size_t b = 0; b < recv_counts_.size(); ++b) recv_offset[b + 1] = recv_offset[b] + recv_counts_[b];
  std::vector<int64_t> expert_start(static_cast<size_t>(E + 1), 0);
  h_index_.EnsureSize(static_cast<size_t>(2 * n + 2 * R));
  int32_t* src_row = h_index_.get();  // send position -> local token row
  int32_t* position = src_row + n;    // routed slot -> send position
  int32_t* group_src = position + n;  // grouped row -> received row
  int32_t* ungroup = group_src + R;   // received row -> grouped row
  for (int64_t p = 0; p < n; ++p) src_row[p] = static_cast<int32_t>(layout.order[p] / k);
  for (int64_t i = 0; i < n; ++i) position[i] = static_cast<int32_t>(layout.position[i]);
  bool identity = true;
  int64_t g = 0;
  for (int64_t e = 0; e < E; ++e) {
    expert_start[e] = g;
    for (int s = 0; s < W; ++s) {
      const int64_t b = s * E + e;
      for (int64_t r = recv_offset[b]; r < recv_offset[b + 1]; ++r, ++g) {
        group_src[g] = static_cast<int32_t>(r);
        ungroup[r] = static_cast<int32_t>(g);
        identity = identity && r == g;
      }
    }
  }
  expert_start[E] = g;
  index_.EnsureSize(static_cast<size_t>(2 * n + 2 * R));
  if (n + R > 0) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(index_.get(), h_index_.get(), sizeof(int32_t) * (2 * n + 2 * R),
                                   cudaMemcpyHostToDevice, stream_));
  }
  const int32_t* d_src_row = index_.get();
  const int32_t* d_position = d_src_row + n;
  const int32_t* d_group_src = d_position + n;
  const int32_t* d_ungroup = d_group_src + R;

  // Permute, exchange, regroup.
  send_.EnsureSize(static_cast<size_t>(n * H));
  GatherRows(h, d_src_row, n, H, send_.get(), stream_);
  bf16* recv = send_.get();
  if (!direct) {
    recv_.EnsureSize(static_cast<size_t>(R * H));
    if (use_nccl) {
      nccl_->AllToAllRows(send_.get(), layout.send_rows, recv_.get(), recv_rows_, H, stream_);
    } else {
      ExchangeRows(send_.get(), layout.send_rows, recv_.get(), recv_rows_);
    }
    recv = recv_.get();
  }
  bf16* grouped = recv;
  if (!identity) {
    grouped_.EnsureSize(static_cast<size_t>(R * H));
    GatherRows(recv, d_group_src, R, H, grouped_.get(), stream_);
    grouped = grouped_.get();
  }
  prof.Mark(layer, Boundary::kDispatchEnd, stream_);

  // Experts: one GEMM per expert and matrix, enqueued back to back (no synchronisation between
  // them); SwiGLU once over all rows. A grouped GEMM (cublasGemmGroupedBatchedEx, or a CUTLASS
  // grouped kernel) is the next step.
  gate_up_.EnsureSize(static_cast<size_t>(R * 2 * I));
  act_.EnsureSize(static_cast<size_t>(R * I));
  result_.EnsureSize(static_cast<size_t>(R * H));
  for (int64_t e = 0; e < E; ++e) {
    const int64_t start = expert_start[e], rows = expert_start[e + 1] - start;
    if (rows == 0) continue;
    MOE_CHECK(w.holds(e), "rows arrived for expert ", e, " of layer ", layer, " which this rank does not hold");
    gemm_.Linear(grouped + start * H, rows, H, w.experts[e].w13, 2 * I, gate_up_.get() + start * 2 * I);
  }
  SwiGlu(gate_up_.get(), R, I, act_.get(), stream_);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t start = expert_start[e], rows = expert_start[e + 1] - start;
    if (rows == 0) continue;
    gemm_.Linear(act_.get() + start * I, rows, I, w.experts[e].w2, H, result_.get() + start * H);
  }
  bf16* computed = result_.get();
  if (!identity) {
    computed_.EnsureSize(static_cast<size_t>(R * H));
    GatherRows(result_.get(), d_ungroup, R, H, computed_.get(), stream_);
    computed = computed_.get();
  }
  prof.Mark(layer, Boundary::kExpertsEnd, stream_);

  // Return and combine.
  bf16* returned = computed;
  if (!direct) {
    returned_.EnsureSize(static_cast<size_t>(n * H));
    if (use_nccl) {
      nccl_->AllToAllRows(computed, recv_rows_, returned_.get(), layout.send_rows, H, stream_);
    } else {
      ExchangeRows(computed, recv_rows_, returned_.get(), layout.send_rows);
    }
    returned = returned_.get();
  }
  CombineAdd(returned, d_position, weights_.get(), T, k, H, residual, stream_);
  prof.Mark(layer, Boundary::kCombineEnd, stream_);
}

void GpuMoeLayer::ExchangeCountsNccl(std::span<const int64_t> send, std::span<int64_t> recv, int64_t count) {
  const size_t total = send.size();
  MOE_CHECK(recv.size() == total && static_cast<int64_t>(total) == count * comm_.size());
  // The previous layer's copies out of h_counts_ ended with a synchronisation, so it may be rewritten.
  d_counts_.EnsureSize(2 * total);
  h_counts_.EnsureSize(2 * total);
  std::copy(send.begin(), send.end(), h_counts_.get());
  MOE_CUDA_CHECK(cudaMemcpyAsync(d_counts_.get(), h_counts_.get(), sizeof(int64_t) * total, cudaMemcpyHostToDevice,
                                 stream_));
  nccl_->AllToAllCounts(d_counts_.get(), d_counts_.get() + total, count, stream_);
  MOE_CUDA_CHECK(cudaMemcpyAsync(h_counts_.get() + total, d_counts_.get() + total, sizeof(int64_t) * total,
                                 cudaMemcpyDeviceToHost, stream_));
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::copy(h_counts_.get() + total, h_counts_.get() + 2 * total, recv.begin());
}

void GpuMoeLayer::ExchangeRows(const bf16* send, std::span<const int64_t> send_rows, bf16* recv,
                               std::span<const int64_t> recv_rows) {
  const int64_t H = c_.hidden_size;
  const int64_t ns = std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0});
  const int64_t nr = std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0});
  // Nothing queued may still use the pinned buffers when they grow.
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  stage_.EnsureSize(static_cast<size_t>(std::max(ns, nr) * H));
  h_send_.EnsureSize(static_cast<size_t>(ns * H));
  h_recv_.EnsureSize(static_cast<size_t>(nr * H));
  ToF32(send, ns * H, stage_.get(), stream_);
  if (ns > 0) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(h_send_.get(), stage_.get(), sizeof(float) * ns * H, cudaMemcpyDeviceToHost,
                                   stream_));
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  comm_.AllToAllRows(h_send_.get(), send_rows, h_recv_.get(), recv_rows, H);
  if (nr > 0) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(stage_.get(), h_recv_.get(), sizeof(float) * nr * H, cudaMemcpyHostToDevice,
                                   stream_));
  }
  ToBf16(stage_.get(), nr * H, recv, stream_);
}

}  // namespace moe::gpu
