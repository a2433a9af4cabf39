// The coordinator's scheduler: least-reserved-KV placement, the bounded queue, FIFO refill as
// slots free up. Expected placements are worked out by hand from the rules in scheduler.h.
#include "coordinator/scheduler.h"

#include <gtest/gtest.h>

namespace moe {
namespace {

std::vector<int> Ranks(const std::vector<SequencePlacement>& p) {
  std::vector<int> r;
  for (const SequencePlacement& x : p) r.push_back(x.rank);
  return r;
}

std::vector<uint64_t> Ids(const std::vector<SequencePlacement>& p) {
  std::vector<uint64_t> r;
  for (const SequencePlacement& x : p) r.push_back(x.seq_id);
  return r;
}

TEST(SchedulerTest, AssignsToTheRankWithTheLeastReservedPositions) {
  Scheduler s({/*max_waiting=*/16, /*max_running_per_rank=*/8}, 3);
  // One at a time, so each placement sees the previous ones.
  ASSERT_TRUE(s.Enqueue({{1, 100}}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0}));  // all empty: lowest rank
  ASSERT_TRUE(s.Enqueue({{2, 50}}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({1}));
  ASSERT_TRUE(s.Enqueue({{3, 10}}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({2}));
  // Reserved now 100 / 50 / 10: the small rank takes more until it passes rank 1.
  ASSERT_TRUE(s.Enqueue({{4, 30}, {5, 30}, {6, 5}}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({2, 2, 1}));  // 10->40, 40->70, then 50->55
  EXPECT_EQ(s.reserved_on(0), 100);
  EXPECT_EQ(s.reserved_on(1), 55);
  EXPECT_EQ(s.reserved_on(2), 70);
  // Finishing frees the reservation: rank 0 becomes the emptiest.
  s.Finish(1);
  EXPECT_EQ(s.reserved_on(0), 0);
  ASSERT_TRUE(s.Enqueue({{7, 1}}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0}));
}

TEST(SchedulerTest, EqualReservationsGoToTheRankRunningFewerSequences) {
  Scheduler s({16, 8}, 2);
  ASSERT_TRUE(s.Enqueue({{1, 0}}).ok());  // zero-size reservations keep the KV totals equal
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0}));
  ASSERT_TRUE(s.Enqueue({{2, 0}}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({1}));
  ASSERT_TRUE(s.Enqueue({{3, 0}}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0}));
  EXPECT_EQ(s.running_on(0), 2);
  EXPECT_EQ(s.running_on(1), 1);
}

TEST(SchedulerTest, QueueIsBoundedAndAdmitsAllOrNothing) {
  Scheduler s({/*max_waiting=*/2, /*max_running_per_rank=*/1}, 1);
  ASSERT_TRUE(s.Enqueue({{1, 10}}).ok());
  EXPECT_EQ(Ids(s.Dispatch()), std::vector<uint64_t>({1}));  // running; the rank is now full
  ASSERT_TRUE(s.Enqueue({{2, 10}}).ok());
  EXPECT_TRUE(s.Dispatch().empty());
  // Two more do not fit beside the one waiting: neither is admitted.
  absl::Status full = s.Enqueue({{3, 10}, {4, 10}});
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full.message(), "queue full (1 waiting)");
  EXPECT_EQ(s.waiting(), 1);
  ASSERT_TRUE(s.Enqueue({{3, 10}}).ok());
  full = s.Enqueue({{4, 10}});
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full.message(), "queue full (2 waiting)");
  EXPECT_EQ(s.waiting(), 2);
  EXPECT_EQ(s.running(), 1);
}

TEST(SchedulerTest, FreedSlotsAreRefilledInArrivalOrder) {
  Scheduler s({16, /*max_running_per_rank=*/1}, 2);
  ASSERT_TRUE(s.Enqueue({{1, 5}, {2, 5}, {3, 5}, {4, 5}, {5, 5}}).ok());
  EXPECT_EQ(Ids(s.Dispatch()), std::vector<uint64_t>({1, 2}));
  EXPECT_EQ(s.waiting(), 3);
  s.Finish(2);  // rank 1 frees first
  std::vector<SequencePlacement> p = s.Dispatch();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].seq_id, 3u);
  EXPECT_EQ(p[0].rank, 1);
  s.Finish(1);
  p = s.Dispatch();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].seq_id, 4u);
  EXPECT_EQ(p[0].rank, 0);
  EXPECT_EQ(s.waiting(), 1);
}

TEST(SchedulerTest, RemoveWaitingFinishUnknownAndReset) {
  Scheduler s({16, 1}, 1);
  ASSERT_TRUE(s.Enqueue({{1, 5}, {2, 5}, {3, 5}}).ok());
  EXPECT_EQ(Ids(s.Dispatch()), std::vector<uint64_t>({1}));
  EXPECT_TRUE(s.RemoveWaiting(2));
  EXPECT_FALSE(s.RemoveWaiting(2));
  EXPECT_FALSE(s.RemoveWaiting(1));  // running, not waiting
  s.Finish(42);                      // unknown: ignored
  EXPECT_EQ(s.running(), 1);
  s.Finish(1);
  EXPECT_EQ(Ids(s.Dispatch()), std::vector<uint64_t>({3}));
  s.Reset(2);
  EXPECT_EQ(s.waiting(), 0);
  EXPECT_EQ(s.running(), 0);
  EXPECT_EQ(s.reserved_on(1), 0);
}

}  // namespace
}  // namespace moe
