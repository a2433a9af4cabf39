// A rank's JobEndWatchdog (worker/server/job_end_watchdog.h) calls its `leave` once the rank's job
// has ended, as its inbox shows (a Shutdown, even one the serving loop has taken, or the end of the
// Serve stream), and the grace has passed; never while the job goes on, and never once it is
// destroyed. The grace is short here; the waits for `leave` are long, so a slow machine only makes
// the test slower.
#include "worker/server/job_end_watchdog.h"

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

moe::v1::CoordinatorMessage Shutdown() {
  moe::v1::CoordinatorMessage m;
  m.mutable_shutdown();
  return m;
}

// What a watchdog's `leave` was told, once, and when.
struct Left {
  std::promise<std::string> why;
  std::atomic<int> calls{0};
  std::function<void(const std::string&)> Callback() {
    return [this](const std::string& w) {
      if (calls++ == 0) why.set_value(w);
    };
  }
};

TEST(JobEndWatchdog, AShutdownTheLoopHasTakenEndsTheRankAfterTheGrace) {
  auto inbox = std::make_shared<Inbox>();
  Left left;
  std::future<std::string> why = left.why.get_future();
  constexpr milliseconds kGrace(300);
  JobEndWatchdog dog(inbox, kGrace, left.Callback());
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_EQ(left.calls.load(), 0) << "left while the job went on";
  const auto ended = Clock::now();  // before the push: the watchdog may see it at once
  inbox->Push(Shutdown());
  EXPECT_EQ(inbox->Drain().size(), 1u);  // the serving loop takes it; the rank is held after that
  ASSERT_EQ(why.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_GE(Clock::now() - ended, kGrace);
  const std::string w = why.get();
  EXPECT_NE(w.find("its job ended 0.3 s ago (the coordinator sent Shutdown)"), std::string::npos) << w;
  EXPECT_NE(w.find("a rank that hangs holds it in a collective, or its exit is slow"), std::string::npos) << w;
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_EQ(left.calls.load(), 1);
}

TEST(JobEndWatchdog, TheEndOfTheServeStreamEndsTheRankAfterTheGrace) {
  auto inbox = std::make_shared<Inbox>();
  Left left;
  std::future<std::string> why = left.why.get_future();
  JobEndWatchdog dog(inbox, milliseconds(200), left.Callback());
  inbox->Close();
  ASSERT_EQ(why.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_NE(why.get().find("(its Serve stream to the coordinator closed)"), std::string::npos);
}

TEST(JobEndWatchdog, AJobThatGoesOnOrARankThatLeftInTimeIsNeverEnded) {
  auto inbox = std::make_shared<Inbox>();
  Left left;
  {
    JobEndWatchdog dog(inbox, milliseconds(100), left.Callback());
    moe::v1::CoordinatorMessage cancel;
    cancel.mutable_cancel()->set_seq_id(3);  // not the end of the job
    inbox->Push(cancel);
    std::this_thread::sleep_for(milliseconds(500));
    EXPECT_EQ(left.calls.load(), 0);
  }
  {
    JobEndWatchdog dog(inbox, std::chrono::seconds(30), left.Callback());
    inbox->Push(Shutdown());
    std::this_thread::sleep_for(milliseconds(300));
  }  // the rank left within its grace: the watchdog stops with it
  EXPECT_EQ(left.calls.load(), 0);
}

TEST(JobEndWatchdog, AGraceOfZeroNeverEndsTheRank) {
  auto inbox = std::make_shared<Inbox>();
  inbox->Close();
  Left left;
  JobEndWatchdog dog(inbox, milliseconds(0), left.Callback());
  std::this_thread::sleep_for(milliseconds(400));
  EXPECT_EQ(left.calls.load(), 0);
}

}  // namespace
}  // namespace moe
