// The moe-coordinator program: command-line errors (exit 2), port 0 with the ports file, and a
// clean exit 0 on SIGTERM after draining (in-flight requests end UNAVAILABLE, every worker gets
// Shutdown). Workers are FAKE (cluster.proto played by the test).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <tuple>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

#include "coordinator_fake_worker.h"

namespace moe {
namespace {

using namespace testing_fake;
using std::chrono::seconds;

const std::string kBinary = std::string(MOE_BINARY_DIR) + "/coordinator/moe-coordinator";
const std::string kTiny = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/tiny";

class Process {
 public:
  explicit Process(const std::vector<std::string>& args, const std::string& stderr_path) {
    pid_ = fork();
    if (pid_ == 0) {
      FILE* err = freopen(stderr_path.c_str(), "w", stderr);
      (void)err;
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(kBinary.c_str()));
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(kBinary.c_str(), argv.data());
      _exit(127);
    }
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  void Signal(int sig) { kill(pid_, sig); }
  // The exit status, or -1 if it is still running at the timeout.
  int Wait(std::chrono::milliseconds timeout) {
    int status = 0;
    const bool done = PollUntil([&] { return waitpid(pid_, &status, WNOHANG) == pid_; }, timeout);
    if (!done) return -1;
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
};

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "." + std::to_string(getpid()))).string();
}

