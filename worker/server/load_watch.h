// While a rank loads its shard (minutes for a full-size model) its job may end: the coordinator
// refused its Join or was lost (the Serve stream ended: the inbox is closed), or it sent Shutdown
// after another rank's loss. The rest of the load would only hold GPU and host memory and keep the
// dead job alive, so the load asks LoadMayGoOn after each layer (WorkerEngine::Load's
// keep_loading) and stops on an error; the collective after the load then ends it on every rank,
// and each rank leaves by JobEndIn: exit 0 for a Shutdown, 1 naming the stream's end.
#pragma once

#include "common/status.h"
#include "worker/server/inbox.h"

namespace moe {

enum class JobEnd { kNotEnded, kShutdown, kStreamEnded };

// Whether this rank's job has ended, as its inbox shows: a Shutdown received (checked first: a
// Shutdown followed by the end of the stream is no loss), else the inbox closed. Leaves the inbox
// as it is.
JobEnd JobEndIn(const Inbox& inbox);

// OK while the job goes on; CANCELLED naming why once it has ended (JobEndIn): "told to shut down
// while loading", or the end of the Serve stream.
absl::Status LoadMayGoOn(const Inbox& inbox);

}  // namespace moe
