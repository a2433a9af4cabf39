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

// Ranks' caches differ (SetCapacity): load is the share of each one's cache reserved, and a
// sequence goes only where it fits. By hand: caches 1,000 and 4,000 positions.
TEST(SchedulerTest, LoadIsTheShareOfEachRanksCacheAndSequencesGoWhereTheyFit) {
  Scheduler s({16, 8}, 2);
  s.SetCapacity(0, 1000);
  s.SetCapacity(1, 4000);
  ASSERT_TRUE(s.Enqueue({{1, 500}, {2, 500}, {3, 500}}).ok());
  // 0/0: rank 0; then 0.5 against 0: rank 1; then 0.5 against 0.125: rank 1 again (by positions,
  // 500 against 500 with one sequence each, rank 0).
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0, 1, 1}));
  // 1,500 positions fit rank 1 only, however loaded it is against rank 0.
  ASSERT_TRUE(s.Enqueue({{4, 1500}}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({1}));
  EXPECT_EQ(s.LargestCapacity(), 4000);
  // One that no cache holds any more (rank 1's shrank) leaves the queue, not blocking those behind.
  s.SetCapacity(1, 1200);
  ASSERT_TRUE(s.Enqueue({{5, 1300}, {6, 100}}).ok());
  std::vector<SequenceDemand> too_large;
  EXPECT_EQ(Ids(s.Dispatch(&too_large)), std::vector<uint64_t>({6}));
  ASSERT_EQ(too_large.size(), 1u);
  EXPECT_EQ(too_large[0].seq_id, 5u);
  EXPECT_EQ(s.waiting(), 0);
  // A rank that reported no cache decides itself: nothing is too large.
  s.SetCapacity(0, 0);
  EXPECT_EQ(s.LargestCapacity(), 0);
  ASSERT_TRUE(s.Enqueue({{7, 5000}}).ok());
  too_large.clear();
  EXPECT_EQ(Ranks(s.Dispatch(&too_large)), std::vector<int>({0}));
  EXPECT_TRUE(too_large.empty());
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

// Priorities (--scheduling-policy priority): the queue is ordered by priority, lower first, and by
// arrival within one priority.
TEST(SchedulerTest, LowerPriorityValuesAreDispatchedFirstArrivalOrderWithin) {
  Scheduler s({16, /*max_running_per_rank=*/1}, 1);
  ASSERT_TRUE(s.Enqueue({{1, 10}}).ok());
  EXPECT_EQ(Ids(s.Dispatch()), std::vector<uint64_t>({1}));  // the rank is now full
  ASSERT_TRUE(s.Enqueue({{2, 10, {}, 0}, {3, 10, {}, 5}, {4, 10, {}, -1}, {5, 10, {}, 0}, {6, 10, {}, -1}}).ok());
  std::vector<uint64_t> order;
  for (uint64_t running = 1; s.waiting() > 0;) {
    s.Finish(running);
    const std::vector<uint64_t> placed = Ids(s.Dispatch());
    ASSERT_EQ(placed.size(), 1u);
    running = placed[0];
    order.push_back(running);
  }
  EXPECT_EQ(order, std::vector<uint64_t>({4, 6, 2, 5, 3}));
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

// --- prefix affinity -------------------------------------------------------------------------------

std::vector<int32_t> Tokens(int32_t from, int32_t n) {
  std::vector<int32_t> v;
  for (int32_t i = 0; i < n; ++i) v.push_back(from + i);
  return v;
}

TEST(PrefixKeysTest, OneKeyPerWholeChunkStandingForTheWholePrefix) {
  EXPECT_TRUE(PrefixKeys(Tokens(0, 15)).empty());
  const std::vector<uint64_t> a = PrefixKeys(Tokens(0, 40));  // two whole chunks of 16
  ASSERT_EQ(a.size(), 2u);
  EXPECT_NE(a[0], a[1]);
  EXPECT_EQ(PrefixKeys(Tokens(0, 32)), a);
  // The same second chunk after a different first one: a different second key.
  std::vector<int32_t> b = Tokens(100, 16);
  const std::vector<int32_t> tail = Tokens(16, 16);
  b.insert(b.end(), tail.begin(), tail.end());
  const std::vector<uint64_t> kb = PrefixKeys(b);
  EXPECT_NE(kb[0], a[0]);
  EXPECT_NE(kb[1], a[1]);
}

// A prompt's keys extended over prompt + answer are the keys of the whole, whatever the prompt's
// length (a partial last chunk of the prompt is hashed again with the answer's first tokens).
TEST(PrefixKeysTest, ExtendingThePromptsKeysGivesTheKeysOfTheWhole) {
  const std::vector<int32_t> whole = Tokens(7, 100);
  for (size_t prompt : {0, 5, 16, 31, 32, 100}) {
    std::vector<uint64_t> keys = PrefixKeys(std::vector<int32_t>(whole.begin(), whole.begin() + prompt));
    ExtendPrefixKeys(keys, whole);
    EXPECT_EQ(keys, PrefixKeys(whole)) << "prompt of " << prompt;
  }
}

SequenceDemand WithPrefix(uint64_t id, int64_t reserve, const std::vector<int32_t>& prompt) {
  return SequenceDemand{id, reserve, PrefixKeys(prompt)};
}

TEST(SchedulerTest, PrefixAffinitySendsAPromptToTheRankThatSawItsStartWithinTheSlack) {
  Scheduler s({16, 8, /*prefix_affinity_slack=*/100}, 2);
  s.SetPrefixAffinity(true);
  ASSERT_TRUE(s.prefix_affinity());
  const std::vector<int32_t> system = Tokens(0, 48);
  ASSERT_TRUE(s.Enqueue({WithPrefix(1, 60, system)}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0}));  // nobody has it: the least loaded, rank 0
  // Rank 0 now reserves 60 more than rank 1, within the slack: the same start goes there again,
  // while a prompt with another start goes by load.
  ASSERT_TRUE(s.Enqueue({WithPrefix(2, 30, system), WithPrefix(3, 10, Tokens(500, 48))}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0, 1}));
  EXPECT_EQ(s.CachedRun(0, PrefixKeys(system)), 3);
  EXPECT_EQ(s.CachedRun(1, PrefixKeys(system)), 0);
  // Rank 0 reserves 90, rank 1 10: 80 beyond, still within 100.
  ASSERT_TRUE(s.Enqueue({WithPrefix(4, 40, system)}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0}));
  // Now 130 against 10: beyond the slack, so by load, and rank 1 has seen it from then on.
  ASSERT_TRUE(s.Enqueue({WithPrefix(5, 5, system), WithPrefix(6, 5, system)}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({1, 1}));
  EXPECT_EQ(s.CachedRun(1, PrefixKeys(system)), 3);
}

