#include "worker/gpu/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/status.h"
#include "worker/moe/dispatch.h"
#include "worker/moe/router.h"

namespace moe::gpu {

GpuMoeLayer::GpuMoeLayer(const ModelConfig& c, const PlacementPlan& plan, Communicator& comm, LoadStats& stats,
                         Gemm& gemm, cudaStream_t stream, const DeviceWeights& weights, bool force_host_staging,
                         NcclExchange* nccl, PeerExchange* peers)
    : c_(c),
      plan_(plan),
      comm_(comm),
      stats_(stats),
      gemm_(gemm),
      stream_(stream),
      staging_(force_host_staging),
      nccl_(nccl),
      peers_(peers) {
  if (nccl_ != nullptr) {
    MOE_CHECK(nccl_->size() == comm_.size() && nccl_->rank() == comm_.rank(), "NCCL rank ", nccl_->rank(), " of ",
              nccl_->size(), " but Communicator rank ", comm_.rank(), " of ", comm_.size());
  }
  if (peers_ != nullptr) {
    MOE_CHECK(peers_->size() == comm_.size() && peers_->rank() == comm_.rank(), "peer exchange rank ",
              peers_->rank(), " of ", peers_->size(), " but Communicator rank ", comm_.rank(), " of ", comm_.size());
  }
  const int64_t L = c.num_layers, E = c.num_experts;
  std::vector<const bf16*> w13(static_cast<size_t>(L * E), nullptr), w2(w13.size(), nullptr);
  local_experts_.assign(static_cast<size_t>(L), 0);
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t e = 0; e < E; ++e) {
      const DeviceExpertWeights& x = weights.moe[l].experts[e];
      w13[l * E + e] = x.w13;
      w2[l * E + e] = x.w2;
      local_experts_[l] += x.w13 != nullptr;
    }
  }
  host_w13_ = w13;
  host_w2_ = w2;
  expert_stride_ = weights.expert_stride();
  evenly_spaced_ = expert_stride_ > 0;
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t e = 0; e < E; ++e) {
      const int64_t i = l * E + e;
      evenly_spaced_ = evenly_spaced_ && w13[i] != nullptr && w13[i] == w13[l * E] + e * expert_stride_ &&
                       w2[i] == w2[l * E] + e * expert_stride_;
    }
  }
  w13_ = DeviceBuffer<const bf16*>(w13.size());
  w2_ = DeviceBuffer<const bf16*>(w2.size());
  MOE_CUDA_CHECK(cudaMemcpy(w13_.get(), w13.data(), sizeof(const bf16*) * w13.size(), cudaMemcpyHostToDevice));
  MOE_CUDA_CHECK(cudaMemcpy(w2_.get(), w2.data(), sizeof(const bf16*) * w2.size(), cudaMemcpyHostToDevice));
  group_ptrs_ = DeviceBuffer<void*>(static_cast<size_t>(6 * E));
  offsets_ = DeviceBuffer<int32_t>(static_cast<size_t>(E + 1));
  active_ = DeviceBuffer<int32_t>(static_cast<size_t>(E));
  const size_t counters = std::max(SkinnyCounters(c.intermediate_size, SkinnyEpilogue::kSwiGluBf16, E),
                                   SkinnyCounters(c.hidden_size, SkinnyEpilogue::kStoreBf16, E));
  counters_ = DeviceBuffer<int32_t>(counters);
  MOE_CUDA_CHECK(cudaMemset(counters_.get(), 0, sizeof(int32_t) * counters));
  h_offsets_.EnsureSize(static_cast<size_t>(E + 1));

  // The device exchange needs one rank per expert (PlacementPlan::route is then the owner).
  const int W = comm.size();
  single_owner_ = W > 1 && W <= E && E <= 256 && ExchangeHeaderFits(E, c.hidden_size);
  int64_t most = 1;
  std::vector<int32_t> owner(static_cast<size_t>(L * E), 0);
  for (int64_t l = 0; l < L && single_owner_; ++l) {
    for (int64_t e = 0; e < E; ++e) {
      const std::vector<int>& r = plan.replicas(l, e);
      single_owner_ = single_owner_ && r.size() == 1;
      owner[l * E + e] = r[0];
    }
    for (int d = 0; d < W; ++d) most = std::max<int64_t>(most, plan.experts_on_rank(l, d).size());
  }
  exchange_rows_per_token_ = std::min<int64_t>(c.experts_per_token, most);
  if (single_owner_) {
    owner_ = DeviceBuffer<int32_t>(owner.size());
    MOE_CUDA_CHECK(cudaMemcpy(owner_.get(), owner.data(), sizeof(int32_t) * owner.size(), cudaMemcpyHostToDevice));
    recv_offsets_ = DeviceBuffer<int32_t>(static_cast<size_t>(E + 1));
  }
}

