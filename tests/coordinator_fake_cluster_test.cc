// The coordinator's logic against FAKE workers: an in-process coordinator and test code playing
// the worker ranks' side of cluster.proto over real loopback gRPC. Checks health transitions,
// UNAVAILABLE while not serving and after a rank is lost, RESOURCE_EXHAUSTED when the queue is
// full, FIFO refill, deadlines and client cancellation turning into Cancel on the worker, stop
// sequences, scoring assembly, statistics and metrics, and 40 concurrent streams.
// (End-to-end tests with real workers live elsewhere.)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "coordinator/coordinator_server.h"
#include "coordinator/placement.h"
#include "coordinator/scheduler.h"
#include "coordinator_fake_worker.h"
#include "worker/moe/load_stats.h"

namespace moe {
namespace {

using namespace testing_fake;
using std::chrono::seconds;
using Kind = v1::CoordinatorMessage::KindCase;

const std::string kTiny = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/tiny";  // no tokenizer
const std::string kShakespeare = std::string(MOE_SOURCE_DIR) + "/models/shakespeare-moe";

CoordinatorOptions Options(const std::string& model, int world) {
  CoordinatorOptions o;
  o.model_dir = model;
  o.world_size = world;
  o.listen = "127.0.0.1:0";
  o.cluster_listen = "127.0.0.1:0";
  o.metrics_listen = "";
  o.heartbeat_timeout_s = 60;  // tests that check liveness lower it
  o.drain_timeout_s = 1;
  return o;
}

class FakeClusterTest : public ::testing::Test {
 protected:
  void Start(const CoordinatorOptions& o) {
    absl::StatusOr<std::unique_ptr<CoordinatorServer>> s = CoordinatorServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->ports().public_port),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Inference::NewStub(channel_);
  }

  // Registers and loads `world` fake ranks; returns once the coordinator is SERVING.
  std::vector<std::unique_ptr<FakeWorker>> FormCluster(int world, bool prefix_caching = false) {
    std::vector<std::unique_ptr<FakeWorker>> w;
    for (int r = 0; r < world; ++r) w.push_back(std::make_unique<FakeWorker>(server_->ports().cluster_port, r, world));
    for (auto& x : w) x->StartRegister();
    for (auto& x : w) EXPECT_TRUE(x->FinishRegister().ok());
    for (auto& x : w) x->Connect(1000, prefix_caching);
    EXPECT_TRUE(PollUntil([&] { return Health() == kServing; }, seconds(10)));
    return w;
  }

  int Health() { return HealthStatus(channel_); }

  v1::ClusterInfo ClusterInfo() {
    grpc::ClientContext ctx;
    v1::ClusterInfo info;
    EXPECT_TRUE(stub_->GetClusterInfo(&ctx, {}, &info).ok());
    return info;
  }

  v1::Stats Stats() {
    grpc::ClientContext ctx;
    v1::Stats s;
    EXPECT_TRUE(stub_->GetStats(&ctx, {}, &s).ok());
    return s;
  }

  std::future<GenerateCall> GenerateAsync(v1::GenerateRequest r, Millis deadline = Millis(30000),
                                          grpc::ClientContext* ctx = nullptr) {
    return std::async(std::launch::async, [this, r, deadline, ctx] { return RunGenerate(*stub_, r, deadline, ctx); });
  }

