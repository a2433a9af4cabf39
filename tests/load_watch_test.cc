// A worker rank's load stops once its job has ended (worker/server/load_watch.h): LoadMayGoOn reads
// the inbox as the serving loop would (a Shutdown, or the end of the Serve stream), and the engine's
// load ends at the first layer whose check fails, with that check's status.
#include "worker/server/load_watch.h"

#include <gtest/gtest.h>

#include "tests/support/engine_fixture.h"
#include "worker/comm/local_communicator.h"
#include "worker/engine.h"

namespace moe {
namespace {

moe::v1::CoordinatorMessage Shutdown() {
  moe::v1::CoordinatorMessage m;
  m.mutable_shutdown();
  return m;
}

TEST(LoadWatch, AnOpenInboxLetsTheLoadGoOn) {
  Inbox inbox;
  EXPECT_TRUE(LoadMayGoOn(inbox).ok());
  moe::v1::CoordinatorMessage cancel;
  cancel.mutable_cancel()->set_seq_id(7);  // not the end of the job
  inbox.Push(cancel);
  EXPECT_TRUE(LoadMayGoOn(inbox).ok());
}

TEST(LoadWatch, AShutdownStopsTheLoadNamingIt) {
  Inbox inbox;
  inbox.Push(Shutdown());
  const absl::Status s = LoadMayGoOn(inbox);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_NE(std::string(s.message()).find("told to shut down while loading"), std::string::npos) << s;
  EXPECT_EQ(inbox.Drain().size(), 1u);  // left for the rank to read why it leaves
}

TEST(LoadWatch, TheEndOfTheStreamStopsTheLoadNamingIt) {
  Inbox inbox;
  inbox.Close();
  const absl::Status s = LoadMayGoOn(inbox);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_NE(std::string(s.message()).find("Serve stream to the coordinator ended while loading"), std::string::npos) << s;
}

TEST(LoadWatch, AShutdownBeforeTheEndOfTheStreamIsAShutdown) {
  Inbox inbox;
  inbox.Push(Shutdown());
  inbox.Close();
  EXPECT_NE(std::string(LoadMayGoOn(inbox).message()).find("told to shut down"), std::string::npos);
}

// The engine asks after each layer and stops at the first refusal: the check is asked once (not
// once a layer, as a load that ran on to the end would), and the load ends with its status.
TEST(LoadWatch, TheEngineLoadStopsAtTheFirstLayerWhoseCheckFails) {
  LocalCommunicator comm;
  const ModelConfig c = ValueOrThrow(ModelConfig::FromModelDir(testing_ref::kGoldenDir));
  ASSERT_GE(c.num_layers, 2) << "the test wants a load of more than one layer";
  const PlacementPlan plan = ValueOrThrow(PlacementPlan::Make(c.num_layers, c.num_experts, 1));
  EngineOptions opts;
  opts.kv_tokens = 64;
  int asked = 0;
  opts.keep_loading = [&] {
    ++asked;
    return absl::CancelledError("the job ended");
  };
  const auto e = Engine::Load(testing_ref::kGoldenDir, comm, plan, opts);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kCancelled) << e.status();
  EXPECT_EQ(e.status().message(), "the job ended");
  EXPECT_EQ(asked, 1);

  asked = 0;
  opts.keep_loading = [&] {
    ++asked;
    return absl::OkStatus();
  };
  ASSERT_TRUE(Engine::Load(testing_ref::kGoldenDir, comm, plan, opts).ok());
  EXPECT_EQ(asked, c.num_layers);  // once a layer while the job goes on
}

}  // namespace
}  // namespace moe