void GpuMoeLayer::BuildTensorMaps() {
  const int64_t H = c_.hidden_size, I = c_.intermediate_size;
  std::vector<WeightTensorMap> m13(host_w13_.size()), m2(host_w2_.size());
  BuildWeightTensorMaps(host_w13_.data(), static_cast<int64_t>(host_w13_.size()), 2 * I, H, m13.data());
  BuildWeightTensorMaps(host_w2_.data(), static_cast<int64_t>(host_w2_.size()), H, I, m2.data());
  maps13_ = DeviceBuffer<WeightTensorMap>(m13.size());
  maps2_ = DeviceBuffer<WeightTensorMap>(m2.size());
  MOE_CUDA_CHECK(cudaMemcpy(maps13_.get(), m13.data(), sizeof(WeightTensorMap) * m13.size(), cudaMemcpyHostToDevice));
  MOE_CUDA_CHECK(cudaMemcpy(maps2_.get(), m2.data(), sizeof(WeightTensorMap) * m2.size(), cudaMemcpyHostToDevice));
}

bool GpuMoeLayer::DeviceOnly(const StepRows& rows) const {
  if (Local()) {
    return SkinnyExperts(rows.local * c_.experts_per_token, c_.num_experts, false) || WgmmaExperts(false) ||
           PaddedExperts(rows.local);
  }
  return DeviceExchange(rows) &&
         (SkinnyExperts(rows.total * c_.experts_per_token, c_.num_experts, true) || WgmmaExperts(true));
}

SkinnyPlan PlanSkinny(const ModelConfig& c, int64_t R, int64_t local, int64_t plan_rows, int forced_up,
                      int forced_down) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  SkinnyPlan p;
  if (plan_rows <= 0) plan_rows = R;
  // Rows per expert the register tiles are sized for: the mean plus three standard deviations of a
  // binomial spread, so an expert rarely needs a second pass over its weights.
  const double mean = static_cast<double>(plan_rows) / static_cast<double>(local);
  p.expected = static_cast<int64_t>(std::ceil(mean + 3.0 * std::sqrt(mean) + 1.0));
  // Experts with rows: about local * (1 - (1 - 1/local)^R) when rows pick experts independently.
  const double active = static_cast<double>(local) * (1.0 - std::pow(1.0 - 1.0 / static_cast<double>(local),
                                                                     static_cast<double>(plan_rows)));
  const int64_t groups = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(active - 1e-9)), 1, local);
  p.splits_up = forced_up > 0 ? forced_up : SkinnySplits(I, H, SkinnyEpilogue::kSwiGluBf16, groups, p.expected);
  p.splits_down = forced_down > 0 ? forced_down : SkinnySplits(H, I, SkinnyEpilogue::kStoreBf16, groups, p.expected);
  p.workspace = std::max(SkinnyWorkspaceFloats(R, I, SkinnyEpilogue::kSwiGluBf16, p.splits_up),
                         SkinnyWorkspaceFloats(R, H, SkinnyEpilogue::kStoreBf16, p.splits_down));
  return p;
}