  std::unique_ptr<CoordinatorServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

TEST_F(FakeClusterTest, HealthFollowsRegistrationLoadingAndRankLoss) {
  Start(Options(kTiny, 2));
  EXPECT_EQ(Health(), kNotServing);
  GenerateCall early = RunGenerate(*stub_, IdsRequest({1, 2, 3}, 2), Millis(5000));
  EXPECT_EQ(early.status.error_code(), grpc::StatusCode::UNAVAILABLE) << early.status.error_message();
  EXPECT_NE(early.status.error_message().find("0 of 2 ranks registered"), std::string::npos)
      << early.status.error_message();

  FakeWorker w0(server_->ports().cluster_port, 0, 2), w1(server_->ports().cluster_port, 1, 2);
  w0.StartRegister(kTiny);
  EXPECT_TRUE(PollUntil([&] { return RunGenerate(*stub_, IdsRequest({1}, 1), Millis(5000)).status.error_message().find(
                                         "1 of 2 ranks registered") != std::string::npos; },
                        seconds(10)));
  EXPECT_EQ(Health(), kNotServing);
  w1.StartRegister();
  v1::RegisterResponse r0, r1;
  ASSERT_TRUE(w0.FinishRegister(&r0).ok());
  ASSERT_TRUE(w1.FinishRegister(&r1).ok());
  // Both get the plan placement.h computes for the model (4 layers, 8 experts) over 2 ranks.
  const std::string expected_plan = ValueOrThrow(PlacementPlan::Make(4, 8, 2)).ToJson().dump();
  EXPECT_EQ(r0.placement_json(), expected_plan);
  EXPECT_EQ(r1.placement_json(), expected_plan);
  EXPECT_EQ(r0.model_dir(), kTiny);

  w0.Connect();
  ASSERT_TRUE(PollUntil([&] { return ClusterInfo().ranks(0).loaded(); }, seconds(10)));
  EXPECT_EQ(Health(), kNotServing);  // rank 1 has not loaded
  EXPECT_FALSE(ClusterInfo().serving());
  w1.Connect();
  ASSERT_TRUE(PollUntil([&] { return Health() == kServing; }, seconds(10)));
  v1::ClusterInfo info = ClusterInfo();
  EXPECT_TRUE(info.serving());
  ASSERT_EQ(info.ranks_size(), 2);
  EXPECT_TRUE(info.ranks(1).alive());
  EXPECT_EQ(info.ranks(1).weight_bytes(), 12345);
  EXPECT_EQ(info.ranks(1).max_batch_tokens(), 2048);  // what the rank's Loaded said
  EXPECT_GT(info.ranks(1).kv_blocks_total(), 0);
  EXPECT_EQ(info.ranks(0).host(), "fake-host");
  const PlacementPlan plan = ValueOrThrow(PlacementPlan::Make(4, 8, 2));
  EXPECT_EQ(std::vector<int64_t>(info.ranks(1).experts_layer0().begin(), info.ranks(1).experts_layer0().end()),
            plan.experts_on_rank(0, 1));

  // A request runs on the rank with the least reserved KV (a tie: rank 0).
  std::future<GenerateCall> call = GenerateAsync(IdsRequest({1, 2, 3}, 2));
  std::optional<v1::CoordinatorMessage> assign = w0.WaitFor(Kind::kAssign, Millis(10000));
  ASSERT_TRUE(assign);
  EXPECT_EQ(std::vector<int32_t>(assign->assign().prompt().begin(), assign->assign().prompt().end()),
            std::vector<int32_t>({1, 2, 3}));
  EXPECT_EQ(assign->assign().max_tokens(), 2u);
  w0.SendTokens(assign->assign().seq_id(), {5});
  w0.SendTokens(assign->assign().seq_id(), {6});
  w0.SendFinished(assign->assign().seq_id(), v1::Finished::REASON_LENGTH);
  GenerateCall done = call.get();
  ASSERT_TRUE(done.status.ok()) << done.status.error_message();
  EXPECT_EQ(done.token_ids(), std::vector<int32_t>({5, 6}));
  EXPECT_EQ(done.responses.back().finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(done.responses.back().usage().prompt_tokens(), 3u);
  EXPECT_EQ(done.responses.back().usage().completion_tokens(), 2u);
  EXPECT_FALSE(done.responses.front().request_id().empty());

  // Rank 1 crashes: NOT_SERVING, new requests UNAVAILABLE, the survivor is told to shut down.
  w1.Drop();
  ASSERT_TRUE(PollUntil([&] { return Health() == kNotServing; }, seconds(10)));
  GenerateCall after = RunGenerate(*stub_, IdsRequest({1, 2, 3}, 2), Millis(5000));
  EXPECT_EQ(after.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(after.status.error_message().find("rank 1 lost"), std::string::npos) << after.status.error_message();
  EXPECT_TRUE(w0.WaitFor(Kind::kShutdown, Millis(10000)));
  EXPECT_FALSE(ClusterInfo().ranks(1).alive());
}

TEST_F(FakeClusterTest, InFlightRequestEndsUnavailableWhenARankIsLost) {
  Start(Options(kTiny, 2));
  auto w = FormCluster(2);
  std::future<GenerateCall> call = GenerateAsync(IdsRequest({4, 5}, 8));
  ASSERT_TRUE(w[0]->WaitFor(Kind::kAssign, Millis(10000)));
  w[1]->Drop();
  GenerateCall done = call.get();
  EXPECT_EQ(done.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(done.status.error_message().find("rank 1 lost"), std::string::npos) << done.status.error_message();
}

// With every rank caching prefixes, a prompt goes back to the rank that ran it (within the slack),
// until that rank's heartbeat reports the prompt's blocks evicted: then it goes by load.
TEST_F(FakeClusterTest, PrefixPlacementFollowsTheCacheUntilTheRankReportsItEvicted) {
  Start(Options(kTiny, 2));
  auto w = FormCluster(2, /*prefix_caching=*/true);
  std::vector<int32_t> prompt(48), other(48);
  for (int i = 0; i < 48; ++i) {
    prompt[i] = 1 + i;
    other[i] = 500 + i;
  }
  // Runs `ids` for one token on the rank expected to get it, and answers it there.
  auto run_one = [&](const std::vector<int32_t>& ids, int want_rank) {
    std::future<GenerateCall> call = GenerateAsync(IdsRequest(ids, 1));
    std::optional<v1::CoordinatorMessage> a = w[want_rank]->WaitFor(Kind::kAssign, Millis(10000));
    ASSERT_TRUE(a.has_value()) << "rank " << want_rank << " got no Assign";
    w[want_rank]->SendTokens(a->assign().seq_id(), {100});
    w[want_rank]->SendFinished(a->assign().seq_id(), v1::Finished::REASON_LENGTH);
    EXPECT_TRUE(call.get().status.ok());
  };
  run_one(prompt, 0);  // both idle: rank 0
  // A long request keeps rank 0 busier than rank 1 (within the slack).
  std::future<GenerateCall> busy = GenerateAsync(IdsRequest(other, 40));
  std::optional<v1::CoordinatorMessage> b = w[0]->WaitFor(Kind::kAssign, Millis(10000));
  ASSERT_TRUE(b.has_value());
  run_one(prompt, 0);  // its prefix is on rank 0
  w[0]->SendHeartbeat(7, 1000, "", 0, PrefixKeys(prompt));
  ASSERT_TRUE(PollUntil([&] { return Stats().ranks(0).kv_blocks_used() == 7; }, seconds(10)));
  run_one(prompt, 1);  // evicted there: by load
  w[0]->SendFinished(b->assign().seq_id(), v1::Finished::REASON_LENGTH);
  EXPECT_TRUE(busy.get().status.ok());
}

TEST_F(FakeClusterTest, ANewWorkerJobIsPickedUpAfterALoss) {
  Start(Options(kTiny, 1));
  auto first = FormCluster(1);
  first[0]->Drop();
  ASSERT_TRUE(PollUntil([&] { return Health() == kNotServing; }, seconds(10)));
  auto second = FormCluster(1);
  EXPECT_EQ(Health(), kServing);
  second[0]->AutoRespond(3);
  GenerateCall done = RunGenerate(*stub_, IdsRequest({7}, 3), Millis(10000));
  ASSERT_TRUE(done.status.ok()) << done.status.error_message();
  EXPECT_EQ(done.token_ids(), std::vector<int32_t>({100, 101, 102}));
}

// A rank left over from an older worker job must not take the new job's slot: job A registers and
// its rank 0 loads; job B (a restart) registers; A's rank 1 then joins, before B's. It carries A's
// job id (RegisterResponse.job_id), so its stream is refused naming why, and B's own rank 1 binds and
// the cluster serves.
TEST_F(FakeClusterTest, ARankOfAnOlderWorkerJobCannotTakeTheNewJobsSlot) {
  Start(Options(kTiny, 2));
  const int port = server_->ports().cluster_port;
  FakeWorker a0(port, 0, 2), a1(port, 1, 2);
  a0.StartRegister();
  a1.StartRegister();
  ASSERT_TRUE(a0.FinishRegister().ok());
  ASSERT_TRUE(a1.FinishRegister().ok());
  a0.Connect();
  FakeWorker b0(port, 0, 2), b1(port, 1, 2);
  b0.StartRegister();
  b1.StartRegister();
  ASSERT_TRUE(b0.FinishRegister().ok());
  ASSERT_TRUE(b1.FinishRegister().ok());
  b0.Connect();
  a1.Connect();
  ASSERT_TRUE(a1.WaitStreamEnded(Millis(10000))) << "a rank of the old job was taken into the new one";
  const grpc::Status refused = a1.CloseGracefully();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << refused.error_message();
  EXPECT_NE(refused.error_message().find("rank 1 is of worker job "), std::string::npos) << refused.error_message();
  EXPECT_NE(refused.error_message().find("not of the coordinator's current one"), std::string::npos)
      << refused.error_message();
  EXPECT_EQ(Health(), kNotServing);
  b1.Connect();
  ASSERT_TRUE(PollUntil([&] { return Health() == kServing; }, seconds(10)));
  b0.AutoRespond(2);
  b1.AutoRespond(2);
  GenerateCall done = RunGenerate(*stub_, IdsRequest({7}, 2), Millis(10000));
  ASSERT_TRUE(done.status.ok()) << done.status.error_message();
  EXPECT_EQ(done.token_ids(), std::vector<int32_t>({100, 101}));
}

// A rank that goes away while its job loads (its Serve stream, opened with Join before the load,
// closes) is a loss at once: requests are refused naming it, GetClusterInfo shows it gone, rather
// than "1 of 2 ranks loaded" for ever; the job's other rank is told to shut down, and a new job is
// taken.
TEST_F(FakeClusterTest, ARankLostWhileItsJobLoadsIsReportedAndANewJobIsTaken) {
  Start(Options(kTiny, 2));
  const int port = server_->ports().cluster_port;
  FakeWorker w0(port, 0, 2), w1(port, 1, 2);
  w0.StartRegister();
  w1.StartRegister();
  ASSERT_TRUE(w0.FinishRegister().ok());
  ASSERT_TRUE(w1.FinishRegister().ok());
  w0.Connect();
  w1.Join();  // loading
  // w0's Loaded is handled on another of the server's threads than w1's Join: wait for both.
  ASSERT_TRUE(PollUntil([&] { return ClusterInfo().ranks(0).loaded() && ClusterInfo().ranks(1).alive(); }, seconds(10)));
  EXPECT_FALSE(ClusterInfo().ranks(1).loaded());
  EXPECT_NE(RunGenerate(*stub_, IdsRequest({1}, 1), Millis(5000)).status.error_message().find("1 of 2 ranks loaded"),
            std::string::npos);
  w1.Drop();
  std::string refused;
  EXPECT_TRUE(PollUntil(
      [&] {
        refused = RunGenerate(*stub_, IdsRequest({1}, 1), Millis(5000)).status.error_message();
        return refused.find("rank 1 lost while its job loaded") != std::string::npos;
      },
      seconds(10)))
      << refused;
  EXPECT_FALSE(ClusterInfo().ranks(1).alive());
  EXPECT_TRUE(w0.WaitFor(Kind::kShutdown, Millis(10000)));
  auto second = FormCluster(2);
  EXPECT_EQ(Health(), kServing);
}

// With --resume-timeout-s, a rank's loss holds the requests in flight: a new one is refused while
// the cluster is down, the old job's late tokens are dropped, and once a new worker job serves,
// each held generation is assigned again (same sequence, its streamed tokens as resume_tokens, a
// request that never reached a rank with none) and its client's stream goes on without a gap or a
// repeat.
TEST_F(FakeClusterTest, WithAResumeTimeoutRequestsInFlightGoOnOnTheNextWorkerJob) {
  CoordinatorOptions o = Options(kTiny, 2);
  o.resume_timeout_s = 30;
  o.limits.max_running_per_rank = 1;  // the third request waits in the queue
  Start(o);
  auto w = FormCluster(2);
  std::future<GenerateCall> a_call = GenerateAsync(IdsRequest({4, 5}, 5));
  std::optional<v1::CoordinatorMessage> a = w[0]->WaitFor(Kind::kAssign, Millis(10000));
  ASSERT_TRUE(a.has_value());
  std::future<GenerateCall> b_call = GenerateAsync(IdsRequest({6}, 3));
  std::optional<v1::CoordinatorMessage> b = w[1]->WaitFor(Kind::kAssign, Millis(10000));
  ASSERT_TRUE(b.has_value());
  std::future<GenerateCall> c_call = GenerateAsync(IdsRequest({7}, 2));
  ASSERT_TRUE(PollUntil([&] { return Stats().requests_waiting() == 1; }, seconds(10)));
  w[0]->SendTokens(a->assign().seq_id(), {100});
  w[0]->SendTokens(a->assign().seq_id(), {101});
  w[1]->SendTokens(b->assign().seq_id(), {200});
  // A stream's messages are handled in order: once its heartbeat shows, so have its tokens.
  w[0]->SendHeartbeat(3, 1000);
  w[1]->SendHeartbeat(4, 1000);
  ASSERT_TRUE(PollUntil([&] { return Stats().ranks(0).kv_blocks_used() == 3 && Stats().ranks(1).kv_blocks_used() == 4; },
                        seconds(10)));
  w[1]->Drop();
  ASSERT_TRUE(PollUntil([&] { return Health() == kNotServing; }, seconds(10)));
  EXPECT_TRUE(w[0]->WaitFor(Kind::kShutdown, Millis(10000)).has_value());
  w[0]->SendTokens(a->assign().seq_id(), {999});  // the old job's: not the client's any more
  GenerateCall refused = RunGenerate(*stub_, IdsRequest({8}, 2), Millis(10000));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(refused.status.error_message().find("rank 1 lost"), std::string::npos) << refused.status.error_message();
  EXPECT_EQ(a_call.wait_for(Millis(200)), std::future_status::timeout) << "a held request ended";

  auto second = FormCluster(2);
  std::map<uint64_t, v1::Assign> again;
  for (auto& x : second) {
    std::optional<v1::CoordinatorMessage> m = x->WaitFor(Kind::kAssign, Millis(10000));
    ASSERT_TRUE(m.has_value()) << "rank " << x->rank() << " got no Assign";
    again[m->assign().seq_id()] = m->assign();
    const std::vector<int32_t> sent(m->assign().resume_tokens().begin(), m->assign().resume_tokens().end());
    std::vector<int32_t> rest;
    for (int32_t t = 100 + static_cast<int32_t>(sent.size()); t < 100 + static_cast<int32_t>(m->assign().max_tokens()); ++t) rest.push_back(t);
    for (int32_t t : rest) x->SendTokens(m->assign().seq_id(), {t});
    x->SendFinished(m->assign().seq_id(), v1::Finished::REASON_LENGTH);
  }
  ASSERT_EQ(again.size(), 2u);
  ASSERT_EQ(again.count(a->assign().seq_id()), 1u);
  ASSERT_EQ(again.count(b->assign().seq_id()), 1u);
  EXPECT_EQ(std::vector<int32_t>(again[a->assign().seq_id()].resume_tokens().begin(), again[a->assign().seq_id()].resume_tokens().end()),
            std::vector<int32_t>({100, 101}));
  EXPECT_EQ(again[a->assign().seq_id()].prompt_size(), 2);
  EXPECT_EQ(again[b->assign().seq_id()].resume_tokens_size(), 1);
  GenerateCall a_done = a_call.get(), b_done = b_call.get();
  ASSERT_TRUE(a_done.status.ok()) << a_done.status.error_message();
  ASSERT_TRUE(b_done.status.ok()) << b_done.status.error_message();
  // b's first token was 200 (its old rank's), then the new rank went on from index 1.
  EXPECT_EQ(a_done.token_ids(), std::vector<int32_t>({100, 101, 102, 103, 104}));
  EXPECT_EQ(b_done.token_ids(), std::vector<int32_t>({200, 101, 102}));
  // The queued request: a slot frees, and it goes out with nothing to resume.
  std::optional<v1::CoordinatorMessage> c;
  FakeWorker* owner = nullptr;
  for (int i = 0; i < 200 && !c; ++i) {
    for (auto& x : second) {
      if (!c && (c = x->WaitFor(Kind::kAssign, Millis(25)))) owner = x.get();
    }
  }
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->assign().resume_tokens_size(), 0);
  owner->SendTokens(c->assign().seq_id(), {100});
  owner->SendTokens(c->assign().seq_id(), {101});
  owner->SendFinished(c->assign().seq_id(), v1::Finished::REASON_LENGTH);
  GenerateCall c_done = c_call.get();
  ASSERT_TRUE(c_done.status.ok()) << c_done.status.error_message();
  EXPECT_EQ(c_done.token_ids(), std::vector<int32_t>({100, 101}));
}

// A request running at a second loss is not resumed again (it may be what brings the workers
// down): it fails at once, naming the loss; the queue is not held back for it.
TEST_F(FakeClusterTest, ARequestRunningAtASecondLossFailsInsteadOfResumingAgain) {
  CoordinatorOptions o = Options(kTiny, 1);
  o.resume_timeout_s = 30;
  Start(o);
  auto first = FormCluster(1);
  std::future<GenerateCall> call = GenerateAsync(IdsRequest({4, 5}, 8));
  ASSERT_TRUE(first[0]->WaitFor(Kind::kAssign, Millis(10000)));
  first[0]->Drop();
  ASSERT_TRUE(PollUntil([&] { return Health() == kNotServing; }, seconds(10)));
  EXPECT_EQ(Stats().requests_waiting(), 1);  // held
  auto second = FormCluster(1);
  ASSERT_TRUE(second[0]->WaitFor(Kind::kAssign, Millis(10000)));
  const auto dropped = std::chrono::steady_clock::now();
  second[0]->Drop();
  GenerateCall done = call.get();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - dropped).count(), 5.0);
  EXPECT_EQ(done.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(done.status.error_message().find("rank 0 lost"), std::string::npos) << done.status.error_message();
  EXPECT_NE(done.status.error_message().find("not resumed again"), std::string::npos) << done.status.error_message();
}

// A scoring request whose running item fails at its second loss ends, and takes its other items
// with it: the one still queued is cancelled rather than left for the next worker job to run for
// nobody (Generate did so; Score left it queued).
TEST_F(FakeClusterTest, AFailedScoringRequestCancelsItsOtherItems) {
  CoordinatorOptions o = Options(kTiny, 1);
  o.resume_timeout_s = 30;
  o.limits.max_running_per_rank = 1;  // the second item waits in the queue
  Start(o);
  auto first = FormCluster(1);
  v1::ScoreRequest req;
  for (const std::vector<int32_t>& ctx : {std::vector<int32_t>{1, 2}, std::vector<int32_t>{3, 4}}) {
    v1::ScoreItem* it = req.add_items();
    it->mutable_context()->mutable_token_ids()->mutable_ids()->Assign(ctx.begin(), ctx.end());
    it->mutable_continuation()->mutable_token_ids()->mutable_ids()->Add(5);
  }
  std::future<grpc::Status> call = std::async(std::launch::async, [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(60));  // a failed ASSERT cannot leave it waiting
    v1::ScoreResponse resp;
    return stub_->Score(&ctx, req, &resp);
  });
  ASSERT_TRUE(first[0]->WaitFor(Kind::kAssign, Millis(10000)));
  first[0]->Drop();
  ASSERT_TRUE(PollUntil([&] { return Health() == kNotServing; }, seconds(10)));
  auto second = FormCluster(1);
  ASSERT_TRUE(second[0]->WaitFor(Kind::kAssign, Millis(10000)));  // the first item again
  EXPECT_EQ(Stats().requests_waiting(), 1);  // the second
  second[0]->Drop();
  const grpc::Status done = call.get();
  EXPECT_EQ(done.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(done.error_message().find("not resumed again"), std::string::npos) << done.error_message();
  EXPECT_TRUE(PollUntil([&] { return Stats().requests_waiting() == 0; }, seconds(10)))
      << Stats().requests_waiting() << " item(s) of the failed request still queued";
}

// Held requests fail once the resume timeout passes without a new worker job, naming the loss and
// the flag.
TEST_F(FakeClusterTest, HeldRequestsFailWhenNoWorkerJobComesWithinTheResumeTimeout) {
  CoordinatorOptions o = Options(kTiny, 1);
  o.resume_timeout_s = 1;
  Start(o);
  auto w = FormCluster(1);
  std::future<GenerateCall> call = GenerateAsync(IdsRequest({4, 5}, 8));
  ASSERT_TRUE(w[0]->WaitFor(Kind::kAssign, Millis(10000)));
  const auto dropped = std::chrono::steady_clock::now();
  w[0]->Drop();
  GenerateCall done = call.get();
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - dropped).count();
  EXPECT_EQ(done.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(done.status.error_message().find("rank 0 lost"), std::string::npos) << done.status.error_message();
  EXPECT_NE(done.status.error_message().find("--resume-timeout-s"), std::string::npos) << done.status.error_message();
  EXPECT_GE(waited, 0.9);
  EXPECT_LT(waited, 5.0);
}

TEST_F(FakeClusterTest, FullQueueIsResourceExhaustedAndFreedSlotsRefillInOrder) {
  CoordinatorOptions o = Options(kTiny, 1);
  o.limits.max_running_per_rank = 1;
  o.limits.max_waiting = 2;
  Start(o);
  auto w = FormCluster(1);
  std::vector<std::future<GenerateCall>> calls;
  calls.push_back(GenerateAsync(IdsRequest({10}, 1)));
  std::optional<v1::CoordinatorMessage> first = w[0]->WaitFor(Kind::kAssign, Millis(10000));
  ASSERT_TRUE(first);
  calls.push_back(GenerateAsync(IdsRequest({11}, 1)));
  ASSERT_TRUE(PollUntil([&] { return Stats().requests_waiting() == 1; }, seconds(10)));
  calls.push_back(GenerateAsync(IdsRequest({12}, 1)));
  ASSERT_TRUE(PollUntil([&] { return Stats().requests_waiting() == 2; }, seconds(10)));
  EXPECT_EQ(Stats().requests_running(), 1);

  GenerateCall rejected = RunGenerate(*stub_, IdsRequest({13}, 1), Millis(5000));
  EXPECT_EQ(rejected.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(rejected.status.error_message(), "queue full (2 waiting)");

  // Each finish frees the rank's only slot; the next Assign is the oldest waiting request.
  std::vector<int32_t> order = {first->assign().prompt(0)};
  uint64_t seq = first->assign().seq_id();
  for (int i = 0; i < 3; ++i) {
    w[0]->SendTokens(seq, {50 + i});
    w[0]->SendFinished(seq, v1::Finished::REASON_LENGTH);
    if (i == 2) break;
    std::optional<v1::CoordinatorMessage> next = w[0]->WaitFor(Kind::kAssign, Millis(10000));
    ASSERT_TRUE(next);
    order.push_back(next->assign().prompt(0));
    seq = next->assign().seq_id();
  }
  EXPECT_EQ(order, std::vector<int32_t>({10, 11, 12}));
  for (int i = 0; i < 3; ++i) {
    GenerateCall c = calls[i].get();
    ASSERT_TRUE(c.status.ok()) << c.status.error_message();
    EXPECT_EQ(c.token_ids(), std::vector<int32_t>({50 + i}));
  }
}

TEST_F(FakeClusterTest, DeadlineSendsCancelToTheWorkerAndFreesTheSlot) {
  Start(Options(kTiny, 1));
  auto w = FormCluster(1);
  std::future<GenerateCall> call = GenerateAsync(IdsRequest({1, 2}, 100), Millis(300));
  std::optional<v1::CoordinatorMessage> assign = w[0]->WaitFor(Kind::kAssign, Millis(10000));
  ASSERT_TRUE(assign);
  GenerateCall done = call.get();  // the worker never answers
  EXPECT_EQ(done.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  std::optional<v1::CoordinatorMessage> cancel = w[0]->WaitFor(Kind::kCancel, Millis(10000));
  ASSERT_TRUE(cancel);
  EXPECT_EQ(cancel->cancel().seq_id(), assign->assign().seq_id());
  EXPECT_EQ(Stats().requests_running(), 1);  // until the worker confirms
  w[0]->SendFinished(assign->assign().seq_id(), v1::Finished::REASON_CANCELLED);
  EXPECT_TRUE(PollUntil([&] { return Stats().requests_running() == 0; }, seconds(10)));
}

TEST_F(FakeClusterTest, ClientCancellationSendsCancelToTheWorker) {
  Start(Options(kTiny, 1));
  auto w = FormCluster(1);
  grpc::ClientContext ctx;
  std::promise<void> got_first;
  std::future<GenerateCall> call = std::async(std::launch::async, [&] {
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
    GenerateCall c;
    auto reader = stub_->Generate(&ctx, IdsRequest({3, 4}, 50));
    v1::GenerateResponse r;
    bool first = true;
    while (reader->Read(&r)) {
      c.responses.push_back(r);
      if (first) got_first.set_value();
      first = false;
    }
    c.status = reader->Finish();
    return c;
  });
  std::optional<v1::CoordinatorMessage> assign = w[0]->WaitFor(Kind::kAssign, Millis(10000));
  ASSERT_TRUE(assign);
  w[0]->SendTokens(assign->assign().seq_id(), {9});
  ASSERT_EQ(got_first.get_future().wait_for(seconds(10)), std::future_status::ready);
  ctx.TryCancel();
  GenerateCall done = call.get();
  EXPECT_EQ(done.status.error_code(), grpc::StatusCode::CANCELLED);
  std::optional<v1::CoordinatorMessage> cancel = w[0]->WaitFor(Kind::kCancel, Millis(10000));
  ASSERT_TRUE(cancel);
  EXPECT_EQ(cancel->cancel().seq_id(), assign->assign().seq_id());
}

TEST_F(FakeClusterTest, StopSequenceCutsTheTextAndCancelsTheWorker) {
  Start(Options(kShakespeare, 1));
  auto w = FormCluster(1);
  std::ifstream f(kShakespeare + "/samples.json");
  const nlohmann::json sample = nlohmann::json::parse(f)["greedy_samples"][0];
  const std::vector<int32_t> ids = sample["greedy_ids"];
  const std::string generated = sample["greedy_text"].get<std::string>().substr(sample["prompt"].get<std::string>().size());

  v1::GenerateRequest r;
  r.mutable_prompt()->set_text(sample["prompt"]);
  r.mutable_sampling()->set_max_tokens(static_cast<uint32_t>(ids.size()));
  r.mutable_sampling()->add_stop("RICHARD");
  std::future<GenerateCall> call = GenerateAsync(r);
  std::optional<v1::CoordinatorMessage> assign = w[0]->WaitFor(Kind::kAssign, Millis(10000));
  ASSERT_TRUE(assign);
  EXPECT_EQ(std::vector<int32_t>(assign->assign().prompt().begin(), assign->assign().prompt().end()),
            sample["prompt_ids"].get<std::vector<int32_t>>());
  for (int32_t id : ids) w[0]->SendTokens(assign->assign().seq_id(), {id});
  std::optional<v1::CoordinatorMessage> cancel = w[0]->WaitFor(Kind::kCancel, Millis(10000));
  ASSERT_TRUE(cancel);
  w[0]->SendFinished(assign->assign().seq_id(), v1::Finished::REASON_CANCELLED);
  GenerateCall done = call.get();
  ASSERT_TRUE(done.status.ok()) << done.status.error_message();
  EXPECT_EQ(done.text(), generated.substr(0, generated.find("RICHARD")));
  EXPECT_EQ(done.responses.back().finish_reason(), v1::FINISH_REASON_STOP_SEQUENCE);
}

TEST_F(FakeClusterTest, WorkerStopAndErrorFinishes) {
  Start(Options(kTiny, 1));
  auto w = FormCluster(1);
  std::future<GenerateCall> stop = GenerateAsync(IdsRequest({1}, 5));
  auto a = w[0]->WaitFor(Kind::kAssign, Millis(10000));
  ASSERT_TRUE(a);
  w[0]->SendTokens(a->assign().seq_id(), {2});
  w[0]->SendFinished(a->assign().seq_id(), v1::Finished::REASON_STOP);
  GenerateCall s = stop.get();
  ASSERT_TRUE(s.status.ok());
  EXPECT_EQ(s.responses.back().finish_reason(), v1::FINISH_REASON_STOP);

  std::future<GenerateCall> error = GenerateAsync(IdsRequest({1}, 5));
  a = w[0]->WaitFor(Kind::kAssign, Millis(10000));
  ASSERT_TRUE(a);
  w[0]->SendFinished(a->assign().seq_id(), v1::Finished::REASON_ERROR, "kv cache too small");
  GenerateCall e = error.get();
  EXPECT_EQ(e.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_NE(e.status.error_message().find("kv cache too small"), std::string::npos);
}

TEST_F(FakeClusterTest, BadRequestsAreInvalidArgumentBeforeAnythingIsQueued) {
  Start(Options(kTiny, 1));
  auto w = FormCluster(1);
  v1::GenerateRequest r = IdsRequest({1, 2}, 4);
  r.mutable_sampling()->set_top_p(2.0f);
  GenerateCall bad = RunGenerate(*stub_, r, Millis(5000));
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(bad.status.error_message().rfind("sampling.top_p: ", 0), 0u) << bad.status.error_message();
  v1::GenerateRequest text;
  text.mutable_prompt()->set_text("hello");
  GenerateCall no_tok = RunGenerate(*stub_, text, Millis(5000));
  EXPECT_EQ(no_tok.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(no_tok.status.error_message().find("model has no tokenizer: send token_ids"), std::string::npos);
  grpc::ClientContext ctx;
  v1::TokenizeResponse tr;
  v1::TokenizeRequest treq;
  treq.set_text("x");
  EXPECT_EQ(stub_->Tokenize(&ctx, treq, &tr).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Stats().requests_running() + Stats().requests_waiting(), 0);
}

// The tokenizer file: the folder's tokenizer.json unless --tokenizer-mode says otherwise (here a
// Mistral v1 tokenizer.json with transformers 5's Metaspace, which writes " a" as "▁a" where the
// tokenizer.model gives "▁" "▁a"); a mode whose file is missing, and a tokenizer with more tokens
// than the model's embedding has rows, refuse to start, naming why.
TEST_F(FakeClusterTest, TokenizerFileFollowsTheModeAndFitsTheModel) {
  const std::string data = std::string(MOE_SOURCE_DIR) + "/tests/data/tokenizers";
  const std::string dir = ::testing::TempDir() + "/moe_tokenizer_mode_" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(std::string(MOE_SOURCE_DIR) + "/benchmarks/configs/mixtral-8x7b-v0.1.json", dir + "/config.json");
  std::filesystem::copy_file(data + "/mistral-v1.model", dir + "/tokenizer.model");
  nlohmann::json metaspace = nlohmann::json::parse(std::ifstream(data + "/mistral-v1.tokenizer.json"));
  metaspace["normalizer"] = nullptr;
  metaspace["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}, {"split", false}};
  std::ofstream(dir + "/tokenizer.json") << metaspace.dump();
  const auto tokenize = [&](const std::string& text) {
    grpc::ClientContext ctx;
    v1::TokenizeRequest req;
    req.set_text(text);
    req.set_add_bos(false);
    v1::TokenizeResponse resp;
    EXPECT_TRUE(stub_->Tokenize(&ctx, req, &resp).ok());
    return std::vector<int32_t>(resp.token_ids().begin(), resp.token_ids().end());
  };
  CoordinatorOptions o = Options(dir, 1);
  Start(o);
  EXPECT_EQ(tokenize(" a"), std::vector<int32_t>({264}));
  server_.reset();
  o.tokenizer_file = TokenizerFile::kSentencePiece;
  Start(o);
  EXPECT_EQ(tokenize(" a"), std::vector<int32_t>({28705, 264}));
  server_.reset();

  std::filesystem::remove(dir + "/tokenizer.json");
  o.tokenizer_file = TokenizerFile::kTokenizerJson;
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> missing = CoordinatorServer::Start(o);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("tokenizer.json"), std::string_view::npos) << missing.status();

  std::filesystem::copy_file(kTiny + "/config.json", dir + "/config.json", std::filesystem::copy_options::overwrite_existing);
  o.tokenizer_file = TokenizerFile::kAuto;
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> too_big = CoordinatorServer::Start(o);
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_big.status().message().find("32000 tokens, more than config.json's vocab_size of 1024"), std::string_view::npos)
      << too_big.status();
  std::filesystem::remove_all(dir);
}

// --tokenizer DIR (vLLM's): the tokenizer and its tokenizer_config.json come from DIR, e.g. for a
// folder holding config.json alone (synthetic weights); a DIR without a tokenizer refuses to start.
TEST_F(FakeClusterTest, TokenizerFolderServesAModelFolderWithoutOne) {
  const std::string dir = ::testing::TempDir() + "/moe_tokenizer_dir_" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kShakespeare + "/config.json", dir + "/config.json");
  const auto tokenize = [&](const std::string& text) {
    grpc::ClientContext ctx;
    v1::TokenizeRequest req;
    req.set_text(text);
    v1::TokenizeResponse resp;
    const grpc::Status st = stub_->Tokenize(&ctx, req, &resp);
    return st.ok() ? std::vector<int32_t>(resp.token_ids().begin(), resp.token_ids().end()) : std::vector<int32_t>{-1};
  };
  CoordinatorOptions o = Options(dir, 1);
  Start(o);
  EXPECT_EQ(tokenize("ROMEO:"), std::vector<int32_t>{-1}) << "no tokenizer: text is refused";
  server_.reset();
  o.tokenizer_dir = kShakespeare;
  Start(o);
  // samples.json's prompt ids for "ROMEO:"; its tokenizer_config.json adds no BOS.
  EXPECT_EQ(tokenize("ROMEO:"), (std::vector<int32_t>{870, 2007}));
  grpc::ClientContext ctx;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.bos_token(), "<s>");
  EXPECT_EQ(info.served_model_name(), std::filesystem::path(dir).filename().string()) << "the model folder names the model";
  server_.reset();
  o.tokenizer_dir = kTiny;
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> none = CoordinatorServer::Start(o);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("--tokenizer: " + kTiny + " has no tokenizer.json or tokenizer.model"),
            std::string_view::npos)
      << none.status();
  std::filesystem::remove_all(dir);
}

// The tokenizer's EOS ends generation where config.json names another end id (vLLM and TGI stop at
// it): it joins every Assign's stop ids but those with ignore_eos, and GetModelInfo's end ids.
TEST_F(FakeClusterTest, TheTokenizersEosEndsGenerationWhereTheConfigNamesAnother) {
  const std::string dir = ::testing::TempDir() + "/moe_tokenizer_eos_" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(kShakespeare + "/config.json"));
  config["eos_token_id"] = 7;
  std::ofstream(dir + "/config.json") << config.dump();
  for (const char* f : {"tokenizer.model", "tokenizer_config.json"}) {
    std::filesystem::copy_file(kShakespeare + "/" + f, dir + "/" + f);
  }
  Start(Options(dir, 1));
  auto w = FormCluster(1);
  grpc::ClientContext ctx;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(std::vector<int32_t>(info.eos_token_ids().begin(), info.eos_token_ids().end()), (std::vector<int32_t>{7, 2}));
  const auto stop_ids = [&](bool ignore_eos) {
    v1::GenerateRequest r = IdsRequest({4, 5}, 1);
    r.mutable_sampling()->set_ignore_eos(ignore_eos);
    std::future<GenerateCall> call = GenerateAsync(r);
    std::optional<v1::CoordinatorMessage> a = w[0]->WaitFor(Kind::kAssign, Millis(10000));
    EXPECT_TRUE(a.has_value());
    if (!a) return std::vector<int32_t>{-1};
    w[0]->SendFinished(a->assign().seq_id(), v1::Finished::REASON_LENGTH);
    EXPECT_TRUE(call.get().status.ok());
    return std::vector<int32_t>(a->assign().stop_token_ids().begin(), a->assign().stop_token_ids().end());
  };
  EXPECT_EQ(stop_ids(false), std::vector<int32_t>{2});
  EXPECT_EQ(stop_ids(true), std::vector<int32_t>{});
  std::filesystem::remove_all(dir);
}

// --generation-config: the model folder's generation_config.json gives GetModelInfo's
// default_sampling (and its eos_token_id the model's end ids) unless "vllm"; a folder named
// without such a file refuses to start.
TEST_F(FakeClusterTest, GenerationConfigGivesTheSamplingDefaults) {
  const std::string dir = ::testing::TempDir() + "/moe_generation_config_" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kTiny + "/config.json", dir + "/config.json");
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": [2, 9], "temperature": 0.6, "top_k": 50,
                                                       "max_new_tokens": 64})";
  const auto info = [&] {
    grpc::ClientContext ctx;
    v1::ModelInfo m;
    EXPECT_TRUE(stub_->GetModelInfo(&ctx, {}, &m).ok());
    return m;
  };
  CoordinatorOptions o = Options(dir, 1);
  Start(o);
  v1::ModelInfo m = info();
  EXPECT_FLOAT_EQ(m.default_sampling().temperature(), 0.6f);
  EXPECT_EQ(m.default_sampling().max_tokens(), 64u);
  EXPECT_FALSE(m.default_sampling().has_top_k()) << "50 is Hugging Face's own default";
  EXPECT_EQ(std::vector<int32_t>(m.eos_token_ids().begin(), m.eos_token_ids().end()), (std::vector<int32_t>{2, 9}));
  server_.reset();
  o.generation_config = "vllm";
  Start(o);
  m = info();
  EXPECT_EQ(m.default_sampling().ByteSizeLong(), 0u);
  EXPECT_EQ(m.eos_token_ids_size(), 2) << "the end ids stay";
  server_.reset();
  // vllm with an override: the override's fields alone.
  o.override_generation_config =
      GenerationConfig::FromOverride(nlohmann::json::parse(R"({"top_k": 50, "max_new_tokens": 3})")).value();
  Start(o);
  m = info();
  EXPECT_FALSE(m.default_sampling().has_temperature());
  EXPECT_EQ(m.default_sampling().top_k(), 50) << "as given, Hugging Face's default or not";
  EXPECT_EQ(m.default_sampling().max_tokens(), 3u);
  server_.reset();
  o.override_generation_config = {};
  o.generation_config = std::string(5000, 'a');  // a path the system refuses: an error, not a throw
  EXPECT_FALSE(CoordinatorServer::Start(o).ok());
  o.generation_config = kTiny;
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> missing = CoordinatorServer::Start(o);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("--generation-config: " + kTiny + " has no generation_config.json"),
            std::string_view::npos)
      << missing.status();
  // DIR's end ids must be tokens of the model (its config.json's vocab_size of 1024).
  const std::string other = dir + "/other";
  std::filesystem::create_directories(other);
  std::ofstream(other + "/generation_config.json") << R"({"eos_token_id": [2, 1024]})";
  o = Options(kTiny, 1);
  o.generation_config = other;
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> outside = CoordinatorServer::Start(o);
  ASSERT_FALSE(outside.ok());
  EXPECT_NE(outside.status().message().find("generation_config.json: eos_token_id 1024 is outside the vocabulary [0, 1024)"),
            std::string_view::npos)
      << outside.status();
  std::filesystem::remove_all(dir);
}

