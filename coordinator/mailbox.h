// Where a request handler receives the results of its sequences. The cluster state posts (from
// the threads reading worker streams); the handler thread takes them in batches. Client
// cancellation and deadlines wake it too (Interrupt, from the service's CancelWatch): a handler
// that waits sleeps until something happens, never on a timer of its own (a thousand queued
// requests polling every 20 ms each took both cores of a small host from the workers beside it).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

#include "common/status.h"
#include "moe/v1/cluster.pb.h"

namespace moe {

struct SeqEvent {
  uint64_t seq_id = 0;
  v1::WorkerMessage message;  // tokens, scored or finished (when failure is OK)
  absl::Status failure;       // not OK: the sequence is gone (a rank was lost, shutdown)
  // When it was posted (the worker's message read): its request's phase times count to here, not
  // to when a handler busy writing to a slow client takes it.
  std::chrono::steady_clock::time_point posted{};
};

class Mailbox {
 public:
  void Post(SeqEvent e) {
    e.posted = std::chrono::steady_clock::now();
    {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(std::move(e));
    }
    cv_.notify_one();
  }

  // Wakes the handler waiting in Take (or its next Take) even without an event.
  void Interrupt() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      interrupted_ = true;
    }
    cv_.notify_one();
  }

  // Everything posted so far, waiting for at least one event or an Interrupt (then it may be
  // empty).
  std::vector<SeqEvent> Take() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !events_.empty() || interrupted_; });
    interrupted_ = false;
    std::vector<SeqEvent> out(std::make_move_iterator(events_.begin()), std::make_move_iterator(events_.end()));
    events_.clear();
    return out;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<SeqEvent> events_;
  bool interrupted_ = false;
};

}  // namespace moe