bool GpuMoeLayer::Reserve(const StepRows& rows) {
  step_ = rows;
  const int64_t T = rows.local, E = c_.num_experts, n = T * c_.experts_per_token;
  bool grew = false;
  grew |= logits_.EnsureSize(static_cast<size_t>(T * E));
  grew |= experts_.EnsureSize(static_cast<size_t>(n));
  grew |= weights_.EnsureSize(static_cast<size_t>(n));
  if (DeviceExchange(rows)) {  // never on the local path: it needs several ranks
    const int64_t H = c_.hidden_size, I = c_.intermediate_size, W = comm_.size();
    const int64_t blocks = W * (ExchangeCap(rows) + 1), bound = ReceiveBound(rows);  // + the header rows
    grew |= index_.EnsureSize(static_cast<size_t>(3 * n + bound));
    if (peers_ != nullptr) {  // the blocks live in the peer exchange's regions, sized for the largest step
      MOE_CHECK(sizeof(bf16) * static_cast<size_t>(blocks * H) <= peers_->block_bytes(), "peer exchange: ", blocks,
                " rows of blocks do not fit its ", peers_->block_bytes(), " bytes");
    } else {
      grew |= send_.EnsureSize(static_cast<size_t>(blocks * H));
      grew |= recv_.EnsureSize(static_cast<size_t>(blocks * H));
      grew |= computed_.EnsureSize(static_cast<size_t>(blocks * H));
      grew |= returned_.EnsureSize(static_cast<size_t>(blocks * H));
    }
    grew |= act_.EnsureSize(static_cast<size_t>(bound * I));
    grew |= result_.EnsureSize(static_cast<size_t>(bound * H));
    size_t workspace = 0;  // the largest any layer's share of experts needs
    for (int64_t l = 0; l < c_.num_layers; ++l) {
      const int64_t local = std::max<int64_t>(1, local_experts_[l]);
      workspace = std::max(workspace, PlanExperts(bound, local, ExpectedRows(rows, local)).workspace);
    }
    grew |= split_.EnsureSize(workspace);
    if (WgmmaExperts(true)) {
      grew |= grouped_.EnsureSize(static_cast<size_t>(bound * H));  // the TMA shapes' rows, gathered
      if (maps13_.size() == 0) BuildTensorMaps();  // once, before a step that may be captured
    }
    return grew;
  }
  grew |= index_.EnsureSize(static_cast<size_t>(2 * n));
  if (PaddedExperts(T)) {
    const int64_t padded = E * T, H = c_.hidden_size, I = c_.intermediate_size;
    // The padding rows are never written (GatherPadded, SwiGluPadded); rows do not mix in a
    // product, so what they hold never reaches a real row. Zeroed when allocated here all the same.
    auto ensure_zeroed = [&](DeviceBuffer<bf16>& b, int64_t elems) {
      if (!b.EnsureSize(static_cast<size_t>(elems))) return false;
      MOE_CUDA_CHECK(cudaMemsetAsync(b.get(), 0, sizeof(bf16) * b.size(), stream_));
      return true;
    };
    grew |= padded_position_.EnsureSize(static_cast<size_t>(n));
    grew |= ensure_zeroed(grouped_, padded * H);
    grew |= gate_up_.EnsureSize(static_cast<size_t>(padded * 2 * I));
    grew |= ensure_zeroed(act_, padded * I);
    grew |= result_.EnsureSize(static_cast<size_t>(padded * H));
    return grew;
  }
  grew |= act_.EnsureSize(static_cast<size_t>(n * c_.intermediate_size));
  if (WgmmaExperts(false)) {
    grew |= grouped_.EnsureSize(static_cast<size_t>(n * c_.hidden_size));
    if (maps13_.size() == 0) BuildTensorMaps();  // once, before any step that may be captured
  }
  grew |= result_.EnsureSize(static_cast<size_t>(n * c_.hidden_size));
  if (n > 0 && SkinnyExperts(n, c_.num_experts, false)) {
    grew |= split_.EnsureSize(PlanExperts(n, c_.num_experts).workspace);
  }
  return grew;
}

void GpuMoeLayer::Forward(int64_t layer, const DeviceMoeWeights& w, float* residual, bf16* h, int64_t T,
                          StageProfiler& prof, MoeLayer::Record* record, int32_t* expert_counts,
                          const NextNorm& next) {
  // The layer's norm and the router logits, one kernel: every path routes from logits_.
  logits_.EnsureSize(static_cast<size_t>(T * c_.num_experts));
  RmsNormRouter(residual, w.norm, T, c_.hidden_size, static_cast<float>(c_.rms_norm_eps), h, w.router,
                c_.num_experts, logits_.get(), stream_);
  if (Local()) {
    ForwardLocal(layer, h, T, residual, prof, record, expert_counts, next);
  } else if (record == nullptr && DeviceExchange(step_)) {
    MOE_CHECK(T == step_.local, "MoE layer: ", T, " rows but the step reserved ", step_.local);
    ForwardDeviceExchange(layer, h, T, residual, prof, expert_counts, next);
  } else {
    ForwardExchange(layer, w, h, T, residual, prof, record, next);
  }
}

void GpuMoeLayer::Combine(const bf16* y, const int32_t* position, int64_t T, float* residual, const NextNorm& next) {
  const int64_t H = c_.hidden_size, k = c_.experts_per_token;
  if (next.weight != nullptr) {
    CombineAddRmsNorm(y, position, weights_.get(), T, k, H, residual, next.weight, next.eps, next.out, stream_);
  } else {
    CombineAdd(y, position, weights_.get(), T, k, H, residual, stream_);
  }
}