TEST_F(FakeClusterTest, ScoreAndScoreRollingAssembleTheWorkersLogprobs) {
  CoordinatorOptions o = Options(kTiny, 2);
  o.limits.max_waiting = 4;
  Start(o);
  auto w = FormCluster(2);
  for (auto& x : w) x->AutoRespond(0);  // Scored: logprob -0.1 * position, argmax = even id

  v1::ScoreRequest req;
  auto add = [&](std::vector<int32_t> ctx, std::vector<int32_t> cont) {
    v1::ScoreItem* it = req.add_items();
    it->mutable_context()->mutable_token_ids()->mutable_ids()->Assign(ctx.begin(), ctx.end());
    it->mutable_continuation()->mutable_token_ids()->mutable_ids()->Assign(cont.begin(), cont.end());
  };
  add({1, 2, 3}, {4, 5});
  add({7}, {8});
  grpc::ClientContext ctx;
  v1::ScoreResponse resp;
  grpc::Status s = stub_->Score(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.results_size(), 2);
  // Item 0: continuation tokens at positions 3 and 4.
  EXPECT_EQ(std::vector<int32_t>(resp.results(0).continuation_token_ids().begin(),
                                 resp.results(0).continuation_token_ids().end()),
            std::vector<int32_t>({4, 5}));
  ASSERT_EQ(resp.results(0).logprobs_size(), 2);
  EXPECT_FLOAT_EQ(resp.results(0).logprobs(0), -0.3f);
  EXPECT_FLOAT_EQ(resp.results(0).logprobs(1), -0.4f);
  EXPECT_NEAR(resp.results(0).sum_logprob(), -0.7, 1e-6);
  EXPECT_FALSE(resp.results(0).is_greedy());  // 5 is odd
  ASSERT_EQ(resp.results(1).logprobs_size(), 1);
  EXPECT_FLOAT_EQ(resp.results(1).logprobs(0), -0.1f);
  EXPECT_TRUE(resp.results(1).is_greedy());

  v1::ScoreRollingRequest roll;
  for (const std::vector<int32_t>& ids : {std::vector<int32_t>{1, 2, 3, 4, 5}, std::vector<int32_t>{9}}) {
    roll.add_texts()->mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
  }
  grpc::ClientContext ctx2;
  v1::ScoreRollingResponse rr;
  s = stub_->ScoreRolling(&ctx2, roll, &rr);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(rr.results_size(), 2);
  EXPECT_EQ(rr.results(0).num_scored_tokens(), 4u);
  EXPECT_NEAR(rr.results(0).sum_logprob(), -(0.1 + 0.2 + 0.3 + 0.4), 1e-6);
  // The most probable token per position (the fake's: the even id at or below the token).
  EXPECT_EQ(std::vector<int32_t>(rr.results(0).argmax_ids().begin(), rr.results(0).argmax_ids().end()),
            (std::vector<int32_t>{2, 2, 4, 4}));
  ASSERT_EQ(rr.results(0).argmax_logprobs_size(), 4);
  EXPECT_FLOAT_EQ(rr.results(0).argmax_logprobs(3), -0.2f);
  EXPECT_EQ(rr.results(0).token_texts_size(), 0) << "the tiny model has no tokenizer";
  EXPECT_EQ(rr.results(1).num_scored_tokens(), 0u);

  // Longer than the 4096-token context: windows [0, 4096) and [904, 5000) (score_windows.h); the
  // fake's logprob is -0.1 x the position inside the window.
  v1::ScoreRollingRequest long_text;
  std::vector<int32_t> ids(5000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i % 1000);
  long_text.add_texts()->mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
  grpc::ClientContext ctx4;
  s = stub_->ScoreRolling(&ctx4, long_text, &rr);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(rr.results_size(), 1);
  ASSERT_EQ(rr.results(0).logprobs_size(), 4999);
  double expected_sum = 0;
  for (int t = 1; t < 5000; ++t) {
    const float expected = -0.1f * static_cast<float>(t < 4096 ? t : t - 904);
    expected_sum += expected;
    ASSERT_FLOAT_EQ(rr.results(0).logprobs(t - 1), expected) << t;
  }
  EXPECT_NEAR(rr.results(0).sum_logprob(), expected_sum, 1e-3);

  // More items than the queue can ever hold.
  for (int i = 0; i < 3; ++i) add({1}, {2});
  grpc::ClientContext ctx3;
  s = stub_->Score(&ctx3, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message().rfind("items: ", 0), 0u) << s.error_message();
}

