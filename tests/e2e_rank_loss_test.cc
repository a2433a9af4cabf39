// End-to-end: a worker rank of a real `mpirun -np 2 moe-worker` job is lost while a stream is being
// generated, killed (SIGKILL: its Serve stream closes) or hung (SIGSTOP: its heartbeats stop). The
// cluster must fail that stream with UNAVAILABLE naming the lost rank, report NOT_SERVING, refuse new
// requests at once rather than hang, keep the coordinator up, let the old job leave (a hung rank
// that resumes obeys the Shutdown it was sent; one that never does is left behind after the
// workers' --step-timeout-s), and serve again, with transformers' greedy tokens
// (samples.json), once a new worker job has joined. Then it shuts down cleanly.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/client_context.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "clients/cpp/grpc_status.h"
#include "clients/cpp/health_check.h"
#include "common/json_util.h"
#include "moe/v1/inference.grpc.pb.h"
#include "tests/e2e_cluster.h"
#include "tests/support/cli_runner.h"
#include "tests/support/engine_fixture.h"

namespace moe::e2e {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

constexpr int kHeartbeatTimeoutS = 3;
constexpr double kWorkerHeartbeatIntervalS = 1.0;  // moe-worker's

// The MPI rank of a process started by mpirun (from its environment), or -1.
int MpiRankOf(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string env = ss.str(), key = std::string("OMPI_COMM_WORLD_RANK=");
  for (size_t at = 0; at < env.size();) {
    const size_t end = env.find('\0', at);
    const std::string var = env.substr(at, end == std::string::npos ? std::string::npos : end - at);
    if (var.rfind(key, 0) == 0) return std::atoi(var.c_str() + key.size());
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return -1;
}

std::string ExecutableOf(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::string argv0;
  std::getline(f, argv0, '\0');
  return argv0;
}

// Whether `pid` is a process that has not ended (a zombie has, though no parent reaped it yet).
bool Lives(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(f, stat)) return false;
  const size_t paren = stat.rfind(") ");  // the state follows the command's name
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z' && stat[paren + 2] != 'X';
}

// The moe-worker process of `rank` in the cluster's current worker job, or -1.
pid_t WorkerPidOf(const Cluster& cluster, int rank) {
  for (pid_t p : cluster.WorkerProcesses()) {
    if (ExecutableOf(p).find("moe-worker") != std::string::npos && MpiRankOf(p) == rank) return p;
  }
  return -1;
}

// The moe-worker process of `rank` once it has printed its first "loading" line (within 60 s), or -1.
pid_t AwaitLoadingRank(const Cluster& cluster, int rank) {
  const std::string loading = "[rank " + std::to_string(rank) + "] loading";
  for (auto t = Clock::now(); Clock::now() - t < std::chrono::seconds(60);) {
    if (cluster.WorkersLog().find(loading) != std::string::npos) {
      if (const pid_t pid = WorkerPidOf(cluster, rank); pid > 0) return pid;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return -1;
}

// The message a one-token Generate is refused with, asked again (for up to 30 s) until it holds
// `needle`; the last one if it never does.
std::string AwaitRefusal(moe::v1::Inference::Stub& stub, const std::string& needle) {
  std::string refused;
  for (auto t = Clock::now(); Clock::now() - t < std::chrono::seconds(30);) {
    refused = std::string(RunGenerate(stub, GreedyTokenRequest({1, 2, 3}, 1), 10).status.message());
    if (refused.find(needle) != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return refused;
}

// A cluster of two ranks serving the default model, and transformers' greedy continuation of its
// first sample.
class E2eRankLoss : public ::testing::Test {
 protected:
  void SetUp() override {
    testing_ref::SetMpiTestEnvironment();
    absl::StatusOr<json> samples = ReadJsonFile(testing_ref::kDefaultModelDir + "/samples.json");
    ASSERT_TRUE(samples.ok()) << samples.status();
    const json& sample = (*samples)["greedy_samples"][0];
    prompt_ = sample["prompt_ids"].get<std::vector<int32_t>>();
    greedy_ = sample["greedy_ids"].get<std::vector<int32_t>>();
    ASSERT_GE(greedy_.size(), 16u);
    std::vector<std::string> args = {"--heartbeat-timeout-s", std::to_string(kHeartbeatTimeoutS)};
    for (const std::string& a : ExtraCoordinatorArgs()) args.push_back(a);
    cluster_ = std::make_unique<Cluster>(ClusterOptions{2, testing_ref::kDefaultModelDir, args, ExtraWorkerArgs()});
    const absl::Status started = cluster_->Start(Seconds(90));
    ASSERT_TRUE(started.ok()) << started;
    stub_ = moe::v1::Inference::NewStub(cluster_->channel());
  }
  void TearDown() override {
    if (HasFailure() && cluster_) std::fprintf(stderr, "%s", cluster_->LogTail().c_str());
  }

  virtual std::vector<std::string> ExtraCoordinatorArgs() const { return {}; }
  virtual std::vector<std::string> ExtraWorkerArgs() const { return {}; }

  // Starts a long greedy stream (`request`, by default kLongTokens greedy ones) on a thread and
  // returns once it has delivered a few tokens.
  void StartLongStream(std::optional<moe::v1::GenerateRequest> request = std::nullopt) {
    reader_ = std::thread([this, req = request.value_or(GreedyTokenRequest(prompt_, kLongTokens))] {
      grpc::ClientContext ctx;
      ctx.set_deadline(Deadline(120));
      auto r = stub_->Generate(&ctx, req);
      moe::v1::GenerateResponse msg;
      while (r->Read(&msg)) {
        stream_result_.Add(msg);
        tokens_ += msg.token_ids_size();
      }
      stream_status_ = r->Finish();
      stream_ended_ = true;
    });
    const auto t0 = Clock::now();
    while (tokens_ < 8 && Clock::now() - t0 < std::chrono::seconds(30)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_GE(tokens_.load(), 8) << cluster_->LogTail();
  }

  // The moe-worker process of `rank` in the current job.
  pid_t WorkerPid(int rank) const { return WorkerPidOf(*cluster_, rank); }

  // Starts a long stream, stops rank 1 (SIGSTOP) at `*stopped_at` and expects the stream failed and
  // the cluster not serving once its heartbeats stop; rank 1's pid (-1 after a failure).
  pid_t HangRankOneMidStream(Clock::time_point* stopped_at) {
    StartLongStream();
    if (HasFatalFailure()) return -1;
    const pid_t victim = WorkerPid(1);
    EXPECT_GT(victim, 0) << "no moe-worker process of rank 1 found";
    if (victim <= 0 || kill(victim, SIGSTOP) != 0) return -1;
    *stopped_at = Clock::now();
    ExpectStreamFailedAndServingStopped("rank 1 lost: no heartbeat", *stopped_at, kHeartbeatTimeoutS + 10);
    return victim;
  }

  // The stream fails UNAVAILABLE with `reason` within `within_s` of `since`; health says
  // NOT_SERVING and a new request is refused at once.
  void ExpectStreamFailedAndServingStopped(const std::string& reason, Clock::time_point since, double within_s) {
    reader_.join();
    const double fail_s = std::chrono::duration<double>(Clock::now() - since).count();
    EXPECT_EQ(stream_status_.error_code(), grpc::StatusCode::UNAVAILABLE) << stream_status_.error_message();
    EXPECT_NE(stream_status_.error_message().find(reason), std::string::npos) << stream_status_.error_message();
    EXPECT_LT(fail_s, within_s) << "the stream took " << fail_s << " s to fail";
    EXPECT_LT(tokens_.load(), kLongTokens);
    std::string health = "?";
    for (auto t = Clock::now(); Clock::now() - t < std::chrono::seconds(30);) {
      auto h = client::CheckHealth(cluster_->channel(), "", std::chrono::milliseconds(2000));
      health = h.ok() ? client::ServingStatusName(*h) : h.status().ToString();
      if (health == "NOT_SERVING") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_EQ(health, "NOT_SERVING");
    const auto refused_at = Clock::now();
    const StreamOutcome refused = RunGenerate(*stub_, GreedyTokenRequest(prompt_, 4), 20);
    EXPECT_EQ(refused.status.code(), absl::StatusCode::kUnavailable) << refused.status;
    EXPECT_NE(std::string(refused.status.message()).find(reason), std::string::npos) << refused.status;
    EXPECT_LT(std::chrono::duration<double>(Clock::now() - refused_at).count(), 5.0);
  }

  // A new job joins and serves transformers' tokens; then everything shuts down cleanly.
  void ExpectANewJobServesThenCleanShutdown() {
    ASSERT_TRUE(cluster_->StartWorkers().ok());
    const absl::Status serving = cluster_->WaitServing(Seconds(90));
    ASSERT_TRUE(serving.ok()) << serving;
    const StreamOutcome again = RunGenerate(*stub_, GreedyTokenRequest(prompt_, 16), 60);
    ASSERT_TRUE(again.status.ok()) << again.status;
    EXPECT_EQ(again.result.token_ids, std::vector<int32_t>(greedy_.begin(), greedy_.begin() + 16));
    const Cluster::ExitStatus st = cluster_->Stop(Seconds(30));
    EXPECT_EQ(st.coordinator, 0);
    EXPECT_EQ(st.mpirun, 0);
    EXPECT_TRUE(cluster_->LeftoverProcesses().empty());
  }

  static constexpr int kLongTokens = 3500;
  std::vector<int32_t> prompt_, greedy_;
  std::unique_ptr<Cluster> cluster_;
  std::unique_ptr<moe::v1::Inference::Stub> stub_;
  std::thread reader_;
  std::atomic<int> tokens_{0};
  std::atomic<bool> stream_ended_{false};
  client::GenerationResult stream_result_;  // read once reader_ is joined
  grpc::Status stream_status_;
};

// The rank's process dies: its Serve stream closes, and mpirun takes the job down.
TEST_F(E2eRankLoss, AKilledRankFailsItsStreamsThenANewJobServesAgain) {
  StartLongStream();
  const pid_t victim = WorkerPid(1);
  ASSERT_GT(victim, 0) << "no moe-worker process of rank 1 found";
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  ExpectStreamFailedAndServingStopped("rank 1 lost", Clock::now(), 2.0 * kHeartbeatTimeoutS + 5);
  // The job ends (mpirun takes the other rank down); the coordinator stays.
  EXPECT_TRUE(cluster_->WaitWorkersExit(Seconds(60)).has_value()) << "mpirun still running";
  ExpectANewJobServesThenCleanShutdown();
}

// The rank hangs (SIGSTOP): its stream stays open but its heartbeats stop, so it is lost after the
// heartbeat timeout. Once it resumes, the Shutdown the coordinator sent it ends the old job
// cleanly, and a new one serves.
TEST_F(E2eRankLoss, AHungRankIsLostAfterTheHeartbeatTimeoutAndItsJobLeavesWhenItResumes) {
  Clock::time_point stopped_at;
  const pid_t victim = HangRankOneMidStream(&stopped_at);
  ASSERT_GT(victim, 0);
  // Not before the timeout less one heartbeat interval (moe-worker's 1 s): the rank's last heartbeat
  // may have gone out up to an interval before it stopped (CI saw 2.25 s for a 3 s timeout).
  EXPECT_GE(std::chrono::duration<double>(Clock::now() - stopped_at).count(),
            kHeartbeatTimeoutS - kWorkerHeartbeatIntervalS - 0.25);
  ASSERT_EQ(kill(victim, SIGCONT), 0);
  const std::optional<int> old_job = cluster_->WaitWorkersExit(Seconds(60));
  ASSERT_TRUE(old_job.has_value()) << "the resumed job did not leave";
  EXPECT_EQ(*old_job, 0) << "the resumed job did not leave through Shutdown";
  ExpectANewJobServesThenCleanShutdown();
}

// The same hung rank, never resumed: rank 0, sent Shutdown, is held in the step's collective by it,
// which MPI never times out. Its JobEndWatchdog ends it --step-timeout-s (10 s, the least) after the
// Shutdown, naming why; mpirun then ends the job, the stopped rank included, and a new job serves.
class E2eRankLossWatched : public E2eRankLoss {
 protected:
  static constexpr int kStepTimeoutS = 10;
  std::vector<std::string> ExtraWorkerArgs() const override { return {"--step-timeout-s", std::to_string(kStepTimeoutS)}; }
};

TEST_F(E2eRankLossWatched, AJobWhoseRankHangsForGoodEndsAfterTheStepTimeout) {
  Clock::time_point stopped_at;
  const pid_t victim = HangRankOneMidStream(&stopped_at);
  ASSERT_GT(victim, 0);
  const std::optional<int> old_job = cluster_->WaitWorkersExit(Seconds(kStepTimeoutS + 60));
  if (!old_job.has_value()) kill(victim, SIGCONT);  // let the test's cluster end
  ASSERT_TRUE(old_job.has_value()) << "the job held by its stopped rank did not end";
  EXPECT_NE(*old_job, 0);
  // Not before the grace: the watchdog counts from the Shutdown, sent once the rank was lost (its
  // last heartbeat may have gone out up to an interval before it stopped).
  EXPECT_GE(std::chrono::duration<double>(Clock::now() - stopped_at).count(),
            kHeartbeatTimeoutS - kWorkerHeartbeatIntervalS - 0.25 + kStepTimeoutS);
  const std::string log = cluster_->WorkersLog();
  EXPECT_NE(log.find("moe-worker [rank 0]: its job ended 10 s ago (the coordinator sent Shutdown) and this rank has "
                     "not left: a rank that hangs holds it in a collective, or its exit is slow; leaving now, without MPI"),
            std::string::npos)
      << log;
  EXPECT_FALSE(Lives(victim)) << "the stopped rank outlived its job";
  ExpectANewJobServesThenCleanShutdown();
}

// With --resume-timeout-s the same loss holds the stream instead of failing it: the cluster says
// NOT_SERVING and refuses new requests, and once a new worker job serves, the stream goes on where
// it stopped and ends normally, with the tokens the same request gave uninterrupted before the kill
// (greedy: the resumed rank recomputes prompt + tokens as a prefill, whose float rounding differs
// from the decode steps', so they are compared up to the first step whose top two the reference
// had within 1e-4 of each other: the two differ by ~1e-6 on these float32 ranks).
class E2eRankLossResumed : public E2eRankLoss {
 protected:
  std::vector<std::string> ExtraCoordinatorArgs() const override { return {"--resume-timeout-s", "120"}; }
};

TEST_F(E2eRankLossResumed, AKilledRanksStreamGoesOnOnTheNextWorkerJobWithTheSameTokens) {
  constexpr uint32_t kTokens = 1500;
  moe::v1::GenerateRequest req = GreedyTokenRequest(prompt_, kTokens);
  req.mutable_sampling()->set_logprobs(2);
  const StreamOutcome want = RunGenerate(*stub_, req, 120);
  ASSERT_TRUE(want.status.ok()) << want.status;
  ASSERT_EQ(want.result.token_ids.size(), kTokens);
  size_t comparable = 0;
  while (comparable < kTokens) {
    const moe::v1::TokenLogprob& lp = want.result.logprobs[comparable];
    if (lp.top_size() < 2 || lp.top(0).logprob() - lp.top(1).logprob() < 1e-4) break;
    ++comparable;
  }
  ASSERT_GE(comparable, 100u) << "the reference has a near tie at step " << comparable;
  if (comparable < kTokens) {
    const moe::v1::TokenLogprob& lp = want.result.logprobs[comparable];
    std::fprintf(stderr, "first near tie at step %zu: %.7f vs %.7f\n", comparable, lp.top(0).logprob(), lp.top(1).logprob());
  }

  StartLongStream(req);
  const pid_t victim = WorkerPid(1);
  ASSERT_GT(victim, 0) << "no moe-worker process of rank 1 found";
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  const int before = tokens_.load();
  std::string health = "?";
  for (auto t = Clock::now(); Clock::now() - t < std::chrono::seconds(30) && health != "NOT_SERVING";) {
    auto h = client::CheckHealth(cluster_->channel(), "", std::chrono::milliseconds(2000));
    health = h.ok() ? client::ServingStatusName(*h) : h.status().ToString();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(health, "NOT_SERVING");
  const StreamOutcome refused = RunGenerate(*stub_, GreedyTokenRequest(prompt_, 4), 20);
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kUnavailable) << refused.status;
  ASSERT_TRUE(cluster_->WaitWorkersExit(Seconds(60)).has_value()) << "mpirun still running";
  EXPECT_FALSE(stream_ended_.load()) << "the held stream ended: " << stream_status_.error_message();
  const int held_at = tokens_.load();
  ASSERT_LT(held_at, static_cast<int>(comparable)) << "the comparable tokens all came before the rank was lost";

  ASSERT_TRUE(cluster_->StartWorkers().ok());
  const absl::Status serving = cluster_->WaitServing(Seconds(90));
  ASSERT_TRUE(serving.ok()) << serving;
  reader_.join();
  ASSERT_TRUE(stream_status_.ok()) << stream_status_.error_message() << cluster_->LogTail();
  std::fprintf(stderr, "resumed after %d tokens (%d when the rank was killed); %zu comparable\n", held_at, before,
               comparable);
  const std::vector<int32_t>& got = stream_result_.token_ids;
  ASSERT_EQ(got.size(), kTokens);
  EXPECT_EQ(stream_result_.usage.completion_tokens(), kTokens);
  EXPECT_EQ(stream_result_.finish_reason, moe::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(std::vector<int32_t>(got.begin(), got.begin() + static_cast<std::ptrdiff_t>(comparable)),
            std::vector<int32_t>(want.result.token_ids.begin(), want.result.token_ids.begin() + static_cast<std::ptrdiff_t>(comparable)));
  const Cluster::ExitStatus st = cluster_->Stop(Seconds(30));
  EXPECT_EQ(st.coordinator, 0);
  EXPECT_EQ(st.mpirun, 0);
}

// The coordinator dies as the ranks load their shards (rank 1 held by SIGSTOP from its first
// "loading" line until the coordinator has been gone 2 s): the job must end by itself, exit status
// 1, each rank saying it lost the coordinator and why (the Serve stream's status, or that it could
// not reach the coordinator to open the stream within the connect timeout). The ranks open their
// Serve streams before they load, so rank 1 is held with its stream open: this checks the ending and
// its message (the hang once mended here, a Serve stream opened with wait_for_ready after the
// coordinator had gone, commit d5a518e, can no longer arise while the ranks load).
TEST(E2eCoordinatorLoss, ACoordinatorLostAsTheRanksLoadEndsTheJobNamingWhy) {
  testing_ref::SetMpiTestEnvironment();
  Cluster cluster(ClusterOptions{2, testing_ref::kDefaultModelDir, {}, {}});
  ASSERT_TRUE(cluster.StartCoordinator(Seconds(30)).ok()) << cluster.LogTail();
  ASSERT_TRUE(cluster.StartWorkers().ok());
  const pid_t rank1 = AwaitLoadingRank(cluster, 1);
  ASSERT_GT(rank1, 0) << "rank 1 did not start loading\n" << cluster.LogTail();
  ASSERT_EQ(kill(rank1, SIGSTOP), 0);
  cluster.KillCoordinator();
  std::this_thread::sleep_for(std::chrono::seconds(2));  // rank 0's connection sees the coordinator gone
  ASSERT_EQ(kill(rank1, SIGCONT), 0);
  const std::optional<int> job = cluster.WaitWorkersExit(Seconds(90));
  ASSERT_TRUE(job.has_value()) << "the worker job is still running without its coordinator\n" << cluster.LogTail();
  EXPECT_NE(*job, 0);
  const std::string log = cluster.WorkersLog();
  const std::string lost = "lost the coordinator at 127.0.0.1:" + std::to_string(cluster.ports().cluster_port);
  const std::string unreachable = "cannot reach the coordinator at 127.0.0.1:" +
                                  std::to_string(cluster.ports().cluster_port) + " within ";  // to open the stream
  const bool named = log.find(lost) != std::string::npos || log.find(unreachable) != std::string::npos ||
                     log.find("Register with 127.0.0.1:") != std::string::npos;  // it died before answering
  EXPECT_TRUE(named) << log;
  if (log.find(lost) != std::string::npos) {  // with the Serve stream's status, the reason
    EXPECT_NE(log.find(lost + " (UNAVAILABLE: "), std::string::npos) << log;
  }
  EXPECT_TRUE(cluster.WorkerProcesses().empty());
}

// A worker job that ends while its ranks load (here each rank's --model names no model, so every
// rank fails after Register, before it could send Loaded) must be seen to end: the ranks' Serve
// streams open before the load, so the coordinator counts the job lost, refuses requests naming the
// loss rather than saying "0 of 2 ranks loaded" for ever (a bare mpirun user had nothing else to go
// by), and shows the ranks gone in GetClusterInfo.
TEST(E2eLoadLoss, AJobThatEndsWhileItLoadsIsReportedLost) {
  testing_ref::SetMpiTestEnvironment();
  Cluster cluster(ClusterOptions{2, testing_ref::kDefaultModelDir, {}, {"--model", "/nonexistent/moe-model"}});
  ASSERT_TRUE(cluster.StartCoordinator(Seconds(30)).ok()) << cluster.LogTail();
  ASSERT_TRUE(cluster.StartWorkers().ok());
  const std::optional<int> job = cluster.WaitWorkersExit(Seconds(90));
  ASSERT_TRUE(job.has_value()) << cluster.LogTail();
  EXPECT_NE(*job, 0);
  auto stub = moe::v1::Inference::NewStub(cluster.channel());
  const std::string refused = AwaitRefusal(*stub, "lost while its job loaded");
  EXPECT_NE(refused.find("lost while its job loaded: its Serve stream closed"), std::string::npos)
      << refused << "\n" << cluster.LogTail();
  grpc::ClientContext ctx;
  moe::v1::ClusterInfo info;
  ASSERT_TRUE(stub->GetClusterInfo(&ctx, moe::v1::GetClusterInfoRequest(), &info).ok());
  EXPECT_FALSE(info.serving());
  for (const moe::v1::RankInfo& r : info.ranks()) EXPECT_FALSE(r.alive() || r.loaded()) << "rank " << r.rank();
  const Cluster::ExitStatus st = cluster.Stop(Seconds(30));
  EXPECT_EQ(st.coordinator, 0);
}

// A rank whose host vanishes while its job loads (SIGSTOP: its connection stays open but nothing
// answers on it, as after a power loss or a network cut) must be lost though a loading rank sends
// no heartbeats: the coordinator's keepalive pings, tied to --heartbeat-timeout-s, break its
// connection (within about 1.5 timeouts), so the cluster reports "rank 1 lost while its job loaded"
// rather than "loading" until TCP's 2 h keepalive. The ranks load slowly here
// (MOE_WORKER_TEST_LOAD_DELAY_MS: 4 layers of 5 s), so rank 1 is stopped mid-load and rank 0 is
// still loading when the coordinator's Shutdown comes: it stops its load there (never reaching its
// last layer) rather than holding the dead job for the rest of it. Once rank 1 resumes it finds its
// stream broken and leaves too, naming the coordinator; a new job then serves.
TEST(E2eLoadLoss, ARankHungWhileItsJobLoadsIsLostAndTheOtherRankStopsLoading) {
  testing_ref::SetMpiTestEnvironment();
  Cluster cluster(ClusterOptions{2, testing_ref::kDefaultModelDir, {"--heartbeat-timeout-s", "2"}, {}});
  ASSERT_TRUE(cluster.StartCoordinator(Seconds(30)).ok()) << cluster.LogTail();
  ASSERT_EQ(setenv("MOE_WORKER_TEST_LOAD_DELAY_MS", "5000", 1), 0);
  const absl::Status started = cluster.StartWorkers();
  unsetenv("MOE_WORKER_TEST_LOAD_DELAY_MS");  // the next job loads at full speed
  ASSERT_TRUE(started.ok()) << started;
  const pid_t rank1 = AwaitLoadingRank(cluster, 1);
  ASSERT_GT(rank1, 0) << "rank 1 did not start loading\n" << cluster.LogTail();
  ASSERT_EQ(kill(rank1, SIGSTOP), 0);

  auto stub = moe::v1::Inference::NewStub(cluster.channel());
  const std::string refused = AwaitRefusal(*stub, "rank 1 lost while its job loaded");
  EXPECT_NE(refused.find("rank 1 lost while its job loaded"), std::string::npos) << refused << "\n" << cluster.LogTail();
  {
    grpc::ClientContext ctx;
    moe::v1::ClusterInfo info;
    ASSERT_TRUE(stub->GetClusterInfo(&ctx, moe::v1::GetClusterInfoRequest(), &info).ok());
    EXPECT_FALSE(info.serving());
    ASSERT_EQ(info.ranks_size(), 2);
    EXPECT_FALSE(info.ranks(1).alive());
  }
  // Rank 0 stops loading on the Shutdown (its load would take another ~15 s); it then waits for
  // rank 1 in the collective after the load.
  const std::string told = "moe-worker [rank 0]: told to shut down while loading";
  for (auto t = Clock::now(); Clock::now() - t < std::chrono::seconds(30);) {
    if (cluster.WorkersLog().find(told) != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NE(cluster.WorkersLog().find(told), std::string::npos) << cluster.LogTail();

  ASSERT_EQ(kill(rank1, SIGCONT), 0);
  const std::optional<int> job = cluster.WaitWorkersExit(Seconds(60));
  ASSERT_TRUE(job.has_value()) << "the old job did not leave\n" << cluster.LogTail();
  EXPECT_NE(*job, 0);  // rank 1 lost its coordinator
  const std::string log = cluster.WorkersLog();
  EXPECT_EQ(log.find("[rank 0] loading " + testing_ref::kDefaultModelDir + ": layer 4/4"), std::string::npos) << log;
  EXPECT_NE(log.find("moe-worker [rank 1]: lost the coordinator at 127.0.0.1:" +
                     std::to_string(cluster.ports().cluster_port) + " ("),
            std::string::npos)
      << log;

  ASSERT_TRUE(cluster.StartWorkers().ok());
  const absl::Status serving = cluster.WaitServing(Seconds(90));
  ASSERT_TRUE(serving.ok()) << serving << cluster.LogTail();
  const Cluster::ExitStatus st = cluster.Stop(Seconds(30));
  EXPECT_EQ(st.coordinator, 0);
  EXPECT_EQ(st.mpirun, 0);
}

}  // namespace
}  // namespace moe::e2e
