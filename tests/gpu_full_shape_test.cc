// The GPU engine at the real layer shapes of Mixtral-8x7B (hidden 4096, experts of 14336, 32 query
// heads on 8 key-value heads) and Mixtral-8x22B (hidden 6144, experts of 16384, 48 on 8: six query
// heads to a key-value head), each config as shipped but with one layer, against the float64
// reference forward (tests/support/reference_forward.h) on a random bf16 checkpoint of that shape.
// The other GPU tests use small shapes (hidden <= 256, head_dim <= 32) or check only that the full
// model runs; these are the kernels' paths at head_dim 128 and Mixtral's widths, end to end:
//   - a 24-token prompt in one chunk (tensor-core prefill attention, cuBLAS experts);
//   - ten sequences prefilled together at lengths 8..17 (wide tiles of several chunks), then
//     decoded together to 24 tokens: ten rows a step (RoPE kernel, then the attention's one-row
//     tiles), then fewer as they finish (at most 8: RoPE fused into the decode attention), all
//     CUDA-graph replays with the experts on the skinny grouped GEMMs.
// Rows whose reference routing has a near tie (top-k probability gap < 1e-2) are left out: bf16
// may route them otherwise. The rest must be within 2e-2 relative error (the golden tests' bound).
// Writing the checkpoint (into /dev/shm where it fits) and the reference take the machine's cores.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>
#include <stdlib.h>

#include "tests/support/engine_fixture.h"
#include "tests/support/random_model.h"
#include "tests/support/reference_forward.h"
#include "worker/comm/local_communicator.h"
#include "worker/gpu/gpu_engine.h"
#include "worker/model/safetensors.h"

namespace moe::testing_ref {
namespace {

using gpu::GpuEngine;
using gpu::GpuEngineOptions;

constexpr double kRelTol = 2e-2;
constexpr double kRouterMarginTol = 1e-2;
constexpr int64_t kTokens = 24;
constexpr int64_t kSequences = 10;

bool HaveDevice() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// A folder for a checkpoint of `bytes`: in memory (/dev/shm) where it has room, since the test
// writes gigabytes and reads them back at once; else the temporary directory.
std::string CheckpointDir(int64_t bytes) {
  std::error_code ec;
  const std::filesystem::space_info shm = std::filesystem::space("/dev/shm", ec);
  if (!ec && shm.available > static_cast<uintmax_t>(2 * bytes)) {
    std::string tmpl = "/dev/shm/moe_gpu_full_shape_XXXXXX";
    if (mkdtemp(tmpl.data()) != nullptr) return tmpl;
  }
  return MakeTempDir("moe_gpu_full_shape_");
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Per position: whether every layer's reference routing has a clear top-k (the gap between the
// k-th and (k+1)-th routing probability at least kRouterMarginTol).
std::vector<char> ClearlyRouted(const ReferenceOutput& ref, int64_t k) {
  std::vector<char> clear(static_cast<size_t>(ref.T), 1);
  for (int64_t l = 0; l < ref.layers; ++l) {
    for (int64_t t = 0; t < ref.T; ++t) {
      if (ReferenceTopK(&ref.router_logits[(l * ref.T + t) * ref.experts], ref.experts, k).second < kRouterMarginTol) {
        clear[t] = 0;
      }
    }
  }
  return clear;
}

// Logits rows of the engine beside the reference's rows at the same positions (clearly routed ones).
struct Comparison {
  std::vector<float> ours;
  std::vector<double> want;
  int64_t rows = 0, left_out = 0;
  void Add(const ReferenceOutput& ref, const std::vector<char>& clear, int64_t position, const float* row) {
    if (!clear[position]) {
      ++left_out;
      return;
    }
    ours.insert(ours.end(), row, row + ref.vocab);
    want.insert(want.end(), ref.logits.begin() + position * ref.vocab, ref.logits.begin() + (position + 1) * ref.vocab);
    ++rows;
  }
  double Error() const { return RelativeError(ours, want, want.size()); }
};

class GpuFullShapeTest : public ::testing::TestWithParam<const char*> {};

TEST_P(GpuFullShapeTest, OneLayerMatchesFloat64Reference) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  ModelConfig c =
      ModelConfig::FromFile(std::string(MOE_SOURCE_DIR) + "/benchmarks/configs/" + GetParam() + ".json").value();
  c.num_layers = 1;
  const std::string dir = CheckpointDir(2 * (c.replicated_params() + c.num_experts * c.expert_params()));
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(WriteRandomModel(dir, c, /*seed=*/29, /*num_shards=*/2, DType::kBF16).ok());
  const double write_s = Seconds(t0);
  std::mt19937 rng(11);
  std::vector<int32_t> tokens(kTokens);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % c.vocab_size);
  t0 = std::chrono::steady_clock::now();
  const auto ckpt = Checkpoint::Open(dir).value();
  const ReferenceOutput ref = ReferenceForward(c, *ckpt, tokens).value();
  const double ref_s = Seconds(t0);
  const std::vector<char> clear = ClearlyRouted(ref, c.experts_per_token);
  const int64_t V = c.vocab_size;

