// The coordinator's outgoing half of one rank's Serve stream: messages are queued by any thread
// (request handlers, the cluster state) and written by the stream's own writer thread, so a slow
// or stuck worker never blocks the caller, and gRPC's one-writer-at-a-time rule holds.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

#include "moe/v1/cluster.pb.h"

namespace moe {

class WorkerLink {
 public:
  // Queues `m`; dropped once the link is closed.
  void Send(v1::CoordinatorMessage m) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return;
      queue_.push_back(std::move(m));
    }
    cv_.notify_one();
  }

  // The next message to write, waiting for one; nullopt once the link is closed.
  std::optional<v1::CoordinatorMessage> Next() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return closed_ || !queue_.empty(); });
    if (closed_) return std::nullopt;
    v1::CoordinatorMessage m = std::move(queue_.front());
    queue_.pop_front();
    return m;
  }

  // Ends the link: Next() returns nullopt, later Sends are dropped.
  void Close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      queue_.clear();
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::CoordinatorMessage> queue_;
  bool closed_ = false;
};

}  // namespace moe