TEST_F(FakeClusterTest, FortyConcurrentStreams) {
  Start(Options(kTiny, 2));
  auto w = FormCluster(2);
  for (auto& x : w) x->AutoRespond(4);
  std::vector<std::future<GenerateCall>> calls;
  for (int i = 0; i < 40; ++i) calls.push_back(GenerateAsync(IdsRequest({1 + i, 2}, 4), Millis(60000)));
  for (auto& c : calls) {
    GenerateCall r = c.get();
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.token_ids(), std::vector<int32_t>({100, 101, 102, 103}));
    EXPECT_EQ(r.responses.back().finish_reason(), v1::FINISH_REASON_LENGTH);
  }
  const v1::Stats s = Stats();
  EXPECT_EQ(s.requests_finished(), 40u);
  EXPECT_EQ(s.generation_tokens_total(), 160u);
  EXPECT_EQ(s.prompt_tokens_total(), 80u);
  EXPECT_EQ(s.time_to_first_token().count(), 40u);
  EXPECT_EQ(s.inter_token_latency().count(), 40u * 3);  // every token after each request's first
  EXPECT_EQ(s.e2e_request_latency().count(), 40u);
  EXPECT_GT(s.generation_tokens_per_second(), 0.0);
  EXPECT_EQ(s.requests_running(), 0);
}

