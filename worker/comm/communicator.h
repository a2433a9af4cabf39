// The collective operations the expert-parallel forward needs, behind one narrow interface.
//
// Every rank of a job calls the same collectives in the same order (lock step). A rank with no
// rows still takes part with zero counts, so callers never special-case idle ranks.
// Implementations: LocalCommunicator (one process), MpiCommunicator (CPU ranks), and the NCCL
// backend of the GPU build.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace moe {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Fixed-size all-to-all: rank r sends send[d*count .. (d+1)*count) to rank d, and receives
  // rank s's block into recv[s*count .. (s+1)*count). Used for the per-destination counts.
  virtual void AllToAll(std::span<const int64_t> send, std::span<int64_t> recv, int64_t count) = 0;

  // Variable-size all-to-all of float rows, `row_width` floats each. send holds the rows for
  // rank 0, then rank 1, ...; send_rows[d] of them for rank d. recv receives recv_rows[s] rows from
  // each rank s, in rank order. Used for MoE dispatch and, with the counts swapped, combine.
  virtual void AllToAllRows(const float* send, std::span<const int64_t> send_rows, float* recv,
                            std::span<const int64_t> recv_rows, int64_t row_width) = 0;

  // Element-wise sum / max over ranks, in place.
  virtual void AllReduceSum(std::span<int64_t> values) = 0;
  virtual void AllReduceMax(std::span<int64_t> values) = 0;

  // `bytes` of rank `root` replace every other rank's.
  virtual void Broadcast(std::string& bytes, int root) = 0;

  // Every rank's `bytes`, in rank order, on `root` (other ranks get an empty vector).
  virtual std::vector<std::string> Gather(const std::string& bytes, int root) = 0;

  virtual void Barrier() = 0;
};

}  // namespace moe
