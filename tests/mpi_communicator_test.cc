// MpiCommunicator under mpirun (CTest runs it with 1, 3 and 4 ranks): every collective with
// payloads that name their source and destination, the MoE layer over MPI against the same layer in
// one process, and the engine on the golden model against a single-rank engine that every rank also
// holds.
//
// Every rank runs every test. Checks come after the collectives of a test, never between them,
// so a failing check on one rank cannot leave the others waiting in a collective.
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/engine_fixture.h"
#include "tests/support/mpi_world.h"
#include "tests/support/test_plan.h"
#include "common/json_util.h"
#include "coordinator/placement.h"
#include "worker/comm/local_communicator.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/engine.h"
#include "worker/generation.h"
#include "worker/moe/moe_layer.h"

namespace moe {
namespace {

using testing_ref::kGoldenDir;
using testing_ref::World;
using testing_ref::RelativeError;

// ||a - b|| / ||b||.
// ----------------------------------------------------------------------------------------------
// The collectives.

TEST(MpiCommunicatorTest, AllToAllCounts) {
  Communicator& comm = World();
  const int W = comm.size(), me = comm.rank();
  constexpr int64_t kCount = 3;
  std::vector<int64_t> send(static_cast<size_t>(W * kCount)), recv(send.size(), -1);
  for (int d = 0; d < W; ++d) {
    for (int64_t j = 0; j < kCount; ++j) send[d * kCount + j] = 1000000 * me + 1000 * d + j;
  }
  comm.AllToAll(send, recv, kCount);
  for (int s = 0; s < W; ++s) {
    for (int64_t j = 0; j < kCount; ++j) {
      EXPECT_EQ(recv[s * kCount + j], 1000000 * s + 1000 * me + j) << "from rank " << s << " element " << j;
    }
  }
}

// Rows from rank s to rank d. Uneven, and with more than one rank: rank 0 sends nothing at all and
// the last rank receives nothing at all (the shape of an idle rank's MoE layer).
int64_t RowsBetween(int s, int d, int W) {
  if (W > 1 && (s == 0 || d == W - 1)) return 0;
  return 1 + (s + 2 * d) % 3;
}

// Every float says where it came from; all fields stay below 16, so the value is exact in float.
float Payload(int s, int d, int64_t row, int64_t col) {
  return static_cast<float>((s << 16) | (d << 12) | (static_cast<int>(row) << 8) | static_cast<int>(col));
}

TEST(MpiCommunicatorTest, AllToAllRowsUnevenAndEmpty) {
  Communicator& comm = World();
  const int W = comm.size(), me = comm.rank();
  constexpr int64_t kWidth = 5;  // odd, so a wrong row width shows as shifted columns
  std::vector<int64_t> send_rows(static_cast<size_t>(W)), recv_rows(static_cast<size_t>(W));
  int64_t total_send = 0, total_recv = 0;
  for (int r = 0; r < W; ++r) {
    total_send += send_rows[r] = RowsBetween(me, r, W);
    total_recv += recv_rows[r] = RowsBetween(r, me, W);
  }
  std::vector<float> send, recv(static_cast<size_t>(total_recv * kWidth), -1.0f);
  for (int d = 0; d < W; ++d) {
    for (int64_t row = 0; row < send_rows[d]; ++row) {
      for (int64_t col = 0; col < kWidth; ++col) send.push_back(Payload(me, d, row, col));
    }
  }
  // A rank with no rows passes the data() of empty vectors (null), as the MoE layer does.
  comm.AllToAllRows(send.empty() ? nullptr : send.data(), send_rows, recv.empty() ? nullptr : recv.data(), recv_rows,
                    kWidth);

  int64_t at = 0;
  for (int s = 0; s < W; ++s) {
    for (int64_t row = 0; row < recv_rows[s]; ++row) {
      for (int64_t col = 0; col < kWidth; ++col, ++at) {
        ASSERT_EQ(recv[at], Payload(s, me, row, col)) << "from rank " << s << " row " << row << " col " << col;
      }
    }
  }
  EXPECT_EQ(at, total_recv * kWidth);
  EXPECT_EQ(static_cast<int64_t>(send.size()), total_send * kWidth);
}

TEST(MpiCommunicatorTest, AllToAllRowsRoundTrip) {
  // The MoE combine: the dispatch's counts swapped bring every row back to where it was sent from.
  Communicator& comm = World();
  const int W = comm.size(), me = comm.rank();
  constexpr int64_t kWidth = 7;
  std::vector<int64_t> send_rows(static_cast<size_t>(W)), recv_rows(static_cast<size_t>(W));
  int64_t total_send = 0, total_recv = 0;
  for (int r = 0; r < W; ++r) {
    total_send += send_rows[r] = 2 + (me + r) % 4;
    total_recv += recv_rows[r] = 2 + (r + me) % 4;
  }
  std::vector<float> send(static_cast<size_t>(total_send * kWidth)), there(static_cast<size_t>(total_recv * kWidth));
  std::vector<float> back(send.size());
  for (size_t i = 0; i < send.size(); ++i) send[i] = static_cast<float>(me * 100000 + static_cast<int>(i));
  comm.AllToAllRows(send.data(), send_rows, there.data(), recv_rows, kWidth);
  comm.AllToAllRows(there.data(), recv_rows, back.data(), send_rows, kWidth);
  EXPECT_EQ(back, send);
}

TEST(MpiCommunicatorTest, AllReduceSumAndMax) {
  Communicator& comm = World();
  const int64_t W = comm.size(), me = comm.rank();
  constexpr int64_t kBig = int64_t{1} << 40;  // beyond 32 bits, so the element type must be 64-bit
  std::vector<int64_t> sum = {me, 1, -me, kBig * (me + 1)};
  std::vector<int64_t> max = {me, -me, kBig + me, 7};
  comm.AllReduceSum(sum);
  comm.AllReduceMax(max);
  EXPECT_EQ(sum, (std::vector<int64_t>{W * (W - 1) / 2, W, -W * (W - 1) / 2, kBig * W * (W + 1) / 2}));
  EXPECT_EQ(max, (std::vector<int64_t>{W - 1, 0, kBig + W - 1, 7}));
}

TEST(MpiCommunicatorTest, BroadcastString) {
  Communicator& comm = World();
  const int W = comm.size(), me = comm.rank();
  for (int root : {0, W - 1}) {
    // Binary content (an embedded NUL) and other ranks' strings both longer and shorter than it.
    std::string want = std::string("plan from rank ") + std::to_string(root) + std::string(1, '\0') + "tail";
    std::string bytes = me == root ? want : std::string(static_cast<size_t>(me * 20), 'x');
    comm.Broadcast(bytes, root);
    EXPECT_EQ(bytes, want) << "root " << root;
  }
  std::string empty = me == 0 ? "" : "not empty";
  comm.Broadcast(empty, 0);
  EXPECT_EQ(empty, "");
}

TEST(MpiCommunicatorTest, GatherStringsOfDifferentSizes) {
  Communicator& comm = World();
  const int W = comm.size(), me = comm.rank();
  auto part = [](int r) { return std::string(static_cast<size_t>(r * 3), static_cast<char>('a' + r)); };  // rank 0: empty
  for (int root : {0, W - 1}) {
    const std::vector<std::string> got = comm.Gather(part(me), root);
    if (me == root) {
      ASSERT_EQ(static_cast<int>(got.size()), W) << "root " << root;
      for (int r = 0; r < W; ++r) EXPECT_EQ(got[r], part(r)) << "root " << root << " rank " << r;
    } else {
      EXPECT_TRUE(got.empty()) << "root " << root;
    }
  }
  comm.Barrier();
}

// ----------------------------------------------------------------------------------------------
// One MoE layer over MPI against the same layer in one process.

// Deterministic values that every rank computes alike (weights) or from its rank (inputs).
std::vector<float> RandomVector(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

ModelConfig SmallMoeConfig(int64_t num_experts) {
  ModelConfig c;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_layers = 1;
  c.num_experts = num_experts;
  c.experts_per_token = 2;
  return c;
}

// The layer weights, with only the experts `holds` says.
MoeWeights SmallMoeWeights(const ModelConfig& c, const std::function<bool(int64_t)>& holds) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_experts;
  MoeWeights w;
  w.router = RandomVector(static_cast<size_t>(E * H), 1, 1.0f);
  for (int64_t e = 0; e < E; ++e) {
    if (!holds(e)) continue;
    w.experts[e].w13 = RandomVector(static_cast<size_t>(2 * I * H), 100 + e, 0.25f);
    w.experts[e].w2 = RandomVector(static_cast<size_t>(H * I), 200 + e, 0.2f);
  }
  return w;
}

class MoeLayerMpiTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(MoeLayerMpiTest, MatchesSingleProcessLayer) {
  const ModelConfig c = SmallMoeConfig(GetParam());
  Communicator& comm = World();
  const int W = comm.size(), me = comm.rank();
  const int64_t H = c.hidden_size;
  // Rank 1 has no rows (an idle rank still serves its experts); the others have different counts.
  const int64_t T = (W > 1 && me == 1) ? 0 : 5 + 3 * me;
  const std::vector<float> h = RandomVector(static_cast<size_t>(T * H), 1000 + me, 1.0f);

