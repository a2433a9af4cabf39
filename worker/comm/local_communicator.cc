#include "worker/comm/local_communicator.h"

#include <algorithm>

#include "common/status.h"

namespace moe {

void LocalCommunicator::AllToAll(std::span<const int64_t> send, std::span<int64_t> recv, int64_t count) {
  MOE_CHECK(static_cast<int64_t>(send.size()) == count && static_cast<int64_t>(recv.size()) == count);
  std::copy(send.begin(), send.end(), recv.begin());
}

void LocalCommunicator::AllToAllRows(const float* send, std::span<const int64_t> send_rows, float* recv,
                                     std::span<const int64_t> recv_rows, int64_t row_width) {
  MOE_CHECK(send_rows.size() == 1 && recv_rows.size() == 1 && send_rows[0] == recv_rows[0]);
  std::copy(send, send + send_rows[0] * row_width, recv);
}

}  // namespace moe
