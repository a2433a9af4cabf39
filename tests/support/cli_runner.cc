#include "tests/support/cli_runner.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#ifndef MOE_MPIRUN
#define MOE_MPIRUN "mpirun"
#endif

namespace moe::testing_ref {

using nlohmann::json;

// mpirun refuses root and more ranks than cores unless told; every rank of a 16-rank job on a
// 2-core machine must not also start its own BLAS threads. Set once, before any test runs.
void SetMpiTestEnvironment() {
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
  // Oversubscribed ranks that spin while waiting starve the rank doing the work.
  setenv("OMPI_MCA_mpi_yield_when_idle", "1", 0);
  setenv("OPENBLAS_NUM_THREADS", "1", 0);
}

namespace {

std::string ShellQuote(const std::string& s) {
  std::string q = "'";
  for (char ch : s) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return q + "'";
}

}  // namespace

CliRun RunCli(int ranks, const std::vector<std::string>& args) {
  std::vector<std::string> argv;
  if (ranks > 0) {
    // --bind-to none: with more ranks than cores, binding would pile them onto the same core.
    argv = {MOE_MPIRUN, "--oversubscribe", "--bind-to", "none", "-np", std::to_string(ranks)};
  }
  argv.push_back(kCliPath);
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProgram(argv);
}

CliRun RunProgram(const std::vector<std::string>& argv) {
  CliRun run;
  for (const std::string& a : argv) run.command += (run.command.empty() ? "" : " ") + ShellQuote(a);
  const std::filesystem::path err_path =
      std::filesystem::temp_directory_path() / ("moe_test_stderr_" + std::to_string(getpid()) + ".txt");
  FILE* pipe = popen((run.command + " 2>" + ShellQuote(err_path.string())).c_str(), "r");
  if (!pipe) {
    run.err = "popen failed";
    return run;
  }
  std::array<char, 65536> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) run.out.append(buf.data(), n);
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  std::ifstream err_file(err_path);
  std::stringstream ss;
  ss << err_file.rdbuf();
  run.err = ss.str();
  std::filesystem::remove(err_path);

  std::string last;
  std::istringstream lines(run.out);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) last = line;
  }
  run.result = json::parse(last, nullptr, /*allow_exceptions=*/false);
  if (run.result.is_discarded()) run.result = nullptr;
  return run;
}

std::string JoinIds(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += (s.empty() ? "" : ",") + std::to_string(id);
  return s;
}

}  // namespace moe::testing_ref
