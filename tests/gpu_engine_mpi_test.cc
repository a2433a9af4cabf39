// The GPU engine expert-parallel under mpirun (CTest runs it with 2 and 3 ranks, all sharing one
// GPU): the placement plan shards the experts, every MoE layer exchanges rows through host staging
// and MpiCommunicator, received rows are regrouped per expert and put back in received order.
// The same engine with the peer exchange (worker/gpu/peer_exchange.h: the ranks' kernels write the
// rows into each other's memory through CUDA IPC; here the "peers" are the other processes on the
// same GPU, whose kernels take turns on it): the decode steps and the golden prefill take the
// device exchange (its blocks, flags and waits) instead of the host.
// Every rank's results must equal a single-rank GPU engine's: each expert sees the same rows in
// the same bf16 arithmetic, only their order and the batch shapes differ. Without a CUDA device
// every test skips (on every rank alike, so no collective is left waiting). With MOE_TEST_PLAN=balanced
// the experts are sharded by a balanced plan (tests/support/test_plan.h) instead of Make's.
#include <mpi.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include "tests/support/engine_fixture.h"
#include "tests/support/mpi_world.h"
#include "tests/support/test_plan.h"
#include "common/json_util.h"
#include "coordinator/placement.h"
#include "worker/comm/local_communicator.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/generation.h"
#include "kernels/kernels.h"
#include "worker/gpu/gpu_engine.h"
#include "worker/gpu/peer_exchange.h"

namespace moe {
namespace {

using testing_ref::World;

// The golden checkpoint: tiny, or the one MOE_GOLDEN_DIR names (CTest's window variant: a sliding
// window, top-3 of 6 experts, GQA 3; its tied variant: tied embeddings, head_dim apart, top-1; its
// yarn variant: YaRN RoPE scaling).
const std::string& GoldenDir() {
  static const std::string dir = std::getenv("MOE_GOLDEN_DIR") != nullptr ? std::getenv("MOE_GOLDEN_DIR") : testing_ref::kGoldenDir;
  return dir;
}
using testing_ref::RelativeError;

class GpuMpiEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    int n = 0;
    have_device_ = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
    if (!have_device_) return;  // the same answer on every rank of one machine
    Communicator& comm = World();
    auto config = ModelConfig::FromModelDir(GoldenDir());
    auto expected = ReadJsonFile(GoldenDir() + "/expected.json");
    absl::Status s = config.ok() ? expected.status() : config.status();
    if (s.ok()) {
      prompts_ = new std::vector<std::vector<int32_t>>(
          (*expected)["prompts"].get<std::vector<std::vector<int32_t>>>());
      plan_ = new PlacementPlan(testing_ref::TestPlan(config->num_layers, config->num_experts, comm.size()));
      local_plan_ = new PlacementPlan(PlacementPlan::Make(config->num_layers, config->num_experts, 1).value());
      gpu::GpuEngineOptions opts;
      opts.kv_tokens = 2048;
      opts.device = 0;
      auto engine = gpu::GpuEngine::Load(GoldenDir(), comm, *plan_, opts);
      auto local = gpu::GpuEngine::Load(GoldenDir(), *local_comm_, *local_plan_, opts);
      s = engine.ok() ? local.status() : engine.status();
      if (s.ok()) {
        engine_ = engine->release();
        local_ = local->release();
      }
      // Every rank makes the peer exchange (a collective), whatever happened above.
      std::string why;
      try {
        peers_ = gpu::PeerExchange::Make(MPI_COMM_WORLD, gpu::GpuMoeLayer::PeerBlockBytes(*config, comm.size()),
                                         /*allow_shared_gpu=*/true, &why)
                     .release();
      } catch (const std::exception& e) {
        why = e.what();
      }
      if (s.ok() && peers_ == nullptr) s = absl::InternalError("peer exchange: " + why);
      if (s.ok()) {
        gpu::GpuEngineOptions peer_opts = opts;
        peer_opts.peers = peers_;
        auto peer_engine = gpu::GpuEngine::Load(GoldenDir(), comm, *plan_, peer_opts);
        if (peer_engine.ok()) peer_engine_ = peer_engine->release();
        s = peer_engine.status();
      }
    }
    load_status_ = new absl::Status(s);
    // Every rank must know whether any rank failed to load, or the tests would hang.
    std::vector<int64_t> failed = {s.ok() ? 0 : 1};
    comm.AllReduceSum(failed);
    any_failed_ = failed[0] > 0;
  }
  static void TearDownTestSuite() {
    delete peer_engine_;
    delete peers_;
    delete engine_;
    delete local_;
    delete prompts_;
    delete plan_;
    delete local_plan_;
    delete load_status_;
    engine_ = local_ = peer_engine_ = nullptr;
    peers_ = nullptr;
  }
  void SetUp() override {
    if (!have_device_) GTEST_SKIP() << "no CUDA device";
    ASSERT_TRUE(load_status_->ok()) << *load_status_;
    ASSERT_FALSE(any_failed_) << "another rank failed to load the golden model";
  }

