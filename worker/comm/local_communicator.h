// The single-process communicator: every collective is a copy (or nothing).
#pragma once

#include "worker/comm/communicator.h"

namespace moe {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void AllToAll(std::span<const int64_t> send, std::span<int64_t> recv, int64_t count) override;
  void AllToAllRows(const float* send, std::span<const int64_t> send_rows, float* recv,
                    std::span<const int64_t> recv_rows, int64_t row_width) override;
  void AllReduceSum(std::span<int64_t>) override {}
  void AllReduceMax(std::span<int64_t>) override {}
  void Broadcast(std::string&, int) override {}
  std::vector<std::string> Gather(const std::string& bytes, int) override { return {bytes}; }
  void Barrier() override {}
};

}  // namespace moe
