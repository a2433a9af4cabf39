// The worker's serving loop over MpiCommunicator (CTest runs it with 3 ranks), without a
// coordinator: each rank drives its own loop through its Inbox, in lock step with the others.
// Sequences assigned to only some ranks (the others step with nothing) must give transformers'
// greedy tokens (expected.json), and a stop signal seen by one rank must take every rank out of
// the loop in the same iteration.
//
// Checks come after the collectives of a test, never between them, so a failing check on one rank
// cannot leave the others waiting in a collective.
#include <mpi.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/engine_fixture.h"
#include "tests/support/mpi_world.h"
#include "common/json_util.h"
#include "coordinator/placement.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/engine.h"
#include "worker/server/inbox.h"
#include "worker/server/recording_outbox.h"
#include "worker/server/serving_loop.h"

namespace moe {
namespace {

using moe::v1::Assign;
using moe::v1::Finished;

using testing_ref::kGoldenDir;
using testing_ref::World;
constexpr int kMaxIterations = 1000;

Assign Greedy(uint64_t id, const std::vector<int32_t>& prompt, uint32_t max_tokens) {
  Assign a;
  a.set_seq_id(id);
  a.mutable_prompt()->Add(prompt.begin(), prompt.end());
  a.set_kind(Assign::KIND_GENERATE);
  a.set_max_tokens(max_tokens);
  a.set_temperature(0.0f);
  a.set_top_p(1.0f);
  return a;
}

void PushAssign(Inbox& inbox, const Assign& a) {
  moe::v1::CoordinatorMessage m;
  *m.mutable_assign() = a;
  inbox.Push(std::move(m));
}

// Every rank's value, in rank order, on every rank.
std::vector<int64_t> AllGather(int64_t v) {
  std::vector<int64_t> all(static_cast<size_t>(World().size()));
  MPI_Allgather(&v, 1, MPI_INT64_T, all.data(), 1, MPI_INT64_T, MPI_COMM_WORLD);
  return all;
}

class WorkerLoopMpiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    Communicator& comm = World();
    absl::Status s;
    try {
      expected_ = new nlohmann::json(ValueOrThrow(ReadJsonFile(kGoldenDir + "/expected.json")));
      const ModelConfig c = ValueOrThrow(ModelConfig::FromModelDir(kGoldenDir));
      plan_ = new PlacementPlan(ValueOrThrow(PlacementPlan::Make(c.num_layers, c.num_experts, comm.size())));
      EngineOptions eo;
      eo.kv_tokens = 4096;
      auto e = Engine::Load(kGoldenDir, comm, *plan_, eo);
      s = e.status();
      if (e.ok()) engine_ = e->release();
    } catch (const std::exception& ex) {
      s = absl::InternalError(ex.what());
    }
    load_status_ = new absl::Status(s);
    // Every rank must know whether any rank failed to load, or the tests would hang.
    std::vector<int64_t> failed = {s.ok() ? 0 : 1};
    comm.AllReduceSum(failed);
    any_failed_ = failed[0] > 0;
  }
  static void TearDownTestSuite() {
    delete engine_;
    delete plan_;
    delete expected_;
    delete load_status_;
    engine_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(load_status_->ok()) << *load_status_;
    ASSERT_FALSE(any_failed_) << "another rank failed to load the golden model";
  }
  static std::vector<int32_t> Prompt(size_t p) { return (*expected_)["prompts"][p].get<std::vector<int32_t>>(); }
  static std::vector<int32_t> Golden(size_t p) { return (*expected_)["greedy"][p].get<std::vector<int32_t>>(); }

  static ServingLoopOptions Options() {
    ServingLoopOptions lo;
    lo.max_batch_tokens = 32;  // the 130-token prompt goes in five pieces
    lo.heartbeat_interval = std::chrono::hours(1);
    lo.idle_wait_min = std::chrono::milliseconds(0);
    lo.idle_wait_max = std::chrono::milliseconds(1);
    return lo;
  }

  static inline Engine* engine_ = nullptr;
  static inline PlacementPlan* plan_ = nullptr;
  static inline nlohmann::json* expected_ = nullptr;
  static inline absl::Status* load_status_ = nullptr;
  static inline bool any_failed_ = false;
};

