#include "worker/server/keep_alive_outbox.h"

#include <cstdio>
#include <utility>

namespace moe {

KeepAliveOutbox::KeepAliveOutbox(Outbox& inner, std::chrono::milliseconds interval,
                                 std::chrono::milliseconds step_timeout, std::string log_name)
    : inner_(inner),
      interval_(interval),
      step_timeout_(step_timeout),
      log_name_(std::move(log_name)),
      last_sent_(std::chrono::steady_clock::now()),
      last_from_loop_(last_sent_) {
  thread_ = std::thread(&KeepAliveOutbox::Run, this);
}

KeepAliveOutbox::~KeepAliveOutbox() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void KeepAliveOutbox::Send(moe::v1::WorkerMessage msg) {
  // Forwarded under the lock, as the repeats are: a repeat copied before this heartbeat cannot
  // then go out after it (the inner Send only queues).
  std::lock_guard<std::mutex> lock(mu_);
  if (msg.has_heartbeat()) {
    last_heartbeat_ = msg;
    // The evicted prefix keys went out with the heartbeat itself; a repeat that carried them again
    // could make the coordinator forget a prefix it has placed on this rank since.
    last_heartbeat_->mutable_heartbeat()->clear_evicted_prefix_keys();
    last_sent_ = last_from_loop_ = std::chrono::steady_clock::now();
    gave_up_ = false;
  }
  inner_.Send(std::move(msg));
}

void KeepAliveOutbox::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    const auto due = last_sent_ + interval_;
    if (std::chrono::steady_clock::now() < due) {
      cv_.wait_until(lock, due);
      continue;
    }
    if (!last_heartbeat_) {  // nothing to repeat before the loop's first heartbeat
      cv_.wait_for(lock, interval_);
      continue;
    }
    if (step_timeout_.count() > 0 && std::chrono::steady_clock::now() - last_from_loop_ >= step_timeout_) {
      if (!gave_up_) {
        gave_up_ = true;
        std::fprintf(stderr,
                     "%s: the serving loop has sent no heartbeat for %lld s (--step-timeout-s): the repeats stop, so "
                     "the coordinator counts this rank lost\n",
                     log_name_.empty() ? "moe-worker" : log_name_.c_str(),
                     static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(step_timeout_).count()));
      }
      cv_.wait_for(lock, interval_);
      continue;
    }
    inner_.Send(*last_heartbeat_);
    // Timed from when the send returned: the next repeat is an interval away, so the wait above
    // lets the loop's own sends in even should a send take longer than the interval.
    last_sent_ = std::chrono::steady_clock::now();
  }
}

}  // namespace moe