void GpuMoeLayer::RouteOnDevice(int64_t T, int32_t* src_row, int32_t* position, int32_t* active,
                                int32_t* expert_counts) {
  RouteAndGroup(logits_.get(), T, c_.num_experts, c_.experts_per_token, experts_.get(), weights_.get(), src_row,
                position, offsets_.get(), active, expert_counts, stream_);
}

void GpuMoeLayer::ForwardLocal(int64_t layer, const bf16* h, int64_t T, float* residual,
                               StageProfiler& prof, MoeLayer::Record* record, int32_t* expert_counts,
                               const NextNorm& next) {
  const int64_t k = c_.experts_per_token;
  const int64_t n = T * k;  // the buffers for T rows were sized by Reserve before the step
  int32_t* src_row = index_.get();  // grouped row -> token row
  int32_t* position = src_row + n;  // slot -> grouped row
  RouteOnDevice(T, src_row, position, active_.get(), expert_counts);
  prof.Mark(layer, Boundary::kRouterEnd, stream_);
  if (record != nullptr) RecordRouting(T, *record, nullptr);
  prof.Mark(layer, Boundary::kDispatchEnd, stream_);
  if (PaddedExperts(T)) {
    ExpertsPadded(layer, h, T, position);
    prof.Mark(layer, Boundary::kExpertsEnd, stream_);
    Combine(result_.get(), padded_position_.get(), T, residual, next);
    prof.Mark(layer, Boundary::kCombineEnd, stream_);
    return;
  }
  // With cuBLAS experts, Experts fetches the per-expert row counts to the host (one synchronisation).
  const ExpertKernel kernel = SkinnyExperts(n, c_.num_experts, false) ? ExpertKernel::kSkinny
                              : WgmmaExperts(false)                   ? ExpertKernel::kWgmma
                                                                      : ExpertKernel::kBlas;
  Experts(kernel, layer, h, src_row, n, offsets_.get(), nullptr, result_.get(), active_.get());
  prof.Mark(layer, Boundary::kExpertsEnd, stream_);
  Combine(result_.get(), position, T, residual, next);
  prof.Mark(layer, Boundary::kCombineEnd, stream_);
}

void GpuMoeLayer::ForwardDeviceExchange(int64_t layer, const bf16* h, int64_t T,
                                        float* residual, StageProfiler& prof, int32_t* expert_counts,
                                        const NextNorm& next) {
  const int64_t H = c_.hidden_size, E = c_.num_experts, k = c_.experts_per_token;
  const int W = comm_.size();
  const int64_t n = T * k, cap = ExchangeCap(step_), bound = ReceiveBound(step_);
  int32_t* src_row = index_.get();         // grouped row -> token row (RouteAndGroup)
  int32_t* position = src_row + n;         // slot -> grouped row (RouteAndGroup)
  int32_t* combine_pos = position + n;     // slot -> send row, where its result returns
  int32_t* group_src = combine_pos + n;    // received grouped row -> received row

  // Route and group by expert, as on the local path.
  RouteOnDevice(T, src_row, position, nullptr, expert_counts);
  prof.Mark(layer, Boundary::kRouterEnd, stream_);

  // Dispatch: fixed-size blocks with their counts in a header row, so no host needs the counts.
  // Through NCCL whole blocks; into the peers' regions only the rows that exist, then a wait for
  // every source's.
  const PeerTargets to_experts = peers_ != nullptr ? peers_->Dispatch(cap + 1) : PeerTargets{};
  bf16* recv = peers_ != nullptr ? peers_->recv() : recv_.get();
  PackForExchange(h, src_row, position, offsets_.get(), owner_.get() + layer * E, E, W, n, cap, H, send_.get(),
                  combine_pos, stream_, to_experts);
  const std::vector<int64_t> blocks(static_cast<size_t>(W), cap + 1);
  if (peers_ != nullptr) {
    WaitPeers(peers_->own_flags(0), W, peers_->epoch(0), PeerExchange::kWaitTimeoutS, stream_);
  } else {
    nccl_->AllToAllRows(send_.get(), blocks, recv, blocks, H, stream_);
  }
  GroupReceived(recv, W, E, cap, H, recv_offsets_.get(), group_src, active_.get(), stream_);
  prof.Mark(layer, Boundary::kDispatchEnd, stream_);

  // Experts on the received rows. Skinny or wgmma (as DeviceOnly decides): how many rows came is
  // known on the device only, `bound` sizes the work. cuBLAS: the counts come to the host
  // (synchronises).
  const int64_t local = std::max<int64_t>(1, local_experts_[layer]);
  if (SkinnyExperts(step_.total * k, E, true)) {
    Experts(ExpertKernel::kSkinny, layer, recv, group_src, bound, recv_offsets_.get(), nullptr, result_.get(),
            active_.get(), ExpectedRows(step_, local));
  } else if (WgmmaExperts(true)) {
    Experts(ExpertKernel::kWgmma, layer, recv, group_src, bound, recv_offsets_.get(), nullptr, result_.get(), nullptr,
            ExpectedRows(step_, local));
  } else {
    MOE_CUDA_CHECK(cudaMemcpyAsync(h_offsets_.get(), recv_offsets_.get(), sizeof(int32_t) * (E + 1),
                                   cudaMemcpyDeviceToHost, stream_));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    const int64_t R = h_offsets_.get()[E];  // <= bound: result_ is sized
    Experts(ExpertKernel::kBlas, layer, recv, group_src, R, recv_offsets_.get(), h_offsets_.get(), result_.get());
  }
  // The results back to their sources: into the blocks NCCL returns, or straight into the sources'.
  const PeerTargets to_sources = peers_ != nullptr ? peers_->Return(cap + 1) : PeerTargets{};
  ScatterRows(result_.get(), group_src, recv_offsets_.get() + E, bound, H, computed_.get(), stream_, to_sources);
  prof.Mark(layer, Boundary::kExpertsEnd, stream_);

  // Return the same blocks; combine.
  bf16* returned = peers_ != nullptr ? peers_->returned() : returned_.get();
  if (peers_ != nullptr) {
    WaitPeers(peers_->own_flags(1), W, peers_->epoch(1), PeerExchange::kWaitTimeoutS, stream_);
  } else {
    nccl_->AllToAllRows(computed_.get(), blocks, returned, blocks, H, stream_);
  }
  Combine(returned, combine_pos, T, residual, next);
  prof.Mark(layer, Boundary::kCombineEnd, stream_);
}