// A one-rank coordinator on the tiny model, every port picked by the kernel and written to
// `ports_file`, with `extra` flags.
std::vector<std::string> CoordinatorArgs(const std::string& ports_file, const std::vector<std::string>& extra) {
  std::filesystem::remove(ports_file);
  std::vector<std::string> args = {"--model", kTiny, "--world-size", "1", "--listen", "127.0.0.1:0",
                                   "--cluster-listen", "127.0.0.1:0", "--ports-file", ports_file};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// The ports the coordinator wrote to `ports_file` ({"public", "cluster", "metrics"}), or null when
// none came within 30 s.
nlohmann::json WaitForPorts(const std::string& ports_file) {
  if (!PollUntil([&] { return std::filesystem::exists(ports_file) && !ReadFile(ports_file).empty(); }, seconds(30))) {
    return nullptr;
  }
  return nlohmann::json::parse(ReadFile(ports_file));
}

TEST(CoordinatorProcessTest, BadCommandLinesExitTwoNamingTheFlag) {
  const std::string err = TempPath("coord_err");
  {
    Process p({"--help"}, err);  // asked for: exit 0 (stdout, which Process leaves to the test's)
    EXPECT_EQ(p.Wait(seconds(20)), 0);
    EXPECT_EQ(ReadFile(err), "");
  }
  {
    Process p({"--world-size", "2"}, err);
    EXPECT_EQ(p.Wait(seconds(20)), 2);
    EXPECT_NE(ReadFile(err).find("--model"), std::string::npos) << ReadFile(err);
  }
  {
    Process p({"--model", kTiny, "--world-size", "0"}, err);
    EXPECT_EQ(p.Wait(seconds(20)), 2);
    EXPECT_NE(ReadFile(err).find("--world-size"), std::string::npos) << ReadFile(err);
  }
  {
    Process p({"--model", kTiny, "--world-size", "1", "--max-waiting", "x"}, err);
    EXPECT_EQ(p.Wait(seconds(20)), 2);
    EXPECT_NE(ReadFile(err).find("--max-waiting"), std::string::npos) << ReadFile(err);
  }
  {
    Process p({"--model", kTiny, "--world-size", "1", "--scheduling-policy", "lottery"}, err);
    EXPECT_EQ(p.Wait(seconds(20)), 2);
    EXPECT_NE(ReadFile(err).find("--scheduling-policy: expected fcfs or priority, got 'lottery'"), std::string::npos)
        << ReadFile(err);
  }
  {
    Process p({"--model", kTiny, "--world-size", "1", "--resume-timeout-s", "-1"}, err);
    EXPECT_EQ(p.Wait(seconds(20)), 2);
    EXPECT_NE(ReadFile(err).find("--resume-timeout-s: must not be negative, got -1"), std::string::npos) << ReadFile(err);
  }
  {
    Process p({"--model", kTiny, "--world-size", "1", "--served-model-name="}, err);
    EXPECT_EQ(p.Wait(seconds(20)), 2);
    EXPECT_NE(ReadFile(err).find("--served-model-name: empty name"), std::string::npos) << ReadFile(err);
  }
  {
    Process p({"--model", kTiny, "--world-size", "1", "--tokenizer="}, err);
    EXPECT_EQ(p.Wait(seconds(20)), 2);
    EXPECT_NE(ReadFile(err).find("--tokenizer: empty path"), std::string::npos) << ReadFile(err);
  }
  {
    Process p({"--model", kTiny, "--world-size", "1", "--tokenizer-mode", "fast"}, err);
    EXPECT_EQ(p.Wait(seconds(20)), 2);
    EXPECT_NE(ReadFile(err).find("--tokenizer-mode: tokenizer mode \"fast\" is none of auto, hf, slow, mistral"),
              std::string::npos)
        << ReadFile(err);
  }
  {
    Process p({"--model", kTiny, "--world-size", "1", "--override-generation-config", "{\"do_sample\": true}"}, err);
    EXPECT_EQ(p.Wait(seconds(20)), 2);
    EXPECT_NE(ReadFile(err).find("--override-generation-config: \"do_sample\" is not one of temperature"), std::string::npos)
        << ReadFile(err);
  }
  {
    Process p({"--model", kTiny, "--world-size", "1", "--override-generation-config", "{temperature: 1}"}, err);
    EXPECT_EQ(p.Wait(seconds(20)), 2);
    EXPECT_NE(ReadFile(err).find("--override-generation-config: not valid JSON"), std::string::npos) << ReadFile(err);
  }
  {
    // The tiny checkpoint has no tokenizer: asking for one is an error at start, not a text-less server.
    Process p({"--model", kTiny, "--world-size", "1", "--tokenizer-mode", "hf", "--listen", "0", "--cluster-listen", "0",
               "--metrics-listen", "none"},
              err);
    EXPECT_EQ(p.Wait(seconds(20)), 1);
    EXPECT_NE(ReadFile(err).find("has no tokenizer.json"), std::string::npos) << ReadFile(err);
  }
  {
    Process p({"--model", kTiny, "--world-size", "1", "--max-model-len", "1"}, err);
    EXPECT_EQ(p.Wait(seconds(20)), 2);
    EXPECT_NE(ReadFile(err).find("--max-model-len: must be at least 2"), std::string::npos) << ReadFile(err);
  }
  {
    Process p({"--model", kTiny, "--world-size", "1", "--max-model-len", "5000", "--listen", "0", "--cluster-listen", "0",
               "--metrics-listen", "none"},
              err);
    EXPECT_EQ(p.Wait(seconds(20)), 1);
    EXPECT_NE(ReadFile(err).find("--max-model-len: 5000 exceeds the model's context of 4096 positions"),
              std::string::npos)
        << ReadFile(err);
  }
  {
    Process p({"--model", "/nonexistent/model", "--world-size", "1", "--listen", "0", "--cluster-listen", "0",
               "--metrics-listen", "none"},
              err);
    EXPECT_EQ(p.Wait(seconds(20)), 1);
    EXPECT_NE(ReadFile(err).find("/nonexistent/model"), std::string::npos) << ReadFile(err);
  }
  std::filesystem::remove(err);
}

TEST(CoordinatorProcessTest, PortsFileThenDrainAndCleanExitOnSigterm) {
  const std::string ports_file = TempPath("coord_ports");
  const std::string err = TempPath("coord_err2");
  Process p(CoordinatorArgs(ports_file, {"--metrics-listen", "127.0.0.1:0", "--max-model-len", "100"}), err);
  const nlohmann::json ports = WaitForPorts(ports_file);
  ASSERT_FALSE(ports.is_null()) << ReadFile(err);
  const int public_port = ports["public"], cluster_port = ports["cluster"];
  EXPECT_GT(public_port, 0);
  EXPECT_GT(cluster_port, 0);
  EXPECT_GT(ports["metrics"].get<int>(), 0);
  // The same line on stderr.
  EXPECT_NE(ReadFile(err).find(ReadFile(ports_file).substr(0, ReadFile(ports_file).size() - 1)), std::string::npos);

  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", public_port), grpc::InsecureChannelCredentials());
  auto stub = v1::Inference::NewStub(channel);
  EXPECT_EQ(HealthStatus(channel), kNotServing);
  FakeWorker w(cluster_port, 0, 1);
  w.StartRegister();
  ASSERT_TRUE(w.FinishRegister().ok());
  w.Connect();
  ASSERT_TRUE(PollUntil([&] { return HealthStatus(channel) == kServing; }, seconds(10)));
  // --max-model-len: the context a request may use, as GetModelInfo reports it.
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    EXPECT_EQ(info.max_context(), 100);
    const GenerateCall refused = RunGenerate(*stub, IdsRequest({1, 2}, 99), Millis(10000));
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(refused.status.error_message().find("exceeds the model context of 100 positions"), std::string::npos)
        << refused.status.error_message();
  }

  // One request in flight that the worker never finishes.
  auto call = std::async(std::launch::async, [&] { return RunGenerate(*stub, IdsRequest({1, 2}, 8), Millis(30000)); });
  ASSERT_TRUE(w.WaitFor(v1::CoordinatorMessage::kAssign, Millis(10000)));
  p.Signal(SIGTERM);
  // Draining: the request is cut off after the drain timeout, the worker is told to shut down.
  GenerateCall done = call.get();
  EXPECT_EQ(done.status.error_code(), grpc::StatusCode::UNAVAILABLE) << done.status.error_message();
  ASSERT_TRUE(w.WaitFor(v1::CoordinatorMessage::kShutdown, Millis(15000)));
  EXPECT_TRUE(w.CloseGracefully().ok());
  EXPECT_EQ(p.Wait(seconds(15)), 0) << ReadFile(err);
  std::filesystem::remove(ports_file);
  std::filesystem::remove(err);
}

