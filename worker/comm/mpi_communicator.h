// The Communicator over MPI, for CPU ranks (and the control messages of GPU ranks).
#pragma once

#include <mpi.h>

#include "worker/comm/communicator.h"

namespace moe {

class MpiCommunicator final : public Communicator {
 public:
  // Uses (does not own) `comm`; MPI must be initialised.
  explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void AllToAll(std::span<const int64_t> send, std::span<int64_t> recv, int64_t count) override;
  void AllToAllRows(const float* send, std::span<const int64_t> send_rows, float* recv,
                    std::span<const int64_t> recv_rows, int64_t row_width) override;
  void AllReduceSum(std::span<int64_t> values) override;
  void AllReduceMax(std::span<int64_t> values) override;
  void Broadcast(std::string& bytes, int root) override;
  std::vector<std::string> Gather(const std::string& bytes, int root) override;
  void Barrier() override;

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

}  // namespace moe
