// Reading the small files of a model folder or a deployment (JSON, tokenizers, PEM), with errors
// that say what is wrong with the path.
#pragma once

#include <string>

#include "common/status.h"

namespace moe {

// OK when `path` is a regular file (symbolic links followed). Otherwise an error whose message is
// the path and what it is instead: NotFound "PATH does not exist"; InvalidArgument "PATH is a
// directory, not a file" or "PATH is not a regular file (a FIFO, socket or device)"; or the error of
// examining it (PermissionDenied for a folder on the way that may not be searched). Reading a FIFO
// would wait for a writer and reading /dev/zero would never end, so nothing but a regular file is
// opened.
absl::Status CheckRegularFile(const std::string& path);

// Reads a whole regular file into a string: CheckRegularFile's errors, PermissionDenied when it
// cannot be opened, DataLoss when reading fails part-way.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

}  // namespace moe
