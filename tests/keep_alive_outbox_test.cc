// KeepAliveOutbox: every message passes through unchanged, and while the loop is silent (a long
// step) the last heartbeat is repeated about once an interval.
#include "worker/server/keep_alive_outbox.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <thread>

#include "worker/server/recording_outbox.h"

namespace moe {
namespace {

using std::chrono::milliseconds;

int CountHeartbeats(const RecordingOutbox& out, uint64_t steps) {
  int n = 0;
  for (const auto& m : out.messages()) n += m.has_heartbeat() && m.heartbeat().stats().steps() == steps;
  return n;
}

// Waits (polling, at most 5 s: a loaded machine only makes the test slower) until `out` holds at
// least `count` heartbeats of step `steps`; returns how many it holds then.
int AwaitHeartbeats(const RecordingOutbox& out, uint64_t steps, int count) {
  const auto start = std::chrono::steady_clock::now();
  while (CountHeartbeats(out, steps) < count && std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  return CountHeartbeats(out, steps);
}

TEST(KeepAliveOutboxTest, RepeatsTheLastHeartbeatWhileSilent) {
  RecordingOutbox out;
  {
    KeepAliveOutbox keep(out, milliseconds(20));
    // Nothing is repeated before the first heartbeat.
    std::this_thread::sleep_for(milliseconds(80));
    EXPECT_TRUE(out.messages().empty());

    moe::v1::WorkerMessage hb;
    hb.mutable_heartbeat()->mutable_stats()->set_steps(7);
    const auto start = std::chrono::steady_clock::now();  // before the heartbeat: repeats may follow at once
    keep.Send(hb);
    moe::v1::WorkerMessage tokens;
    tokens.mutable_tokens()->set_seq_id(3);
    keep.Send(tokens);
    // A silent stretch: the heartbeat of step 7 goes out again and again, about once an interval
    // (polled with a deadline, so a loaded machine only makes the test slower; counted, then timed).
    const int repeats = AwaitHeartbeats(out, 7, 5) - 1;
    const auto elapsed = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
    EXPECT_GE(repeats, 4);
    EXPECT_LE(repeats, elapsed.count() / 20 + 2);  // never faster than once an interval

    // A newer heartbeat replaces the one repeated.
    hb.mutable_heartbeat()->mutable_stats()->set_steps(8);
    keep.Send(hb);
    EXPECT_GE(AwaitHeartbeats(out, 8, 3), 3);
  }
  // The first two messages passed through in order.
  const auto messages = out.messages();
  ASSERT_GE(messages.size(), 2u);
  EXPECT_EQ(messages[0].heartbeat().stats().steps(), 7);
  EXPECT_EQ(messages[1].tokens().seq_id(), 3u);
}

TEST(KeepAliveOutboxTest, StaysQuietWhileTheLoopHeartbeatsItself) {
  RecordingOutbox out;
  KeepAliveOutbox keep(out, milliseconds(2000));
  moe::v1::WorkerMessage hb;
  hb.mutable_heartbeat()->mutable_stats()->set_steps(1);
  for (int i = 0; i < 10; ++i) {  // the loop's own heartbeats every 20 ms
    keep.Send(hb);
    std::this_thread::sleep_for(milliseconds(20));
  }
  EXPECT_EQ(CountHeartbeats(out, 1), 10);
}

// A loop silent past the step timeout is taken for stuck: the repeats stop (so the coordinator's
// heartbeat timeout finds the rank lost), and start again once the loop heartbeats itself. The step
// timeout (1 s) is a hundred intervals: a slow or loaded machine only has to run the repeating thread
// a few times in that second, and a repeat decided before the timeout has 1.5 s more to arrive.
TEST(KeepAliveOutboxTest, StopsRepeatingOnceTheLoopIsSilentPastTheStepTimeout) {
  constexpr milliseconds kInterval(10), kStepTimeout(1000);
  RecordingOutbox out;
  KeepAliveOutbox keep(out, kInterval, kStepTimeout, "keep_alive_outbox_test");
  moe::v1::WorkerMessage hb;
  hb.mutable_heartbeat()->mutable_stats()->set_steps(3);
  const auto sent = std::chrono::steady_clock::now();
  keep.Send(hb);
  // Repeats go out while within the timeout...
  EXPECT_GE(AwaitHeartbeats(out, 3, 3), 3);
  // ...and none once it has passed: the count settles.
  std::this_thread::sleep_until(sent + kStepTimeout + milliseconds(1500));
  const int settled = CountHeartbeats(out, 3);
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_EQ(CountHeartbeats(out, 3), settled);
  // No repeat went out later than the timeout after the loop's heartbeat: at most one an interval
  // over it, however slowly the thread ran.
  EXPECT_LE(settled, kStepTimeout / kInterval + 2);
  // The loop heartbeats again: repeats resume.
  hb.mutable_heartbeat()->mutable_stats()->set_steps(4);
  keep.Send(hb);
  EXPECT_GE(AwaitHeartbeats(out, 4, 3), 3);
}

// A repeat carries the heartbeat's statistics but not its evicted prefix keys, which went out with
// the heartbeat itself: the coordinator forgets those prefixes once, not again after it has placed
// them on this rank anew.
TEST(KeepAliveOutboxTest, RepeatsLeaveOutTheEvictedPrefixKeys) {
  RecordingOutbox out;
  KeepAliveOutbox keep(out, milliseconds(10));
  moe::v1::WorkerMessage hb;
  hb.mutable_heartbeat()->mutable_stats()->set_steps(5);
  hb.mutable_heartbeat()->add_evicted_prefix_keys(11);
  hb.mutable_heartbeat()->add_evicted_prefix_keys(12);
  keep.Send(hb);
  ASSERT_GE(AwaitHeartbeats(out, 5, 3), 3);
  const auto messages = out.messages();
  EXPECT_EQ(messages[0].heartbeat().evicted_prefix_keys_size(), 2);
  for (size_t i = 1; i < messages.size(); ++i) {
    EXPECT_EQ(messages[i].heartbeat().stats().steps(), 5u);
    EXPECT_EQ(messages[i].heartbeat().evicted_prefix_keys_size(), 0) << "repeat " << i;
  }
}

// Forwards to a RecordingOutbox, slowly for every thread but the one that made it: the repeating
// thread's sends then take a while, long enough for the loop to send in between.
class SlowForOtherThreads final : public Outbox {
 public:
  explicit SlowForOtherThreads(RecordingOutbox& out) : out_(out), owner_(std::this_thread::get_id()) {}
  void Send(moe::v1::WorkerMessage msg) override {
    if (std::this_thread::get_id() != owner_) std::this_thread::sleep_for(milliseconds(3));
    out_.Send(std::move(msg));
  }

 private:
  RecordingOutbox& out_;
  const std::thread::id owner_;
};

// The loop's heartbeats and the repeats go out in order: a repeat of an older heartbeat never
// follows a newer one (the coordinator would take the older statistics for the rank's latest).
// The repeats are due every millisecond and take 3 ms to send; the loop sends a heartbeat a
// millisecond, 300 of them.
TEST(KeepAliveOutboxTest, ARepeatNeverOvertakesANewerHeartbeat) {
  RecordingOutbox out;
  {
    SlowForOtherThreads slow(out);
    KeepAliveOutbox keep(slow, milliseconds(1));
    moe::v1::WorkerMessage hb;
    for (uint64_t step = 1; step <= 300; ++step) {
      hb.mutable_heartbeat()->mutable_stats()->set_steps(step);
      keep.Send(hb);
      std::this_thread::sleep_for(milliseconds(1));
    }
  }
  uint64_t last = 0;
  size_t repeats = 0, overtaken = 0;
  for (const moe::v1::WorkerMessage& m : out.messages()) {
    const uint64_t step = m.heartbeat().stats().steps();
    overtaken += step < last;
    repeats += step == last;
    last = std::max(last, step);
  }
  EXPECT_EQ(overtaken, 0u) << "heartbeats that followed a newer one";
  EXPECT_EQ(last, 300u);
  std::printf("%zu repeats among %zu heartbeats, %zu after a newer one\n", repeats, out.messages().size(), overtaken);
}

}  // namespace
}  // namespace moe
