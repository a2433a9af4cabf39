#include "worker/gpu/nccl_exchange.h"

#include <cstdlib>

#include "common/status.h"
#include "kernels/cuda_check.h"

namespace moe::gpu {

int NcclExchange::LocalDevice(int rank) {
  int count = 0;
  MOE_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (count <= 0) throw std::runtime_error("NcclExchange: no CUDA device");
  if (const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK"); local != nullptr && *local != '\0') {
    const int d = std::atoi(local);
    if (d < 0 || d >= count) {
      throw std::runtime_error("NcclExchange: local rank " + std::to_string(d) + " but only " +
                               std::to_string(count) + " CUDA devices (NCCL needs one GPU per rank)");
    }
    return d;
  }
  return rank % count;
}

NcclExchange::NcclExchange(MPI_Comm mpi_comm) {
  MPI_Comm_rank(mpi_comm, &rank_);
  MPI_Comm_size(mpi_comm, &size_);
  // NVLink multicast stays off (the environment sets NCCL_NVLS_ENABLE=0; keep it off when it does
  // not, and never override what it says). Must happen before the communicator is created.
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
  device_ = LocalDevice(rank_);
  MOE_CUDA_CHECK(cudaSetDevice(device_));
  ncclUniqueId id{};
  if (rank_ == 0) MOE_NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, 0, mpi_comm);
  MOE_NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_));
}

NcclExchange::~NcclExchange() {
  if (comm_ != nullptr) ncclCommDestroy(comm_);
}

void NcclExchange::AllToAllCounts(const int64_t* send, int64_t* recv, int64_t count, cudaStream_t stream) {
  MOE_CHECK(count >= 0);
  if (count == 0) return;
  const size_t n = static_cast<size_t>(count);
  MOE_NCCL_CHECK(ncclGroupStart());
  for (int peer = 0; peer < size_; ++peer) {
    MOE_NCCL_CHECK(ncclSend(send + peer * n, n, ncclInt64, peer, comm_, stream));
    MOE_NCCL_CHECK(ncclRecv(recv + peer * n, n, ncclInt64, peer, comm_, stream));
  }
  MOE_NCCL_CHECK(ncclGroupEnd());
}

void NcclExchange::AllToAllRows(const bf16* send, std::span<const int64_t> send_rows, bf16* recv,
                                std::span<const int64_t> recv_rows, int64_t row_width, cudaStream_t stream) {
  MOE_CHECK(static_cast<int>(send_rows.size()) == size_ && static_cast<int>(recv_rows.size()) == size_,
            "NcclExchange::AllToAllRows: ", send_rows.size(), " / ", recv_rows.size(), " counts for ", size_,
            " ranks");
  MOE_CHECK(row_width > 0);
  ++row_exchanges_;
  // The rows travel as bytes: point-to-point transfers do no arithmetic, and bytes need no bf16
  // support in the NCCL build.
  const size_t row_bytes = static_cast<size_t>(row_width) * sizeof(bf16);
  const auto* sbytes = reinterpret_cast<const char*>(send);
  auto* rbytes = reinterpret_cast<char*>(recv);
  size_t so = 0, ro = 0, self_send = 0, self_recv = 0;
  for (int peer = 0; peer < size_; ++peer) {
    MOE_CHECK(send_rows[peer] >= 0 && recv_rows[peer] >= 0);
    if (peer == rank_) {
      self_send = so;
      self_recv = ro;
    }
    so += static_cast<size_t>(send_rows[peer]) * row_bytes;
    ro += static_cast<size_t>(recv_rows[peer]) * row_bytes;
  }
  // The rank's own block: a copy on the stream, no NCCL.
  MOE_CHECK(send_rows[rank_] == recv_rows[rank_], "NcclExchange::AllToAllRows: rank ", rank_, " sends itself ",
            send_rows[rank_], " rows but expects ", recv_rows[rank_]);
  if (send_rows[rank_] > 0) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(rbytes + self_recv, sbytes + self_send,
                                   static_cast<size_t>(send_rows[rank_]) * row_bytes, cudaMemcpyDeviceToDevice,
                                   stream));
  }
  MOE_NCCL_CHECK(ncclGroupStart());
  so = ro = 0;
  for (int peer = 0; peer < size_; ++peer) {
    const size_t sb = static_cast<size_t>(send_rows[peer]) * row_bytes;
    const size_t rb = static_cast<size_t>(recv_rows[peer]) * row_bytes;
    if (peer != rank_) {
      if (sb > 0) MOE_NCCL_CHECK(ncclSend(sbytes + so, sb, ncclChar, peer, comm_, stream));
      if (rb > 0) MOE_NCCL_CHECK(ncclRecv(rbytes + ro, rb, ncclChar, peer, comm_, stream));
    }
    so += sb;
    ro += rb;
  }
  MOE_NCCL_CHECK(ncclGroupEnd());
}

}  // namespace moe::gpu
