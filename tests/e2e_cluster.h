// Real cluster processes for the end-to-end tests: moe-coordinator and `mpirun ... moe-worker`,
// each started with fork/exec in a session of its own (so every process it starts, MPI ranks
// included, can be found and killed), output to a log file, every wait bounded.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "clients/cpp/generation_result.h"
#include "moe/v1/inference.grpc.pb.h"

#include "common/status.h"

namespace moe::e2e {

using Seconds = std::chrono::duration<double>;

// A child process and the session it leads.
class ChildProcess {
 public:
  // argv[0] is the program's path. stdout and stderr go to `log_path`.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(const std::vector<std::string>& argv,
                                                             const std::string& log_path);
  ~ChildProcess();  // KillSession()
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool Running();
  // The exit status once it ended within `timeout` (128 + signal when killed by one).
  std::optional<int> WaitExit(Seconds timeout);
  void Signal(int sig);
  // SIGKILL to every process still in the child's session (the child and whatever it started),
  // then reaps the child.
  void KillSession();
  // Pids of live processes in the child's session.
  std::vector<pid_t> SessionMembers() const;
  const std::string& log_path() const { return log_path_; }

 private:
  ChildProcess(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}
  pid_t pid_;
  std::string log_path_;
  std::optional<int> exit_status_;
};

struct ClusterOptions {
  int world_size = 2;
  std::string model_dir;
  std::vector<std::string> coordinator_args;  // extra flags
  std::vector<std::string> worker_args;
};

struct ClusterPorts {
  int public_port = 0;
  int cluster_port = 0;
  int metrics_port = 0;
};

// One cluster on loopback, every port picked by the kernel (port 0, read back from --ports-file).
class Cluster {
 public:
  explicit Cluster(ClusterOptions opts);
  ~Cluster();  // kills whatever is still running

  // Starts moe-coordinator and waits (bounded) for its ports file.
  absl::Status StartCoordinator(Seconds timeout);
  // Starts `mpirun -np N moe-worker --coordinator 127.0.0.1:<cluster port>`.
  absl::Status StartWorkers();
  // Polls grpc.health.v1 until SERVING; fails early when a process died.
  absl::Status WaitServing(Seconds timeout);
  // All three in order (the coordinator given 30 s), the first error returned.
  absl::Status Start(Seconds serving_timeout);

  struct ExitStatus {
    std::optional<int> coordinator;  // nullopt: still running at the deadline (then killed)
    std::optional<int> mpirun;
  };
  // The clean shutdown path: SIGTERM to the coordinator, which sends Shutdown to every rank; waits
  // for both; kills what is left after the timeout.
  ExitStatus Stop(Seconds timeout);
  // Live processes of the cluster's sessions (empty after a clean Stop).
  std::vector<pid_t> LeftoverProcesses() const;
  // Live processes of the workers' session: mpirun and the ranks it started.
  std::vector<pid_t> WorkerProcesses() const;
  // mpirun's exit status once it ended within `timeout` (nullopt: still running).
  std::optional<int> WaitWorkersExit(Seconds timeout);
  // SIGKILL to the coordinator (its whole session), as when its machine or process dies.
  void KillCoordinator();
  // The current worker job's log (mpirun's output: every rank's stderr).
  std::string WorkersLog() const;

  const ClusterPorts& ports() const { return ports_; }
  std::string public_address() const { return "127.0.0.1:" + std::to_string(ports_.public_port); }
  std::shared_ptr<grpc::Channel> channel();
  // The last lines of both logs, for assertion messages.
  std::string LogTail(size_t max_bytes = 6000) const;

 private:
  ClusterOptions opts_;
  std::string dir_;  // logs and the ports file
  ClusterPorts ports_;
  std::unique_ptr<ChildProcess> coordinator_;
  std::unique_ptr<ChildProcess> mpirun_;
  int worker_jobs_ = 0;  // StartWorkers calls so far
  std::shared_ptr<grpc::Channel> channel_;
};

// A deadline `s` seconds from now, for RPCs.
std::chrono::system_clock::time_point Deadline(double s);

// One Generate stream read to its end.
struct StreamOutcome {
  client::GenerationResult result;
  absl::Status status;
  int messages = 0;
};
StreamOutcome RunGenerate(moe::v1::Inference::Stub& stub, const moe::v1::GenerateRequest& req, double timeout_s);
// All `requests` at once to the public service at `address`, each from a thread of its own over a
// connection of its own (as separate client processes would send them); their outcomes in order.
std::vector<StreamOutcome> RunGenerateConcurrently(const std::string& address,
                                                   const std::vector<moe::v1::GenerateRequest>& requests,
                                                   double timeout_s);

// A greedy request for exactly `max_tokens` tokens (ignore_eos) after a token-id prompt.
moe::v1::GenerateRequest GreedyTokenRequest(const std::vector<int32_t>& prompt, uint32_t max_tokens);

// HTTP/1.0 GET of `path` from 127.0.0.1:port through a plain socket; the body, or an error.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path, Seconds timeout);

// The sum of every sample of `metric` (all label sets) in a Prometheus text exposition;
// nullopt when there is no sample of it.
std::optional<double> MetricSum(const std::string& exposition, const std::string& metric);

}  // namespace moe::e2e
