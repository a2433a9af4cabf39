// StatsLog: the coordinator's periodic stats line, its rates against counts and times the test
// chooses, and when it stays quiet.
#include "coordinator/stats_log.h"

#include <gtest/gtest.h>

namespace moe {
namespace {

using Clock = StatsLog::Clock;
using std::chrono::milliseconds;

TEST(StatsLogTest, RatesAreTheIntervalsGrowthOverItsLength) {
  const Clock::time_point t0 = Clock::now();
  StatsLog log(StatsCounters{}, t0);
  StatsCounters c;
  c.prompt_tokens = 1000;
  c.generation_tokens = 250;
  c.running = 3;
  c.waiting = 1;
  c.kv_cache_usage = 0.125;
  c.prefix_queried_tokens = 800;
  c.prefix_hit_tokens = 200;
  c.preemptions = 2;
  const std::optional<std::string> line = log.Tick(c, t0 + milliseconds(2000));
  ASSERT_TRUE(line);
  EXPECT_EQ(*line,
            "avg prompt throughput 500.0 tokens/s, avg generation throughput 125.0 tokens/s, running 3 reqs, "
            "waiting 1 reqs, KV cache usage 12.5%, prefix cache hit rate 25.0%, 2 preempted for KV room");

  // The next interval counts from the last tick: 100 more tokens in 0.5 s, nothing looked up or
  // preempted (those parts are left out).
  c.generation_tokens += 100;
  c.waiting = 0;
  const std::optional<std::string> next = log.Tick(c, t0 + milliseconds(2500));
  ASSERT_TRUE(next);
  EXPECT_EQ(*next,
            "avg prompt throughput 0.0 tokens/s, avg generation throughput 200.0 tokens/s, running 3 reqs, "
            "waiting 0 reqs, KV cache usage 12.5%");
}

TEST(StatsLogTest, QuietWhileIdleAfterOneLineOfZeros) {
  const Clock::time_point t0 = Clock::now();
  StatsLog log(StatsCounters{}, t0);
  StatsCounters c;
  EXPECT_FALSE(log.Tick(c, t0 + milliseconds(1000))) << "idle from the start: nothing";
  c.waiting = 1;  // a request queued, no token yet: a line
  EXPECT_TRUE(log.Tick(c, t0 + milliseconds(2000)));
  c.waiting = 0;
  c.running = 1;
  c.generation_tokens = 10;
  EXPECT_TRUE(log.Tick(c, t0 + milliseconds(3000)));
  c.running = 0;  // finished: one more line, of zeros, then quiet
  const std::optional<std::string> last = log.Tick(c, t0 + milliseconds(4000));
  ASSERT_TRUE(last);
  EXPECT_NE(last->find("avg generation throughput 0.0 tokens/s, running 0 reqs, waiting 0 reqs"), std::string::npos)
      << *last;
  EXPECT_FALSE(log.Tick(c, t0 + milliseconds(5000)));
  EXPECT_FALSE(log.Tick(c, t0 + milliseconds(6000)));
}

TEST(StatsLogTest, RankCountersThatStartAgainCountFromZero) {
  // A new worker job after a lost rank reports its prefix and preemption counters from zero.
  const Clock::time_point t0 = Clock::now();
  StatsCounters before;
  before.prefix_queried_tokens = 5000;
  before.prefix_hit_tokens = 4000;
  before.preemptions = 7;
  StatsLog log(before, t0);
  StatsCounters after;
  after.running = 1;
  after.prefix_queried_tokens = 100;
  after.prefix_hit_tokens = 50;
  after.preemptions = 1;
  const std::optional<std::string> line = log.Tick(after, t0 + milliseconds(1000));
  ASSERT_TRUE(line);
  EXPECT_NE(line->find("prefix cache hit rate 50.0%, 1 preempted for KV room"), std::string::npos) << *line;
}

}  // namespace
}  // namespace moe
