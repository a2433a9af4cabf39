#include "worker/server/inbox.h"

#include <utility>

namespace moe {

void Inbox::Push(moe::v1::CoordinatorMessage msg) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (msg.kind_case() == moe::v1::CoordinatorMessage::kShutdown) shutdown_received_ = true;
    queue_.push_back(std::move(msg));
  }
  cv_.notify_all();
}

void Inbox::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

std::vector<moe::v1::CoordinatorMessage> Inbox::Drain() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<moe::v1::CoordinatorMessage> out(std::make_move_iterator(queue_.begin()),
                                               std::make_move_iterator(queue_.end()));
  queue_.clear();
  return out;
}

bool Inbox::WaitFor(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [this] { return !queue_.empty() || closed_; });
}

bool Inbox::shutdown_received() const {
  std::lock_guard<std::mutex> lock(mu_);
  return shutdown_received_;
}

bool Inbox::closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

}  // namespace moe
