// Reading JSON files into nlohmann::json with errors that name the file.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace moe {

// Parses the JSON file at `path`; NotFound / InvalidArgument name the path and the parse error.
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

// Reads a whole file into a string.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

}  // namespace moe
