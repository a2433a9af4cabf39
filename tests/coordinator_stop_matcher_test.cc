// Stop sequences on streamed text: the reference is std::string::find on the whole text, so
// whatever way the text is split into deltas, the released text must be exactly the text before
// the first stop string, and never more than that at any moment.
#include "coordinator/stop_matcher.h"

#include <gtest/gtest.h>

#include <random>

namespace moe {
namespace {

// The text before the earliest occurrence of any stop string (all of it when none occurs).
std::string ReferenceCut(const std::string& text, const std::vector<std::string>& stops) {
  size_t cut = std::string::npos;
  for (const std::string& s : stops) cut = std::min(cut, text.find(s));
  return cut == std::string::npos ? text : text.substr(0, cut);
}

TEST(StopMatcherTest, StopStringSplitAcrossDeltasIsCutAndNeverReleased) {
  StopMatcher m({"END"});
  StopMatcher::Output a = m.Push("Hello E");
  EXPECT_EQ(a.text, "Hello ");  // "E" may start "END": held back
  EXPECT_FALSE(a.stopped);
  StopMatcher::Output b = m.Push("N");
  EXPECT_EQ(b.text, "");
  EXPECT_FALSE(b.stopped);
  StopMatcher::Output c = m.Push("D and more");
  EXPECT_EQ(c.text, "");
  EXPECT_TRUE(c.stopped);
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.Push("later").text, "");
  EXPECT_EQ(m.Flush(), "");
}

// include_stop: the released text runs to the end of the earliest stop string (the first listed
// of those starting there), whatever the deltas.
TEST(StopMatcherTest, IncludeStopReleasesTheStopStringToo) {
  StopMatcher m({"END", "EN"}, /*include_stop=*/true);
  EXPECT_EQ(m.Push("Hello E").text, "Hello ");
  StopMatcher::Output out = m.Push("ND more");
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.text, "END");
  EXPECT_EQ(m.matched(), "END");
  StopMatcher first({"ab", "b"}, true);
  out = first.Push("xab");
  EXPECT_EQ(out.text, "xab") << "\"ab\" starts first";
}

TEST(StopMatcherTest, HeldBackTextIsReleasedWhenItStopsMatching) {
  StopMatcher m({"END"});
  EXPECT_EQ(m.Push("xE").text, "x");
  EXPECT_EQ(m.Push("Nx").text, "ENx");
  EXPECT_EQ(m.Push("EN").text, "");
  EXPECT_EQ(m.Flush(), "EN");  // the stream ended: nothing can complete it any more
}

TEST(StopMatcherTest, EarliestStopWinsAndTextAfterItIsDropped) {
  StopMatcher m({"world", "lo w"});
  StopMatcher::Output o = m.Push("Hello world, again");
  EXPECT_TRUE(o.stopped);
  EXPECT_EQ(o.text, "Hel");
}

TEST(StopMatcherTest, OverlappingPrefixes) {
  // "aab" in "aaab": a naive matcher that restarts after "aa" fails on the third "a".
  StopMatcher m({"aab"});
  std::string out;
  bool stopped = false;
  for (char ch : std::string("aaab")) {
    StopMatcher::Output o = m.Push(std::string(1, ch));
    out += o.text;
    stopped = o.stopped;
  }
  EXPECT_TRUE(stopped);
  EXPECT_EQ(out, "a");
}

TEST(StopMatcherTest, MultiByteStopString) {
  StopMatcher m({"\xC3\xA9!"});  // "é!"
  std::string out = m.Push("caf\xC3").text;
  out += m.Push("\xA9").text;
  EXPECT_EQ(out, "caf");
  StopMatcher::Output o = m.Push("! more");
  EXPECT_TRUE(o.stopped);
  EXPECT_EQ(out + o.text, "caf");
}

// Text pushed with may_stop false (min_tokens') ends no stop string, but one may start in it: its
// possible start is held back, and a later delta completes it (vLLM's look-back).
TEST(StopMatcherTest, AStopStringMayStartWhereItMayNotEnd) {
  StopMatcher m({"ab", "xabc"});
  StopMatcher::Output o = m.Push("zxab", /*may_stop=*/false);
  EXPECT_FALSE(o.stopped) << "\"ab\" ends in text that may not stop";
  EXPECT_EQ(o.text, "z");  // "xab" may start "xabc"
  o = m.Push("c");
  EXPECT_TRUE(o.stopped);
  EXPECT_EQ(m.matched(), "xabc");
  EXPECT_EQ(o.text, "");

  StopMatcher whole({"ab"});
  EXPECT_EQ(whole.Push("ab", false).text, "ab");
  o = whole.Push("xab");
  EXPECT_TRUE(o.stopped);
  EXPECT_EQ(o.text, "x");  // "ab" went out with the first push
}

TEST(StopMatcherTest, RandomSplitsMatchTheWholeTextReference) {
  const std::string text = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer";
  const std::vector<std::vector<std::string>> stop_sets = {
      {"question"}, {"not to", "that"}, {"mind to suffer"}, {"absent"}, {"be,", "To be"}, {"r"}};
  std::mt19937 rng(7);
  for (const auto& stops : stop_sets) {
    const std::string expected = ReferenceCut(text, stops);
    for (int trial = 0; trial < 200; ++trial) {
      StopMatcher m(stops);
      std::string released;
      bool stopped = false;
      size_t pos = 0;
      while (pos < text.size() && !stopped) {
        const size_t len = std::uniform_int_distribution<size_t>(1, 6)(rng);
        StopMatcher::Output o = m.Push(text.substr(pos, len));
        pos += len;
        released += o.text;
        stopped = o.stopped;
        // Never ahead of the reference: nothing released is later cut away.
        ASSERT_EQ(expected.compare(0, released.size(), released), 0) << released;
      }
      if (!stopped) released += m.Flush();
      EXPECT_EQ(released, expected);
      EXPECT_EQ(stopped, expected.size() < text.size());
    }
  }
}

}  // namespace
}  // namespace moe
