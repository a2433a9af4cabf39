// The GPU engine expert-parallel over NCCL, one rank per GPU (CTest runs it with 2 ranks): the
// NcclExchange all-to-alls move counts and bf16 rows bit for bit with uneven (and zero) counts,
// and the golden tiny model scored on 2 GPUs, the MoE rows crossing ranks device to device, equals
// a single-GPU GpuEngine on every rank (logits within 1e-3 relative, greedy tokens identical).
// With fewer CUDA devices than ranks every test skips, on every rank alike: the decision is
// all-reduced over MPI first, so no rank is left waiting in a collective.
#include <mpi.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include "tests/support/engine_fixture.h"
#include "tests/support/mpi_world.h"
#include "common/json_util.h"
#include "coordinator/placement.h"
#include "worker/comm/local_communicator.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/generation.h"
#include "worker/gpu/cuda_stream.h"
#include "worker/gpu/device_buffer.h"
#include "worker/gpu/gpu_engine.h"
#include "worker/gpu/nccl_exchange.h"

namespace moe {
namespace {

using testing_ref::kGoldenDir;
using testing_ref::World;
using testing_ref::RelativeError;

class GpuNcclTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    Communicator& comm = World();
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      n = 0;
    }
    // Skip everywhere when any rank lacks a GPU of its own.
    std::vector<int64_t> lacking = {n >= comm.size() ? 0 : 1};
    comm.AllReduceSum(lacking);
    skip_ = lacking[0] > 0;
    if (skip_) {
      skip_reason_ = "need " + std::to_string(comm.size()) + " CUDA devices (one per rank), rank " +
                     std::to_string(comm.rank()) + " sees " + std::to_string(n);
      return;
    }
    absl::Status s;
    try {
      nccl_ = new gpu::NcclExchange(MPI_COMM_WORLD);
    } catch (const std::exception& e) {
      s = absl::InternalError(absl::StrCat("NcclExchange: ", e.what()));
    }
    auto config = ModelConfig::FromModelDir(kGoldenDir);
    auto expected = ReadJsonFile(kGoldenDir + "/expected.json");
    if (s.ok()) s = config.ok() ? expected.status() : config.status();
    if (s.ok()) {
      prompts_ = new std::vector<std::vector<int32_t>>(
          (*expected)["prompts"].get<std::vector<std::vector<int32_t>>>());
      plan_ = new PlacementPlan(PlacementPlan::Make(config->num_layers, config->num_experts, comm.size()).value());
      local_plan_ = new PlacementPlan(PlacementPlan::Make(config->num_layers, config->num_experts, 1).value());
      gpu::GpuEngineOptions opts;
      opts.kv_tokens = 2048;
      opts.nccl = nccl_;  // device -1: the exchange's GPU
      gpu::GpuEngineOptions local_opts;
      local_opts.kv_tokens = 2048;
      local_opts.device = nccl_->device();
      auto engine = gpu::GpuEngine::Load(kGoldenDir, comm, *plan_, opts);
      auto local = gpu::GpuEngine::Load(kGoldenDir, *local_comm_, *local_plan_, local_opts);
      s = engine.ok() ? local.status() : engine.status();
      if (s.ok()) {
        engine_ = engine->release();
        local_ = local->release();
      }
    }
    load_status_ = new absl::Status(s);
    // Every rank must know whether any rank failed, or the tests would hang.
    std::vector<int64_t> failed = {s.ok() ? 0 : 1};
    comm.AllReduceSum(failed);
    any_failed_ = failed[0] > 0;
  }
  static void TearDownTestSuite() {
    delete engine_;  // the engines before the exchange they use
    delete local_;
    engine_ = local_ = nullptr;
    delete nccl_;
    nccl_ = nullptr;
    delete prompts_;
    delete plan_;
    delete local_plan_;
    delete load_status_;
    prompts_ = nullptr;
    plan_ = local_plan_ = nullptr;
    load_status_ = nullptr;
  }
  void SetUp() override {
    if (skip_) GTEST_SKIP() << skip_reason_;
    ASSERT_TRUE(load_status_->ok()) << *load_status_;
    ASSERT_FALSE(any_failed_) << "another rank failed to set up NCCL or load the golden model";
  }

  // This rank's prompts: i % W == rank.
  static std::vector<size_t> Mine() {
    std::vector<size_t> idx;
    for (size_t i = 0; i < prompts_->size(); ++i) {
      if (static_cast<int>(i % static_cast<size_t>(World().size())) == World().rank()) idx.push_back(i);
    }
    return idx;
  }

  static inline bool skip_ = false;
  static inline std::string skip_reason_;
  static inline gpu::NcclExchange* nccl_ = nullptr;
  static inline LocalCommunicator* local_comm_ = new LocalCommunicator();
  static inline gpu::GpuEngine* engine_ = nullptr;
  static inline gpu::GpuEngine* local_ = nullptr;
  static inline PlacementPlan* plan_ = nullptr;
  static inline PlacementPlan* local_plan_ = nullptr;
  static inline std::vector<std::vector<int32_t>>* prompts_ = nullptr;
  static inline absl::Status* load_status_ = nullptr;
  static inline bool any_failed_ = false;
};

