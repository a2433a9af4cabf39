// Runs the built moe-cli from tests: in one process or under `mpirun -np N`, with stdout, stderr,
// the exit code and the last stdout line parsed as JSON.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe::testing_ref {

inline const std::string kCliPath = std::string(MOE_BINARY_DIR) + "/worker/moe-cli";

struct CliRun {
  std::string command;
  int exit_code = -1;
  std::string out, err;
  nlohmann::json result;  // the last stdout line, parsed (null when it is not JSON)

  // For assertion messages: what ran and what it said on stderr.
  std::string Describe() const {
    return "command: " + command + "\nexit code " + std::to_string(exit_code) + "\nstderr:\n" + err;
  }
};

// Sets what mpirun needs here (root, oversubscription, one BLAS thread per rank). Call once.
void SetMpiTestEnvironment();

// Runs moe-cli in one process (ranks == 0) or under `mpirun -np ranks`. stdout comes through a
// pipe; stderr goes to its own file, so diagnostics cannot corrupt the JSON line.
CliRun RunCli(int ranks, const std::vector<std::string>& args);

// Runs any program (argv[0] its path) the same way.
CliRun RunProgram(const std::vector<std::string>& argv);

std::string JoinIds(const std::vector<int32_t>& ids);

}  // namespace moe::testing_ref