TEST_F(FakeClusterTest, StatsCarryKvUseAndRankZerosLoadStatistics) {
  Start(Options(kTiny, 2));
  auto w = FormCluster(2);
  // Real LoadStats JSON (4 layers, 8 experts, 2 ranks), as a worker's heartbeat carries it.
  const std::string load_json = LoadStats(4, 8, 2).ToJson().dump();
  w[0]->SendHeartbeat(250, 1000, load_json, 17);
  w[1]->SendHeartbeat(50, 1000, load_json, 17);
  ASSERT_TRUE(PollUntil([&] { return Stats().engine_steps() == 17 && Stats().ranks(1).kv_blocks_used() == 50; },
                        seconds(10)));
  const v1::Stats s = Stats();
  EXPECT_DOUBLE_EQ(s.kv_cache_usage(), 300.0 / 2000.0);
  ASSERT_EQ(s.ranks_size(), 2);
  EXPECT_EQ(s.ranks(0).kv_blocks_used(), 250);
  EXPECT_EQ(s.ranks(0).kv_blocks_total(), 1000);
  ASSERT_EQ(s.layers_size(), 4);
  EXPECT_EQ(s.layers(3).layer(), 3);
  EXPECT_EQ(s.layers(0).expert_tokens_size(), 8);
  EXPECT_EQ(s.layers(0).rank_rows_size(), 2);

  // Values are carried over as given.
  nlohmann::json j = nlohmann::json::parse(load_json);
  j["layers"][1]["expert_tokens"][2] = 42;
  j["layers"][1]["rank_rows"][1] = 7;
  j["layers"][1]["last_step"]["imbalance"] = 1.5;
  j["layers"][1]["mean"]["expert_cv2"] = 0.25;
  w[0]->SendHeartbeat(250, 1000, j.dump(), 18);
  ASSERT_TRUE(PollUntil([&] { return Stats().engine_steps() == 18; }, seconds(10)));
  const v1::Stats t = Stats();
  EXPECT_EQ(t.layers(1).expert_tokens(2), 42);
  EXPECT_EQ(t.layers(1).rank_rows(1), 7);
  EXPECT_DOUBLE_EQ(t.layers(1).last_imbalance(), 1.5);
  EXPECT_DOUBLE_EQ(t.layers(1).mean_expert_cv2(), 0.25);
}