// A second coordinator on the ports of a running one exits 1 naming the port (gRPC's SO_REUSEPORT
// had let both listen, the requests and the workers' registrations spread over the two).
TEST(CoordinatorProcessTest, PortsInUseAreRefused) {
  const std::string ports_file = TempPath("coord_ports_in_use");
  const std::string err = TempPath("coord_err_in_use");
  Process first(CoordinatorArgs(ports_file, {"--metrics-listen", "none"}), err);
  const nlohmann::json ports = WaitForPorts(ports_file);
  ASSERT_FALSE(ports.is_null()) << ReadFile(err);
  const std::string public_port = std::to_string(ports["public"].get<int>());
  const std::string cluster_port = std::to_string(ports["cluster"].get<int>());
  const std::string err2 = TempPath("coord_err_in_use2");
  for (const auto& [listen, cluster, flag] :
       {std::tuple{"127.0.0.1:" + public_port, std::string("127.0.0.1:0"), std::string("--listen")},
        std::tuple{std::string("127.0.0.1:0"), "127.0.0.1:" + cluster_port, std::string("--cluster-listen")}}) {
    Process second({"--model", kTiny, "--world-size", "1", "--listen", listen, "--cluster-listen", cluster,
                    "--metrics-listen", "none"},
                   err2);
    EXPECT_EQ(second.Wait(seconds(30)), 1) << ReadFile(err2);
    EXPECT_NE(ReadFile(err2).find(flag + ": cannot listen on "), std::string::npos) << ReadFile(err2);
  }
  first.Signal(SIGTERM);
  EXPECT_EQ(first.Wait(seconds(15)), 0) << ReadFile(err);
  for (const std::string& f : {ports_file, err, err2}) std::filesystem::remove(f);
}

