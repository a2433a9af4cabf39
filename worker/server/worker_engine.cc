#include "worker/server/worker_engine.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "worker/comm/mpi_launch.h"
#include "worker/engine.h"

#ifdef MOE_WORKER_GPU
#include <cuda_runtime.h>
#include <mpi.h>

#include "worker/gpu/gpu_engine.h"
#include "worker/gpu/nccl_exchange.h"
#include "worker/gpu/peer_exchange.h"
#endif

namespace moe {

#ifdef MOE_WORKER_GPU
namespace {

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

}  // namespace
#endif

bool WorkerEngine::GpuBuilt() {
#ifdef MOE_WORKER_GPU
  return true;
#else
  return false;
#endif
}

bool WorkerEngine::DescribeGpu(int rank, std::string* name, int64_t* memory_bytes) {
#ifdef MOE_WORKER_GPU
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    (void)cudaGetLastError();
    return false;
  }
  const int d = EnvInt("OMPI_COMM_WORLD_LOCAL_RANK", rank) % devices;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, d) != cudaSuccess) return false;
  *name = std::string(prop.name) + " (cuda:" + std::to_string(d) + ")";
  *memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  return true;
#else
  (void)rank, (void)name, (void)memory_bytes;
  return false;
#endif
}

WorkerEngine::~WorkerEngine() {
  engine_.reset();
  peers_.reset();
  nccl_.reset();
}

absl::StatusOr<std::unique_ptr<WorkerEngine>> WorkerEngine::Load(const WorkerFlags& flags,
                                                                 const std::string& model_dir, Communicator& comm,
                                                                 const PlacementPlan& plan, int64_t kv_tokens,
                                                                 std::function<absl::Status()> keep_loading) {
  std::unique_ptr<WorkerEngine> w(new WorkerEngine);
  if (flags.device == "cpu") {
    EngineOptions eo;
    eo.kv_block_size = flags.kv_block_size;
    eo.kv_tokens = kv_tokens;
    eo.verbose = true;  // "[rank r] loading DIR: layer i/N"
    eo.keep_loading = std::move(keep_loading);
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<Engine> e, Engine::Load(model_dir, comm, plan, eo));
    w->engine_ = std::move(e);
    return w;
  }
#ifndef MOE_WORKER_GPU
  (void)model_dir, (void)comm, (void)plan, (void)kv_tokens, (void)keep_loading;
  return absl::FailedPreconditionError("--device gpu: this moe-worker was built without CUDA");
#else
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    (void)cudaGetLastError();
    devices = 0;
  }
  // Every rank must take the same exchange: NCCL only when each has a GPU of its own.
  const int local_rank = EnvInt("OMPI_COMM_WORLD_LOCAL_RANK", comm.rank());
  const int local_size = EnvInt("OMPI_COMM_WORLD_LOCAL_SIZE", comm.size());
  std::vector<int64_t> shared = {devices >= local_size ? 0 : 1};
  comm.AllReduceSum(shared);
  if (devices == 0) return absl::FailedPreconditionError("--device gpu: no CUDA device is visible to this rank");
  // The config sizes the peer exchange and the synthetic weights (a few KB; GpuEngine::Load reads it too).
  MOE_ASSIGN_OR_RETURN(const ModelConfig config, ModelConfig::FromModelDir(model_dir));
  gpu::GpuEngineOptions go;
  go.kv_block_size = flags.kv_block_size;
  go.kv_tokens = kv_tokens;
  // Without a KV size the cache takes what is left of the rank's share of the GPU's memory: the
  // node's ranks on one GPU (local rank r on GPU r % devices) split the fraction.
  const int gpu = local_rank % devices;
  const int ranks_on_gpu = std::max(1, (local_size - gpu + devices - 1) / devices);
  go.memory_fraction = flags.gpu_memory_utilization / ranks_on_gpu;
  go.max_step_tokens = flags.max_batch_tokens;
  go.verbose = true;
  go.keep_loading = std::move(keep_loading);  // (not for synthetic weights: no checkpoint to read)
  if (comm.size() > 1 && shared[0] == 0 && LaunchedByMpirun()) {
    try {
      auto x = std::make_shared<gpu::NcclExchange>(MPI_COMM_WORLD);
      go.nccl = x.get();
      w->nccl_ = x;
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("--device gpu: NCCL: ", e.what()));
    }
    if (flags.enable_peer_exchange) {  // every rank has the same flags: all make it or none
      std::string why;
      try {
        std::shared_ptr<gpu::PeerExchange> p = gpu::PeerExchange::Make(
            MPI_COMM_WORLD, gpu::GpuMoeLayer::PeerBlockBytes(config, comm.size()), /*allow_shared_gpu=*/false, &why);
        go.peers = p.get();
        w->peers_ = p;
      } catch (const std::exception& e) {
        return absl::InternalError(absl::StrCat("--enable-peer-exchange: ", e.what()));
      }
      if (comm.rank() == 0) {
        std::fprintf(stderr, "moe-worker: --enable-peer-exchange: %s\n",
                     go.peers != nullptr ? "decode steps write the MoE rows into the other GPUs"
                                         : ("not available (" + why + "); NCCL carries the rows").c_str());
      }
    }
  } else {
    go.device = gpu;
    if (flags.enable_peer_exchange && comm.rank() == 0) {
      std::fprintf(stderr, "moe-worker: --enable-peer-exchange: not available (%s); the rows go through the host\n",
                   comm.size() == 1 ? "one rank" : "ranks share a GPU");
    }
  }
  std::unique_ptr<gpu::GpuEngine> e;
  if (flags.synthetic_seed) {
    if (comm.rank() == 0) {
      std::fprintf(stderr, "moe-worker: synthetic weights (seed %llu) for %s/config.json; no checkpoint is read\n",
                   static_cast<unsigned long long>(*flags.synthetic_seed), model_dir.c_str());
    }
    MOE_ASSIGN_OR_RETURN(e, gpu::GpuEngine::LoadSynthetic(config, comm, plan, go, *flags.synthetic_seed));
  } else {
    MOE_ASSIGN_OR_RETURN(e, gpu::GpuEngine::Load(model_dir, comm, plan, go));
  }
  if (flags.device_exchange_experts == "wgmma") {
    gpu::ExpertGemmTuning t = e->expert_tuning();
    t.device_exchange_wgmma = true;
    e->set_expert_tuning(t);
  }
  int device = 0;
  cudaGetDevice(&device);
  w->device_ = "cuda:" + std::to_string(device);
  w->engine_ = std::move(e);
  return w;
#endif
}

}  // namespace moe
