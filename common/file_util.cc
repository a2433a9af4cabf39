#include "common/file_util.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace moe {

absl::Status CheckRegularFile(const std::string& path) {
  std::error_code ec;
  const std::filesystem::file_status st = std::filesystem::status(path, ec);
  switch (st.type()) {
    case std::filesystem::file_type::regular:
      return absl::OkStatus();
    case std::filesystem::file_type::not_found:
      return absl::NotFoundError(absl::StrCat(path, " does not exist"));
    case std::filesystem::file_type::directory:
      return absl::InvalidArgumentError(absl::StrCat(path, " is a directory, not a file"));
    case std::filesystem::file_type::none: {  // status itself failed (a folder on the way not searchable ...)
      const std::string msg = absl::StrCat(path, " cannot be examined (", ec.message(), ")");
      return ec == std::errc::permission_denied ? absl::PermissionDeniedError(msg) : absl::InvalidArgumentError(msg);
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file (a FIFO, socket or device)"));
  }
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  MOE_RETURN_IF_ERROR(CheckRegularFile(path));
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string msg = absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    return err == EACCES || err == EPERM ? absl::PermissionDeniedError(msg) : absl::InvalidArgumentError(msg);
  }
  std::string text;
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) text.append(buf, static_cast<size_t>(in.gcount()));
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": cannot be read"));
  return text;
}

}  // namespace moe
