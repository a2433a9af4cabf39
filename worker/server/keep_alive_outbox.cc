#include "worker/server/keep_alive_outbox.h"

namespace moe {

KeepAliveOutbox::KeepAliveOutbox(Outbox& inner, std::chrono::milliseconds interval)
    : inner_(inner), interval_(interval), last_sent_(std::chrono::steady_clock::now()) {
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (msg.has_heartbeat()) {
      last_heartbeat_ = msg;
      last_sent_ = std::chrono::steady_clock::now();
    }
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
    moe::v1::WorkerMessage copy = *last_heartbeat_;
    last_sent_ = std::chrono::steady_clock::now();
    lock.unlock();
    inner_.Send(std::move(copy));
    lock.lock();
  }
}

}  // namespace moe
