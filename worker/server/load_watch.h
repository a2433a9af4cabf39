// While a rank loads its shard (minutes for a full-size model) its job may end: the coordinator
// refused its Join or was lost (the Serve stream ended: the inbox is closed), or it sent Shutdown
// after another rank's loss. The rest of the load would only hold GPU and host memory and keep the
// dead job alive, so the load asks this after each layer (WorkerEngine::Load's keep_loading) and
// stops on an error; the collective after the load then ends it on every rank.
#pragma once

#include "common/status.h"
#include "worker/server/inbox.h"

namespace moe {

// OK while the job goes on; CANCELLED naming why once the inbox holds a Shutdown ("told to shut
// down while loading", checked first: a Shutdown followed by the end of the stream is no loss) or
// is closed. Leaves the inbox as it is, for the rank to read why it leaves.
absl::Status LoadMayGoOn(const Inbox& inbox);

}  // namespace moe
