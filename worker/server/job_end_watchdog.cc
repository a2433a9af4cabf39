#include "worker/server/job_end_watchdog.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/server/load_watch.h"

namespace moe {

JobEndWatchdog::JobEndWatchdog(std::shared_ptr<const Inbox> inbox, std::chrono::milliseconds grace,
                               std::function<void(const std::string&)> leave)
    : inbox_(std::move(inbox)), grace_(grace), leave_(std::move(leave)) {
  if (grace_.count() > 0) thread_ = std::thread([this] { Watch(); });
}

JobEndWatchdog::~JobEndWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void JobEndWatchdog::Watch() {
  using Clock = std::chrono::steady_clock;
  std::optional<Clock::time_point> ended_at;
  JobEnd how = JobEnd::kNotEnded;
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, kPollInterval, [this] { return stopping_; })) {
    if (!ended_at) {
      how = JobEndIn(*inbox_);
      if (how != JobEnd::kNotEnded) ended_at = Clock::now();
      continue;
    }
    if (Clock::now() - *ended_at < grace_) continue;
    const double grace_s = std::chrono::duration<double>(grace_).count();
    leave_(absl::StrCat("its job ended ", grace_s, " s ago (",
                        how == JobEnd::kShutdown ? "the coordinator sent Shutdown" : "its Serve stream to the coordinator closed",
                        ") and this rank has not left: a rank that hangs holds it in a collective, or its exit is slow"));
    return;
  }
}

}  // namespace moe
