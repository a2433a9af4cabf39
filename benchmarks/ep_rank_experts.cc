// The experts of one expert-parallel rank in a decode step (kernel_bench.h), on one GPU: rank 0 of
// W holds E / W experts and receives the rows the job's `total` tokens route to them (top-k of E
// drawn per token, seeded). Behind the device exchange the rows per expert are known on the device
// only, so the rank runs them one of three ways (GpuMoeLayer, ExpertGemmTuning):
//   cublas   the counts come to the host (copy + wait, inside the time as the engine pays them),
//            the rows are gathered in expert order, one GEMM per expert on concurrent streams,
//            SwiGLU between: the step cannot be a CUDA graph;
//   wgmma    the grouped wgmma kernel (GroupedGemm) reads the counts on the device; its grid is
//            sized by the bound on the received rows, as the engine's;
//   skinny   the skinny kernel, sized for the expected rows (more take extra passes).
// Each is timed per layer (median of 16, four routings in turn). Issue #5's four-GPU bar (batch
// 256 over four ranks: 64 tokens a rank, 64 rows an expert) is this figure's W = 4, total 256 row.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "benchmarks/kernel_bench.h"
#include "benchmarks/median_time.h"
#include "kernels/kernels.h"
#include "worker/gpu/cuda_stream.h"
#include "worker/gpu/device_buffer.h"
#include "worker/gpu/gemm.h"
#include "worker/gpu/moe_layer.h"
#include "worker/gpu/random_fill.h"

