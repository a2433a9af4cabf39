// The coordinator's periodic stats line on stderr, as vLLM's server logs one every few seconds
// ("Avg prompt throughput ..., Running: N reqs, ..."): what an operator watching the log expects to
// see without scraping /metrics. Pure logic: the caller samples the counters and prints the line.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace moe {

// What the line is made from, sampled at one moment. Totals count since the coordinator started.
struct StatsCounters {
  uint64_t prompt_tokens = 0;       // prompt tokens admitted
  uint64_t generation_tokens = 0;   // tokens streamed to clients
  int64_t running = 0;              // sequences on the ranks
  int64_t waiting = 0;              // sequences queued in the coordinator
  double kv_cache_usage = 0;        // 0..1, over all ranks
  int64_t prefix_queried_tokens = 0;  // prompt tokens the ranks looked up in their prefix caches
  int64_t prefix_hit_tokens = 0;      // ... and found
  uint64_t preemptions = 0;         // sequences the ranks preempted for KV room
};

class StatsLog {
 public:
  using Clock = std::chrono::steady_clock;
  StatsLog(const StatsCounters& start, Clock::time_point now) : last_(start), last_time_(now) {}

  // The line for the interval since the previous call (rates over it; the queue and KV use as of
  // `now`), or nothing while the cluster is idle: a line is written while tokens flow or requests
  // run or wait, and once more when it has gone idle, so the log ends on the zeros.
  std::optional<std::string> Tick(const StatsCounters& now_counters, Clock::time_point now);

 private:
  StatsCounters last_;
  Clock::time_point last_time_;
  bool last_logged_ = false;
};

}  // namespace moe
