#include "coordinator/cancel_watch.h"

namespace moe {

CancelWatch::CancelWatch(std::chrono::milliseconds period) : period_(period), thread_([this] { Run(); }) {}

CancelWatch::~CancelWatch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

CancelWatch::Registration::Registration(CancelWatch& watch, const grpc::ServerContext* context,
                                        std::shared_ptr<Mailbox> mailbox)
    : watch_(watch) {
  std::lock_guard<std::mutex> lock(watch_.mu_);
  id_ = watch_.next_id_++;
  watch_.entries_.emplace(id_, Entry{context, std::move(mailbox)});
}

CancelWatch::Registration::~Registration() {
  std::lock_guard<std::mutex> lock(watch_.mu_);
  watch_.entries_.erase(id_);  // after this the watcher no longer touches the call's context
}

void CancelWatch::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, period_, [&] { return stopping_; })) {
    // Under the lock: a registration ends (and its call with it) only between passes.
    for (const auto& [id, e] : entries_) {
      if (e.context->IsCancelled()) e.mailbox->Interrupt();
    }
  }
}

}  // namespace moe
