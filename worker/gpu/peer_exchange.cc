#include "worker/gpu/peer_exchange.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "kernels/cuda_check.h"

namespace moe::gpu {
namespace {

constexpr size_t kAlign = 256;
size_t RoundUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Why this rank cannot reach every other rank's GPU memory ("" when it can).
std::string Unreachable(MPI_Comm mpi_comm, int rank, int size, int device, bool allow_shared_gpu) {
  MPI_Comm node;
  MPI_Comm_split_type(mpi_comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  int node_size = 0;
  MPI_Comm_size(node, &node_size);
  MPI_Comm_free(&node);
  // Every rank computes the same collectives below whatever it finds, so none is left waiting.
  std::array<char, 64> bus{};
  const bool have_bus = cudaDeviceGetPCIBusId(bus.data(), static_cast<int>(bus.size()), device) == cudaSuccess;
  if (!have_bus) (void)cudaGetLastError();
  std::vector<char> buses(bus.size() * static_cast<size_t>(size));
  MPI_Allgather(bus.data(), static_cast<int>(bus.size()), MPI_CHAR, buses.data(), static_cast<int>(bus.size()),
                MPI_CHAR, mpi_comm);
  if (!have_bus) return "rank " + std::to_string(rank) + " cannot read its GPU's PCI bus id";
  if (node_size != size) {
    return "the ranks are on more than one node (" + std::to_string(node_size) + " of " + std::to_string(size) +
           " share rank " + std::to_string(rank) + "'s)";
  }
  for (int r = 0; r < size; ++r) {
    if (r == rank) continue;
    const char* theirs = buses.data() + bus.size() * static_cast<size_t>(r);
    int other = -1;
    if (cudaDeviceGetByPCIBusId(&other, theirs) != cudaSuccess) {
      (void)cudaGetLastError();
      return "rank " + std::to_string(rank) + " does not see rank " + std::to_string(r) + "'s GPU (" + theirs + ")";
    }
    if (other == device) {
      if (!allow_shared_gpu) {
        return "ranks " + std::to_string(rank) + " and " + std::to_string(r) + " share GPU " + std::string(theirs);
      }
      continue;
    }
    int can = 0;
    if (cudaDeviceCanAccessPeer(&can, device, other) != cudaSuccess) {
      (void)cudaGetLastError();
      can = 0;
    }
    if (can == 0) {
      return "rank " + std::to_string(rank) + "'s GPU cannot access rank " + std::to_string(r) + "'s (" + theirs +
             ") as a peer";
    }
  }
  return "";
}

// A collective: true when every rank's `reason` is empty; else every rank gets the lowest failing
// rank's reason in `why` (when not null).
bool AllAgree(MPI_Comm mpi_comm, int rank, int size, const std::string& reason, std::string* why) {
  int first_failed = reason.empty() ? size : rank;
  MPI_Allreduce(MPI_IN_PLACE, &first_failed, 1, MPI_INT, MPI_MIN, mpi_comm);
  if (first_failed == size) return true;
  std::array<char, 256> text{};
  std::strncpy(text.data(), reason.c_str(), text.size() - 1);
  MPI_Bcast(text.data(), static_cast<int>(text.size()), MPI_CHAR, first_failed, mpi_comm);
  if (why != nullptr) *why = text.data();
  return false;
}

}  // namespace

std::unique_ptr<PeerExchange> PeerExchange::Make(MPI_Comm mpi_comm, size_t block_bytes, bool allow_shared_gpu,
                                                 std::string* why) {
  std::unique_ptr<PeerExchange> x(new PeerExchange());
  MPI_Comm_rank(mpi_comm, &x->rank_);
  MPI_Comm_size(mpi_comm, &x->size_);
  MOE_CUDA_CHECK(cudaGetDevice(&x->device_));
  const int W = x->size_;
  // Every rank learns the first failing rank's reason, so all return null alike; CUDA failures
  // (IPC refused in a container, say) are reasons too, never an exception that would leave the other
  // ranks waiting in a collective.
  const std::string unreachable = W < 2 ? "one rank" : Unreachable(mpi_comm, x->rank_, W, x->device_, allow_shared_gpu);
  if (!AllAgree(mpi_comm, x->rank_, W, unreachable, why)) return nullptr;

  // One region: the flags of both directions, then recv, then returned.
  x->block_bytes_ = RoundUp(block_bytes);
  x->flags_bytes_ = RoundUp(sizeof(uint64_t) * 2 * static_cast<size_t>(W) * kPeerCtas);
  std::string failed;
  cudaIpcMemHandle_t handle{};
  try {
    MOE_CUDA_CHECK(cudaMalloc(&x->own_, x->flags_bytes_ + 2 * x->block_bytes_));
    MOE_CUDA_CHECK(cudaMemset(x->own_, 0, x->flags_bytes_));
    MOE_CUDA_CHECK(cudaIpcGetMemHandle(&handle, x->own_));
  } catch (const std::exception& e) {
    failed = "rank " + std::to_string(x->rank_) + ": " + e.what();
  }
  std::vector<cudaIpcMemHandle_t> handles(static_cast<size_t>(W));
  MPI_Allgather(&handle, sizeof handle, MPI_BYTE, handles.data(), sizeof handle, MPI_BYTE, mpi_comm);
  if (!AllAgree(mpi_comm, x->rank_, W, failed, why)) return nullptr;
  try {
    x->opened_.assign(static_cast<size_t>(W), nullptr);
    std::vector<char*> base(static_cast<size_t>(W));
    for (int r = 0; r < W; ++r) {
      if (r == x->rank_) {
        base[r] = static_cast<char*>(x->own_);
        continue;
      }
      MOE_CUDA_CHECK(cudaIpcOpenMemHandle(&x->opened_[r], handles[r], cudaIpcMemLazyEnablePeerAccess));
      base[r] = static_cast<char*>(x->opened_[r]);
    }
    const size_t per_direction_flags = sizeof(uint64_t) * static_cast<size_t>(W) * kPeerCtas;
    std::vector<bf16*> blocks(2 * static_cast<size_t>(W));
    std::vector<uint64_t*> flags(2 * static_cast<size_t>(W));
    for (int r = 0; r < W; ++r) {
      blocks[r] = reinterpret_cast<bf16*>(base[r] + x->flags_bytes_);
      blocks[W + r] = reinterpret_cast<bf16*>(base[r] + x->flags_bytes_ + x->block_bytes_);
      flags[r] = reinterpret_cast<uint64_t*>(base[r]);
      flags[W + r] = reinterpret_cast<uint64_t*>(base[r] + per_direction_flags);
    }
    x->own_flags_ = flags[x->rank_];
    x->own_recv_ = blocks[x->rank_];
    x->own_returned_ = blocks[W + x->rank_];
    x->blocks_ = DeviceBuffer<bf16*>(blocks.size());
    x->flags_ = DeviceBuffer<uint64_t*>(flags.size());
    x->epochs_ = DeviceBuffer<uint64_t>(2);
    MOE_CUDA_CHECK(cudaMemcpy(x->blocks_.get(), blocks.data(), sizeof(bf16*) * blocks.size(), cudaMemcpyHostToDevice));
    MOE_CUDA_CHECK(
        cudaMemcpy(x->flags_.get(), flags.data(), sizeof(uint64_t*) * flags.size(), cudaMemcpyHostToDevice));
    MOE_CUDA_CHECK(cudaMemset(x->epochs_.get(), 0, sizeof(uint64_t) * 2));
    MOE_CUDA_CHECK(cudaDeviceSynchronize());
  } catch (const std::exception& e) {
    failed = "rank " + std::to_string(x->rank_) + ": " + e.what();
  }
  // No rank raises a flag before every rank's flags are zero (and every rank has the others' regions).
  if (!AllAgree(mpi_comm, x->rank_, W, failed, why)) return nullptr;
  return x;
}

PeerExchange::~PeerExchange() {
  for (void* p : opened_) {
    if (p != nullptr) cudaIpcCloseMemHandle(p);
  }
  if (own_ != nullptr) cudaFree(own_);
}

std::array<uint64_t, 2> PeerExchange::Completed() const {
  std::array<uint64_t, 2> n{};
  MOE_CUDA_CHECK(cudaMemcpy(n.data(), epochs_.get(), sizeof n, cudaMemcpyDeviceToHost));
  return n;
}

PeerTargets PeerExchange::Targets(int direction, int64_t block_rows) const {
  PeerTargets t;
  t.blocks = blocks_.get() + direction * size_;
  t.flags = flags_.get() + direction * size_;
  t.epoch = epochs_.get() + direction;
  t.rank = rank_;
  t.ranks = size_;
  t.block_rows = block_rows;
  return t;
}

}  // namespace moe::gpu
