// An Outbox decorator that keeps heartbeats flowing while the serving loop is busy.
//
// The loop sends a Heartbeat between steps; one step of a large model on CPU ranks can take longer
// than the coordinator's heartbeat timeout, and a rank must not be declared lost for being slow.
// This forwards every message and remembers the last Heartbeat; its own thread re-sends that
// Heartbeat (the statistics as of the last step boundary) whenever none has gone out for
// `interval`. The wrapped Outbox's Send must be thread-safe (CoordinatorLink's is).
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "worker/server/outbox.h"

namespace moe {

class KeepAliveOutbox final : public Outbox {
 public:
  KeepAliveOutbox(Outbox& inner, std::chrono::milliseconds interval);
  ~KeepAliveOutbox() override;  // stops the thread
  KeepAliveOutbox(const KeepAliveOutbox&) = delete;
  KeepAliveOutbox& operator=(const KeepAliveOutbox&) = delete;

  void Send(moe::v1::WorkerMessage msg) override;

 private:
  void Run();

  Outbox& inner_;
  const std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<moe::v1::WorkerMessage> last_heartbeat_;
  std::chrono::steady_clock::time_point last_sent_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace moe
