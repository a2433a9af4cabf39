#include "common/file_util.h"

#include <filesystem>
#include <fstream>
#include <sstream>

namespace moe {

std::string NotAFileReason(const std::string& path) {
  std::error_code ec;
  const std::filesystem::file_status st = std::filesystem::status(path, ec);
  switch (st.type()) {
    case std::filesystem::file_type::regular:
      return "";
    case std::filesystem::file_type::not_found:
      return "does not exist";
    case std::filesystem::file_type::directory:
      return "is a directory, not a file";
    case std::filesystem::file_type::none:  // status itself failed (a parent not searchable ...)
      return absl::StrCat("cannot be examined (", ec.message(), ")");
    default:
      return "is not a regular file (a FIFO, socket or device)";
  }
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  if (const std::string why = NotAFileReason(path); !why.empty()) {
    const std::string msg = absl::StrCat(path, " ", why);
    return why == "does not exist" ? absl::NotFoundError(msg) : absl::InvalidArgumentError(msg);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": cannot be read"));
  return ss.str();
}

}  // namespace moe
