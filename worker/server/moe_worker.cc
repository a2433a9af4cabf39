// moe-worker: one rank of the serving cluster. Launched as `mpirun -np N moe-worker --coordinator
// HOST:PORT` (or plainly, as a single rank): registers with the coordinator, opens its Serve stream
// (Join), loads the shard its placement plan gives this rank, sends Loaded, and serves assigned sequences in lock step with the
// other ranks until the coordinator sends Shutdown (exit 0) or is lost (exit 1).
//
// Exit status: 0 after Shutdown, 1 when the coordinator, the model or the job failed, 2 bad flags.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <mpi.h>
#include <nlohmann/json.hpp>

#include "common/pem_file.h"
#include "common/process_exit.h"
#include "common/secret_token.h"
#include "common/status.h"
#include "coordinator/placement.h"
#include "worker/comm/local_communicator.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/comm/mpi_launch.h"
#include "worker/engine.h"
#include "worker/server/worker_engine.h"
#include "worker/server/coordinator_link.h"
#include "worker/server/keep_alive_outbox.h"
#include "worker/server/inbox.h"
#include "worker/server/job_end_watchdog.h"
#include "worker/server/load_watch.h"
#include "worker/server/serving_loop.h"
#include "worker/server/worker_flags.h"

namespace moe {
namespace {

constexpr auto kConnectTimeout = std::chrono::seconds(30);

// True on every rank when any rank passes a failure; each failing rank prints its own message.
// Keeps the ranks together, so that no rank waits in a collective for one that gave up.
bool AnyRankFailed(Communicator& comm, const absl::Status& s) {
  if (!s.ok()) std::fprintf(stderr, "moe-worker [rank %d]: %s\n", comm.rank(), std::string(s.message()).c_str());
  std::vector<int64_t> flag = {s.ok() ? 0 : 1};
  comm.AllReduceSum(flag);
  return flag[0] > 0;
}

// Register with every rank of the job. The coordinator answers once all have registered, so a
// rank whose Register failed (a wrong cluster token, a refused registration) left the others
// waiting for ever: the ranks compare notes every second and give up together.
absl::StatusOr<moe::v1::RegisterResponse> RegisterWithTheJob(Communicator& comm, CoordinatorLink& link,
                                                             const moe::v1::RegisterRequest& req) {
  const std::unique_ptr<CoordinatorLink::PendingRegister> pending = link.StartRegister(req);
  std::optional<absl::StatusOr<moe::v1::RegisterResponse>> answer;
  while (true) {
    if (!answer) answer = pending->Wait(std::chrono::seconds(1));
    std::vector<int64_t> counts = {answer && !answer->ok() ? 1 : 0, answer && answer->ok() ? 1 : 0};
    comm.AllReduceSum(counts);  // failed, answered
    if (counts[0] > 0) {
      if (answer && !answer->ok()) return answer->status();
      return absl::AbortedError(absl::StrCat(counts[0], " other rank(s) of the job could not register (see above)"));
    }
    if (counts[1] == comm.size()) return **answer;
  }
}

// MOE_WORKER_TEST_LOAD_DELAY_MS, for tests only: how long a rank waits after each layer of its load
// (ending the wait once the coordinator sends something or the stream ends), so that an end-to-end
// test can act on a rank that is still loading: the test model loads in milliseconds.
std::chrono::milliseconds TestLoadDelay(int rank) {
  const char* v = std::getenv("MOE_WORKER_TEST_LOAD_DELAY_MS");
  const std::chrono::milliseconds delay(v != nullptr ? std::max(0, std::atoi(v)) : 0);
  if (delay.count() > 0 && rank == 0) {  // never silently: a production rank must not be slowed unseen
    std::fprintf(stderr, "moe-worker: MOE_WORKER_TEST_LOAD_DELAY_MS=%lld (for tests only) slows the load after each layer\n",
                 static_cast<long long>(delay.count()));
  }
  return delay;
}

std::string HostName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

int64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
}

// The rank's last line when its coordinator is lost, and its exit status. Why, where the stream
// ended on this rank (another rank may have seen it first): the coordinator went away
// (UNAVAILABLE, also when it restarted after this job registered, or stopped answering keepalive
// pings) or refused this job's stream (FAILED_PRECONDITION: a newer job had registered, or the
// coordinator had restarted, by the time the stream opened; start the job again).
int LeaveForALostCoordinator(int rank, CoordinatorLink& link, const std::string& address) {
  link.Close();
  const absl::Status& ended = link.stream_status();
  std::fprintf(stderr, "moe-worker [rank %d]: lost the coordinator at %s%s; leaving\n", rank, address.c_str(),
               ended.ok() ? "" : absl::StrCat(" (", absl::StatusCodeToString(ended.code()), ": ", ended.message(), ")").c_str());
  return 1;
}

absl::StatusOr<PlacementPlan> PlanOf(const moe::v1::RegisterResponse& resp) {
  nlohmann::json j = nlohmann::json::parse(resp.placement_json(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("the coordinator's placement_json is not valid JSON");
  return PlacementPlan::FromJson(j);
}

// `watchdog` is the caller's, so that it outlives Run and watches MPI_Finalize too (which waits for
// every rank).
int Run(const std::vector<std::string>& args, Communicator& comm, std::unique_ptr<JobEndWatchdog>& watchdog) {
  const int rank = comm.rank();
  absl::StatusOr<WorkerFlags> flags = ParseWorkerFlags(args);
  if (!flags.ok()) {
    if (rank == 0) std::fprintf(stderr, "moe-worker: %s\n%s", std::string(flags.status().message()).c_str(), WorkerUsage().c_str());
    return 2;
  }
  if (flags->help) {
    if (rank == 0) std::fputs(WorkerUsage().c_str(), stdout);
    return 0;
  }

  if (flags->device == "gpu" && !WorkerEngine::GpuBuilt()) {
    if (rank == 0) std::fprintf(stderr, "moe-worker: --device gpu: this moe-worker was built without CUDA\n");
    return 2;
  }

  client::ChannelSecurity security;  // TLS to the cluster port with --coordinator-tls-ca-file
  if (!flags->coordinator_tls_ca_file.empty()) {
    absl::StatusOr<std::string> ca =
        ReadPemFile(flags->coordinator_tls_ca_file, PemKind::kCertificate, "--coordinator-tls-ca-file");
    if (AnyRankFailed(comm, ca.status())) return 2;
    security.tls_ca_pem = std::move(*ca);
    if (const char* name = std::getenv(kTlsServerNameEnv)) security.tls_server_name = name;
  }
  if (!flags->cluster_tls_cert_file.empty()) {  // mutual TLS: this rank's certificate
    absl::StatusOr<std::string> cert =
        ReadPemFile(flags->cluster_tls_cert_file, PemKind::kCertificate, "--cluster-tls-cert-file");
    if (AnyRankFailed(comm, cert.status())) return 2;
    absl::StatusOr<std::string> key =
        ReadPemFile(flags->cluster_tls_key_file, PemKind::kPrivateKey, "--cluster-tls-key-file");
    if (AnyRankFailed(comm, key.status())) return 2;
    security.tls_cert_pem = std::move(*cert);
    security.tls_key_pem = std::move(*key);
  }
  const char* cluster_token = std::getenv(kClusterTokenEnv);  // the coordinator's, through mpirun -x
  // Before the link, which must not outlive it: the link's reader pushes what the coordinator sends
  // (a Shutdown) into it until the link is closed, its destructor's flush included.
  const auto inbox = std::make_shared<Inbox>();
  absl::StatusOr<std::unique_ptr<CoordinatorLink>> link = CoordinatorLink::Connect(
      flags->coordinator, kConnectTimeout, cluster_token != nullptr ? cluster_token : "", std::move(security));
  if (AnyRankFailed(comm, link.status())) return 1;
  moe::v1::RegisterRequest req;
  req.set_rank(rank);
  req.set_world_size(comm.size());
  req.set_host(HostName());
  std::string device = "cpu";
  int64_t memory = PhysicalMemoryBytes();
  if (flags->device == "gpu" && !WorkerEngine::DescribeGpu(rank, &device, &memory)) device = "gpu (none visible)";
  req.set_device(device);
  req.set_memory_bytes(memory);
  req.set_model_dir(flags->model_dir);
  absl::StatusOr<moe::v1::RegisterResponse> reg = RegisterWithTheJob(comm, **link, req);
  if (AnyRankFailed(comm, reg.status())) return 1;

  // The Serve stream opens before the load, naming this rank's job: the coordinator then sees a
  // rank that dies (or fails) while it loads as lost, instead of waiting for its Loaded for ever,
  // and refuses a rank of a job it no longer runs. What it sends meanwhile (a Shutdown after a
  // loss, the end of a refused stream) waits in the inbox, which the load watches (load_watch.h).
  // Join goes out as soon as this rank's stream is open, before the ranks agree that every stream
  // opened: should another rank's fail, this one's stream closes bound, a loss the coordinator
  // reports, rather than unbound and unseen.
  // From here the coordinator can end the job (job_end_watchdog.h): a rank still held in a collective
  // --step-timeout-s after that leaves without MPI, so that a peer that hangs cannot hold it for ever.
  watchdog = std::make_unique<JobEndWatchdog>(inbox, std::chrono::seconds(flags->step_timeout_s),
                                              [rank](const std::string& why) {
                                                std::fprintf(stderr,
                                                             "moe-worker [rank %d]: %s; leaving now, without MPI (exit 1: "
                                                             "mpirun ends the job's other ranks)\n",
                                                             rank, why.c_str());
                                                EndProcess(1);
                                              });
  const absl::Status opened = (*link)->OpenStream(*inbox, kConnectTimeout);
  if (opened.ok()) {
    moe::v1::WorkerMessage join;
    join.mutable_join()->set_rank(rank);
    join.mutable_join()->set_job_id(reg->job_id());
    (*link)->Send(std::move(join));
  }
  if (AnyRankFailed(comm, opened)) return 1;

  const std::string model_dir = flags->model_dir.empty() ? reg->model_dir() : flags->model_dir;
  absl::StatusOr<PlacementPlan> plan = PlanOf(*reg);
  absl::StatusOr<ModelConfig> config =
      plan.ok() ? ModelConfig::FromModelDir(model_dir) : absl::StatusOr<ModelConfig>(plan.status());
  if (AnyRankFailed(comm, config.status())) return 1;
  // Without --kv-tokens a GPU rank sizes its cache from the memory left (WorkerEngine::Load).
  const int64_t kv_tokens =
      flags->kv_tokens > 0 ? flags->kv_tokens : (flags->device == "gpu" ? 0 : DefaultKvTokens(*config));
  // The load stops early once this rank's job has ended (load_watch.h), and with it, through
  // AnyRankFailed, every rank's: the rank then leaves as the serving loop would have once loaded.
  absl::StatusOr<std::unique_ptr<WorkerEngine>> loaded_engine =
      WorkerEngine::Load(*flags, model_dir, comm, *plan, kv_tokens, [&inbox, delay = TestLoadDelay(rank)] {
        if (delay.count() > 0) inbox->WaitFor(delay);
        return LoadMayGoOn(*inbox);
      });
  if (AnyRankFailed(comm, loaded_engine.status())) {
    // This rank's own load failed (its message is above): exit 1 whatever the coordinator sent.
    if (!loaded_engine.ok() && loaded_engine.status().code() != absl::StatusCode::kCancelled) return 1;
    switch (JobEndIn(*inbox)) {
      case JobEnd::kShutdown:
        std::fprintf(stderr, "moe-worker [rank %d]: told to shut down while loading; leaving\n", rank);
        (*link)->Close();
        return 0;
      case JobEnd::kStreamEnded:
        return LeaveForALostCoordinator(rank, **link, flags->coordinator);
      case JobEnd::kNotEnded:
        break;
    }
    std::fprintf(stderr, "moe-worker [rank %d]: another rank's load failed or stopped; leaving\n", rank);
    return 1;
  }
  StepEngine* engine = &(*loaded_engine)->engine();
  if (flags->enable_prefix_caching) engine->EnablePrefixCache();

  moe::v1::WorkerMessage loaded;
  loaded.mutable_loaded()->set_rank(rank);
  loaded.mutable_loaded()->set_weight_bytes(engine->weight_bytes());
  loaded.mutable_loaded()->set_kv_blocks_total(engine->kv_blocks().total_blocks());
  loaded.mutable_loaded()->set_prefix_caching(flags->enable_prefix_caching);
  loaded.mutable_loaded()->set_kv_block_size(engine->kv_blocks().block_size());
  loaded.mutable_loaded()->set_max_batch_tokens(flags->max_batch_tokens);
  (*link)->Send(std::move(loaded));
  std::fprintf(stderr, "[rank %d] loaded %.1f MB of weights on %s, %lld KV blocks of %lld positions%s; serving\n", rank,
               engine->weight_bytes() / 1e6, (*loaded_engine)->device().c_str(),
               static_cast<long long>(engine->kv_blocks().total_blocks()),
               static_cast<long long>(flags->kv_block_size), flags->enable_prefix_caching ? ", prefix caching" : "");

  ServingLoopOptions lo;
  lo.max_batch_tokens = flags->max_batch_tokens;
  lo.kv_admission = flags->kv_admission;
  if (reg->token_texts_size() > 0) {
    lo.vocabulary = std::make_shared<const TokenTextTrie>(
        std::vector<std::string>(reg->token_texts().begin(), reg->token_texts().end()));
  }
  // Heartbeats keep flowing during steps longer than the coordinator's timeout, up to --step-timeout-s.
  KeepAliveOutbox outbox(**link, lo.heartbeat_interval, std::chrono::seconds(flags->step_timeout_s),
                         absl::StrCat("moe-worker [rank ", rank, "]"));
  ServingLoop loop(*engine, *inbox, outbox, lo);
  const StopReason why = loop.Run();
  if (why == StopReason::kCoordinatorLost) return LeaveForALostCoordinator(rank, **link, flags->coordinator);
  (*link)->Close();
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  std::unique_ptr<moe::JobEndWatchdog> watchdog;  // never destroyed: the process ends by EndProcess
  const int code = moe::RunAsJob(argc, argv, "moe-worker",
                                 [&](moe::Communicator& comm) { return moe::Run(args, comm, watchdog); });
  moe::EndProcess(code);  // gRPC's threads may outlive Run (common/process_exit.h)
}
