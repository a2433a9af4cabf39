// Reading the small files of a model folder or a deployment (JSON, tokenizers, PEM), with errors
// that say what is wrong with the path.
#pragma once

#include <string>

#include "common/status.h"

namespace moe {

// Why `path` is not a file to read, in words that follow the path in an error message ("does not
// exist", "is a directory, not a file", "is not a regular file (a FIFO, socket or device)"), or ""
// when it is a regular file (symbolic links followed). Reading a FIFO would wait for a writer and
// reading /dev/zero would never end, so nothing but a regular file is opened.
std::string NotAFileReason(const std::string& path);

// Reads a whole regular file into a string: NotFound when it does not exist, InvalidArgument when
// it is something else (NotAFileReason), DataLoss when reading fails part-way.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

}  // namespace moe