  const PlacementPlan plan = ValueOrThrow(PlacementPlan::Make(1, c.num_experts, W));
  const MoeWeights mine = SmallMoeWeights(c, [&](int64_t e) { return plan.holds(0, e, me); });
  LoadStats stats(1, c.num_experts, W);
  MoeLayer layer(c, plan, comm, stats);
  std::vector<float> out(h.size(), NAN);
  layer.Forward(0, mine, h.data(), T, out.data());
  stats.FinishStep(comm);

  LocalCommunicator local_comm;
  const PlacementPlan local_plan = ValueOrThrow(PlacementPlan::Make(1, c.num_experts, 1));
  const MoeWeights all = SmallMoeWeights(c, [](int64_t) { return true; });
  LoadStats local_stats(1, c.num_experts, 1);
  MoeLayer local_layer(c, local_plan, local_comm, local_stats);
  std::vector<float> want(h.size());
  local_layer.Forward(0, all, h.data(), T, want.data());
  local_stats.FinishStep(local_comm);
  // The single-process counts of every rank's rows, summed: what the MPI statistics must show.
  std::vector<int64_t> want_counts(static_cast<size_t>(c.num_experts));
  for (int64_t e = 0; e < c.num_experts; ++e) want_counts[e] = local_stats.expert_tokens(0, e);
  comm.AllReduceSum(want_counts);
  std::vector<int64_t> total_rows = {T};
  comm.AllReduceSum(total_rows);

