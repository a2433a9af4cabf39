// Where the serving loop's messages to the coordinator go. The gRPC link queues them for its writer
// thread; tests collect them.
#pragma once

#include "moe/v1/cluster.pb.h"

namespace moe {

class Outbox {
 public:
  virtual ~Outbox() = default;
  // Must not block on the network for long: the loop calls it between collective steps.
  virtual void Send(moe::v1::WorkerMessage msg) = 0;
};

}  // namespace moe
