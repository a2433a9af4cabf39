#include "coordinator/ports_file.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace moe {

std::string PortsJson(const BoundPorts& p) {
  return absl::StrCat("{\"public\": ", p.public_port, ", \"cluster\": ", p.cluster_port,
                      ", \"metrics\": ", p.metrics_port, "}");
}

absl::Status WritePortsFile(const std::string& path, const BoundPorts& p) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << PortsJson(p) << "\n";
    f.close();
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace moe