  EXPECT_LE(RelativeError(out, want), 1e-6) << "rank " << me << ", " << T << " rows";
  int64_t rank_sum = 0;
  for (int r = 0; r < W; ++r) rank_sum += stats.rank_rows(0, r);
  EXPECT_EQ(rank_sum, c.experts_per_token * total_rows[0]);
  for (int64_t e = 0; e < c.num_experts; ++e) EXPECT_EQ(stats.expert_tokens(0, e), want_counts[e]) << "expert " << e;
}

// 8 experts: one owner each (for up to 8 ranks); 3 experts: with 4 ranks, one expert has replicas.
INSTANTIATE_TEST_SUITE_P(Experts, MoeLayerMpiTest, ::testing::Values(8, 3),
                         [](const ::testing::TestParamInfo<int64_t>& info) { return "E" + std::to_string(info.param); });

// ----------------------------------------------------------------------------------------------
// The engine on the golden model: MPI ranks against a single-rank engine on every rank.

class MpiEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    Communicator& comm = World();
    auto config = ModelConfig::FromModelDir(kGoldenDir);
    auto expected = ReadJsonFile(kGoldenDir + "/expected.json");
    absl::Status s = config.ok() ? expected.status() : config.status();
    if (s.ok()) {
      prompts_ = new std::vector<std::vector<int32_t>>((*expected)["prompts"].get<std::vector<std::vector<int32_t>>>());
      EngineOptions opts;
      opts.kv_tokens = 1024;
      auto plan = testing_ref::TestPlan(config->num_layers, config->num_experts, comm.size());
      auto local_plan = PlacementPlan::Make(config->num_layers, config->num_experts, 1);
      // Both loads happen on every rank, so the collective-free LocalCommunicator engine cannot
      // get out of step with the MPI one.
      auto engine = Engine::Load(kGoldenDir, comm, plan, opts);
      auto local = Engine::Load(kGoldenDir, *local_comm_, *local_plan, opts);
      s = engine.ok() ? local.status() : engine.status();
      if (s.ok()) {
        engine_ = engine->release();
        local_ = local->release();
      }
    }
    load_status_ = new absl::Status(s);
    // Every rank must know whether any rank failed to load, or the tests would hang.
    std::vector<int64_t> failed = {s.ok() ? 0 : 1};
    comm.AllReduceSum(failed);
    any_failed_ = failed[0] > 0;
  }
  static void TearDownTestSuite() {
    delete engine_;
    delete local_;
    delete prompts_;
    delete load_status_;
    engine_ = local_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(load_status_->ok()) << *load_status_;
    ASSERT_FALSE(any_failed_) << "another rank failed to load the golden model";
  }

