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

template <typename Json>
absl::StatusOr<Json> ParseJson(std::string_view text, int max_nesting) {
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("not valid JSON: a NUL byte at offset ", nul));
  }
  if (NestsDeeperThan(text, max_nesting)) {
    return absl::InvalidArgumentError(absl::StrCat("nests arrays and objects more than ", max_nesting, " levels deep"));
  }
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 9: ...": the reason without its tag.
    std::string_view why = e.what();
    if (const size_t tag_end = why.find("] "); why.starts_with("[json.exception.") && tag_end != std::string_view::npos) {
      why.remove_prefix(tag_end + 2);
    }
    return absl::InvalidArgumentError(absl::StrCat("not valid JSON: ", std::string(why)));
  }
}

template absl::StatusOr<nlohmann::json> ParseJson<nlohmann::json>(std::string_view, int);
template absl::StatusOr<nlohmann::ordered_json> ParseJson<nlohmann::ordered_json>(std::string_view, int);

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  absl::StatusOr<nlohmann::json> j = ParseJson(text);
  if (!j.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", j.status().message()));
  return j;
}

}  // namespace moe
