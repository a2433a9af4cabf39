// End-to-end: a worker rank dies (SIGKILL to rank 1 of a real `mpirun -np 2 moe-worker` job) while
// a stream is being generated. The cluster must fail that stream with UNAVAILABLE naming the lost
// rank, report NOT_SERVING, refuse new requests at once rather than hang, keep the coordinator up,
// and serve again, with the single-process engine's tokens (samples.json: transformers' greedy
// continuation), once a new worker job has joined. Then it shuts down cleanly.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
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

moe::v1::GenerateRequest Greedy(const std::vector<int32_t>& prompt, uint32_t max_tokens) {
  moe::v1::GenerateRequest req;
  for (int32_t id : prompt) req.mutable_prompt()->mutable_token_ids()->add_ids(id);
  req.mutable_sampling()->set_max_tokens(max_tokens);
  req.mutable_sampling()->set_temperature(0);
  req.mutable_sampling()->set_ignore_eos(true);
  return req;
}

TEST(E2eRankLoss, AKilledRankFailsItsStreamsThenANewJobServesAgain) {
  testing_ref::SetMpiTestEnvironment();
  const std::string model = testing_ref::kDefaultModelDir;
  absl::StatusOr<json> samples = ReadJsonFile(model + "/samples.json");
  ASSERT_TRUE(samples.ok()) << samples.status();
  const json& sample = (*samples)["greedy_samples"][0];
  const std::vector<int32_t> prompt = sample["prompt_ids"].get<std::vector<int32_t>>();
  const std::vector<int32_t> greedy = sample["greedy_ids"].get<std::vector<int32_t>>();
  ASSERT_GE(greedy.size(), 16u);

  Cluster cluster(ClusterOptions{2, model, {"--heartbeat-timeout-s", std::to_string(kHeartbeatTimeoutS)}, {}});
  ASSERT_TRUE(cluster.StartCoordinator(Seconds(30)).ok());
  ASSERT_TRUE(cluster.StartWorkers().ok());
  absl::Status serving = cluster.WaitServing(Seconds(90));
  ASSERT_TRUE(serving.ok()) << serving;
  auto stub = moe::v1::Inference::NewStub(cluster.channel());

  // A long stream, read on a thread that counts its tokens.
  std::atomic<int> tokens{0};
  grpc::Status stream_status;
  std::thread reader([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(120));
    auto r = stub->Generate(&ctx, Greedy(prompt, 3500));
    moe::v1::GenerateResponse msg;
    while (r->Read(&msg)) tokens += msg.token_ids_size();
    stream_status = r->Finish();
  });
  const auto t0 = Clock::now();
  while (tokens < 8 && Clock::now() - t0 < std::chrono::seconds(30)) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_GE(tokens.load(), 8) << cluster.LogTail();

  pid_t victim = -1;
  for (pid_t p : cluster.WorkerProcesses()) {
    if (ExecutableOf(p).find("moe-worker") != std::string::npos && MpiRankOf(p) == 1) victim = p;
  }
  ASSERT_GT(victim, 0) << "no moe-worker process of rank 1 found";
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  const auto killed_at = Clock::now();
  reader.join();
  const double fail_s = std::chrono::duration<double>(Clock::now() - killed_at).count();
  EXPECT_EQ(stream_status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << stream_status.error_message() << "\n" << cluster.LogTail();
  EXPECT_NE(stream_status.error_message().find(" lost"), std::string::npos) << stream_status.error_message();
  EXPECT_LT(fail_s, 2.0 * kHeartbeatTimeoutS + 5) << "the stream took " << fail_s << " s to fail";
  EXPECT_LT(tokens.load(), 3500);

  // NOT_SERVING, and a new request is refused at once, naming why.
  std::string health = "?";
  for (auto t = Clock::now(); Clock::now() - t < std::chrono::seconds(30);) {
    auto h = client::CheckHealth(cluster.channel(), "", std::chrono::milliseconds(2000));
    health = h.ok() ? client::ServingStatusName(*h) : h.status().ToString();
    if (health == "NOT_SERVING") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(health, "NOT_SERVING");
  const auto refused_at = Clock::now();
  const StreamOutcome refused = RunGenerate(*stub, Greedy(prompt, 4), 20);
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kUnavailable) << refused.status;
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - refused_at).count(), 5.0);

  // The job ends (mpirun takes the other rank down); the coordinator stays.
  EXPECT_TRUE(cluster.WaitWorkersExit(Seconds(60)).has_value()) << "mpirun still running";

  // A new job joins and serves the engine's tokens.
  ASSERT_TRUE(cluster.StartWorkers().ok());
  serving = cluster.WaitServing(Seconds(90));
  ASSERT_TRUE(serving.ok()) << serving;
  const StreamOutcome again = RunGenerate(*stub, Greedy(prompt, 16), 60);
  ASSERT_TRUE(again.status.ok()) << again.status << "\n" << cluster.LogTail();
  EXPECT_EQ(again.result.token_ids, std::vector<int32_t>(greedy.begin(), greedy.begin() + 16));

  const Cluster::ExitStatus st = cluster.Stop(Seconds(30));
  EXPECT_EQ(st.coordinator, 0) << cluster.LogTail();
  EXPECT_EQ(st.mpirun, 0) << cluster.LogTail();
  EXPECT_TRUE(cluster.LeftoverProcesses().empty());
}

}  // namespace
}  // namespace moe::e2e
