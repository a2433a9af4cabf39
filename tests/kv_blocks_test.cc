// KvBlockAllocator's bookkeeping, worked by hand: blocks return to the pool, and with prefix caching
// filled blocks are registered under their whole prefix, attached to later prompts that start with
// the same whole blocks (the last prompt token always left to compute), shared by reference,
// cached after their last sequence ends and reclaimed least recently released first.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "common/prefix_hash.h"
#include "worker/kv_blocks.h"

namespace moe {
namespace {

constexpr int64_t kBlock = 4;

std::vector<int32_t> Range(int32_t from, int32_t n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), from);
  return v;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Adds `seq`, attaches what the cache holds of `prompt`, then writes the rest of it.
int64_t RunPrompt(KvBlockAllocator& kv, int64_t seq, const std::vector<int32_t>& prompt) {
  EXPECT_TRUE(kv.AddSequence(seq).ok());
  const int64_t attached = kv.AttachCachedPrefix(seq, prompt);
  EXPECT_TRUE(kv.Reserve(seq, static_cast<int64_t>(prompt.size())).ok());
  kv.Append(seq, std::vector<int32_t>(prompt.begin() + attached, prompt.end()));
  return attached;
}

// cache_salt: a prompt finds only the blocks of its own root's chain (the unsalted one is root 0),
// and a sequence that attaches nothing still registers its blocks under its root.
TEST(KvBlockAllocatorTest, BlocksMatchOnlyWithinTheirRoot) {
  KvBlockAllocator kv(kBlock, 32);
  kv.EnablePrefixCache();
  const uint64_t a = PrefixRoot("a"), b = PrefixRoot("b");
  ASSERT_NE(a, b);
  ASSERT_EQ(PrefixRoot(""), 0u);
  auto run = [&](int64_t seq, const std::vector<int32_t>& prompt, uint64_t root, bool attach = true) {
    EXPECT_TRUE(kv.AddSequence(seq).ok());
    const int64_t attached = kv.AttachCachedPrefix(seq, attach ? prompt : std::vector<int32_t>(), root);
    EXPECT_TRUE(kv.Reserve(seq, static_cast<int64_t>(prompt.size())).ok());
    kv.Append(seq, std::vector<int32_t>(prompt.begin() + attached, prompt.end()));
    kv.FreeSequence(seq);
    return attached;
  };
  EXPECT_EQ(run(1, Range(0, 9), a), 0);
  EXPECT_EQ(kv.LookupCachedPrefix(Range(0, 9), a).blocks, 2);
  EXPECT_EQ(kv.LookupCachedPrefix(Range(0, 9)).blocks, 0) << "unsalted prompts do not see salted blocks";
  EXPECT_EQ(kv.LookupCachedPrefix(Range(0, 9), b).blocks, 0) << "nor does another salt";
  EXPECT_EQ(run(2, Range(0, 9), b), 0);
  EXPECT_EQ(run(3, Range(0, 9), a), 8) << "the same salt finds its blocks";
  EXPECT_EQ(run(4, Range(0, 9), 0), 0);
  EXPECT_EQ(run(5, Range(0, 9), 0), 8);
  // A sequence computed whole (nothing attached) registers in its root's chain, not the unsalted one.
  run(6, Range(50, 9), a, /*attach=*/false);
  EXPECT_EQ(kv.LookupCachedPrefix(Range(50, 9)).blocks, 0);
  EXPECT_EQ(kv.LookupCachedPrefix(Range(50, 9), a).blocks, 2);
}

TEST(KvBlockAllocatorTest, WithoutPrefixCachingBlocksReturnToThePool) {
  KvBlockAllocator kv(kBlock, 6);
  EXPECT_EQ(RunPrompt(kv, 1, Range(0, 10)), 0);
  EXPECT_EQ(kv.length(1), 10);
  EXPECT_EQ(kv.blocks(1), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(kv.used_blocks(), 3);
  kv.FreeSequence(1);
  EXPECT_EQ(kv.free_blocks(), 6);
  EXPECT_EQ(kv.cached_free_blocks(), 0);
  EXPECT_EQ(RunPrompt(kv, 2, Range(0, 10)), 0) << "nothing is cached without prefix caching";
  EXPECT_EQ(kv.prefix_queried_tokens(), 0);
}

// GrowthBlocks says how many free blocks Reserve then takes: for a sequence not added yet, a fresh
// one, one partway through a block, one at a block's end and one whose cached prefix attached.
TEST(KvBlockAllocatorTest, GrowthBlocksIsWhatReserveTakes) {
  KvBlockAllocator kv(kBlock, 16);
  kv.EnablePrefixCache();
  EXPECT_EQ(kv.GrowthBlocks(7, 9), 3);  // not added: 9 positions from nothing
  RunPrompt(kv, 1, Range(0, 8));
  kv.FreeSequence(1);  // two whole blocks stay cached
  ASSERT_TRUE(kv.AddSequence(2).ok());
  ASSERT_EQ(kv.AttachCachedPrefix(2, Range(0, 10)), 8);
  ASSERT_TRUE(kv.AddSequence(3).ok());
  RunPrompt(kv, 4, Range(100, 6));  // 6 positions: 2 blocks, the second half full
  for (const auto& [seq, tokens] : std::vector<std::pair<int64_t, int64_t>>{{2, 2}, {3, 1}, {3, 4}, {4, 2}, {4, 3}}) {
    const int64_t free = kv.free_blocks(), want = kv.GrowthBlocks(seq, tokens);
    ASSERT_TRUE(kv.Reserve(seq, kv.length(seq) + tokens).ok());
    EXPECT_EQ(free - kv.free_blocks(), want) << "sequence " << seq << " growing by " << tokens;
    kv.Append(seq, Range(200, static_cast<int32_t>(tokens)));
  }
}

TEST(KvBlockAllocatorTest, AFinishedPromptsWholeBlocksAttachToTheNextThatStartsWithThem) {
  KvBlockAllocator kv(kBlock, 8);
  kv.EnablePrefixCache();
  const std::vector<int32_t> first = Range(0, 10);  // blocks [0-3] [4-7] and a partial [8-9]
  EXPECT_EQ(RunPrompt(kv, 1, first), 0);
  const std::vector<int32_t> table = kv.blocks(1);
  kv.FreeSequence(1);
  EXPECT_EQ(kv.cached_free_blocks(), 2) << "the two full blocks stay cached";
  EXPECT_EQ(kv.free_blocks(), 8) << "cached blocks count as free";

  // The same 8 tokens, then others: both whole blocks attach, the same block ids.
  const std::vector<int32_t> second = Concat(Range(0, 8), {50, 51, 52});
  EXPECT_EQ(RunPrompt(kv, 2, second), 8);
  EXPECT_EQ(std::vector<int32_t>(kv.blocks(2).begin(), kv.blocks(2).begin() + 2),
            std::vector<int32_t>(table.begin(), table.begin() + 2));
  EXPECT_EQ(kv.length(2), 11);
  EXPECT_EQ(kv.cached_free_blocks(), 0);
  EXPECT_EQ(kv.used_blocks(), 3);
  EXPECT_EQ(kv.prefix_queried_tokens(), 10 + 11);
  EXPECT_EQ(kv.prefix_hit_tokens(), 8);
}

TEST(KvBlockAllocatorTest, ThePromptsLastTokenIsAlwaysComputed) {
  KvBlockAllocator kv(kBlock, 8);
  kv.EnablePrefixCache();
  RunPrompt(kv, 1, Range(0, 8));
  kv.FreeSequence(1);
  // Exactly the two cached blocks: the second holds the last token, whose logits are wanted.
  EXPECT_EQ(RunPrompt(kv, 2, Range(0, 8)), 4);
  kv.FreeSequence(2);
  EXPECT_EQ(RunPrompt(kv, 3, Range(0, 9)), 8);
}

TEST(KvBlockAllocatorTest, MatchingStopsAtTheFirstDifferentBlockAndFollowsTheWholePrefix) {
  KvBlockAllocator kv(kBlock, 12);
  kv.EnablePrefixCache();
  RunPrompt(kv, 1, Range(0, 12));  // blocks [0-3] [4-7] [8-11]
  kv.FreeSequence(1);
  // Second block differs: only the first attaches, though the third equals a cached block's tokens.
  EXPECT_EQ(RunPrompt(kv, 2, Concat(Concat(Range(0, 4), Range(40, 4)), Range(8, 5))), 4);
  // A cached block's tokens after a different first block: its prefix differs, so nothing attaches.
  EXPECT_EQ(RunPrompt(kv, 3, Concat(Range(90, 4), Range(4, 5))), 0);
}

TEST(KvBlockAllocatorTest, BlocksAreSharedWhileTheirFirstSequenceRunsAndCachedAfterTheLast) {
  KvBlockAllocator kv(kBlock, 8);
  kv.EnablePrefixCache();
  EXPECT_EQ(kv.LookupCachedPrefix(Range(0, 9)).blocks, 0);
  RunPrompt(kv, 1, Range(0, 9));  // 3 blocks, 2 full
  EXPECT_EQ(kv.LookupCachedPrefix(Range(0, 9)).blocks, 2);
  EXPECT_EQ(kv.LookupCachedPrefix(Range(0, 9)).in_use, 2) << "sequence 1 holds both";
  EXPECT_EQ(kv.LookupCachedPrefix(Range(0, 8)).in_use, 1) << "the last token is computed: one to attach";
  EXPECT_EQ(kv.LookupCachedPrefix(Concat(Range(0, 4), Range(50, 5))).in_use, 1);
  EXPECT_EQ(RunPrompt(kv, 2, Range(0, 9)), 8) << "attaches while sequence 1 still runs";
  EXPECT_EQ(kv.used_blocks(), 4) << "two shared, one partial each";
  kv.FreeSequence(1);
  EXPECT_EQ(kv.used_blocks(), 3) << "the shared blocks stay with sequence 2";
  EXPECT_EQ(kv.cached_free_blocks(), 0);
  kv.FreeSequence(2);
  EXPECT_EQ(kv.used_blocks(), 0);
  EXPECT_EQ(kv.cached_free_blocks(), 2);
  EXPECT_EQ(kv.LookupCachedPrefix(Range(0, 9)).blocks, 2);
  EXPECT_EQ(kv.LookupCachedPrefix(Range(0, 9)).in_use, 0) << "cached, but attaching them takes them from the free pool";
}

TEST(KvBlockAllocatorTest, AppendedDecodeTokensFillBlocksThatCacheToo) {
  KvBlockAllocator kv(kBlock, 8);
  kv.EnablePrefixCache();
  RunPrompt(kv, 1, Range(0, 3));
  for (int32_t t = 3; t < 9; ++t) {  // one token a step, as decoding appends them
    ASSERT_TRUE(kv.Reserve(1, kv.length(1) + 1).ok());
    kv.Append(1, std::vector<int32_t>{t});
  }
  kv.FreeSequence(1);
  EXPECT_EQ(kv.cached_free_blocks(), 2);
  EXPECT_EQ(RunPrompt(kv, 2, Range(0, 10)), 8);
}

TEST(KvBlockAllocatorTest, APrefixComputedTwiceAtOnceIsCachedOnce) {
  KvBlockAllocator kv(kBlock, 8);
  kv.EnablePrefixCache();
  ASSERT_TRUE(kv.AddSequence(1).ok());
  ASSERT_TRUE(kv.AddSequence(2).ok());
  EXPECT_EQ(kv.AttachCachedPrefix(1, Range(0, 5)), 0);
  EXPECT_EQ(kv.AttachCachedPrefix(2, Range(0, 5)), 0);
  for (int64_t s : {1, 2}) {
    ASSERT_TRUE(kv.Reserve(s, 5).ok());
    kv.Append(s, Range(0, 5));
  }
  kv.FreeSequence(1);
  kv.FreeSequence(2);
  EXPECT_EQ(kv.cached_free_blocks(), 1) << "sequence 2's copy of block [0-3] went back to the free pool";
  EXPECT_EQ(kv.free_blocks(), 8);
}

TEST(KvBlockAllocatorTest, CachedBlocksAreReclaimedLeastRecentlyReleasedFirstAndOnlyWhenNeeded) {
  KvBlockAllocator kv(kBlock, 4);
  kv.EnablePrefixCache();
  RunPrompt(kv, 1, Range(0, 4));    // block A: [0-3]
  RunPrompt(kv, 2, Range(10, 4));   // block B: [10-13]
  kv.FreeSequence(1);               // A released first
  kv.FreeSequence(2);
  EXPECT_EQ(kv.cached_free_blocks(), 2);
  // Three blocks for an unrelated prompt: the two never-used blocks first, then A (the older).
  RunPrompt(kv, 3, Range(100, 12));
  EXPECT_EQ(kv.cached_free_blocks(), 1);
  kv.FreeSequence(3);
  EXPECT_EQ(RunPrompt(kv, 4, Range(10, 5)), 4) << "B is still cached";
  kv.FreeSequence(4);
  EXPECT_EQ(RunPrompt(kv, 5, Range(0, 5)), 0) << "A was reclaimed";
  // And the full pool is still usable: everything reclaimable is free.
  kv.FreeSequence(5);
  EXPECT_EQ(kv.free_blocks(), 4);
  ASSERT_TRUE(kv.AddSequence(6).ok());
  EXPECT_TRUE(kv.Reserve(6, 16).ok());
  EXPECT_EQ(kv.cached_free_blocks(), 0);
  EXPECT_FALSE(kv.Reserve(6, 17).ok());
}

// What a reclaimed block was cached under is reported once, as the hash chain names the prefix (so
// the coordinator, which keys prompts with the same chain, can stop counting on it).
TEST(KvBlockAllocatorTest, ReclaimedBlocksReportTheirPrefixHashOnce) {
  KvBlockAllocator kv(kBlock, 2);
  kv.EnablePrefixCache();
  RunPrompt(kv, 1, Range(0, 8));  // blocks [0-3], [4-7], both registered
  kv.FreeSequence(1);
  EXPECT_TRUE(kv.TakeEvictedHashes().empty()) << "nothing reclaimed yet";
  RunPrompt(kv, 2, Range(50, 4));  // reclaims the least recently released of the two
  const std::vector<uint64_t> evicted = kv.TakeEvictedHashes();
  const uint64_t a = PrefixChainHash(0, Range(0, 4));
  const uint64_t ab = PrefixChainHash(a, Range(4, 4));
  ASSERT_EQ(evicted.size(), 1u);
  EXPECT_TRUE(evicted[0] == a || evicted[0] == ab) << "one of the two cached prefixes";
  EXPECT_TRUE(kv.TakeEvictedHashes().empty()) << "reported once";
  kv.FreeSequence(2);
  RunPrompt(kv, 3, Range(90, 8));  // both blocks: the other cached one goes too (and [50-53])
  std::vector<uint64_t> rest = kv.TakeEvictedHashes();
  rest.push_back(evicted[0]);
  std::sort(rest.begin(), rest.end());
  std::vector<uint64_t> want = {a, ab, PrefixChainHash(0, Range(50, 4))};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(rest, want);
}

}  // namespace
}  // namespace moe