void GpuMoeLayer::RecordRouting(int64_t T, MoeLayer::Record& record, std::vector<int32_t>* experts_out) {
  const int64_t E = c_.num_experts, k = c_.experts_per_token, n = T * k;
  record.router_logits.resize(static_cast<size_t>(T * E));
  record.routing.tokens = T;
  record.routing.k = k;
  record.routing.expert.resize(static_cast<size_t>(n));
  record.routing.weight.resize(static_cast<size_t>(n));
  if (T > 0) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(record.router_logits.data(), logits_.get(), sizeof(float) * T * E,
                                   cudaMemcpyDeviceToHost, stream_));
    MOE_CUDA_CHECK(cudaMemcpyAsync(record.routing.expert.data(), experts_.get(), sizeof(int32_t) * n,
                                   cudaMemcpyDeviceToHost, stream_));
    MOE_CUDA_CHECK(cudaMemcpyAsync(record.routing.weight.data(), weights_.get(), sizeof(float) * n,
                                   cudaMemcpyDeviceToHost, stream_));
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (experts_out != nullptr) *experts_out = record.routing.expert;
}

void GpuMoeLayer::Experts(ExpertKernel kernel, int64_t layer, const bf16* x, const int32_t* row_index, int64_t R,
                          const int32_t* d_offsets, const int32_t* h_offsets, bf16* out, const int32_t* active,
                          int64_t plan_rows) {
  if (R == 0) return;
  const int64_t H = c_.hidden_size, E = c_.num_experts, I = c_.intermediate_size;
  const int64_t local = std::max<int64_t>(1, local_experts_[layer]);
  act_.EnsureSize(static_cast<size_t>(R * I));
  // plan_rows: the device exchange's skinny call (its rows are known on the device only).
  if (kernel == ExpertKernel::kSkinny) {
    const SkinnyPlan p = PlanExperts(R, local, plan_rows);
    split_.EnsureSize(p.workspace);
    // Every expert gets at most one row per token, so with at most 8 tokens (the local path) every
    // expert's rows fit one pass of the smallest tile and the last CTA of each tile can add the
    // split-K sums. With more rows that serial sum in one CTA costs more than a reduction launch.
    const int64_t T = R / c_.experts_per_token;
    const bool one_pass = active != nullptr && plan_rows <= 0 && T <= 8 && SkinnyTileCount(p.expected) == 1;
    int32_t* counters = one_pass ? counters_.get() : nullptr;
    SkinnyGroups up;
    up.count = E;
    up.offsets = d_offsets;
    up.weights = w13_.get() + layer * E;
    up.row_index = row_index;
    up.active = active;
    up.slots = std::min(local, R);  // at most R of the rank's experts have rows
    SkinnyGemm(x, H, up, I, SkinnyEpilogue::kSwiGluBf16, act_.get(), p.expected, p.splits_up, split_.get(), R,
               counters, stream_);
    SkinnyGroups down;
    down.count = E;
    down.offsets = d_offsets;
    down.weights = w2_.get() + layer * E;
    down.active = active;
    down.slots = std::min(local, R);
    down.ready = true;  // made before the gate/up product started: its weights stream while that one ends
    SkinnyGemm(act_.get(), I, down, H, SkinnyEpilogue::kStoreBf16, out, p.expected, p.splits_down, split_.get(), R,
               counters, stream_);
    return;
  }

  // The grouped wgmma kernel: the tiles are planned from the offsets on the device (R may be a
  // bound: it sizes the grid). Its TMA shapes read the rows in expert order, gathered first (behind
  // the device exchange, where R is a bound, the gather stops at the received count on the device).
  // kAuto there: the warp-specialised TMA shape, the fastest at an expert-parallel rank's rows (one
  // H100: benchmarks/NOTES.md, session 33), and for the down product of a rank's few experts with
  // about an m-tile of rows each, the narrower tile when 128 columns would leave SMs idle
  // (session 36); on the local path the kernel's own choice.
  if (kernel == ExpertKernel::kWgmma) {
    GroupedTile tile = tuning_.wgmma_tile, down_tile = tile;
    if (tile == GroupedTile::kTma128x64) tile = GroupedTile::kTma128x128;  // it has no SwiGLU epilogue: down only
    if (tile == GroupedTile::kAuto && !Local()) {
      tile = down_tile = GroupedTile::kTma128x128;
      if (plan_rows > 0) down_tile = GroupedStoreTile(local, H, plan_rows, DeviceSmCount());
    }
    SkinnyGroups up;
    up.count = E;
    up.offsets = d_offsets;
    up.weights = w13_.get() + layer * E;
    up.weight_maps = maps13_.size() > 0 ? maps13_.get() + layer * E : nullptr;
    up.row_index = row_index;
    const bf16* in = x;
    if (GroupedTileReadsRowsInOrder(tile) && row_index != nullptr) {
      // grouped_ is sized by Reserve.
      GatherRows(x, row_index, R, H, grouped_.get(), stream_, Local() ? nullptr : d_offsets + E);
      in = grouped_.get();
      up.row_index = nullptr;
    }
    GroupedGemm(in, H, up, I, SkinnyEpilogue::kSwiGluBf16, act_.get(), R, stream_, tile);
    SkinnyGroups down;
    down.count = E;
    down.offsets = d_offsets;
    down.weights = w2_.get() + layer * E;
    down.weight_maps = maps2_.size() > 0 ? maps2_.get() + layer * E : nullptr;
    GroupedGemm(act_.get(), I, down, H, SkinnyEpilogue::kStoreBf16, out, R, stream_, down_tile);
    return;
  }
  // cuBLAS: the sizes must be on the host (one synchronisation). The host waits for their copy
  // alone: the gather of the rows in expert order needs no sizes, so it runs on the device while
  // the host wakes up and issues the products.
  const bool fetch_sizes = h_offsets == nullptr;
  if (fetch_sizes) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(h_offsets_.get(), d_offsets, sizeof(int32_t) * (E + 1), cudaMemcpyDeviceToHost,
                                   stream_));
    MOE_CUDA_CHECK(cudaEventRecord(sizes_copied_.get(), stream_));
  }
  const bf16* in = x;
  if (row_index != nullptr) {
    grouped_.EnsureSize(static_cast<size_t>(R * H));
    GatherRows(x, row_index, R, H, grouped_.get(), stream_);
    in = grouped_.get();
  }
  if (fetch_sizes) {
    MOE_CUDA_CHECK(cudaEventSynchronize(sizes_copied_.get()));
    h_offsets = h_offsets_.get();
  }
  gate_up_.EnsureSize(static_cast<size_t>(R * 2 * I));
  if (tuning_.blas == ExpertGemmTuning::Blas::kGrouped) {
    std::vector<int> rows;
    for (int64_t e = 0; e < E; ++e) {
      if (h_offsets[e + 1] > h_offsets[e]) rows.push_back(h_offsets[e + 1] - h_offsets[e]);
    }
    const int G = static_cast<int>(rows.size());
    // Pointer arrays (weights, inputs, outputs) of the w13 call, then of the w2 call.
    void** base = group_ptrs_.get();
    auto weights = [&](int i) { return static_cast<const bf16**>(static_cast<void*>(base + 3 * i * E)); };
    auto inputs = [&](int i) { return static_cast<const bf16**>(static_cast<void*>(base + (3 * i + 1) * E)); };
    auto outputs = [&](int i) { return static_cast<bf16**>(static_cast<void*>(base + (3 * i + 2) * E)); };
    GroupPointers(d_offsets, E, w13_.get() + layer * E, in, H, gate_up_.get(), 2 * I, weights(0), inputs(0),
                  outputs(0), stream_);
    gemm_.LinearGrouped(inputs(0), rows.data(), G, H, weights(0), 2 * I, outputs(0));
    SwiGlu(gate_up_.get(), R, I, act_.get(), stream_);
    GroupPointers(d_offsets, E, w2_.get() + layer * E, act_.get(), I, out, H, weights(1), inputs(1), outputs(1),
                  stream_);
    gemm_.LinearGrouped(inputs(1), rows.data(), G, I, weights(1), H, outputs(1));
    return;
  }
  // One cuBLAS GEMM per expert: gate_up, SwiGLU and down projection of expert e on its own rows,
  // either back to back on the main stream or, concurrent, each expert on a side stream.
  const bool concurrent = tuning_.blas == ExpertGemmTuning::Blas::kConcurrent;
  if (concurrent) {
    if (fanout_ == nullptr) {
      const int64_t width = std::min<int64_t>(E, tuning_.concurrent_streams);
      fanout_ = std::make_unique<GemmFanout>(stream_, static_cast<int>(std::max<int64_t>(1, width)));
    }
    fanout_->Fork();
  }
  int next = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t start = h_offsets[e], rows = h_offsets[e + 1] - start;
    if (rows == 0) continue;
    Gemm& g = concurrent ? (*fanout_)[next++ % fanout_->width()] : gemm_;
    g.LinearBlas(in + start * H, rows, H, host_w13_[layer * E + e], 2 * I, gate_up_.get() + start * 2 * I);
    SwiGlu(gate_up_.get() + start * 2 * I, rows, I, act_.get() + start * I, g.stream());
    g.LinearBlas(act_.get() + start * I, rows, I, host_w2_[layer * E + e], H, out + start * H);
  }
  if (concurrent) fanout_->Join();
}

