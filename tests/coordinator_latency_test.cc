// Latency percentile and throughput bookkeeping. Percentile references are numpy's defaults:
// numpy.percentile(range(1, 101), [50, 90, 99]) == [50.5, 90.1, 99.01].
#include "coordinator/latency_stats.h"

#include <gtest/gtest.h>

#include <numeric>

namespace moe {
namespace {

TEST(LatencyStatsTest, QuantilesMatchNumpyLinearInterpolation) {
  std::vector<double> v(100);
  std::iota(v.begin(), v.end(), 1.0);
  EXPECT_DOUBLE_EQ(Quantile(v, 0.50), 50.5);
  EXPECT_DOUBLE_EQ(Quantile(v, 0.90), 90.1);
  EXPECT_NEAR(Quantile(v, 0.99), 99.01, 1e-12);
  EXPECT_DOUBLE_EQ(Quantile(v, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(Quantile(v, 1.0), 100.0);
  EXPECT_DOUBLE_EQ(Quantile(std::vector<double>{3.0}, 0.9), 3.0);
  EXPECT_DOUBLE_EQ(Quantile(std::vector<double>{}, 0.5), 0.0);
}

TEST(LatencyStatsTest, WindowSummarisesSamplesInAnyOrder) {
  LatencyWindow w(1000);
  for (int i = 100; i >= 1; --i) w.Add(i / 1000.0);  // 1 ms .. 100 ms, descending
  const LatencySummaryValues s = w.Summary();
  EXPECT_EQ(s.count, 100u);
  EXPECT_NEAR(s.p50, 0.0505, 1e-12);
  EXPECT_NEAR(s.p90, 0.0901, 1e-12);
  EXPECT_NEAR(s.p99, 0.09901, 1e-12);
  EXPECT_NEAR(s.mean, 0.0505, 1e-12);
}

TEST(LatencyStatsTest, WindowIsBoundedToTheLatestSamples) {
  LatencyWindow w(10);
  for (int i = 1; i <= 100; ++i) w.Add(i);
  const LatencySummaryValues s = w.Summary();
  EXPECT_EQ(s.count, 100u);       // everything observed
  EXPECT_DOUBLE_EQ(s.p50, 95.5);  // of 91..100
  EXPECT_DOUBLE_EQ(s.mean, 95.5);
  EXPECT_DOUBLE_EQ(s.p99, 91 + 0.99 * 9);
}

TEST(LatencyStatsTest, EmptyWindowIsAllZero) {
  const LatencySummaryValues s = LatencyWindow(8).Summary();
  EXPECT_EQ(s.count, 0u);
  EXPECT_EQ(s.p50, 0.0);
  EXPECT_EQ(s.mean, 0.0);
}

TEST(LatencyStatsTest, RateCountsOnlyTheLastWindow) {
  using std::chrono::milliseconds;
  const RateWindow::Clock::time_point t0{};
  RateWindow r(std::chrono::seconds(10), t0);
  r.Add(t0 + milliseconds(1000), 50);
  r.Add(t0 + milliseconds(2000), 50);
  // Less than a window since start: divided by the 2 s elapsed.
  EXPECT_DOUBLE_EQ(r.PerSecond(t0 + milliseconds(2000)), 50.0);
  // At 11.5 s the first batch (at 1 s) has left the window (1.5 s .. 11.5 s).
  EXPECT_DOUBLE_EQ(r.PerSecond(t0 + milliseconds(11500)), 5.0);
  EXPECT_DOUBLE_EQ(r.PerSecond(t0 + milliseconds(30000)), 0.0);
}

// Adding drops what left the window, read or not: the coordinator adds an event per streamed token
// message and reads the rate only for GetStats, which a deployment may never call.
TEST(LatencyStatsTest, RateKeepsOnlyTheLastWindowWithoutReads) {
  using std::chrono::milliseconds;
  const RateWindow::Clock::time_point t0{};
  RateWindow r(std::chrono::seconds(10), t0);
  for (int i = 1; i <= 100000; ++i) r.Add(t0 + milliseconds(i), 1);  // 100 s at 1000 events/s, never read
  EXPECT_LE(r.held(), 10001u);  // 10 s worth
  EXPECT_DOUBLE_EQ(r.PerSecond(t0 + milliseconds(100000)), 1000.0);
}

}  // namespace
}  // namespace moe
