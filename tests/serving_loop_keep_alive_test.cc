// The serving loop behind its KeepAliveOutbox, as moe-worker runs them: a rank whose FIRST step is
// long (a new worker job starts with the prefill of the sequences a lost job left, which on a slow
// rank can outlast the coordinator's --heartbeat-timeout-s) must be heard from during that step,
// or the coordinator counts a healthy rank lost.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <vector>

#include "tests/support/engine_fixture.h"
#include "worker/server/inbox.h"
#include "worker/server/keep_alive_outbox.h"
#include "worker/server/recording_outbox.h"
#include "worker/server/serving_loop.h"

namespace moe::testing_ref {
namespace {

using std::chrono::milliseconds;

int Heartbeats(const RecordingOutbox& out) {
  int n = 0;
  for (const auto& m : out.messages()) n += m.has_heartbeat();
  return n;
}

// A StepEngine that forwards to a real one, but holds its first step that carries tokens until
// `out` has received `want` heartbeats (at most 10 s: a loaded machine only makes the wait longer),
// as a long prefill would; it records how many had arrived when it let the step go.
class SlowFirstStep final : public StepEngine {
 public:
  SlowFirstStep(StepEngine& inner, const RecordingOutbox& out, int want) : inner_(inner), out_(out), want_(want) {}

  absl::StatusOr<StepOutput> Step(const std::vector<SequenceChunk>& chunks) override {
    if (!chunks.empty() && heard_during_first_step_ < 0) {
      const auto start = std::chrono::steady_clock::now();
      while (Heartbeats(out_) < want_ && std::chrono::steady_clock::now() - start < std::chrono::seconds(10)) {
        std::this_thread::sleep_for(milliseconds(5));
      }
      heard_during_first_step_ = Heartbeats(out_);
    }
    return inner_.Step(chunks);
  }
  int heard_during_first_step() const { return heard_during_first_step_; }

  const ModelConfig& config() const override { return inner_.config(); }
  absl::Status AddSequence(int64_t id) override { return inner_.AddSequence(id); }
  void FreeSequence(int64_t id) override { inner_.FreeSequence(id); }
  bool HasSequence(int64_t id) const override { return inner_.HasSequence(id); }
  int64_t SequenceLength(int64_t id) const override { return inner_.SequenceLength(id); }
  void EnablePrefixCache() override { inner_.EnablePrefixCache(); }
  int64_t AttachCachedPrefix(int64_t id, std::span<const int32_t> prompt, uint64_t root) override {
    return inner_.AttachCachedPrefix(id, prompt, root);
  }
  Communicator& comm() override { return inner_.comm(); }
  const KvBlockAllocator& kv_blocks() const override { return inner_.kv_blocks(); }
  std::vector<uint64_t> TakeEvictedPrefixHashes() override { return inner_.TakeEvictedPrefixHashes(); }
  const LoadStats& load_stats() const override { return inner_.load_stats(); }
  int64_t weight_bytes() const override { return inner_.weight_bytes(); }

 private:
  StepEngine& inner_;
  const RecordingOutbox& out_;
  const int want_;
  int heard_during_first_step_ = -1;
};

// The sequence is in the inbox before the loop's first iteration (the coordinator sends held
// sequences the moment the new job has loaded), so the very first step is the long one. The
// keep-alive repeats every 10 ms; the step waits for three heartbeats.
TEST(ServingLoopKeepAliveTest, ARankIsHeardFromDuringALongFirstStep) {
  std::unique_ptr<LocalEngine> engine = LoadLocalEngine(kGoldenDir);
  RecordingOutbox out;
  SlowFirstStep slow(**engine, out, 3);
  Inbox inbox;
  moe::v1::CoordinatorMessage m;
  moe::v1::Assign* a = m.mutable_assign();
  a->set_seq_id(1);
  for (int32_t t : {1, 2, 3, 4, 5}) a->add_prompt(t);
  a->set_max_tokens(2);
  a->set_temperature(0.0f);
  a->set_top_p(1.0f);
  inbox.Push(std::move(m));
  ServingLoopOptions lo;
  lo.heartbeat_interval = milliseconds(10);
  KeepAliveOutbox keep(out, lo.heartbeat_interval, std::chrono::seconds(600), "serving_loop_keep_alive_test");
  ServingLoop loop(slow, inbox, keep, lo);
  ASSERT_TRUE(loop.RunOnce());
  ASSERT_EQ(out.BySequence()[1].tokens.size(), 1u) << "the first step was not the prefill";
  EXPECT_GE(slow.heard_during_first_step(), 3) << "the coordinator heard nothing from the rank while its first step ran";
}

}  // namespace
}  // namespace moe::testing_ref
