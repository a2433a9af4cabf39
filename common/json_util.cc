#include "common/json_util.h"

#include "common/file_util.h"

namespace moe {

bool NestsDeeperThan(std::string_view text, int limit) {
  JsonNesting nesting;
  for (const char c : text) {
    nesting.Step(c);
    if (nesting.depth() > limit) return true;
  }
  return false;
}

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  if (NestsDeeperThan(text, kMaxJsonFileNesting)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": nests arrays and objects more than ", kMaxJsonFileNesting, " levels deep"));
  }
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  return j;
}

}  // namespace moe
