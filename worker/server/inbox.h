// The worker's inbox: messages from the coordinator, pushed by the stream's reader thread and taken
// by the serving loop at step boundaries. Thread-safe; the loop never blocks on the network.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <vector>

#include "moe/v1/cluster.pb.h"

namespace moe {

class Inbox {
 public:
  void Push(moe::v1::CoordinatorMessage msg);
  // The coordinator stream ended (closed, broken or cancelled): no more messages will come.
  // Messages pushed before stay readable.
  void Close();

  // Everything queued so far, in arrival order.
  std::vector<moe::v1::CoordinatorMessage> Drain();
  // Waits until a message is queued, the inbox is closed, or `timeout` passes. Returns whether a
  // message or the close is there to be seen.
  bool WaitFor(std::chrono::milliseconds timeout);
  bool closed() const;
  // Whether a Shutdown has been pushed: it stays true once the serving loop has taken the message,
  // so that a watcher of the job's end (load_watch.h, job_end_watchdog.h) sees it either way.
  bool shutdown_received() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<moe::v1::CoordinatorMessage> queue_;
  bool closed_ = false;
  bool shutdown_received_ = false;
};

}  // namespace moe
