// The engine a moe-worker rank serves with: the CPU Engine (--device cpu) or, in a build with CUDA,
// the GpuEngine (--device gpu). A GPU rank uses its node-local rank's GPU; when every rank of the
// job has a GPU of its own the MoE rows cross ranks over NCCL (NcclExchange), else (ranks sharing
// a GPU) through the host and the Communicator.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "coordinator/placement.h"
#include "worker/comm/communicator.h"
#include "worker/server/worker_flags.h"
#include "worker/step_engine.h"

namespace moe {

class WorkerEngine {
 public:
  // A collective: every rank calls it; on error this rank's message says what is wrong (the
  // caller keeps the ranks together). kv_tokens: the KV cache's positions; 0 (GPU only): what is
  // left of the rank's share of flags.gpu_memory_utilization of its GPU (worker/kv_budget.h).
  // keep_loading: asked after each layer read from the checkpoint; an error ends this rank's load
  // with it (the caller's collective then ends it on every rank).
  static absl::StatusOr<std::unique_ptr<WorkerEngine>> Load(const WorkerFlags& flags, const std::string& model_dir,
                                                            Communicator& comm, const PlacementPlan& plan,
                                                            int64_t kv_tokens,
                                                            std::function<absl::Status()> keep_loading = nullptr);
  ~WorkerEngine();  // the engine before the NCCL communicator it uses

  StepEngine& engine() { return *engine_; }
  const std::string& device() const { return device_; }  // "cpu" or "cuda:N", for Register

  // True when this build can run --device gpu.
  static bool GpuBuilt();
  // The GPU a --device gpu rank will use (the node-local rank's, as Load picks it): its name and
  // memory, for Register. False when there is none.
  static bool DescribeGpu(int rank, std::string* name, int64_t* memory_bytes);

 private:
  WorkerEngine() = default;
  std::shared_ptr<void> nccl_;   // the NcclExchange of a GPU job over NCCL (type-erased: CUDA builds only)
  std::shared_ptr<void> peers_;  // its PeerExchange (--enable-peer-exchange), released before nccl_
  std::unique_ptr<StepEngine> engine_;
  std::string device_ = "cpu";
};

}  // namespace moe