// With every cache known the slack is measured on the same scale as the load: a rank holding the
// prompt's start may take it while it reserves at most the least loaded rank's share of its own
// cache plus the slack. By hand, caches 1,000 and 10,000, slack 100.
TEST(SchedulerTest, PrefixAffinitySlackIsOnTheLoadsScale) {
  Scheduler s({16, 8, /*prefix_affinity_slack=*/100}, 2);
  s.SetPrefixAffinity(true);
  s.SetCapacity(0, 1000);
  s.SetCapacity(1, 10000);
  const std::vector<int32_t> system = Tokens(0, 48);
  ASSERT_TRUE(s.Enqueue({WithPrefix(1, 150, system)}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0}));  // nobody has it; both empty: rank 0
  ASSERT_TRUE(s.Enqueue({{2, 1000}}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({1}));  // 0.15 against 0
  // Rank 1 is the least loaded (0.1 against 0.15); rank 0 holds the start and reserves 150, within
  // 0.1 of its cache + 100 = 200: it takes the prompt (twice: then 200, at the bound).
  ASSERT_TRUE(s.Enqueue({WithPrefix(3, 50, system)}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0}));
  ASSERT_TRUE(s.Enqueue({WithPrefix(4, 300, system)}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0}));
  // 500 now, beyond 200: by load, rank 1 (by positions 500 would be within 1,000 + 100).
  ASSERT_TRUE(s.Enqueue({WithPrefix(5, 10, system)}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({1}));
}

