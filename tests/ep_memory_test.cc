// Issue acceptance: "a rank's resident memory after loading is the replicated part plus its
// experts' share". Run under mpirun (CTest: 4 ranks) on a random model whose experts are most of
// its weight, so that a rank holding every expert would stand out clearly.
#include <malloc.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "coordinator/placement.h"
#include "tests/support/random_model.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/engine.h"

namespace moe {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// Experts are 16 x 3 x 256 x 1024 = 12.6M parameters, everything else 0.6M.
ModelConfig ExpertHeavyConfig() {
  ModelConfig c;
  c.vocab_size = 512;
  c.hidden_size = 256;
  c.intermediate_size = 1024;
  c.num_layers = 2;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 32;
  c.num_experts = 8;
  c.experts_per_token = 2;
  c.max_position_embeddings = 256;
  return c;
}

// This process's resident set size in bytes (VmRSS of /proc/self/status), or -1.
int64_t ResidentBytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) {
      std::istringstream fields(line.substr(6));
      int64_t kb = -1;
      fields >> kb;
      return kb * 1024;
    }
  }
  return -1;
}

TEST(EpMemoryTest, RankHoldsReplicatedPartPlusItsExperts) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int W = comm.size(), me = comm.rank();
  const ModelConfig c = ExpertHeavyConfig();

  // One rank writes the model; the others learn where (an empty path: writing failed).
  std::string dir;
  if (me == 0) {
    dir = testing_ref::MakeTempDir("ep_memory_test_");
    const absl::Status s = testing_ref::WriteRandomModel(dir, c, /*seed=*/11, /*num_shards=*/1, DType::kBF16);
    if (!s.ok()) {
      ADD_FAILURE() << s;
      std::filesystem::remove_all(dir);
      dir.clear();
    }
  }
  comm.Broadcast(dir, 0);
  ASSERT_FALSE(dir.empty()) << "rank 0 could not write the model";

  const PlacementPlan plan = ValueOrThrow(PlacementPlan::Make(c.num_layers, c.num_experts, W));
  EngineOptions opts;
  opts.kv_tokens = 64;  // the KV cache is not under test; keep it negligible
  // Freed heap memory (rank 0's writer buffers) would otherwise blur both readings.
  malloc_trim(0);
  const int64_t rss_before = ResidentBytes();
  auto engine = Engine::Load(dir, comm, plan, opts);
  malloc_trim(0);
  const int64_t rss_after = ResidentBytes();
  std::vector<int64_t> load_failed = {engine.ok() ? 0 : 1};
  comm.AllReduceSum(load_failed);
  comm.Barrier();
  if (me == 0) std::filesystem::remove_all(dir);
  ASSERT_TRUE(engine.ok()) << engine.status();
  ASSERT_EQ(load_failed[0], 0) << "another rank failed to load";

  int64_t held = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) held += static_cast<int64_t>(plan.experts_on_rank(l, me).size());
  const int64_t replicated_bytes = c.replicated_params() * 4;  // float32 in memory, whatever the file
  const int64_t own_bytes = replicated_bytes + held * c.expert_params() * 4;
  const int64_t full_bytes = replicated_bytes + c.num_layers * c.num_experts * c.expert_params() * 4;
  const int64_t kv_bytes = c.num_layers * 2 * c.kv_dim() * opts.kv_tokens * 4;
  const int64_t growth = rss_after - rss_before;
  // Allocator rounding and the engine's small bookkeeping, not a second copy of anything.
  const int64_t bound = static_cast<int64_t>(1.3 * static_cast<double>(own_bytes + kv_bytes)) + 4 * 1024 * 1024;

  EXPECT_EQ((*engine)->weight_bytes(), own_bytes) << "rank " << me << " holds " << held << " experts";
  ASSERT_GT(rss_before, 0);
  EXPECT_LE(growth, bound) << "rank " << me;
  if (2 * held <= c.num_layers * c.num_experts) {
    // At most half the experts here: a rank that kept everything would need far more.
    EXPECT_LT(growth, full_bytes * 6 / 10) << "rank " << me;
  }

  char line[200];
  std::snprintf(line, sizeof(line),
                "rank %d: %lld experts, weights %.1f MiB (replicated %.1f MiB), RSS growth %.1f MiB, bound %.1f MiB, "
                "full model %.1f MiB",
                me, static_cast<long long>(held), own_bytes / kMiB, replicated_bytes / kMiB, growth / kMiB,
                bound / kMiB, full_bytes / kMiB);
  const std::vector<std::string> lines = comm.Gather(line, 0);
  for (const std::string& l : lines) std::printf("%s\n", l.c_str());
}

}  // namespace
}  // namespace moe
