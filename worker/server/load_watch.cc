#include "worker/server/load_watch.h"

namespace moe {

JobEnd JobEndIn(const Inbox& inbox) {
  // `closed` first: a Shutdown pushed before the close is then seen, as in ServingLoop::HandleInbox.
  const bool closed = inbox.closed();
  if (inbox.shutdown_received()) return JobEnd::kShutdown;
  return closed ? JobEnd::kStreamEnded : JobEnd::kNotEnded;
}

absl::Status LoadMayGoOn(const Inbox& inbox) {
  switch (JobEndIn(inbox)) {
    case JobEnd::kShutdown:
      return absl::CancelledError("told to shut down while loading (the coordinator ended this job)");
    case JobEnd::kStreamEnded:
      return absl::CancelledError(
          "the Serve stream to the coordinator ended while loading (the coordinator refused this rank's Join, "
          "or it was lost)");
    case JobEnd::kNotEnded:
      break;
  }
  return absl::OkStatus();
}

}  // namespace moe
