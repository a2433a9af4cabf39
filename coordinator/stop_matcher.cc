#include "coordinator/stop_matcher.h"

#include <algorithm>
#include <utility>

namespace moe {

StopMatcher::StopMatcher(std::vector<std::string> stops, bool include_stop) : include_stop_(include_stop) {
  for (std::string& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

size_t StopMatcher::HeldBackLength() const {
  size_t longest = 0;
  for (const std::string& stop : stops_) {
    // Candidates are suffixes shorter than the stop string (a full match is found by Push).
    const size_t max_len = std::min(pending_.size(), stop.size() - 1);
    for (size_t len = max_len; len > longest; --len) {
      if (std::string_view(pending_).substr(pending_.size() - len) == std::string_view(stop).substr(0, len)) {
        longest = len;
        break;
      }
    }
  }
  return longest;
}

StopMatcher::Output StopMatcher::Push(std::string_view delta, bool may_stop) {
  Output out;
  if (stopped_) {
    out.stopped = true;
    return out;
  }
  pending_.append(delta);
  if (!may_stop) {
    no_stop_end_ = pending_.size();
  } else {
    // The earliest stop string wins (the first listed of those starting there): text before it is
    // all the client should see, or with include_stop up to its end. A match ends past no_stop_end_.
    size_t first = std::string::npos;
    for (const std::string& stop : stops_) {
      const size_t from = no_stop_end_ >= stop.size() ? no_stop_end_ - stop.size() + 1 : 0;
      const size_t at = pending_.find(stop, from);
      if (at < first) {
        first = at;
        matched_ = stop;
      }
    }
    if (first != std::string::npos) {
      out.text = pending_.substr(0, include_stop_ ? first + matched_.size() : first);
      out.stopped = stopped_ = true;
      pending_.clear();
      return out;
    }
  }
  const size_t release = pending_.size() - HeldBackLength();
  out.text = pending_.substr(0, release);
  pending_.erase(0, release);
  no_stop_end_ -= std::min(no_stop_end_, release);
  return out;
}

std::string StopMatcher::Flush() {
  if (stopped_) return {};
  return std::exchange(pending_, {});
}

}  // namespace moe
