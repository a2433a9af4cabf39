// The ports the coordinator listens on, for whoever started it with port 0: written atomically
// (FILE.tmp, then rename) so a reader never sees half a file.
#pragma once

#include <string>

#include "common/status.h"

namespace moe {

struct BoundPorts {
  int public_port = 0;
  int cluster_port = 0;
  int metrics_port = 0;  // 0: no metrics endpoint
};

// {"public": P, "cluster": C, "metrics": M} on one line.
std::string PortsJson(const BoundPorts& p);
absl::Status WritePortsFile(const std::string& path, const BoundPorts& p);

}  // namespace moe