  // This rank's prompts: i % W == rank.
  static std::vector<size_t> Mine() {
    std::vector<size_t> idx;
    for (size_t i = 0; i < prompts_->size(); ++i) {
      if (static_cast<int>(i % static_cast<size_t>(World().size())) == World().rank()) idx.push_back(i);
    }
    return idx;
  }

  static inline bool have_device_ = false;
  static inline LocalCommunicator* local_comm_ = new LocalCommunicator();
  static inline gpu::GpuEngine* engine_ = nullptr;
  static inline gpu::GpuEngine* local_ = nullptr;
  static inline gpu::PeerExchange* peers_ = nullptr;
  static inline gpu::GpuEngine* peer_engine_ = nullptr;  // engine_ with the peer exchange
  static inline PlacementPlan* plan_ = nullptr;
  static inline PlacementPlan* local_plan_ = nullptr;
  static inline std::vector<std::vector<int32_t>>* prompts_ = nullptr;
  static inline absl::Status* load_status_ = nullptr;
  static inline bool any_failed_ = false;

  static void CheckPrefillLogits(gpu::GpuEngine* engine);
  static void CheckGreedyGeneration(gpu::GpuEngine* engine);
};

// One collective step: each rank prefills its own prompts (every position's logits).
void GpuMpiEngineTest::CheckPrefillLogits(gpu::GpuEngine* engine) {
  const std::vector<size_t> mine = Mine();
  std::vector<SequenceChunk> chunks;
  for (size_t i : mine) {
    ASSERT_TRUE(engine->AddSequence(static_cast<int64_t>(i)).ok());
    chunks.push_back({static_cast<int64_t>(i), (*prompts_)[i], true});
  }
  engine->load_stats().Reset();
  local_->load_stats().Reset();
  auto out = engine->Step(chunks);
  for (size_t i : mine) engine->FreeSequence(static_cast<int64_t>(i));
  ASSERT_TRUE(out.ok()) << out.status();
  int64_t rows = 0;
  for (const auto& p : *prompts_) rows += static_cast<int64_t>(p.size());
  EXPECT_EQ(out->global_rows, rows);
  // The single-rank engine does all prompts in one step too, so both see the same expert loads.
  std::vector<SequenceChunk> all;
  for (size_t i = 0; i < prompts_->size(); ++i) {
    ASSERT_TRUE(local_->AddSequence(static_cast<int64_t>(i)).ok());
    all.push_back({static_cast<int64_t>(i), (*prompts_)[i], true});
  }
  auto want = local_->Step(all);
  for (size_t i = 0; i < prompts_->size(); ++i) local_->FreeSequence(static_cast<int64_t>(i));
  ASSERT_TRUE(want.ok()) << want.status();
  for (size_t j = 0; j < mine.size(); ++j) {
    const double err = RelativeError(out->chunks[j].logits, want->chunks[mine[j]].logits);
    EXPECT_LE(err, 1e-3) << "prompt " << mine[j] << " on rank " << World().rank();
    std::printf("[rank %d] prompt %zu: relative error against the single-rank GPU engine %.3e\n", World().rank(),
                mine[j], err);
  }
  const ModelConfig& c = engine->config();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (int64_t e = 0; e < c.num_experts; ++e) {
      EXPECT_EQ(engine->load_stats().expert_tokens(l, e), local_->load_stats().expert_tokens(l, e))
          << "layer " << l << " expert " << e;
    }
  }
}

