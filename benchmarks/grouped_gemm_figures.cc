// The grouped wgmma kernel (GroupedGemm) on one layer's experts at prefill row counts
// (kernel_bench.h): every expert with the same rows (comparable with blas_candidates'
// experts_concurrent_us for cuBLAS on concurrent streams) and a drawn top-k routing of a 512-token
// prefill (uneven rows). Bandwidth is over the weight bytes.
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
#include "worker/gpu/random_fill.h"

namespace moe {

nlohmann::json GroupedGemmFigures(const ModelConfig& c) {
  nlohmann::json rows_out = nlohmann::json::array();
  if (!gpu::GroupedGemmSupported()) return rows_out;
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, k = c.experts_per_token;
  gpu::CudaStream stream;
  const cudaStream_t s = stream.get();
  gpu::DeviceBuffer<gpu::bf16> w13(static_cast<size_t>(E * 2 * I * H)), w2(static_cast<size_t>(E * H * I));
  gpu::FillNormal(w13.get(), E * 2 * I * H, 13, 1, 0.f, 0.02f, s);
  gpu::FillNormal(w2.get(), E * H * I, 13, 2, 0.f, 0.02f, s);
  std::vector<const gpu::bf16*> h13, h2;
  for (int64_t e = 0; e < E; ++e) {
    h13.push_back(w13.get() + e * 2 * I * H);
    h2.push_back(w2.get() + e * H * I);
  }
  gpu::DeviceBuffer<const gpu::bf16*> d13(h13.size()), d2(h2.size());
  MOE_CUDA_CHECK(cudaMemcpy(d13.get(), h13.data(), sizeof(gpu::bf16*) * h13.size(), cudaMemcpyHostToDevice));
  MOE_CUDA_CHECK(cudaMemcpy(d2.get(), h2.data(), sizeof(gpu::bf16*) * h2.size(), cudaMemcpyHostToDevice));
  std::vector<gpu::WeightTensorMap> m13(static_cast<size_t>(E)), m2(static_cast<size_t>(E));
  gpu::BuildWeightTensorMaps(h13.data(), E, 2 * I, H, m13.data());
  gpu::BuildWeightTensorMaps(h2.data(), E, H, I, m2.data());
  gpu::DeviceBuffer<gpu::WeightTensorMap> dm13(m13.size()), dm2(m2.size());
  MOE_CUDA_CHECK(cudaMemcpy(dm13.get(), m13.data(), sizeof(gpu::WeightTensorMap) * m13.size(), cudaMemcpyHostToDevice));
  MOE_CUDA_CHECK(cudaMemcpy(dm2.get(), m2.data(), sizeof(gpu::WeightTensorMap) * m2.size(), cudaMemcpyHostToDevice));

  struct Case {
    const char* routing;
    int64_t tokens;
  };
  std::mt19937 rng(7);
  for (const Case& cs : {Case{"even", 256}, Case{"even", 512}, Case{"even", 1024}, Case{"drawn", 512}}) {
    const int64_t T = cs.tokens, R = T * k;
    std::vector<int32_t> offsets{0}, row_index;
    if (std::string(cs.routing) == "even") {
      for (int64_t e = 0; e < E; ++e) offsets.push_back(static_cast<int32_t>(R * (e + 1) / E));
      for (int64_t r = 0; r < R; ++r) row_index.push_back(static_cast<int32_t>(r % T));
    } else {
      const std::vector<std::vector<int32_t>> per = DrawTopK(T, E, k, rng);
      for (int64_t e = 0; e < E; ++e) {
        row_index.insert(row_index.end(), per[e].begin(), per[e].end());
        offsets.push_back(static_cast<int32_t>(row_index.size()));
      }
    }
    int32_t most = 0;
    for (int64_t e = 0; e < E; ++e) most = std::max(most, offsets[e + 1] - offsets[e]);
    gpu::DeviceBuffer<int32_t> d_off(offsets.size()), d_idx(row_index.size());
    MOE_CUDA_CHECK(cudaMemcpy(d_off.get(), offsets.data(), sizeof(int32_t) * offsets.size(), cudaMemcpyHostToDevice));
    MOE_CUDA_CHECK(
        cudaMemcpy(d_idx.get(), row_index.data(), sizeof(int32_t) * row_index.size(), cudaMemcpyHostToDevice));
    gpu::DeviceBuffer<gpu::bf16> x(static_cast<size_t>(T * H)), act(static_cast<size_t>(R * I)),
        y(static_cast<size_t>(R * H));
    gpu::FillNormal(x.get(), T * H, 13, 3, 0.f, 1.f, s);
    gpu::DeviceBuffer<gpu::bf16> gathered(static_cast<size_t>(R * H));  // the TMA shapes read rows in order
    gpu::GatherRows(x.get(), d_idx.get(), R, H, gathered.get(), s);
    gpu::SkinnyGroups up;
    up.count = E;
    up.offsets = d_off.get();
    up.weights = d13.get();
    up.row_index = d_idx.get();
    gpu::SkinnyGroups down;
    down.count = E;
    down.offsets = d_off.get();
    down.weights = d2.get();
    const double up_bytes = 2.0 * E * 2 * I * H, down_bytes = 2.0 * E * H * I;
    struct Shape {
      const char* name;
      gpu::GroupedTile tile;
      bool tma;
    };
    for (const Shape& sh : {Shape{"128x128", gpu::GroupedTile::k128x128, false},
                            Shape{"128x256", gpu::GroupedTile::k128x256, false},
                            Shape{"192x128", gpu::GroupedTile::k192x128, false},
                            Shape{"tma 128x128", gpu::GroupedTile::k128x128, true},
                            Shape{"tma 128x256", gpu::GroupedTile::k128x256, true},
                            Shape{"tma 192x128", gpu::GroupedTile::k192x128, true},
                            Shape{"tma-ws 128x128", gpu::GroupedTile::kTma128x128, true},
                            Shape{"tma-ws 128x256", gpu::GroupedTile::kTma128x256, true},
                            Shape{"tma-ws 256x128", gpu::GroupedTile::kTma256x128, true}}) {
      up.weight_maps = sh.tma ? dm13.get() : nullptr;
      down.weight_maps = sh.tma ? dm2.get() : nullptr;
      const bool ws = gpu::GroupedTileReadsRowsInOrder(sh.tile);
      up.row_index = ws ? nullptr : d_idx.get();
      const gpu::bf16* up_in = ws ? gathered.get() : x.get();
      const double up_ms = MedianMs(s, 3, 15, [&](int) {
        gpu::GroupedGemm(up_in, H, up, I, gpu::SkinnyEpilogue::kSwiGluBf16, act.get(), R, s, sh.tile);
      });
      const double down_ms = MedianMs(s, 3, 15, [&](int) {
        gpu::GroupedGemm(act.get(), I, down, H, gpu::SkinnyEpilogue::kStoreBf16, y.get(), R, s, sh.tile);
      });
      std::printf("grouped wgmma %s %s %lld tokens (%lld rows, most %d an expert): gate/up+SwiGLU %.1f us (%.0f GB/s), "
                  "down %.1f us (%.0f GB/s)\n",
                  sh.name, cs.routing, static_cast<long long>(T), static_cast<long long>(R), most, up_ms * 1e3,
                  up_bytes / (up_ms / 1e3) / 1e9, down_ms * 1e3, down_bytes / (down_ms / 1e3) / 1e9);
      rows_out.push_back({{"tile", sh.name},
                          {"routing", cs.routing},
                          {"tokens", T},
                          {"rows", R},
                          {"most_rows_an_expert", most},
                          {"gate_up_swiglu_us", up_ms * 1e3},
                          {"gate_up_gbps", up_bytes / (up_ms / 1e3) / 1e9},
                          {"down_us", down_ms * 1e3},
                          {"down_gbps", down_bytes / (down_ms / 1e3) / 1e9}});
    }
  }
  return rows_out;
}

}  // namespace moe