namespace moe {
namespace {

using gpu::bf16;

// What rank 0 receives from one drawn routing: the rows of its `local` experts grouped by expert
// (offsets over all E groups, the others empty), the token behind each row, the experts with rows.
struct RankRouting {
  std::vector<int32_t> offsets, row_index, active;
  gpu::DeviceBuffer<int32_t> d_offsets, d_row_index, d_active;
  int64_t rows = 0, most = 0, busy = 0;
};

RankRouting DrawRankRouting(int64_t total, int64_t E, int64_t k, int64_t local, std::mt19937& rng) {
  const std::vector<std::vector<int32_t>> per = DrawTopK(total, E, k, rng);
  RankRouting r;
  r.offsets.push_back(0);
  for (int64_t e = 0; e < E; ++e) {
    if (e < local) {
      r.row_index.insert(r.row_index.end(), per[e].begin(), per[e].end());
      r.most = std::max<int64_t>(r.most, static_cast<int64_t>(per[e].size()));
      if (!per[e].empty()) r.active.push_back(static_cast<int32_t>(e));
    }
    r.offsets.push_back(static_cast<int32_t>(r.row_index.size()));
  }
  r.rows = static_cast<int64_t>(r.row_index.size());
  r.busy = static_cast<int64_t>(r.active.size());
  r.active.resize(static_cast<size_t>(E), -1);
  auto upload = [](gpu::DeviceBuffer<int32_t>& d, const std::vector<int32_t>& h) {
    d = gpu::DeviceBuffer<int32_t>(std::max<size_t>(1, h.size()));
    if (!h.empty()) {
      MOE_CUDA_CHECK(cudaMemcpy(d.get(), h.data(), sizeof(int32_t) * h.size(), cudaMemcpyHostToDevice));
    }
  };
  upload(r.d_offsets, r.offsets);
  upload(r.d_row_index, r.row_index);
  upload(r.d_active, r.active);
  return r;
}

}  // namespace

nlohmann::json EpRankExpertFigures(const ModelConfig& c) {
  nlohmann::json out = nlohmann::json::array();
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, k = c.experts_per_token;
  if (H % 8 != 0 || I % 8 != 0) return out;
  const gpu::CudaStream stream;  // destroyed after the Gemms bound to it
  const cudaStream_t s = stream.get();
  std::mt19937 rng(17);
  for (int W : {2, 4}) {
    if (E % W != 0 || W > E) continue;
    const int64_t local = E / W;
    // Rank 0's experts (0 .. local-1); the weights tables hold null for the others, as a rank's.
    gpu::DeviceBuffer<bf16> w13(static_cast<size_t>(local * 2 * I * H)), w2(static_cast<size_t>(local * H * I));
    gpu::FillNormal(w13.get(), local * 2 * I * H, 17, 1, 0.f, 0.02f, s);
    gpu::FillNormal(w2.get(), local * H * I, 17, 2, 0.f, 0.02f, s);
    std::vector<const bf16*> h13(static_cast<size_t>(E), nullptr), h2(static_cast<size_t>(E), nullptr);
    for (int64_t e = 0; e < local; ++e) {
      h13[e] = w13.get() + e * 2 * I * H;
      h2[e] = w2.get() + e * H * I;
    }
    gpu::DeviceBuffer<const bf16*> d13(h13.size()), d2(h2.size());
    MOE_CUDA_CHECK(cudaMemcpy(d13.get(), h13.data(), sizeof(bf16*) * h13.size(), cudaMemcpyHostToDevice));
    MOE_CUDA_CHECK(cudaMemcpy(d2.get(), h2.data(), sizeof(bf16*) * h2.size(), cudaMemcpyHostToDevice));
    const bool wgmma = gpu::GroupedGemmSupported();
    std::vector<gpu::WeightTensorMap> m13(h13.size()), m2(h2.size());
    gpu::DeviceBuffer<gpu::WeightTensorMap> dm13(m13.size()), dm2(m2.size());
    if (wgmma) {
      gpu::BuildWeightTensorMaps(h13.data(), E, 2 * I, H, m13.data());
      gpu::BuildWeightTensorMaps(h2.data(), E, H, I, m2.data());
      MOE_CUDA_CHECK(
          cudaMemcpy(dm13.get(), m13.data(), sizeof(gpu::WeightTensorMap) * m13.size(), cudaMemcpyHostToDevice));
      MOE_CUDA_CHECK(cudaMemcpy(dm2.get(), m2.data(), sizeof(gpu::WeightTensorMap) * m2.size(), cudaMemcpyHostToDevice));
    }
    gpu::GemmFanout fanout(s, static_cast<int>(std::min<int64_t>(local, 8)));
    gpu::PinnedBuffer<int32_t> h_offsets;
    h_offsets.EnsureSize(static_cast<size_t>(E + 1));
    gpu::CudaEvent sizes_copied;

    for (int64_t total : {64, 128, 256, 512}) {
      const int64_t per_rank = total / W;
      if (per_rank > gpu::GpuMoeLayer::kDeviceExchangeMaxRows) continue;
      // The engine's bound on the received rows (GpuMoeLayer::ReceiveBound with every rank at
      // per_rank tokens) and the rows the skinny kernel is sized for (ExpectedRows).
      const int64_t cap = per_rank * std::min<int64_t>(k, local);
      const int64_t bound = std::min<int64_t>(W * cap, total * k);
      const int64_t expected = std::max<int64_t>(1, (total * k * local + E - 1) / E);
      std::vector<RankRouting> routes;
      for (int i = 0; i < 4; ++i) routes.push_back(DrawRankRouting(total, E, k, local, rng));
      double rows_mean = 0, busy_mean = 0;
      int64_t most = 0;
      for (const RankRouting& r : routes) {
        rows_mean += r.rows / 4.0;
        busy_mean += r.busy / 4.0;
        most = std::max(most, r.most);
      }
      gpu::DeviceBuffer<bf16> x(static_cast<size_t>(total * H)), gathered(static_cast<size_t>(bound * H)),
          gate_up(static_cast<size_t>(bound * 2 * I)), act(static_cast<size_t>(bound * I)),
          y(static_cast<size_t>(bound * H));
      gpu::FillNormal(x.get(), total * H, 17, 3, 0.f, 1.f, s);
      const double all_bytes = 2.0 * 3 * H * I * busy_mean;  // the weights of the experts with rows
      // share: the part of the experts' weights the timed work reads (one product: 2/3 or 1/3).
      auto record = [&](const std::string& how, double ms, double share = 1.0) {
        const double bytes = share * all_bytes;
        std::printf("ep rank experts W %d (%lld experts) total %4lld tokens (%5.1f rows, most %3lld an expert) %-16s "
                    "%7.1f us (%5.0f GB/s)\n",
                    W, static_cast<long long>(local), static_cast<long long>(total), rows_mean,
                    static_cast<long long>(most), how.c_str(), ms * 1e3, bytes / (ms / 1e3) / 1e9);
        std::fflush(stdout);
        out.push_back({{"ranks", W},
                       {"local_experts", local},
                       {"total_tokens", total},
                       {"tokens_per_rank", per_rank},
                       {"rows_mean", rows_mean},
                       {"most_rows_an_expert", most},
                       {"busy_experts_mean", busy_mean},
                       {"kernel", how},
                       {"us", ms * 1e3},
                       {"weight_gbps", bytes / (ms / 1e3) / 1e9}});
      };

      // cuBLAS as Experts runs it behind the device exchange: the sizes' copy and the host's wait,
      // the gather on the device meanwhile, then one GEMM per expert on the side streams.
      record("cublas+sync", MedianMs(s, 3, 16, [&](int i) {
               const RankRouting& r = routes[i % routes.size()];
               MOE_CUDA_CHECK(cudaMemcpyAsync(h_offsets.get(), r.d_offsets.get(), sizeof(int32_t) * (E + 1),
                                              cudaMemcpyDeviceToHost, s));
               MOE_CUDA_CHECK(cudaEventRecord(sizes_copied.get(), s));
               gpu::GatherRows(x.get(), r.d_row_index.get(), r.rows, H, gathered.get(), s);
               MOE_CUDA_CHECK(cudaEventSynchronize(sizes_copied.get()));
               fanout.Fork();
               int next = 0;
               for (int64_t e = 0; e < local; ++e) {
                 const int64_t start = h_offsets[e], rows = h_offsets[e + 1] - start;
                 if (rows == 0) continue;
                 gpu::Gemm& g = fanout[next++ % fanout.width()];
                 g.LinearBlas(gathered.get() + start * H, rows, H, h13[e], 2 * I, gate_up.get() + start * 2 * I);
                 gpu::SwiGlu(gate_up.get() + start * 2 * I, rows, I, act.get() + start * I, g.stream());
                 g.LinearBlas(act.get() + start * I, rows, I, h2[e], H, y.get() + start * H);
               }
               fanout.Join();
             }));

      // One layer's products through the grouped wgmma kernel in `tile`; the TMA shapes read the
      // rows gathered first (the gather is the gate/up product's).
      auto wgmma_up = [&](const RankRouting& r, gpu::GroupedTile tile) {
        const bool in_order = gpu::GroupedTileReadsRowsInOrder(tile);
        gpu::SkinnyGroups up;
        up.count = E;
        up.offsets = r.d_offsets.get();
        up.weights = d13.get();
        up.weight_maps = dm13.get();
        up.row_index = in_order ? nullptr : r.d_row_index.get();
        if (in_order) gpu::GatherRows(x.get(), r.d_row_index.get(), r.rows, H, gathered.get(), s);
        gpu::GroupedGemm(in_order ? gathered.get() : x.get(), H, up, I, gpu::SkinnyEpilogue::kSwiGluBf16, act.get(),
                         bound, s, tile);
      };
      auto wgmma_down = [&](const RankRouting& r, gpu::GroupedTile tile) {
        gpu::SkinnyGroups down;
        down.count = E;
        down.offsets = r.d_offsets.get();
        down.weights = d2.get();
        down.weight_maps = dm2.get();
        gpu::GroupedGemm(act.get(), I, down, H, gpu::SkinnyEpilogue::kStoreBf16, y.get(), bound, s, tile);
      };
      if (wgmma) {
        struct Shape {
          const char* name;
          gpu::GroupedTile tile;
        };
        for (const Shape& sh : {Shape{"wgmma 128x128", gpu::GroupedTile::k128x128},
                                Shape{"wgmma 128x256", gpu::GroupedTile::k128x256},
                                Shape{"wgmma tma 128x128", gpu::GroupedTile::kTma128x128}}) {
          record(sh.name, MedianMs(s, 3, 16, [&](int i) {
                   wgmma_up(routes[i % routes.size()], sh.tile);
                   wgmma_down(routes[i % routes.size()], sh.tile);
                 }));
        }
        // The TMA shape's two products alone: how the layer's time divides, and how much of the
        // down product hides in the gate/up product's last wave (the whole is less than the sum:
        // the down launch's CTAs start on the SMs it frees).
        const gpu::GroupedTile tma = gpu::GroupedTile::kTma128x128;
        record("tma up only", MedianMs(s, 3, 16, [&](int i) { wgmma_up(routes[i % routes.size()], tma); }), 2.0 / 3);
        record("tma down only", MedianMs(s, 3, 16, [&](int i) { wgmma_down(routes[i % routes.size()], tma); }),
               1.0 / 3);
        // The down product in 64-column tiles (twice the CTAs where 128 columns leave SMs idle),
        // alone and in the layer as the engine runs it behind the device exchange: the down tile
        // GroupedStoreTile picks (the same as "wgmma tma 128x128" where it keeps 128x128).
        record("tma down only 64", MedianMs(s, 3, 16, [&](int i) {
                 wgmma_down(routes[i % routes.size()], gpu::GroupedTile::kTma128x64);
               }),
               1.0 / 3);
        const gpu::GroupedTile down_tile = gpu::GroupedStoreTile(local, H, expected, gpu::DeviceSmCount());
        record(down_tile == gpu::GroupedTile::kTma128x64 ? "tma engine (down 64)" : "tma engine (down 128)",
               MedianMs(s, 3, 16, [&](int i) {
                 wgmma_up(routes[i % routes.size()], tma);
                 wgmma_down(routes[i % routes.size()], down_tile);
               }));
      }

      // The skinny kernel as the device exchange plans it (PlanSkinny on the bound and the
      // expected rows).
      const gpu::SkinnyPlan p = gpu::PlanSkinny(c, bound, local, expected);
      gpu::DeviceBuffer<float> ws(std::max<size_t>(1, p.workspace));
      record("skinny", MedianMs(s, 3, 16, [&](int i) {
               const RankRouting& r = routes[i % routes.size()];
               gpu::SkinnyGroups up;
               up.count = E;
               up.offsets = r.d_offsets.get();
               up.weights = d13.get();
               up.row_index = r.d_row_index.get();
               up.active = r.d_active.get();
               up.slots = std::min(local, bound);
               gpu::SkinnyGemm(x.get(), H, up, I, gpu::SkinnyEpilogue::kSwiGluBf16, act.get(), p.expected, p.splits_up,
                               ws.get(), bound, nullptr, s);
               gpu::SkinnyGroups down;
               down.count = E;
               down.offsets = r.d_offsets.get();
               down.weights = d2.get();
               down.active = r.d_active.get();
               down.slots = std::min(local, bound);
               gpu::SkinnyGemm(act.get(), I, down, H, gpu::SkinnyEpilogue::kStoreBf16, y.get(), p.expected,
                               p.splits_down, ws.get(), bound, nullptr, s);
             }));
    }
    MOE_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  return out;
}

}  // namespace moe
