#include "tests/e2e_cluster.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "clients/cpp/grpc_status.h"
#include "clients/cpp/health_check.h"

#ifndef MOE_MPIRUN
#define MOE_MPIRUN "mpirun"
#endif

namespace moe::e2e {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPoll = std::chrono::milliseconds(20);

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The session id of process `pid` (field 6 of /proc/PID/stat), or -1.
pid_t SessionOf(pid_t pid) {
  const std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  // The command name (field 2) is in parentheses and may hold spaces: parse after the last ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(stat.substr(close + 1));
  char state;
  long ppid, pgrp, session;
  if (!(rest >> state >> ppid >> pgrp >> session)) return -1;
  if (state == 'Z') return -1;  // a zombie holds no resources; its parent reaps it
  return static_cast<pid_t>(session);
}

std::string Tail(const std::string& s, size_t max_bytes) {
  return s.size() <= max_bytes ? s : "..." + s.substr(s.size() - max_bytes);
}

}  // namespace

// --- ChildProcess -------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(const std::vector<std::string>& argv,
                                                                  const std::string& log_path) {
  std::vector<char*> cargv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) return absl::InternalError(absl::StrCat("cannot open ", log_path, ": ", std::strerror(errno)));
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    setsid();
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    execv(cargv[0], cargv.data());
    const char msg[] = "exec failed\n";
    (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
    _exit(127);
  }
  close(log_fd);
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, log_path));
}

ChildProcess::~ChildProcess() { KillSession(); }

bool ChildProcess::Running() {
  if (exit_status_) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  if (r == pid_) {
    exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  } else {
    exit_status_ = -1;  // not our child any more (cannot happen unless reaped elsewhere)
  }
  return false;
}

std::optional<int> ChildProcess::WaitExit(Seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Running()) {
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(kPoll);
  }
  return exit_status_;
}

void ChildProcess::Signal(int sig) {
  if (Running()) kill(pid_, sig);
}

std::vector<pid_t> ChildProcess::SessionMembers() const {
  std::vector<pid_t> members;
  DIR* proc = opendir("/proc");
  if (!proc) return members;
  while (dirent* e = readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0') continue;
    if (SessionOf(static_cast<pid_t>(pid)) == pid_) members.push_back(static_cast<pid_t>(pid));
  }
  closedir(proc);
  return members;
}

void ChildProcess::KillSession() {
  for (int round = 0; round < 50; ++round) {
    const std::vector<pid_t> members = SessionMembers();
    for (pid_t p : members) kill(p, SIGKILL);
    Running();  // reaps the leader once it is dead
    if (members.empty()) break;
    std::this_thread::sleep_for(kPoll);
  }
  WaitExit(Seconds(5));
}

// --- Cluster ------------------------------------------------------------------------------------

Cluster::Cluster(ClusterOptions opts) : opts_(std::move(opts)) {
  std::string templ = (std::filesystem::temp_directory_path() / "moe_e2e_XXXXXX").string();
  if (mkdtemp(templ.data()) != nullptr) dir_ = templ;
}

