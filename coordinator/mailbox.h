// Where a request handler receives the results of its sequences. The cluster state posts (from
// the threads reading worker streams); the handler thread takes them in batches, with a timeout
// so it can also watch for client cancellation and deadlines.
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

  // Everything posted so far, waiting up to `timeout` for at least one event (may be empty).
  std::vector<SeqEvent> Take(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !events_.empty(); });
    std::vector<SeqEvent> out(std::make_move_iterator(events_.begin()), std::make_move_iterator(events_.end()));
    events_.clear();
    return out;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<SeqEvent> events_;
};

}  // namespace moe