// Rank 0 serves prompts 0 and 3 from the start; the last rank serves prompt 1 from the start and
// prompt 4 (130 tokens, chunked) from iteration 5, while prompt 1 decodes; the ranks between
// serve nothing and only step along.
TEST_F(WorkerLoopMpiTest, SequencesOnSomeRanksGiveTheGoldenTokens) {
  const int W = World().size(), me = World().rank();
  Inbox inbox;
  RecordingOutbox out;
  ServingLoop loop(*engine_, inbox, out, Options());
  std::vector<std::pair<uint64_t, size_t>> mine;  // (seq id, golden prompt)
  if (me == 0) mine = {{10, 0}, {13, 3}};
  if (me == W - 1 && W > 1) mine = {{21, 1}, {24, 4}};
  if (W == 1) mine = {{10, 0}, {13, 3}, {21, 1}, {24, 4}};

  int iterations = 0;
  bool all_done = false;
  for (; iterations < kMaxIterations && !all_done; ++iterations) {
    for (const auto& [id, p] : mine) {
      const int when = p == 4 ? 5 : 0;
      if (iterations == when) PushAssign(inbox, Greedy(id, Prompt(p), 24));
    }
    loop.RunOnce();
    // Done when every rank has nothing left (a collective of the test, in lock step with the loop).
    std::vector<int64_t> pending = {loop.num_sequences() + (iterations < 5 ? 1 : 0)};
    World().AllReduceSum(pending);
    all_done = pending[0] == 0;
  }
  const std::vector<int64_t> counts = AllGather(iterations);

  EXPECT_TRUE(all_done) << "sequences still running after " << kMaxIterations << " iterations";
  for (int r = 0; r < W; ++r) EXPECT_EQ(counts[static_cast<size_t>(r)], counts[0]) << "rank " << r;
  auto seqs = out.BySequence();
  EXPECT_EQ(seqs.size(), mine.size());
  for (const auto& [id, p] : mine) {
    EXPECT_EQ(seqs[id].tokens, Golden(p)) << "prompt " << p << " on rank " << me;
    ASSERT_TRUE(seqs[id].finished.has_value());
    EXPECT_EQ(seqs[id].finished->reason(), Finished::REASON_LENGTH);
  }
  if (me == W - 1 && W > 1) {
    EXPECT_LT(seqs[24].first_token_index, seqs[21].finished_index) << "prompt 4 joined while prompt 1 decoded";
  }
  EXPECT_EQ(engine_->kv_cache().used_blocks(), 0);
  EXPECT_GT(loop.steps(), 24u);
}

// Long generations on ranks 0 and 2; at iteration 8 one rank (1) receives Shutdown. Every rank
// leaves the loop in that same iteration, agrees on the reason, and has freed its sequences.
TEST_F(WorkerLoopMpiTest, AllRanksLeaveTogetherOnShutdownAtOneRank) {
  const int W = World().size(), me = World().rank();
  const int stopper = W > 1 ? 1 : 0;
  constexpr int kStopAt = 8;
  Inbox inbox;
  RecordingOutbox out;
  ServingLoop loop(*engine_, inbox, out, Options());
  if (me != stopper) PushAssign(inbox, Greedy(100 + me, Prompt(static_cast<size_t>(me) % 5), 200));

  int calls = 0;
  while (calls < kMaxIterations) {
    if (me == stopper && calls + 1 == kStopAt) {
      moe::v1::CoordinatorMessage m;
      m.mutable_shutdown();
      inbox.Push(std::move(m));
    }
    ++calls;
    if (!loop.RunOnce()) break;
  }
  const std::vector<int64_t> counts = AllGather(calls);

  for (int r = 0; r < W; ++r) EXPECT_EQ(counts[static_cast<size_t>(r)], kStopAt) << "rank " << r;
  EXPECT_EQ(loop.stop_reason(), StopReason::kShutdown);
  EXPECT_EQ(loop.received_shutdown(), me == stopper);
  EXPECT_EQ(engine_->kv_cache().used_blocks(), 0);
  EXPECT_EQ(loop.num_sequences(), 0);
  if (me != stopper) {
    auto seqs = out.BySequence();
    const auto& s = seqs[static_cast<uint64_t>(100 + me)];
    EXPECT_EQ(s.tokens.size(), static_cast<size_t>(kStopAt - 1)) << "one token per completed iteration";
    ASSERT_TRUE(s.finished.has_value());
    EXPECT_EQ(s.finished->reason(), Finished::REASON_CANCELLED);
  }
}

// The last rank loses its coordinator stream (its inbox closes): every rank leaves at once and
// agrees the coordinator was lost.
TEST_F(WorkerLoopMpiTest, AllRanksLeaveTogetherWhenOneLosesTheCoordinator) {
  const int W = World().size(), me = World().rank();
  Inbox inbox;
  RecordingOutbox out;
  ServingLoop loop(*engine_, inbox, out, Options());
  PushAssign(inbox, Greedy(7, Prompt(1), 200));
  int calls = 0;
  while (calls < kMaxIterations) {
    if (me == W - 1 && calls == 3) inbox.Close();
    ++calls;
    if (!loop.RunOnce()) break;
  }
  const std::vector<int64_t> counts = AllGather(calls);
  for (int r = 0; r < W; ++r) EXPECT_EQ(counts[static_cast<size_t>(r)], 4) << "rank " << r;
  EXPECT_EQ(loop.stop_reason(), StopReason::kCoordinatorLost);
  EXPECT_EQ(engine_->kv_cache().used_blocks(), 0);
}


}  // namespace
}  // namespace moe