Cluster::~Cluster() {
  channel_.reset();
  mpirun_.reset();
  coordinator_.reset();
  if (!dir_.empty() && std::getenv("MOE_E2E_KEEP_LOGS") == nullptr) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

absl::Status Cluster::StartCoordinator(Seconds timeout) {
  if (dir_.empty()) return absl::InternalError("cannot create a temporary directory");
  const std::string ports_file = dir_ + "/ports.json";
  std::vector<std::string> argv = {std::string(MOE_BINARY_DIR) + "/coordinator/moe-coordinator",
                                   "--model", opts_.model_dir,
                                   "--world-size", std::to_string(opts_.world_size),
                                   "--listen", "127.0.0.1:0",
                                   "--cluster-listen", "127.0.0.1:0",
                                   "--metrics-listen", "127.0.0.1:0",
                                   "--ports-file", ports_file};
  argv.insert(argv.end(), opts_.coordinator_args.begin(), opts_.coordinator_args.end());
  MOE_ASSIGN_OR_RETURN(coordinator_, ChildProcess::Start(argv, dir_ + "/coordinator.log"));

  const auto deadline = Clock::now() + timeout;
  while (true) {
    // The file is written to FILE.tmp and renamed, so once it exists it is complete.
    if (std::filesystem::exists(ports_file)) {
      const nlohmann::json j = nlohmann::json::parse(ReadFile(ports_file), nullptr, false);
      if (j.is_discarded() || !j.contains("public") || !j.contains("cluster") || !j.contains("metrics")) {
        return absl::InternalError("unreadable ports file: " + ReadFile(ports_file));
      }
      ports_ = {j["public"].get<int>(), j["cluster"].get<int>(), j["metrics"].get<int>()};
      return absl::OkStatus();
    }
    if (!coordinator_->Running()) return absl::InternalError("moe-coordinator exited before listening\n" + LogTail());
    if (Clock::now() >= deadline) return absl::DeadlineExceededError("no ports file from moe-coordinator\n" + LogTail());
    std::this_thread::sleep_for(kPoll);
  }
}

absl::Status Cluster::StartWorkers() {
  // --bind-to none: with more ranks than cores, binding would pile ranks onto one core.
  std::vector<std::string> argv = {MOE_MPIRUN, "--oversubscribe", "--bind-to", "none",
                                   "-np", std::to_string(opts_.world_size),
                                   std::string(MOE_BINARY_DIR) + "/worker/moe-worker",
                                   "--coordinator", "127.0.0.1:" + std::to_string(ports_.cluster_port)};
  argv.insert(argv.end(), opts_.worker_args.begin(), opts_.worker_args.end());
  // execv needs a path: resolve a bare mpirun through PATH.
  if (argv[0].find('/') == std::string::npos) {
    for (absl::string_view dir : absl::StrSplit(std::getenv("PATH") ? std::getenv("PATH") : "/usr/bin", ':')) {
      const std::string candidate = std::string(dir) + "/" + argv[0];
      if (access(candidate.c_str(), X_OK) == 0) {
        argv[0] = candidate;
        break;
      }
    }
  }
  // A job started after another (a rank was lost) logs beside the first: workers.log, workers-2.log, ...
  ++worker_jobs_;
  const std::string log = worker_jobs_ == 1 ? "/workers.log" : "/workers-" + std::to_string(worker_jobs_) + ".log";
  MOE_ASSIGN_OR_RETURN(mpirun_, ChildProcess::Start(argv, dir_ + log));
  return absl::OkStatus();
}

std::shared_ptr<grpc::Channel> Cluster::channel() {
  if (!channel_) channel_ = grpc::CreateChannel(public_address(), grpc::InsecureChannelCredentials());
  return channel_;
}

absl::Status Cluster::WaitServing(Seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::string last = "no answer yet";
  while (Clock::now() < deadline) {
    if (coordinator_ && !coordinator_->Running()) return absl::InternalError("moe-coordinator exited\n" + LogTail());
    if (mpirun_ && !mpirun_->Running()) return absl::InternalError("mpirun exited\n" + LogTail());
    auto s = client::CheckHealth(channel(), "", std::chrono::milliseconds(1000));
    if (s.ok() && *s == grpc::health::v1::HealthCheckResponse::SERVING) return absl::OkStatus();
    last = s.ok() ? client::ServingStatusName(*s) : std::string(s.status().message());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError("not SERVING in time (last: " + last + ")\n" + LogTail());
}

absl::Status Cluster::Start(Seconds serving_timeout) {
  MOE_RETURN_IF_ERROR(StartCoordinator(Seconds(30)));
  MOE_RETURN_IF_ERROR(StartWorkers());
  return WaitServing(serving_timeout);
}

Cluster::ExitStatus Cluster::Stop(Seconds timeout) {
  ExitStatus out;
  const auto deadline = Clock::now() + timeout;
  auto left = [&] { return std::max(Seconds(deadline - Clock::now()), Seconds(0)); };
  if (coordinator_) {
    coordinator_->Signal(SIGTERM);
    out.coordinator = coordinator_->WaitExit(left());
  }
  if (mpirun_) out.mpirun = mpirun_->WaitExit(left());
  if (mpirun_) mpirun_->KillSession();
  if (coordinator_) coordinator_->KillSession();
  return out;
}

std::vector<pid_t> Cluster::LeftoverProcesses() const {
  std::vector<pid_t> pids;
  for (const auto* p : {coordinator_.get(), mpirun_.get()}) {
    if (!p) continue;
    for (pid_t m : p->SessionMembers()) pids.push_back(m);
  }
  return pids;
}

std::vector<pid_t> Cluster::WorkerProcesses() const {
  return mpirun_ ? mpirun_->SessionMembers() : std::vector<pid_t>{};
}

std::optional<int> Cluster::WaitWorkersExit(Seconds timeout) {
  return mpirun_ ? mpirun_->WaitExit(timeout) : std::nullopt;
}

void Cluster::KillCoordinator() {
  if (coordinator_) coordinator_->KillSession();
}

std::string Cluster::WorkersLog() const { return mpirun_ ? ReadFile(mpirun_->log_path()) : std::string(); }

std::string Cluster::LogTail(size_t max_bytes) const {
  std::string s;
  if (coordinator_) s += "--- coordinator log ---\n" + Tail(ReadFile(coordinator_->log_path()), max_bytes) + "\n";
  if (mpirun_) s += "--- workers log ---\n" + Tail(ReadFile(mpirun_->log_path()), max_bytes) + "\n";
  return s;
}

// --- HTTP and Prometheus -------------------------------------------------------------------------

absl::StatusOr<std::string> HttpGet(int port, const std::string& path, Seconds timeout) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count());
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() - static_cast<double>(tv.tv_sec)) * 1e6);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const std::string err = std::strerror(errno);
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect to port ", port, ": ", err));
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("send failed");
  }
  std::string response;
  char buf[16384];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) response.append(buf, static_cast<size_t>(n));
  close(fd);
  if (n < 0) return absl::DeadlineExceededError(absl::StrCat("recv: ", std::strerror(errno)));
  const size_t header_end = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.", 0) != 0 || header_end == std::string::npos) {
    return absl::InternalError("not an HTTP response: " + response.substr(0, 200));
  }
  const std::string status_line = response.substr(0, response.find("\r\n"));
  if (status_line.find(" 200") == std::string::npos) return absl::InternalError("HTTP status: " + status_line);
  return response.substr(header_end + 4);
}

