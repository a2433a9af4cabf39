// KeepAliveOutbox: every message passes through unchanged, and while the loop is silent (a long
// step) the last heartbeat is repeated about once an interval.
#include "worker/server/keep_alive_outbox.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace moe
