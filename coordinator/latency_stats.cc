#include "coordinator/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moe {

double Quantile(std::span<const double> sorted, double q) {
  if (sorted.empty()) return 0;
  const double pos = std::clamp(q, 0.0, 1.0) * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

LatencyWindow::LatencyWindow(size_t capacity) : capacity_(std::max<size_t>(capacity, 1)) {
  ring_.reserve(capacity_);
}

void LatencyWindow::Add(double seconds) {
  ++count_;
  if (ring_.size() < capacity_) {
    ring_.push_back(seconds);
    return;
  }
  ring_[next_] = seconds;
  next_ = (next_ + 1) % capacity_;
}

LatencySummaryValues LatencyWindow::Summary() const {
  LatencySummaryValues s;
  s.count = count_;
  if (ring_.empty()) return s;
  std::vector<double> sorted = ring_;
  std::sort(sorted.begin(), sorted.end());
  s.p50 = Quantile(sorted, 0.50);
  s.p90 = Quantile(sorted, 0.90);
  s.p99 = Quantile(sorted, 0.99);
  s.mean = std::accumulate(sorted.begin(), sorted.end(), 0.0) / static_cast<double>(sorted.size());
  return s;
}

RateWindow::RateWindow(std::chrono::duration<double> window, Clock::time_point start)
    : window_(window), start_(start) {}

void RateWindow::Add(Clock::time_point t, int64_t n) {
  events_.emplace_back(t, n);
  sum_ += n;
  Expire(t);
}

void RateWindow::Expire(Clock::time_point now) {
  while (!events_.empty() && events_.front().first <= now - std::chrono::duration_cast<Clock::duration>(window_)) {
    sum_ -= events_.front().second;
    events_.pop_front();
  }
}

double RateWindow::PerSecond(Clock::time_point now) {
  Expire(now);
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double span = std::min(window_.count(), elapsed);
  if (span <= 0) return 0;
  return static_cast<double>(sum_) / span;
}

}  // namespace moe