  static inline LocalCommunicator* local_comm_ = new LocalCommunicator();
  static inline Engine* engine_ = nullptr;
  static inline Engine* local_ = nullptr;
  static inline std::vector<std::vector<int32_t>>* prompts_ = nullptr;
  static inline absl::Status* load_status_ = nullptr;
  static inline bool any_failed_ = false;
};

TEST_F(MpiEngineTest, ScoreAllMatchesSingleRankEngine) {
  const int W = World().size(), me = World().rank();
  std::vector<std::vector<int32_t>> mine;
  std::vector<size_t> index;
  for (size_t i = 0; i < prompts_->size(); ++i) {
    if (static_cast<int>(i % static_cast<size_t>(W)) == me) {
      mine.push_back((*prompts_)[i]);
      index.push_back(i);
    }
  }
  engine_->load_stats().Reset();
  local_->load_stats().Reset();
  auto ours = ScoreAll(*engine_, mine);
  auto want = ScoreAll(*local_, *prompts_);
  ASSERT_TRUE(ours.ok()) << ours.status();
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_EQ(ours->size(), mine.size());
  for (size_t j = 0; j < mine.size(); ++j) {
    const auto& a = (*ours)[j].logprobs;
    const auto& b = (*want)[index[j]].logprobs;
    EXPECT_LE(RelativeError(a, b), 1e-5) << "prompt " << index[j] << " on rank " << me;
  }
  // One step over all prompts in both engines: the same expert counts (the golden router margins
  // are far above float32 rounding).
  const ModelConfig& c = engine_->config();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (int64_t e = 0; e < c.num_experts; ++e) {
      EXPECT_EQ(engine_->load_stats().expert_tokens(l, e), local_->load_stats().expert_tokens(l, e))
          << "layer " << l << " expert " << e;
    }
  }
}

// A bad token on the last rank fails the step on every rank, without a hang and without changing
// any state, and the next valid step works.
TEST_F(MpiEngineTest, InvalidInputOnOneRankFailsTheStepEverywhere) {
  const int W = World().size(), me = World().rank();
  const int64_t vocab = engine_->config().vocab_size;
  constexpr int64_t kSeq = 77;
  ASSERT_TRUE(engine_->AddSequence(kSeq).ok());
  const std::vector<int32_t> good = (*prompts_)[static_cast<size_t>(me) % prompts_->size()];
  std::vector<int32_t> bad = good;
  bad.back() = static_cast<int32_t>(vocab);  // one past the vocabulary
  const bool i_fail = me == W - 1;

  auto failed = engine_->Step({{kSeq, i_fail ? bad : good, true}});
  const int64_t length_after_failure = engine_->SequenceLength(kSeq);
  auto ok = engine_->Step({{kSeq, good, true}});
  engine_->FreeSequence(kSeq);

  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), i_fail ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kAborted)
      << failed.status();
  EXPECT_EQ(length_after_failure, 0) << "a failed step must not advance the sequence";
  ASSERT_TRUE(ok.ok()) << ok.status();
  int64_t want_rows = 0;
  for (int r = 0; r < W; ++r) want_rows += static_cast<int64_t>((*prompts_)[static_cast<size_t>(r) % prompts_->size()].size());
  EXPECT_EQ(ok->global_rows, want_rows);
  ASSERT_EQ(ok->chunks.size(), 1u);

  // The valid step's logits are the single-rank engine's.
  ASSERT_TRUE(local_->AddSequence(kSeq).ok());
  auto want = local_->Step({{kSeq, good, true}});
  local_->FreeSequence(kSeq);
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_LE(RelativeError(ok->chunks[0].logits, want->chunks[0].logits), 1e-5);
}

}  // namespace
}  // namespace moe
