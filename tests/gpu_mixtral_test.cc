// The full Mixtral-8x7B shape on one GPU with synthetic weights (no checkpoint): LoadSynthetic
// allocates and fills ~93.4 GB of bf16 weights, reports exactly the config's parameter count in
// bf16, and the engine runs prefill and decode steps on it. It needs a device with >= 100 GB free
// (an H200, or an H100 NVL); elsewhere it skips, as it does without a device.
#include <gtest/gtest.h>

#include <cmath>

#include <cuda_runtime.h>

#include "worker/comm/local_communicator.h"
#include "worker/gpu/gpu_engine.h"

namespace moe {
namespace {

constexpr double kNeedFreeBytes = 100e9;

TEST(GpuMixtralTest, SyntheticMixtral8x7bLoadsAndSteps) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) GTEST_SKIP() << "no CUDA device";
  size_t free_b = 0, total_b = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_b, &total_b), cudaSuccess);
  if (static_cast<double>(free_b) < kNeedFreeBytes) {
    GTEST_SKIP() << "needs >= 100 GB of free device memory, " << free_b / 1e9 << " GB free";
  }
  const std::string path = std::string(MOE_SOURCE_DIR) + "/benchmarks/configs/mixtral-8x7b-v0.1.json";
  const ModelConfig c = ModelConfig::FromFile(path).value();
  LocalCommunicator comm;
  const PlacementPlan plan = PlacementPlan::Make(c.num_layers, c.num_experts, 1).value();
  gpu::GpuEngineOptions opts;
  opts.kv_tokens = 4096;
  auto e = gpu::GpuEngine::LoadSynthetic(c, comm, plan, opts, /*seed=*/1);
  ASSERT_TRUE(e.ok()) << e.status();
  const int64_t params = c.replicated_params() + c.num_layers * c.num_experts * c.expert_params();
  EXPECT_EQ((*e)->weight_bytes(), 2 * params);
  EXPECT_NEAR((*e)->weight_bytes() / 1e9, 93.4, 0.1);
  std::printf("Mixtral-8x7B synthetic: %lld parameters, %.3f GB of bf16 weights (%.3f GB experts)\n",
              static_cast<long long>(params), (*e)->weight_bytes() / 1e9, (*e)->expert_weight_bytes() / 1e9);

  // Two sequences prefill together, then decode four steps.
  ASSERT_TRUE((*e)->AddSequence(1).ok());
  ASSERT_TRUE((*e)->AddSequence(2).ok());
  std::vector<int32_t> a(33), b(7);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<int32_t>((i * 7919) % c.vocab_size);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<int32_t>((i * 104729 + 5) % c.vocab_size);
  auto out = (*e)->Step({{1, a, false}, {2, b, true}});
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->chunks.size(), 2u);
  EXPECT_EQ(out->chunks[1].rows, 7);
  for (int step = 0; step < 4; ++step) {
    auto d = (*e)->Step({{1, {static_cast<int32_t>(100 + step)}, false}, {2, {static_cast<int32_t>(200 + step)}, false}});
    ASSERT_TRUE(d.ok()) << d.status();
    for (const ChunkLogits& cl : d->chunks) {
      ASSERT_EQ(cl.logits.size(), static_cast<size_t>(c.vocab_size));
      for (float v : cl.logits) ASSERT_TRUE(std::isfinite(v));
    }
  }
  EXPECT_EQ((*e)->SequenceLength(1), 37);
  EXPECT_EQ((*e)->SequenceLength(2), 11);
}

}  // namespace
}  // namespace moe
