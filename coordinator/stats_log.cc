#include "coordinator/stats_log.h"

#include <cinttypes>
#include <cstdio>

namespace moe {
namespace {

// How much a counter grew over the interval. The ranks' counters start again from zero when a new
// worker job replaces a lost one: then all of `now` is new.
template <typename T>
T Growth(T now, T before) {
  return now >= before ? now - before : now;
}

}  // namespace

std::optional<std::string> StatsLog::Tick(const StatsCounters& now_counters, Clock::time_point now) {
  const StatsCounters before = last_;
  const double seconds = std::chrono::duration<double>(now - last_time_).count();
  last_ = now_counters;
  last_time_ = now;
  const uint64_t prompt = now_counters.prompt_tokens - before.prompt_tokens;
  const uint64_t generated = now_counters.generation_tokens - before.generation_tokens;
  const bool active = prompt > 0 || generated > 0 || now_counters.running > 0 || now_counters.waiting > 0;
  const bool log = active || last_logged_;
  last_logged_ = active;
  if (!log || seconds <= 0) return std::nullopt;

  char line[512];
  int n = std::snprintf(line, sizeof(line),
                        "avg prompt throughput %.1f tokens/s, avg generation throughput %.1f tokens/s, "
                        "running %" PRId64 " reqs, waiting %" PRId64 " reqs, KV cache usage %.1f%%",
                        static_cast<double>(prompt) / seconds, static_cast<double>(generated) / seconds,
                        now_counters.running, now_counters.waiting, 100.0 * now_counters.kv_cache_usage);
  std::string out(line, static_cast<size_t>(n));
  const int64_t queried = Growth(now_counters.prefix_queried_tokens, before.prefix_queried_tokens);
  if (queried > 0) {  // only when prompts were looked up in this interval: a rate over nothing says nothing
    const int64_t hits = Growth(now_counters.prefix_hit_tokens, before.prefix_hit_tokens);
    n = std::snprintf(line, sizeof(line), ", prefix cache hit rate %.1f%%",
                      100.0 * static_cast<double>(hits) / static_cast<double>(queried));
    out.append(line, static_cast<size_t>(n));
  }
  const uint64_t preempted = Growth(now_counters.preemptions, before.preemptions);
  if (preempted > 0) {
    n = std::snprintf(line, sizeof(line), ", %" PRIu64 " preempted for KV room", preempted);
    out.append(line, static_cast<size_t>(n));
  }
  return out;
}

}  // namespace moe