void GpuMoeLayer::ExpertsPadded(int64_t layer, const bf16* h, int64_t T, const int32_t* position) {
  const int64_t H = c_.hidden_size, E = c_.num_experts, I = c_.intermediate_size, n = T * c_.experts_per_token;
  GatherPadded(h, offsets_.get(), experts_.get(), position, n, c_.experts_per_token, T, H, grouped_.get(),
               padded_position_.get(), stream_);  // the buffers were sized (and zeroed) by Reserve
  const StridedBatch experts{E, expert_stride_};
  gemm_.LinearBatched(grouped_.get(), T, H, host_w13_[layer * E], experts, 2 * I, gate_up_.get());
  SwiGluPadded(gate_up_.get(), offsets_.get(), E, T, I, act_.get(), stream_);
  gemm_.LinearBatched(act_.get(), T, I, host_w2_[layer * E], experts, H, result_.get());
}

void GpuMoeLayer::ForwardExchange(int64_t layer, const DeviceMoeWeights& w, const bf16* h, int64_t T, float* residual,
                                  StageProfiler& prof, MoeLayer::Record* record, const NextNorm& next) {
  const int64_t H = c_.hidden_size, E = c_.num_experts, k = c_.experts_per_token;
  const int W = comm_.size();
  const int64_t n = T * k;  // routed rows this rank sends
  const bool use_nccl = !staging_ && nccl_ != nullptr;  // rows device to device

  // Route.
  experts_.EnsureSize(static_cast<size_t>(n));
  weights_.EnsureSize(static_cast<size_t>(n));
  RouterTopK(logits_.get(), T, E, k, experts_.get(), weights_.get(), stream_);
  prof.Mark(layer, Boundary::kRouterEnd, stream_);

  // Dispatch plan: the expert ids come to the host (one stream synchronisation per layer) and the
  // CPU BuildDispatchLayout orders the rows (replicas chosen by the plan).
  Routing routing;
  routing.tokens = T;
  routing.k = k;
  if (record != nullptr) {
    RecordRouting(T, *record, &routing.expert);
  } else {
    h_experts_.EnsureSize(static_cast<size_t>(n));
    if (n > 0) {
      MOE_CUDA_CHECK(cudaMemcpyAsync(h_experts_.get(), experts_.get(), sizeof(int32_t) * n, cudaMemcpyDeviceToHost,
                                     stream_));
    }
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    routing.expert.assign(h_experts_.get(), h_experts_.get() + n);  // the weights stay on the device
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
  const size_t n_index = static_cast<size_t>(2 * n + 2 * R + E + 1);
  h_index_.EnsureSize(n_index);  // the last use of the pinned buffer ended with a synchronisation
  int32_t* src_row = h_index_.get();      // send position -> local token row
  int32_t* position = src_row + n;        // routed slot -> send position
  int32_t* group_src = position + n;      // grouped row -> received row
  int32_t* ungroup = group_src + R;       // received row -> grouped row
  int32_t* expert_start = ungroup + R;    // [E + 1]
  for (int64_t p = 0; p < n; ++p) src_row[p] = static_cast<int32_t>(layout.order[p] / k);
  for (int64_t i = 0; i < n; ++i) position[i] = static_cast<int32_t>(layout.position[i]);
  bool identity = true;
  int64_t g = 0;
  for (int64_t e = 0; e < E; ++e) {
    expert_start[e] = static_cast<int32_t>(g);
    for (int s = 0; s < W; ++s) {
      const int64_t b = s * E + e;
      for (int64_t r = recv_offset[b]; r < recv_offset[b + 1]; ++r, ++g) {
        group_src[g] = static_cast<int32_t>(r);
        ungroup[r] = static_cast<int32_t>(g);
        identity = identity && r == g;
      }
    }
    MOE_CHECK(expert_start[e] == g || w.holds(e), "rows arrived for expert ", e, " of layer ", layer,
              " which this rank does not hold");
  }
  expert_start[E] = static_cast<int32_t>(g);
  index_.EnsureSize(n_index);
  MOE_CUDA_CHECK(cudaMemcpyAsync(index_.get(), h_index_.get(), sizeof(int32_t) * n_index, cudaMemcpyHostToDevice,
                                 stream_));
  const int32_t* d_src_row = index_.get();
  const int32_t* d_position = d_src_row + n;
  const int32_t* d_group_src = d_position + n;
  const int32_t* d_ungroup = d_group_src + R;
  const int32_t* d_expert_start = d_ungroup + R;

  // Permute, exchange.
  send_.EnsureSize(static_cast<size_t>(n * H));
  GatherRows(h, d_src_row, n, H, send_.get(), stream_);
  recv_.EnsureSize(static_cast<size_t>(R * H));
  if (use_nccl) {
    nccl_->AllToAllRows(send_.get(), layout.send_rows, recv_.get(), recv_rows_, H, stream_);
  } else {
    ExchangeRows(send_.get(), layout.send_rows, recv_.get(), recv_rows_);
  }
  prof.Mark(layer, Boundary::kDispatchEnd, stream_);

  // Experts, reading the received rows in expert order; results back in received order.
  result_.EnsureSize(static_cast<size_t>(R * H));
  const int64_t local = std::max<int64_t>(1, local_experts_[layer]);
  Experts(SkinnyExperts(R, local, false) ? ExpertKernel::kSkinny : ExpertKernel::kBlas, layer, recv_.get(),
          identity ? nullptr : d_group_src, R, d_expert_start, expert_start, result_.get());
  bf16* computed = result_.get();
  if (!identity) {
    computed_.EnsureSize(static_cast<size_t>(R * H));
    GatherRows(result_.get(), d_ungroup, R, H, computed_.get(), stream_);
    computed = computed_.get();
  }
  prof.Mark(layer, Boundary::kExpertsEnd, stream_);

  // Return and combine.
  returned_.EnsureSize(static_cast<size_t>(n * H));
  if (use_nccl) {
    nccl_->AllToAllRows(computed, recv_rows_, returned_.get(), layout.send_rows, H, stream_);
  } else {
    ExchangeRows(computed, recv_rows_, returned_.get(), layout.send_rows);
  }
  Combine(returned_.get(), d_position, T, residual, next);
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
