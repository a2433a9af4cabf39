// moe-coordinator: the front door of an expert-parallel worker job. See coordinator_server.h.
//
// Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 1 when it cannot start (model folder,
// address in use), 2 for a bad command line.
#include <csignal>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/open_file_limit.h"
#include "common/secret_token.h"
#include "coordinator/coordinator_server.h"
#include "coordinator/options.h"
#include "coordinator/ports_file.h"

int main(int argc, char** argv) {
  // Signals are taken synchronously by this thread (sigwait); every thread gRPC starts inherits
  // the mask, so none of them is interrupted.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  for (int i = 1; i < argc; ++i) {  // asked for, the usage is no error (as moe-worker's)
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::fputs(moe::CoordinatorUsage().c_str(), stdout);
      return 0;
    }
  }
  moe::RaiseOpenFileLimit();  // a descriptor per client connection
  absl::StatusOr<moe::CoordinatorOptions> options =
      moe::ParseCoordinatorArgs(std::vector<std::string>(argv + 1, argv + argc));
  if (!options.ok()) {
    std::fprintf(stderr, "moe-coordinator: %s\n%s", std::string(options.status().message()).c_str(),
                 moe::CoordinatorUsage().c_str());
    return 2;
  }
  if (const char* token = std::getenv(moe::kClusterTokenEnv); token != nullptr) options->cluster_token = token;
  if (const char* key = std::getenv(moe::kApiKeyEnv); key != nullptr && *key != '\0') options->api_keys = {key};
  absl::StatusOr<std::unique_ptr<moe::CoordinatorServer>> server = moe::CoordinatorServer::Start(*options);
  if (!server.ok()) {
    std::fprintf(stderr, "moe-coordinator: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  const moe::BoundPorts& ports = (*server)->ports();
  if (!options->ports_file.empty()) {
    const absl::Status written = moe::WritePortsFile(options->ports_file, ports);
    if (!written.ok()) {
      std::fprintf(stderr, "moe-coordinator: --ports-file: %s\n", std::string(written.message()).c_str());
      return 1;
    }
  }
  std::fprintf(stderr, "%s\n", moe::PortsJson(ports).c_str());
  std::fprintf(stderr, "moe-coordinator: waiting for %d worker rank(s) on port %d; public port %d\n",
               options->world_size, ports.cluster_port, ports.public_port);

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "moe-coordinator: %s received, draining\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  (*server)->Shutdown();
  std::fprintf(stderr, "moe-coordinator: stopped\n");
  return 0;
}