std::optional<double> MetricSum(const std::string& exposition, const std::string& metric) {
  std::optional<double> sum;
  std::istringstream lines(exposition);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#') continue;
    if (line.rfind(metric, 0) != 0) continue;
    const char next = line.size() > metric.size() ? line[metric.size()] : '\0';
    if (next != ' ' && next != '{') continue;  // another metric with this prefix
    const size_t value_at = line.rfind(' ');
    double v = 0;
    if (value_at == std::string::npos || !absl::SimpleAtod(line.substr(value_at + 1), &v)) continue;
    sum = sum.value_or(0) + v;
  }
  return sum;
}

std::chrono::system_clock::time_point Deadline(double s) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}

moe::v1::GenerateRequest GreedyTokenRequest(const std::vector<int32_t>& prompt, uint32_t max_tokens) {
  moe::v1::GenerateRequest req;
  for (int32_t id : prompt) req.mutable_prompt()->mutable_token_ids()->add_ids(id);
  req.mutable_sampling()->set_max_tokens(max_tokens);
  req.mutable_sampling()->set_temperature(0);
  req.mutable_sampling()->set_ignore_eos(true);
  return req;
}

StreamOutcome RunGenerate(moe::v1::Inference::Stub& stub, const moe::v1::GenerateRequest& req, double timeout_s) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(timeout_s));
  // Every call here goes to a live coordinator, often on a fresh connection (32 at once in the
  // concurrency test): a connection attempt that fails on a loaded machine is retried until the
  // deadline, as a client of a running server would, instead of failing the call (CI once saw
  // UNAVAILABLE "failed to connect to all addresses" for one of 32 streams, on 2 busy cores).
  ctx.set_wait_for_ready(true);
  StreamOutcome out;
  auto reader = stub.Generate(&ctx, req);
  moe::v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    out.result.Add(msg);
    ++out.messages;
  }
  out.status = client::FromGrpc(reader->Finish());
  return out;
}

std::vector<StreamOutcome> RunGenerateConcurrently(const std::string& address,
                                                   const std::vector<moe::v1::GenerateRequest>& requests,
                                                   double timeout_s) {
  std::vector<StreamOutcome> outcomes(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own, not a shared one
      auto stub =
          moe::v1::Inference::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
      outcomes[i] = RunGenerate(*stub, requests[i], timeout_s);
    });
  }
  for (std::thread& t : threads) t.join();
  return outcomes;
}

}  // namespace moe::e2e
