// The MoE token exchange of GPU ranks over NCCL, one rank per GPU: device-to-device all-to-alls of
// the per-(destination, expert) counts and of the bf16 token rows, enqueued on the caller's stream.
//
// The communicator is made once per job: rank 0 creates the ncclUniqueId and broadcasts its bytes
// over MPI, every rank selects its GPU (the node-local rank: OMPI_COMM_WORLD_LOCAL_RANK, else
// rank % device count) and joins with ncclCommInitRank(MPI size, MPI rank). NCCL cannot put two
// ranks on one GPU: when ranks share a device the engine keeps the host-staging exchange instead
// (GpuEngineOptions::nccl left null).
//
// NVLink multicast (NVLS) stays off: nothing here calls cuMulticast*, and the environment sets
// NCCL_NVLS_ENABLE=0 (the constructor also sets it when it is unset, without overriding a value
// the environment gives). The exchange only uses point-to-point ncclSend/ncclRecv, which never
// need NVLS.
//
// Every method is a collective over the job: all ranks call the same methods in the same order,
// with zero counts when they have nothing to send. NCCL failures throw NcclError (file:line).
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>

#include "kernels/kernels.h"

namespace moe::gpu {

class NcclError : public std::runtime_error {
 public:
  NcclError(const char* file, int line, const char* call, ncclResult_t r)
      : std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + call + ": " +
                           ncclGetErrorString(r)) {}
};

}  // namespace moe::gpu

#define MOE_NCCL_CHECK(call)                                                  \
  do {                                                                        \
    ncclResult_t moe_nccl_res_ = (call);                                      \
    if (moe_nccl_res_ != ncclSuccess)                                         \
      throw ::moe::gpu::NcclError(__FILE__, __LINE__, #call, moe_nccl_res_); \
  } while (0)

namespace moe::gpu {

class NcclExchange {
 public:
  // A collective over `mpi_comm` (MPI must be initialised): selects this rank's GPU
  // (cudaSetDevice(LocalDevice())), then creates the NCCL communicator. Throws on failure.
  explicit NcclExchange(MPI_Comm mpi_comm = MPI_COMM_WORLD);
  ~NcclExchange();  // ncclCommDestroy
  NcclExchange(const NcclExchange&) = delete;
  NcclExchange& operator=(const NcclExchange&) = delete;

  // The GPU a rank uses: OMPI_COMM_WORLD_LOCAL_RANK when set, else `rank` % the device count.
  static int LocalDevice(int rank);

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return device_; }
  ncclComm_t comm() const { return comm_; }

  // Fixed-size all-to-all of int64 counts (device pointers): rank r's send[d*count .. (d+1)*count)
  // arrives in rank d's recv[r*count .. (r+1)*count). send and recv must not overlap.
  void AllToAllCounts(const int64_t* send, int64_t* recv, int64_t count, cudaStream_t stream);

  // Variable-size all-to-all of bf16 rows (device pointers), `row_width` elements each. send holds
  // send_rows[0] rows for rank 0, then send_rows[1] for rank 1, ...; recv receives recv_rows[s]
  // rows from each rank s, in rank order. Both count vectors are known on the host (size() each)
  // and must agree pairwise across ranks. The rows are copied bit for bit. Zero-size transfers
  // are skipped; the rank's own block is a device-to-device copy on the stream.
  void AllToAllRows(const bf16* send, std::span<const int64_t> send_rows, bf16* recv,
                    std::span<const int64_t> recv_rows, int64_t row_width, cudaStream_t stream);

  // How many AllToAllRows calls have been enqueued (tests use it to see the NCCL path ran).
  int64_t row_exchanges() const { return row_exchanges_; }

 private:
  ncclComm_t comm_ = nullptr;
  int rank_ = 0, size_ = 1, device_ = 0;
  int64_t row_exchanges_ = 0;
};

}  // namespace moe::gpu
