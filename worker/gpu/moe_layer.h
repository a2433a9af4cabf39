// The MoE layer of one rank on the GPU, the same stages as the CPU layer (worker/moe/):
//
//   route     router GEMM (float32 logits) -> softmax top-k on the device          (RouterTopK)
//   dispatch  the plan of where each routed row goes: the CPU DispatchLayout, built on the host
//             from the routing copied back once per layer; rows permuted on the device into one
//             block per (destination rank, expert)                                 (GatherRows)
//   exchange  counts all-to-all, then rows, through the Communicator
//   experts   received rows regrouped so each expert's rows are contiguous, then per expert
//             gate_up = x W13^T, act = silu(gate) * up, y = act W2^T: one GEMM per expert,
//             launched back to back on the stream with no synchronisation in between
//   return    the reverse exchange brings the results back in send order
//   combine   residual += sum over the k slots, in slot order, of weight x result  (CombineAdd)
//
// FIRST VERSION, on purpose: the routing is copied to the host and the stream synchronised once
// per layer, so the CPU BuildDispatchLayout plans the dispatch. That goes away with a GPU-side
// layout (a device counting sort) and fixed-capacity dispatch buffers.
//
// How rows cross ranks:
//   NCCL (one rank per GPU, a NcclExchange given, several ranks, no forced staging): the counts go
//     to the device, through NcclExchange::AllToAllCounts and back to the host (one copy each way
//     and one synchronisation per layer: the host needs them for the layout); the bf16 rows go
//     device to device with NcclExchange::AllToAllRows, for dispatch and for the return trip, with
//     no further synchronisation.
//   host staging (the fallback, and when several ranks share one GPU, where NCCL cannot run):
//     float32 rows through the host and Communicator::AllToAllRows; counts over the Communicator.
//   one rank and no forced staging: the exchanges are the identity and the rows stay where they are.
// Either way each expert sees the same rows and CombineAdd sums the k slots in slot order, so the
// results do not depend on the exchange (bf16 rows cross ranks exactly in both paths).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <span>
#include <vector>

#include "coordinator/placement.h"
#include "kernels/kernels.h"
#include "worker/comm/communicator.h"
#include "worker/gpu/device_buffer.h"
#include "worker/gpu/device_weights.h"
#include "worker/gpu/gemm.h"
#include "worker/gpu/nccl_exchange.h"
#include "worker/gpu/stage_profiler.h"
#include "worker/model/config.h"
#include "worker/moe/load_stats.h"
#include "worker/moe/moe_layer.h"

namespace moe::gpu {

class GpuMoeLayer {
 public:
  // `force_host_staging`: exchange rows through the host and the Communicator even with one rank
  // (tests use it to check the staging path on one GPU); it also wins over `nccl`.
  // `nccl` (optional, not owned, same ranks as `comm`): the device-to-device exchange.
  GpuMoeLayer(const ModelConfig& c, const PlacementPlan& plan, Communicator& comm, LoadStats& stats, Gemm& gemm,
              cudaStream_t stream, bool force_host_staging, NcclExchange* nccl = nullptr);

  // A collective: every rank calls it for every layer, with T = 0 when it has no rows.
  // h: the normalised hidden states [T, H] (bf16); residual [T, H] (float32) gets the layer's output added.
  // When `record` is given, the router logits [T, E] and the routing are copied there (as on the CPU).
  void Forward(int64_t layer, const DeviceMoeWeights& w, const bf16* h, int64_t T, float* residual,
               StageProfiler& prof, MoeLayer::Record* record = nullptr);

 private:
  // Rows exchange through the host: bf16 rows -> float32 -> host -> AllToAllRows -> device -> bf16.
  void ExchangeRows(const bf16* send, std::span<const int64_t> send_rows, bf16* recv,
                    std::span<const int64_t> recv_rows);
  // The counts all-to-all through NCCL: to the device, exchanged, back to the host (synchronises).
  void ExchangeCountsNccl(std::span<const int64_t> send, std::span<int64_t> recv, int64_t count);

  const ModelConfig& c_;
  const PlacementPlan& plan_;
  Communicator& comm_;
  LoadStats& stats_;
  Gemm& gemm_;
  cudaStream_t stream_;
  bool staging_;
  NcclExchange* nccl_;  // null: no NCCL (host staging between ranks)

  DeviceBuffer<float> logits_, weights_, stage_;
  DeviceBuffer<int32_t> experts_, index_;
  DeviceBuffer<bf16> send_, recv_, grouped_, gate_up_, act_, result_, computed_, returned_;
  PinnedBuffer<int32_t> h_experts_, h_index_;
  PinnedBuffer<float> h_send_, h_recv_;
  DeviceBuffer<int64_t> d_counts_;  // NCCL counts: send [W*E] then recv [W*E]
  PinnedBuffer<int64_t> h_counts_;
  std::vector<int64_t> recv_counts_, recv_rows_;
};

}  // namespace moe::gpu