// Greedy generation (batched prefill, then decode steps in which ranks finish at different
// times: the idle ones keep joining the collectives with zero rows) equals the single-rank tokens.
void GpuMpiEngineTest::CheckGreedyGeneration(gpu::GpuEngine* engine) {
  const std::vector<size_t> mine = Mine();
  auto request = [](const std::vector<int32_t>& prompt, int64_t n) {
    GenerateRequest r;
    r.prompt = prompt;
    r.max_tokens = n;
    r.sampling.temperature = 0;
    r.ignore_eos = true;
    return r;
  };
  std::vector<GenerateRequest> reqs, all;
  for (size_t i : mine) reqs.push_back(request((*prompts_)[i], 8 + 4 * static_cast<int64_t>(i)));
  for (size_t i = 0; i < prompts_->size(); ++i) all.push_back(request((*prompts_)[i], 8 + 4 * static_cast<int64_t>(i)));
  auto ours = GenerateAll(*engine, reqs);
  auto want = GenerateAll(*local_, all);
  ASSERT_TRUE(ours.ok()) << ours.status();
  ASSERT_TRUE(want.ok()) << want.status();
  for (size_t j = 0; j < mine.size(); ++j) {
    EXPECT_EQ((*ours)[j].tokens, (*want)[mine[j]].tokens) << "prompt " << mine[j] << " on rank " << World().rank();
  }
  EXPECT_EQ(engine->kv_blocks().used_blocks(), 0);
}

TEST_F(GpuMpiEngineTest, PrefillLogitsMatchSingleRankEngine) { CheckPrefillLogits(engine_); }
TEST_F(GpuMpiEngineTest, GreedyGenerationMatchesSingleRankEngine) { CheckGreedyGeneration(engine_); }
// The golden prompts' prefill takes the device exchange too (at most 256 rows on a rank).
TEST_F(GpuMpiEngineTest, PeerExchangePrefillLogitsMatchSingleRankEngine) {
  const std::array<uint64_t, 2> before = peers_->Completed();
  CheckPrefillLogits(peer_engine_);
  const std::array<uint64_t, 2> after = peers_->Completed();
  const int64_t layers = peer_engine_->config().num_layers;
  EXPECT_EQ(after[0] - before[0], static_cast<uint64_t>(layers)) << "one dispatch a layer through the peers";
  EXPECT_EQ(after[1] - before[1], static_cast<uint64_t>(layers)) << "one return a layer through the peers";
}
TEST_F(GpuMpiEngineTest, PeerExchangeGreedyGenerationMatchesSingleRankEngine) {
  const std::array<uint64_t, 2> before = peers_->Completed();
  CheckGreedyGeneration(peer_engine_);
  const std::array<uint64_t, 2> after = peers_->Completed();
  EXPECT_GT(after[0], before[0]);
  EXPECT_EQ(after[0] - before[0], after[1] - before[1]);
  std::printf("[rank %d] %llu layers exchanged through the peers\n", World().rank(),
              static_cast<unsigned long long>(after[0] - before[0]));
}

// Behind the device exchange with every step's experts through the grouped wgmma kernel
// (ExpertGemmTuning::device_exchange_wgmma, the skinny limit at 0): it reads the received counts
// on the device, so the decode steps are CUDA graphs (with cuBLAS there, the other choice above
// the skinny limit, they could not be), and the tokens are still the single-rank engine's.
TEST_F(GpuMpiEngineTest, PeerExchangeWgmmaExpertsMatchSingleRankEngine) {
  if (!gpu::GroupedGemmSupported()) GTEST_SKIP() << "the grouped wgmma kernel needs compute capability 9.0";
  const gpu::ExpertGemmTuning saved = peer_engine_->expert_tuning();
  // kAuto: the warp-specialised TMA shape there (its rows gathered up to the received count, read on
  // the device); 128x128 reads them through the grouping.
  for (const gpu::GroupedTile tile : {gpu::GroupedTile::kAuto, gpu::GroupedTile::k128x128}) {
    gpu::ExpertGemmTuning wgmma = saved;
    wgmma.device_exchange_skinny_max_rows_per_expert = 0;
    wgmma.device_exchange_wgmma = true;
    wgmma.wgmma_tile = tile;
    peer_engine_->set_expert_tuning(wgmma);
    CheckPrefillLogits(peer_engine_);
    const int64_t launches = peer_engine_->graph_launches();
    CheckGreedyGeneration(peer_engine_);
    EXPECT_GT(peer_engine_->graph_launches(), launches) << "decode steps with wgmma experts are host-free";
    std::printf("[rank %d] %lld decode steps replayed as CUDA graphs with wgmma experts (%s)\n", World().rank(),
                static_cast<long long>(peer_engine_->graph_launches() - launches),
                tile == gpu::GroupedTile::kAuto ? "TMA 128x128, the down product as GroupedStoreTile picks" : "128x128");
  }
  peer_engine_->set_expert_tuning(saved);
}

}  // namespace
}  // namespace moe
