// The MoE device exchange with the ranks writing straight into each other's GPU memory (CUDA IPC
// over NVLink or PCIe, all ranks on one node), instead of whole fixed-capacity blocks handed to
// NCCL all-to-alls: only the rows that exist cross, with no communication kernel of NCCL's between
// the layer's kernels (kernels.h: PeerTargets, WaitPeers).
//
// Each rank allocates one region and opens every other rank's (cudaIpcGetMemHandle, the handles
// gathered over MPI): flags of both directions, then the receiving blocks of the dispatch (`recv`,
// where the sources write their rows for this rank's experts) and of the return (`returned`, where
// the experts' ranks write the results of this rank's rows). The layouts are those of the NCCL
// path's receiving buffers, so the kernels either side of the exchange are the same.
//
// A region is reused by every layer: a source writes a rank's `recv` for the next layer only after
// it had that rank's results of this layer, which that rank sends after its experts have read
// `recv`; likewise for `returned`. So every rank must run every exchange (zero rows included), as
// with NCCL.
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "worker/gpu/device_buffer.h"

namespace moe::gpu {

class PeerExchange {
 public:
  // A collective over `mpi_comm` (MPI initialised; this rank's GPU current). `block_bytes`: the
  // bytes of each rank's receiving blocks per direction (every source's blocks together), the same
  // on every rank. Null on every rank alike when some rank cannot reach another's memory (ranks on
  // two nodes, GPUs without peer access, or two ranks on one GPU unless `allow_shared_gpu`: tests
  // use it; there the ranks' kernels take turns on the GPU, so the exchange is slow); `why` then
  // says which; likewise when a CUDA call of the setup fails on some rank (IPC refused, no memory).
  static std::unique_ptr<PeerExchange> Make(MPI_Comm mpi_comm, size_t block_bytes, bool allow_shared_gpu,
                                            std::string* why);
  ~PeerExchange();
  PeerExchange(const PeerExchange&) = delete;
  PeerExchange& operator=(const PeerExchange&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return device_; }
  size_t block_bytes() const { return block_bytes_; }

  // This rank's receiving blocks: the dispatch's (rows for its experts) and the return's (results
  // of its rows), each block_bytes().
  bf16* recv() const { return own_recv_; }
  bf16* returned() const { return own_returned_; }

  // The kernels' view of one direction for blocks of `block_rows` rows (cap + 1).
  PeerTargets Dispatch(int64_t block_rows) const { return Targets(0, block_rows); }
  PeerTargets Return(int64_t block_rows) const { return Targets(1, block_rows); }
  // This rank's flags and epoch of a direction (0: dispatch, 1: return), for WaitPeers.
  const uint64_t* own_flags(int direction) const { return own_flags_ + direction * size_ * kPeerCtas; }
  uint64_t* epoch(int direction) const { return epochs_.get() + direction; }

  // The exchanges this rank has completed per direction (copied from the device: synchronises;
  // tests use it to see the peer path ran).
  std::array<uint64_t, 2> Completed() const;

  // How long WaitPeers waits for a rank before it ends the step with an error.
  static constexpr double kWaitTimeoutS = 120.0;

 private:
  PeerExchange() = default;
  PeerTargets Targets(int direction, int64_t block_rows) const;

  int rank_ = 0, size_ = 1, device_ = 0;
  size_t block_bytes_ = 0, flags_bytes_ = 0;
  void* own_ = nullptr;                 // this rank's region (cudaMalloc)
  std::vector<void*> opened_;           // the other ranks' regions (cudaIpcOpenMemHandle), null for this rank
  uint64_t* own_flags_ = nullptr;       // [2][W * kPeerCtas] in own_
  bf16* own_recv_ = nullptr;
  bf16* own_returned_ = nullptr;
  DeviceBuffer<bf16*> blocks_;          // [2][W]: every rank's recv, then every rank's returned
  DeviceBuffer<uint64_t*> flags_;       // [2][W]: every rank's dispatch flags, then return flags
  DeviceBuffer<uint64_t> epochs_;       // [2] this rank's completed exchanges per direction
};

}  // namespace moe::gpu