// A sequence longer than every rank's KV cache is the request's error (INVALID_ARGUMENT naming
// max_tokens), said before it is queued; the rank's own refusal had come back INTERNAL. One that
// only the larger cache holds goes there.
TEST_F(FakeClusterTest, ASequenceLongerThanARanksCacheIsRefused) {
  Start(Options(kTiny, 2));
  std::vector<std::unique_ptr<FakeWorker>> w;
  for (int r = 0; r < 2; ++r) w.push_back(std::make_unique<FakeWorker>(server_->ports().cluster_port, r, 2));
  for (auto& x : w) x->StartRegister();
  for (auto& x : w) ASSERT_TRUE(x->FinishRegister().ok());
  w[0]->Connect(/*kv_blocks_total=*/2, false, /*kv_block_size=*/16);  // 32 positions
  w[1]->Connect(/*kv_blocks_total=*/3, false, /*kv_block_size=*/16);  // 48
  ASSERT_TRUE(PollUntil([&] { return Health() == kServing; }, seconds(10)));
  const GenerateCall refused = RunGenerate(*stub_, IdsRequest({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 40), Millis(5000));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(refused.status.error_message(),
            "sampling.max_tokens: 10 prompt tokens + max_tokens 40 = 50 positions, more than any rank's KV cache "
            "holds (48; moe-worker --kv-tokens, --gpu-memory-utilization)");
  // 40 positions: rank 1's cache only (both idle, rank 0 would come first by load and index).
  w[0]->AutoRespond(2);
  std::thread between([&] {
    const GenerateCall call = RunGenerate(*stub_, IdsRequest({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 30), Millis(10000));
    EXPECT_TRUE(call.status.ok()) << call.status.error_message();
  });
  const std::optional<v1::CoordinatorMessage> assign = w[1]->WaitFor(v1::CoordinatorMessage::kAssign, Millis(5000));
  ASSERT_TRUE(assign.has_value());
  w[1]->SendTokens(assign->assign().seq_id(), {100, 101});
  w[1]->SendFinished(assign->assign().seq_id(), v1::Finished::REASON_LENGTH);
  between.join();
  // What both hold goes by load as before: rank 0 first.
  const GenerateCall served = RunGenerate(*stub_, IdsRequest({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 22), Millis(10000));
  EXPECT_TRUE(served.status.ok()) << served.status.error_message();
}

TEST_F(FakeClusterTest, SilentRankIsLostAfterTheHeartbeatTimeout) {
  CoordinatorOptions o = Options(kTiny, 1);
  o.heartbeat_timeout_s = 1.0;
  Start(o);
  auto w = FormCluster(1);
  w[0]->StartHeartbeats(Millis(50));
  // Heartbeats keep it serving over more than two timeouts.
  EXPECT_FALSE(PollUntil([&] { return Health() != kServing; }, Millis(2500)));
  EXPECT_TRUE(ClusterInfo().ranks(0).alive());
  w[0]->StopHeartbeats();
  ASSERT_TRUE(PollUntil([&] { return Health() == kNotServing; }, seconds(10)));
  // Reported lost too, though its stream is still open (it said alive).
  EXPECT_FALSE(ClusterInfo().ranks(0).alive());
  EXPECT_TRUE(w[0]->WaitFor(Kind::kShutdown, Millis(10000)));
  GenerateCall after = RunGenerate(*stub_, IdsRequest({1}, 1), Millis(5000));
  EXPECT_EQ(after.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(after.status.error_message().find("no heartbeat"), std::string::npos) << after.status.error_message();
}

TEST_F(FakeClusterTest, RegistrationsThatDoNotFitTheJobAreRefused) {
  Start(Options(kTiny, 2));
  FakeWorker wrong_world(server_->ports().cluster_port, 0, 3);
  wrong_world.StartRegister();
  grpc::Status s = wrong_world.FinishRegister();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message().rfind("world_size: ", 0), 0u) << s.error_message();
  FakeWorker wrong_model(server_->ports().cluster_port, 0, 2);
  wrong_model.StartRegister(kShakespeare);
  s = wrong_model.FinishRegister();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(s.error_message().rfind("model_dir: ", 0), 0u) << s.error_message();
}

// Plain HTTP GET of the metrics page.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  if (write(fd, req.data(), req.size()) < 0) {
    close(fd);
    return "";
  }
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

TEST_F(FakeClusterTest, PrometheusMetricsUseTheMoePrefixAndBaseUnits) {
  CoordinatorOptions o = Options(kTiny, 1);
  o.metrics_listen = "127.0.0.1:0";
  Start(o);
  ASSERT_GT(server_->ports().metrics_port, 0);
  auto w = FormCluster(1);
  w[0]->AutoRespond(3);
  GenerateCall c = RunGenerate(*stub_, IdsRequest({1, 2}, 3), Millis(10000));
  ASSERT_TRUE(c.status.ok()) << c.status.error_message();
  w[0]->SendHeartbeat(100, 400);
  ASSERT_TRUE(PollUntil([&] { return Stats().kv_cache_usage() > 0; }, seconds(10)));
  const std::string page = HttpGet(server_->ports().metrics_port, "/metrics");
  for (const char* needle :
       {"moe_time_to_first_token_seconds_bucket", "moe_inter_token_latency_seconds_count 2",
        "moe_e2e_request_latency_seconds_count 1", "moe_num_requests_waiting 0", "moe_num_requests_running 0",
        "moe_kv_cache_usage_ratio 0.25", "moe_prompt_tokens_total 2", "moe_generation_tokens_total 3",
        "moe_request_success_total{finish_reason=\"length\"} 1",
        "moe_request_success_total{finish_reason=\"stop_sequence\"} 0"}) {
    EXPECT_NE(page.find(needle), std::string::npos) << needle << "\n" << page;
  }
}

// vLLM's queue time: a sequence's Assign carries how long the coordinator held it (here: behind
// another, --max-running-per-rank 1), the rank reports that plus its own wait with the first token,
// and the coordinator's histograms take the report.
TEST_F(FakeClusterTest, QueueTimeGoesFromTheCoordinatorThroughTheRankToTheMetrics) {
  CoordinatorOptions o = Options(kTiny, 1);
  o.metrics_listen = "127.0.0.1:0";
  o.limits.max_running_per_rank = 1;
  Start(o);
  auto w = FormCluster(1);
  const auto answer = [&](const v1::Assign& a, float queued) {
    v1::WorkerMessage m;
    m.mutable_tokens()->set_seq_id(a.seq_id());
    m.mutable_tokens()->add_token_ids(100);
    m.mutable_tokens()->set_queued_seconds(queued);
    w[0]->Send(m);
    w[0]->SendFinished(a.seq_id(), v1::Finished::REASON_LENGTH);
  };
  std::future<GenerateCall> first = GenerateAsync(IdsRequest({4, 5}, 1));
  std::optional<v1::CoordinatorMessage> a = w[0]->WaitFor(Kind::kAssign, Millis(10000));
  ASSERT_TRUE(a.has_value());
  EXPECT_LT(a->assign().queued_seconds(), 0.25f) << "sent at once";
  std::future<GenerateCall> second = GenerateAsync(IdsRequest({6}, 1));
  ASSERT_TRUE(PollUntil([&] { return Stats().requests_waiting() == 1; }, seconds(10)));
  std::this_thread::sleep_for(Millis(300));
  answer(a->assign(), 0.0f);
  std::optional<v1::CoordinatorMessage> b = w[0]->WaitFor(Kind::kAssign, Millis(10000));
  ASSERT_TRUE(b.has_value());
  const float held = b->assign().queued_seconds();
  EXPECT_GE(held, 0.3f) << "it waited behind the first";
  EXPECT_LT(held, 30.0f);
  answer(b->assign(), held + 0.5f);  // the rank's own half second
  ASSERT_TRUE(first.get().status.ok());
  ASSERT_TRUE(second.get().status.ok());
  const std::string page = HttpGet(server_->ports().metrics_port, "/metrics");
  const auto value = [&](const std::string& name) {
    const size_t at = page.find("\n" + name + " ");
    return at == std::string::npos ? -1.0 : std::stod(page.substr(at + name.size() + 2));
  };
  EXPECT_EQ(value("moe_request_queue_time_seconds_count"), 2) << page;
  EXPECT_NEAR(value("moe_request_queue_time_seconds_sum"), held + 0.5, 1e-4);
}

}  // namespace
}  // namespace moe