  LocalCommunicator comm;
  const PlacementPlan plan = PlacementPlan::Make(c.num_layers, c.num_experts, 1).value();
  GpuEngineOptions opts;
  opts.kv_tokens = 4096;
  opts.max_step_tokens = 256;
  auto loaded = GpuEngine::Load(dir, comm, plan, opts);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  GpuEngine& e = **loaded;

  // The whole prompt in one chunk.
  Comparison prompt;
  ASSERT_TRUE(e.AddSequence(0).ok());
  const StepOutput full = e.Step({{0, tokens, true}}).value();
  for (int64_t t = 0; t < kTokens; ++t) prompt.Add(ref, clear, t, full.chunks[0].logits.data() + t * V);
  e.FreeSequence(0);

  // Ten sequences prefilled together, then decoded together, each to the whole prompt.
  Comparison batch;
  std::vector<SequenceChunk> chunks;
  std::vector<int64_t> length(kSequences + 1);
  for (int64_t s = 1; s <= kSequences; ++s) {
    ASSERT_TRUE(e.AddSequence(s).ok());
    length[s] = 7 + s;
    chunks.push_back({s, std::vector<int32_t>(tokens.begin(), tokens.begin() + length[s]), false});
  }
  const int64_t graphs_before = e.graphs_captured();
  int64_t steps = 0, widest = 0;
  while (!chunks.empty()) {
    const StepOutput out = e.Step(chunks).value();
    ++steps;
    widest = std::max<int64_t>(widest, static_cast<int64_t>(chunks.size()));
    std::vector<SequenceChunk> next;
    for (size_t i = 0; i < chunks.size(); ++i) {
      const int64_t s = chunks[i].seq_id;
      batch.Add(ref, clear, length[s] - 1, out.chunks[i].logits.data());
      if (length[s] < kTokens) next.push_back({s, {tokens[length[s]++]}, false});
    }
    chunks = std::move(next);
  }
  std::printf("%s, 1 layer: checkpoint written in %.1f s, reference in %.1f s; prompt: relative error %.3e on %lld "
              "rows (%lld near routing ties left out); batch: %.3e on %lld rows (%lld left out) over %lld steps, "
              "%lld graphs captured\n",
              GetParam(), write_s, ref_s, prompt.Error(), static_cast<long long>(prompt.rows),
              static_cast<long long>(prompt.left_out), batch.Error(), static_cast<long long>(batch.rows),
              static_cast<long long>(batch.left_out), static_cast<long long>(steps),
              static_cast<long long>(e.graphs_captured() - graphs_before));
  EXPECT_GE(prompt.rows, kTokens / 2);
  EXPECT_LT(prompt.Error(), kRelTol);
  EXPECT_GE(batch.rows, 60);  // of the 10 prefill picks and 115 decode rows
  EXPECT_LT(batch.Error(), kRelTol);
  EXPECT_EQ(widest, kSequences);
  EXPECT_GT(e.graphs_captured(), graphs_before) << "the decode steps were not graph replays";
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Mixtral, GpuFullShapeTest, ::testing::Values("mixtral-8x7b-v0.1", "mixtral-8x22b-v0.1"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                           std::string name = i.param;
                           std::replace_if(name.begin(), name.end(), [](char ch) { return !std::isalnum(ch); }, '_');
                           return name;
                         });

}  // namespace
}  // namespace moe::testing_ref
