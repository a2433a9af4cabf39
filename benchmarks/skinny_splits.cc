// The experts' skinny GEMMs as a decode step runs them (kernel_bench.h): a whole layer's experts
// on the device, each token routed to top-k distinct experts (seeded draws), only the experts with
// rows launched, timed for every split count so that SkinnySplits' choice can
// be checked against the alternatives. Bandwidth is over the weight bytes of the experts with rows.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "benchmarks/kernel_bench.h"
#include "benchmarks/median_time.h"
#include "kernels/kernels.h"
#include "worker/gpu/cuda_stream.h"
#include "worker/gpu/device_buffer.h"
#include "worker/gpu/moe_layer.h"
#include "worker/gpu/random_fill.h"

namespace moe {
namespace {

using gpu::bf16;

constexpr int kMostSplits = 16;  // the largest split count timed

// One routing of T tokens: rows grouped by expert (offsets), the token behind each row, and the
// experts with rows (then -1 up to `slots`).
struct DrawnRouting {
  gpu::DeviceBuffer<int32_t> offsets, row_index, active;
  int64_t active_count = 0;
};

DrawnRouting Route(int64_t T, int64_t E, int64_t k, int64_t slots, std::mt19937& rng) {
  const std::vector<std::vector<int32_t>> rows = DrawTopK(T, E, k, rng);
  std::vector<int32_t> offsets{0}, row_index, active;
  for (int64_t e = 0; e < E; ++e) {
    row_index.insert(row_index.end(), rows[e].begin(), rows[e].end());
    offsets.push_back(static_cast<int32_t>(row_index.size()));
    if (!rows[e].empty()) active.push_back(static_cast<int32_t>(e));
  }
  DrawnRouting r;
  r.active_count = static_cast<int64_t>(active.size());
  active.resize(static_cast<size_t>(slots), -1);
  auto upload = [](gpu::DeviceBuffer<int32_t>& d, const std::vector<int32_t>& h) {
    d = gpu::DeviceBuffer<int32_t>(h.size());
    MOE_CUDA_CHECK(cudaMemcpy(d.get(), h.data(), sizeof(int32_t) * h.size(), cudaMemcpyHostToDevice));
  };
  upload(r.offsets, offsets);
  upload(r.row_index, row_index);
  upload(r.active, active);
  return r;
}

}  // namespace

nlohmann::json SkinnySplitFigures(const ModelConfig& c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts, k = c.experts_per_token;
  gpu::CudaStream stream;
  const cudaStream_t s = stream.get();
  // One layer's experts: [E][2I][H] and [E][H][I].
  gpu::DeviceBuffer<bf16> w13(static_cast<size_t>(E * 2 * I * H)), w2(static_cast<size_t>(E * H * I));
  gpu::FillNormal(w13.get(), E * 2 * I * H, 11, 1, 0.f, 0.02f, s);
  gpu::FillNormal(w2.get(), E * H * I, 11, 2, 0.f, 0.02f, s);
  std::vector<const bf16*> h13, h2;
  for (int64_t e = 0; e < E; ++e) {
    h13.push_back(w13.get() + e * 2 * I * H);
    h2.push_back(w2.get() + e * H * I);
  }
  gpu::DeviceBuffer<const bf16*> d13(h13.size()), d2(h2.size());
  MOE_CUDA_CHECK(cudaMemcpy(d13.get(), h13.data(), sizeof(bf16*) * h13.size(), cudaMemcpyHostToDevice));
  MOE_CUDA_CHECK(cudaMemcpy(d2.get(), h2.data(), sizeof(bf16*) * h2.size(), cudaMemcpyHostToDevice));

  nlohmann::json rows = nlohmann::json::array();
  std::mt19937 rng(5);
  for (int64_t T : {1, 4, 8, 64}) {
    const int64_t R = T * k, slots = std::min(E, R);
    // Four routings, used in turn, so that successive runs read other experts' weights.
    std::vector<DrawnRouting> routes;
    for (int i = 0; i < 4; ++i) routes.push_back(Route(T, E, k, slots, rng));
    // The engine's plan for these rows (its tile size and split counts: the figure's choice).
    const gpu::SkinnyPlan plan = gpu::PlanSkinny(c, R, E);
    const int64_t expected = plan.expected;
    const double active_mean = std::accumulate(routes.begin(), routes.end(), 0.0,
                                               [](double a, const DrawnRouting& r) { return a + r.active_count; }) /
                               routes.size();
    gpu::DeviceBuffer<bf16> x(static_cast<size_t>(T * H)), act(static_cast<size_t>(R * I)),
        y(static_cast<size_t>(R * H));
    gpu::FillNormal(x.get(), T * H, 12, 1, 0.f, 1.f, s);
    gpu::FillNormal(act.get(), R * I, 12, 2, 0.f, 1.f, s);
    const bool one_pass = T <= 8 && gpu::SkinnyTileCount(expected) == 1;
    for (int m = 0; m < 2; ++m) {
      const bool up = m == 0;
      const int64_t N = up ? I : H, K = up ? H : I;
      const gpu::SkinnyEpilogue epi = up ? gpu::SkinnyEpilogue::kSwiGluBf16 : gpu::SkinnyEpilogue::kStoreBf16;
      const int chosen = up ? plan.splits_up : plan.splits_down;
      const double bytes = 2.0 * (up ? 2 * I : I) * H * active_mean;
      gpu::DeviceBuffer<float> ws(std::max<size_t>(1, gpu::SkinnyWorkspaceFloats(R, N, epi, kMostSplits)));
      gpu::DeviceBuffer<int32_t> counters(gpu::SkinnyCounters(N, epi, slots));
      MOE_CUDA_CHECK(cudaMemset(counters.get(), 0, sizeof(int32_t) * counters.size()));
      for (int splits : {1, 2, 3, 4, 5, 6, 8, 12, kMostSplits}) {
        const double ms = MedianMs(s, 3, 16, [&](int i) {
          const DrawnRouting& r = routes[i % routes.size()];
          gpu::SkinnyGroups g;
          g.count = E;
          g.offsets = r.offsets.get();
          g.weights = up ? d13.get() : d2.get();
          g.row_index = up ? r.row_index.get() : nullptr;
          g.active = r.active.get();
          g.slots = slots;
          gpu::SkinnyGemm(up ? x.get() : act.get(), K, g, N, epi, up ? act.get() : y.get(), expected, splits,
                          ws.get(), R, one_pass ? counters.get() : nullptr, s);
        });
        rows.push_back({{"matrix", up ? "w13_swiglu" : "w2"},
                        {"tokens", T},
                        {"active_experts", active_mean},
                        {"splits", splits},
                        {"chosen_splits", chosen},
                        {"us", ms * 1e3},
                        {"gbps", bytes / (ms / 1e3) / 1e9}});
        std::printf("experts %-10s tokens %2lld splits %2d%s: %7.1f us (%6.0f GB/s)\n",
                    up ? "w13_swiglu" : "w2", static_cast<long long>(T), splits,
                    splits == chosen ? "*" : " ", ms * 1e3, bytes / (ms / 1e3) / 1e9);
      }
    }
  }
  // The dense products of a decode step at one row: 8 copies of each, used in turn, so that runs
  // read from memory rather than L2.
  const int64_t qkvd = c.q_dim() + 2 * c.kv_dim();
  struct Dense {
    const char* name;
    int64_t N, K;
  };
  for (const Dense& d : {Dense{"qkv", qkvd, H}, Dense{"o_proj", H, c.q_dim()}, Dense{"lm_head", c.vocab_size, H}}) {
    constexpr int kCopies = 8;
    const int64_t welems = d.N * d.K;
    gpu::DeviceBuffer<bf16> w(static_cast<size_t>(welems * kCopies)), x(static_cast<size_t>(d.K)),
        y(static_cast<size_t>(d.N));
    gpu::FillNormal(w.get(), welems * kCopies, 13, 1, 0.f, 0.02f, s);
    gpu::FillNormal(x.get(), d.K, 13, 2, 0.f, 1.f, s);
    const gpu::SkinnyEpilogue epi = gpu::SkinnyEpilogue::kStoreBf16;
    const int chosen = gpu::SkinnySplits(d.N, d.K, epi, 1, 1);
    gpu::DeviceBuffer<float> ws(gpu::SkinnyWorkspaceFloats(1, d.N, epi, kMostSplits));
    gpu::DeviceBuffer<int32_t> counters(gpu::SkinnyCounters(d.N, epi, 1));
    MOE_CUDA_CHECK(cudaMemset(counters.get(), 0, sizeof(int32_t) * counters.size()));
    for (int splits : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, kMostSplits}) {
      const double ms = MedianMs(s, 3, 16, [&](int i) {
        gpu::SkinnyGroups g;
        g.rows = 1;
        g.weight = w.get() + (i % kCopies) * welems;
        gpu::SkinnyGemm(x.get(), d.K, g, d.N, epi, y.get(), 1, splits, ws.get(), 1, counters.get(), s);
      });
      const double bytes = 2.0 * welems;
      rows.push_back({{"matrix", d.name},
                      {"tokens", 1},
                      {"splits", splits},
                      {"chosen_splits", chosen},
                      {"us", ms * 1e3},
                      {"gbps", bytes / (ms / 1e3) / 1e9}});
      std::printf("dense %-10s rows 1 splits %2d%s: %7.1f us (%6.0f GB/s)\n", d.name, splits,
                  splits == chosen ? "*" : " ", ms * 1e3, bytes / (ms / 1e3) / 1e9);
    }
  }
  std::printf("skinny CTAs per SM: %d (1-8 rows), %d (9-16), %d (17-32), %d (more)\n", gpu::SkinnyResidentPerSm(1),
              gpu::SkinnyResidentPerSm(16), gpu::SkinnyResidentPerSm(32), gpu::SkinnyResidentPerSm(64));
  MOE_CUDA_CHECK(cudaStreamSynchronize(s));
  std::fflush(stdout);
  return rows;
}

}  // namespace moe