// The 16 bits of element (src, dst, row, col): unique for W <= 8, rows < 16, cols < 64 (and never
// 0xFFFF, the "not written" mark, with the counts below).
uint16_t Encode(int src, int dst, int64_t row, int64_t col) {
  return static_cast<uint16_t>((src << 13) | (dst << 10) | (row << 6) | col);
}

// One AllToAllRows with rows(s, d) rows from s to d; every element checked exactly on arrival.
void CheckRowExchange(gpu::NcclExchange& x, int64_t (*rows)(int s, int d), int64_t width, const char* name) {
  const int W = x.size(), me = x.rank();
  std::vector<int64_t> send_rows(W), recv_rows(W);
  int64_t ns = 0, nr = 0;
  for (int p = 0; p < W; ++p) {
    send_rows[p] = rows(me, p);
    recv_rows[p] = rows(p, me);
    ns += send_rows[p];
    nr += recv_rows[p];
  }
  std::vector<uint16_t> send(static_cast<size_t>(ns * width));
  size_t i = 0;
  for (int d = 0; d < W; ++d) {
    for (int64_t r = 0; r < send_rows[d]; ++r) {
      for (int64_t c = 0; c < width; ++c) send[i++] = Encode(me, d, r, c);
    }
  }
  gpu::DeviceBuffer<gpu::bf16> d_send(send.size() + 1), d_recv(static_cast<size_t>(nr * width) + 1);
  MOE_CUDA_CHECK(cudaMemcpy(d_send.get(), send.data(), send.size() * sizeof(uint16_t), cudaMemcpyHostToDevice));
  MOE_CUDA_CHECK(cudaMemset(d_recv.get(), 0xFF, d_recv.size() * sizeof(gpu::bf16)));  // 0xFFFF: never sent
  gpu::CudaStream stream;  // the test's own, on the exchange's device
  x.AllToAllRows(d_send.get(), send_rows, d_recv.get(), recv_rows, width, stream.get());
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  std::vector<uint16_t> got(d_recv.size());
  MOE_CUDA_CHECK(cudaMemcpy(got.data(), d_recv.get(), got.size() * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  i = 0;
  int64_t wrong = 0;
  for (int s = 0; s < W; ++s) {
    for (int64_t r = 0; r < recv_rows[s]; ++r) {
      for (int64_t c = 0; c < width; ++c, ++i) {
        const uint16_t want = Encode(s, me, r, c);
        if (got[i] != want && ++wrong <= 5) {
          ADD_FAILURE() << name << ": rank " << me << " element (src " << s << ", row " << r << ", col " << c
                        << ") is 0x" << std::hex << got[i] << ", want 0x" << want;
        }
      }
    }
  }
  EXPECT_EQ(wrong, 0) << name << " on rank " << me;
  EXPECT_EQ(got.back(), 0xFFFF) << name << ": wrote past the received rows on rank " << me;
}

TEST_F(GpuNcclTest, AllToAllRowsUnevenCountsIncludingZero) {
  ASSERT_LE(nccl_->size(), 8) << "the element encoding holds 8 ranks";
  const int64_t before = nccl_->row_exchanges();
  // Uneven, with zeros (for 2 ranks: 0->0 1, 0->1 2, 1->0 0, 1->1 1); an odd width so blocks do not
  // start on aligned byte offsets.
  CheckRowExchange(*nccl_, [](int s, int d) -> int64_t { return (3 * s + 5 * d + 1) % 4; }, 37, "uneven");
  // Only the first rank sends, to the last one, many rows.
  CheckRowExchange(*nccl_, [](int s, int d) -> int64_t { return s == 0 && d == World().size() - 1 ? 15 : 0; }, 64,
                   "one pair");
  // Nothing anywhere: still a collective that must return.
  CheckRowExchange(*nccl_, [](int, int) -> int64_t { return 0; }, 8, "empty");
  // Nobody sends to itself.
  CheckRowExchange(*nccl_, [](int s, int d) -> int64_t { return s == d ? 0 : 2 + s; }, 3, "no self");
  EXPECT_EQ(nccl_->row_exchanges(), before + 4);
}

TEST_F(GpuNcclTest, AllToAllCounts) {
  const int W = nccl_->size(), me = nccl_->rank();
  const int64_t E = 5;
  std::vector<int64_t> send(static_cast<size_t>(W * E)), got(send.size(), -1);
  for (int d = 0; d < W; ++d) {
    for (int64_t e = 0; e < E; ++e) send[d * E + e] = (int64_t{me} << 40) + d * 1000 + e;
  }
  gpu::DeviceBuffer<int64_t> d(2 * send.size());
  MOE_CUDA_CHECK(cudaMemcpy(d.get(), send.data(), sizeof(int64_t) * send.size(), cudaMemcpyHostToDevice));
  gpu::CudaStream stream;  // the test's own, on the exchange's device
  nccl_->AllToAllCounts(d.get(), d.get() + send.size(), E, stream.get());
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  MOE_CUDA_CHECK(cudaMemcpy(got.data(), d.get() + send.size(), sizeof(int64_t) * got.size(), cudaMemcpyDeviceToHost));
  for (int s = 0; s < W; ++s) {
    for (int64_t e = 0; e < E; ++e) {
      EXPECT_EQ(got[s * E + e], (int64_t{s} << 40) + me * 1000 + e) << "from rank " << s << " expert " << e;
    }
  }
}

// One collective step: each rank prefills its own prompts (every position's logits).
TEST_F(GpuNcclTest, PrefillLogitsMatchSingleGpuEngine) {
  const std::vector<size_t> mine = Mine();
  std::vector<SequenceChunk> chunks;
  for (size_t i : mine) {
    ASSERT_TRUE(engine_->AddSequence(static_cast<int64_t>(i)).ok());
    chunks.push_back({static_cast<int64_t>(i), (*prompts_)[i], true});
  }
  engine_->load_stats().Reset();
  local_->load_stats().Reset();
  const int64_t before = nccl_->row_exchanges();
  auto out = engine_->Step(chunks);
  for (size_t i : mine) engine_->FreeSequence(static_cast<int64_t>(i));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->global_rows, 1 + 5 + 17 + 64 + 130);
  // Dispatch and return through NCCL in every layer.
  EXPECT_EQ(nccl_->row_exchanges() - before, 2 * engine_->config().num_layers);
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
    std::printf("[rank %d] prompt %zu: relative error against the single-GPU engine %.3e (NCCL exchange)\n",
                World().rank(), mine[j], err);
  }
  const ModelConfig& c = engine_->config();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (int64_t e = 0; e < c.num_experts; ++e) {
      EXPECT_EQ(engine_->load_stats().expert_tokens(l, e), local_->load_stats().expert_tokens(l, e))
          << "layer " << l << " expert " << e;
    }
  }
}

// Greedy generation (batched prefill through the exchange with host-known counts, then decode
// steps through the device exchange in CUDA graphs, in which ranks finish at different times: the
// idle ones keep joining the NCCL exchanges with zero rows) equals the single-GPU tokens.
TEST_F(GpuNcclTest, GreedyGenerationMatchesSingleGpuEngine) {
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
  const int64_t before = nccl_->row_exchanges(), graphs_before = engine_->graphs_captured();
  auto ours = GenerateAll(*engine_, reqs);
  auto want = GenerateAll(*local_, all);
  ASSERT_TRUE(ours.ok()) << ours.status();
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_GT(nccl_->row_exchanges(), before);
  // The decode steps ran the device exchange (fixed-capacity blocks), captured in CUDA graphs.
  EXPECT_GT(engine_->graphs_captured(), graphs_before);
  for (size_t j = 0; j < mine.size(); ++j) {
    EXPECT_EQ((*ours)[j].tokens, (*want)[mine[j]].tokens) << "prompt " << mine[j] << " on rank " << World().rank();
  }
  EXPECT_EQ(engine_->kv_blocks().used_blocks(), 0);
}

}  // namespace
}  // namespace moe
