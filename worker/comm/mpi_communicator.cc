#include "worker/comm/mpi_communicator.h"

#include <climits>
#include <vector>

#include "common/status.h"

namespace moe {

MpiCommunicator::MpiCommunicator(MPI_Comm comm) : comm_(comm) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

void MpiCommunicator::AllToAll(std::span<const int64_t> send, std::span<int64_t> recv, int64_t count) {
  MOE_CHECK(static_cast<int64_t>(send.size()) == count * size_ && static_cast<int64_t>(recv.size()) == count * size_);
  MOE_CHECK(count <= INT_MAX);
  MPI_Alltoall(send.data(), static_cast<int>(count), MPI_INT64_T, recv.data(), static_cast<int>(count),
               MPI_INT64_T, comm_);
}

void MpiCommunicator::AllToAllRows(const float* send, std::span<const int64_t> send_rows, float* recv,
                                   std::span<const int64_t> recv_rows, int64_t row_width) {
  MOE_CHECK(static_cast<int>(send_rows.size()) == size_ && static_cast<int>(recv_rows.size()) == size_);
  // Counts travel in rows of one contiguous datatype, so they stay far below INT_MAX.
  MOE_CHECK(row_width > 0 && row_width <= INT_MAX);
  MPI_Datatype row;
  MPI_Type_contiguous(static_cast<int>(row_width), MPI_FLOAT, &row);
  MPI_Type_commit(&row);
  std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
  int64_t so = 0, ro = 0;
  for (int r = 0; r < size_; ++r) {
    MOE_CHECK(so <= INT_MAX && ro <= INT_MAX && send_rows[r] <= INT_MAX && recv_rows[r] <= INT_MAX);
    sc[r] = static_cast<int>(send_rows[r]);
    sd[r] = static_cast<int>(so);
    rc[r] = static_cast<int>(recv_rows[r]);
    rd[r] = static_cast<int>(ro);
    so += send_rows[r];
    ro += recv_rows[r];
  }
  MPI_Alltoallv(send, sc.data(), sd.data(), row, recv, rc.data(), rd.data(), row, comm_);
  MPI_Type_free(&row);
}

void MpiCommunicator::AllReduceSum(std::span<int64_t> values) {
  MOE_CHECK(values.size() <= INT_MAX);
  MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_INT64_T, MPI_SUM, comm_);
}

void MpiCommunicator::AllReduceMax(std::span<int64_t> values) {
  MOE_CHECK(values.size() <= INT_MAX);
  MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_INT64_T, MPI_MAX, comm_);
}

void MpiCommunicator::Broadcast(std::string& bytes, int root) {
  int64_t n = static_cast<int64_t>(bytes.size());
  MPI_Bcast(&n, 1, MPI_INT64_T, root, comm_);
  MOE_CHECK(n <= INT_MAX);
  bytes.resize(static_cast<size_t>(n));
  MPI_Bcast(bytes.data(), static_cast<int>(n), MPI_CHAR, root, comm_);
}

std::vector<std::string> MpiCommunicator::Gather(const std::string& bytes, int root) {
  MOE_CHECK(bytes.size() <= INT_MAX);
  int n = static_cast<int>(bytes.size());
  std::vector<int> sizes(rank_ == root ? size_ : 0), displs(sizes.size());
  MPI_Gather(&n, 1, MPI_INT, sizes.data(), 1, MPI_INT, root, comm_);
  std::string all;
  if (rank_ == root) {
    int64_t total = 0;
    for (int r = 0; r < size_; ++r) {
      displs[r] = static_cast<int>(total);
      total += sizes[r];
    }
    MOE_CHECK(total <= INT_MAX);
    all.resize(static_cast<size_t>(total));
  }
  MPI_Gatherv(bytes.data(), n, MPI_CHAR, all.data(), sizes.data(), displs.data(), MPI_CHAR, root, comm_);
  std::vector<std::string> out;
  for (size_t r = 0; r < sizes.size(); ++r) out.push_back(all.substr(displs[r], sizes[r]));
  return out;
}

void MpiCommunicator::Barrier() { MPI_Barrier(comm_); }

}  // namespace moe
