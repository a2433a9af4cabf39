// Latency percentiles over a bounded window of recent samples, and a throughput rate over the
// last few seconds. Pure bookkeeping; callers serialise access and pass the time in, so tests
// control the clock.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <span>
#include <vector>

namespace moe {

struct LatencySummaryValues {
  uint64_t count = 0;  // samples observed since start (the window keeps the latest `capacity`)
  double p50 = 0, p90 = 0, p99 = 0, mean = 0;  // over the window; 0 when there are no samples
};

// The q-quantile (0 <= q <= 1) of ascending `sorted` with linear interpolation between closest
// ranks (numpy.percentile's default): position q * (n - 1). Empty input: 0.
double Quantile(std::span<const double> sorted, double q);

class LatencyWindow {
 public:
  explicit LatencyWindow(size_t capacity = 4096);
  void Add(double seconds);
  LatencySummaryValues Summary() const;

 private:
  size_t capacity_;
  std::vector<double> ring_;  // the latest min(count, capacity) samples
  size_t next_ = 0;           // where the next sample goes once the ring is full
  uint64_t count_ = 0;
};

// Events per second over the last `window` (for example generated tokens). Events older than the
// window are dropped as new ones come, not only when the rate is read: the coordinator adds one per
// streamed token message and reads the rate only for GetStats, which a deployment may never call.
class RateWindow {
 public:
  using Clock = std::chrono::steady_clock;
  RateWindow(std::chrono::duration<double> window, Clock::time_point start);
  void Add(Clock::time_point t, int64_t n);
  // Sum of events in (now - window, now], divided by the window, or by the time since `start`
  // while less than a window has passed, so the rate is not understated just after start.
  double PerSecond(Clock::time_point now);
  // Events kept: those of the last window (as of the latest Add or PerSecond).
  size_t held() const { return events_.size(); }

 private:
  void Expire(Clock::time_point now);

  std::chrono::duration<double> window_;
  Clock::time_point start_;
  std::deque<std::pair<Clock::time_point, int64_t>> events_;
  int64_t sum_ = 0;
};

}  // namespace moe
