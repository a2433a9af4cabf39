// An Outbox decorator that keeps heartbeats flowing while the serving loop is busy.
//
// The loop sends a Heartbeat between steps; one step of a large model on CPU ranks can take longer
// than the coordinator's heartbeat timeout, and a rank must not be declared lost for being slow.
// This forwards every message and remembers the last Heartbeat; its own thread re-sends that
// Heartbeat (the statistics as of the last step boundary) whenever none has gone out for
// `interval`, without its evicted prefix keys, which went out with it. The wrapped Outbox's Send
// must be thread-safe and must not block (CoordinatorLink's queues): it is called under this
// outbox's lock, so that a repeat never goes out after a newer Heartbeat. It has nothing to repeat
// before the loop's first Heartbeat, which the loop therefore sends before its first step.
//
// Slow is not stuck: once the loop has sent no Heartbeat of its own for `step_timeout` (an
// iteration that never ends, e.g. every rank waiting in a collective that a peer cut off by a
// network fault never joins, while the processes live on), the repeats stop, so the coordinator's
// heartbeat timeout counts the rank lost and the launcher can replace the job; a Heartbeat from the
// loop starts them again. Zero: repeat for ever.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "worker/server/outbox.h"

namespace moe {

class KeepAliveOutbox final : public Outbox {
 public:
  // `log_name` starts the line written to stderr when the repeats stop ("moe-worker [rank 1]").
  KeepAliveOutbox(Outbox& inner, std::chrono::milliseconds interval,
                  std::chrono::milliseconds step_timeout = std::chrono::milliseconds(0), std::string log_name = "");
  ~KeepAliveOutbox() override;  // stops the thread
  KeepAliveOutbox(const KeepAliveOutbox&) = delete;
  KeepAliveOutbox& operator=(const KeepAliveOutbox&) = delete;

  void Send(moe::v1::WorkerMessage msg) override;

 private:
  void Run();

  Outbox& inner_;
  const std::chrono::milliseconds interval_;
  const std::chrono::milliseconds step_timeout_;
  const std::string log_name_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<moe::v1::WorkerMessage> last_heartbeat_;
  std::chrono::steady_clock::time_point last_sent_;  // any heartbeat, the loop's or a repeat
  std::chrono::steady_clock::time_point last_from_loop_;
  bool gave_up_ = false;  // repeats stopped at step_timeout_ (said once until the loop is heard again)
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace moe