// A coordinator stopped for longer than the heartbeat timeout (SIGSTOP; a suspended VM) does not
// blame its ranks when it runs again: their heartbeats came meanwhile and wait unread. It took the
// healthy job down as "rank 0 lost: no heartbeat".
TEST(CoordinatorProcessTest, AStoppedCoordinatorDoesNotBlameItsRanks) {
  const std::string ports_file = TempPath("coord_ports_stopped");
  const std::string err = TempPath("coord_err_stopped");
  Process p(CoordinatorArgs(ports_file, {"--metrics-listen", "none", "--heartbeat-timeout-s", "1"}), err);
  const nlohmann::json ports = WaitForPorts(ports_file);
  ASSERT_FALSE(ports.is_null()) << ReadFile(err);
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", ports["public"].get<int>()),
                                     grpc::InsecureChannelCredentials());
  FakeWorker w(ports["cluster"].get<int>(), 0, 1);
  w.StartRegister();
  ASSERT_TRUE(w.FinishRegister().ok());
  w.Connect();
  w.StartHeartbeats(Millis(50));
  ASSERT_TRUE(PollUntil([&] { return HealthStatus(channel) == kServing; }, seconds(10)));
  p.Signal(SIGSTOP);
  std::this_thread::sleep_for(Millis(3000));
  p.Signal(SIGCONT);
  // Serving throughout two timeouts after it runs again.
  EXPECT_FALSE(PollUntil([&] { return HealthStatus(channel) != kServing; }, Millis(2500))) << ReadFile(err);
  EXPECT_NE(ReadFile(err).find("the liveness check did not run for"), std::string::npos) << ReadFile(err);
  EXPECT_EQ(ReadFile(err).find("no heartbeat"), std::string::npos) << ReadFile(err);
  // A rank that does stop is still lost.
  w.StopHeartbeats();
  EXPECT_TRUE(PollUntil([&] { return HealthStatus(channel) == kNotServing; }, seconds(10))) << ReadFile(err);
  p.Signal(SIGTERM);
  EXPECT_TRUE(w.WaitFor(v1::CoordinatorMessage::kShutdown, Millis(15000)));
  EXPECT_TRUE(w.CloseGracefully().ok());
  EXPECT_EQ(p.Wait(seconds(15)), 0) << ReadFile(err);
  for (const std::string& f : {ports_file, err}) std::filesystem::remove(f);
}

TEST(CoordinatorProcessTest, SigintWithoutWorkersExitsCleanly) {
  const std::string ports_file = TempPath("coord_ports3");
  const std::string err = TempPath("coord_err3");
  std::filesystem::remove(ports_file);
  Process p({"--model", kTiny, "--world-size", "2", "--listen", "0", "--cluster-listen", "0", "--metrics-listen",
             "none", "--ports-file", ports_file},
            err);
  ASSERT_TRUE(PollUntil([&] { return std::filesystem::exists(ports_file); }, seconds(30))) << ReadFile(err);
  EXPECT_EQ(nlohmann::json::parse(ReadFile(ports_file))["metrics"], 0);
  // A rank waiting in Register (the other never comes) is released with UNAVAILABLE.
  const nlohmann::json ports = nlohmann::json::parse(ReadFile(ports_file));
  FakeWorker w(ports["cluster"], 0, 2);
  w.StartRegister();
  auto stub = v1::Inference::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", ports["public"].get<int>()), grpc::InsecureChannelCredentials()));
  ASSERT_TRUE(PollUntil([&] {
    grpc::ClientContext ctx;
    v1::ClusterInfo info;
    return stub->GetClusterInfo(&ctx, {}, &info).ok() && info.ranks(0).host() == "fake-host";
  }, seconds(10)));
  p.Signal(SIGINT);
  const grpc::Status s = w.FinishRegister();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_EQ(s.error_message(), "coordinator is shutting down");
  EXPECT_EQ(p.Wait(seconds(15)), 0) << ReadFile(err);
  std::filesystem::remove(ports_file);
  std::filesystem::remove(err);
}

}  // namespace
}  // namespace moe