TEST(SchedulerTest, TheLongestCachedRunWinsAndTiesGoByLoad) {
  Scheduler s({16, 8, 1000}, 3);
  s.SetPrefixAffinity(true);
  const std::vector<int32_t> prompt = Tokens(0, 64);
  s.NoteCached(1, PrefixKeys(Tokens(0, 16)));  // one chunk of it
  s.NoteCached(2, PrefixKeys(Tokens(0, 48)));  // three
  ASSERT_TRUE(s.Enqueue({WithPrefix(1, 10, prompt)}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({2}));
  s.NoteCached(0, PrefixKeys(Tokens(0, 48)));  // rank 0 as far as rank 2, and less loaded
  ASSERT_TRUE(s.Enqueue({WithPrefix(2, 10, Tokens(0, 40))}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0}));
  // A finished conversation's generated tokens count too: its next turn follows it.
  std::vector<int32_t> turn = Tokens(900, 40);
  s.NoteCached(1, PrefixKeys(turn));
  turn.insert(turn.end(), {1, 2, 3, 4, 5, 6, 7, 8});
  ASSERT_TRUE(s.Enqueue({WithPrefix(3, 10, turn)}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({1}));
}

// Keys a rank reports evicted stop counting there: a prompt whose second block was reclaimed on rank
// 1 holds a run of one key there, so rank 2's run of two wins.
TEST(SchedulerTest, KeysARankEvictedNoLongerDrawItsPrompts) {
  Scheduler s({16, 8, 1000}, 3);
  s.SetPrefixAffinity(true);
  const std::vector<int32_t> prompt = Tokens(0, 48);
  const std::vector<uint64_t> keys = PrefixKeys(prompt);
  s.NoteCached(1, keys);
  s.NoteCached(2, {keys[0], keys[1]});
  s.Forget(1, std::vector<uint64_t>{keys[1], 12345});  // an unknown key is ignored
  EXPECT_EQ(s.CachedRun(1, keys), 1);
  ASSERT_TRUE(s.Enqueue({WithPrefix(1, 10, prompt)}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({2}));
  s.Forget(7, keys);  // no such rank: nothing happens
}

TEST(SchedulerTest, WithoutAffinityOrWithZeroSlackPlacementIsByLoadOnly) {
  for (int64_t slack : {int64_t{0}, int64_t{1000}}) {
    Scheduler s({16, 8, slack}, 2);
    s.SetPrefixAffinity(slack > 0 ? false : true);  // off either way
    EXPECT_FALSE(s.prefix_affinity());
    s.NoteCached(1, PrefixKeys(Tokens(0, 48)));
    ASSERT_TRUE(s.Enqueue({WithPrefix(1, 10, Tokens(0, 48))}).ok());
    EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0})) << "slack " << slack;
  }
  // Reset turns it off again.
  Scheduler s({16, 8, 1000}, 2);
  s.SetPrefixAffinity(true);
  s.Reset(2);
  EXPECT_FALSE(s.prefix_affinity());
}

TEST(SchedulerTest, AFullRankIsNotChosenForItsCache) {
  Scheduler s({16, 1, 1000}, 2);
  s.SetPrefixAffinity(true);
  s.NoteCached(0, PrefixKeys(Tokens(0, 48)));
  ASSERT_TRUE(s.Enqueue({WithPrefix(1, 10, Tokens(0, 48)), WithPrefix(2, 10, Tokens(0, 48))}).ok());
  EXPECT_EQ(Ranks(s.Dispatch()), std::vector<int>({0, 1}));
}

}  // namespace
}  // namespace moe
