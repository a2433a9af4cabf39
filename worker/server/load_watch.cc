#include "worker/server/load_watch.h"

namespace moe {

absl::Status LoadMayGoOn(const Inbox& inbox) {
  // `closed` first: a Shutdown pushed before the close is then seen, as in ServingLoop::HandleInbox.
  const bool closed = inbox.closed();
  if (inbox.Holds(moe::v1::CoordinatorMessage::kShutdown)) {
    return absl::CancelledError("told to shut down while loading (the coordinator ended this job)");
  }
  if (closed) {
    return absl::CancelledError(
        "the Serve stream to the coordinator ended while loading (the coordinator refused this rank's Join, "
        "or it was lost)");
  }
  return absl::OkStatus();
}

}  // namespace moe
