// Reading JSON files into nlohmann::json with errors that name the file.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/file_util.h"  // ReadTextFile, for the files that are not JSON
#include "common/status.h"

namespace moe {

// How deeply a JSON file of a model folder (config.json, a safetensors header, tokenizer.json ...)
// may nest arrays and objects. Error messages quote values, and writing one out recurses: a value
// 100,000 levels deep in config.json overflowed the stack there. No real file comes near it.
inline constexpr int kMaxJsonFileNesting = 512;

// JSON's bracket structure read a byte at a time: the arrays and objects open, strings (and their
// escapes) skipped. Any text may be fed; nothing is checked. For NestsDeeperThan, and for readers
// of JSON as it streams (the front's tool calls).
class JsonNesting {
 public:
  void Step(char c) {
    if (in_string_) {
      if (escaped_) {
        escaped_ = false;
      } else if (c == '\\') {
        escaped_ = true;
      } else if (c == '"') {
        in_string_ = false;
      }
    } else if (c == '"') {
      in_string_ = true;
    } else if (c == '[' || c == '{') {
      ++depth_;
    } else if (c == ']' || c == '}') {
      --depth_;
    }
  }
  int depth() const { return depth_; }  // brackets open outside strings
  bool in_string() const { return in_string_; }

 private:
  int depth_ = 0;
  bool in_string_ = false, escaped_ = false;
};

// Whether `text` (JSON or any text; strings are skipped) opens more than `limit` arrays and objects
// inside one another. Linear and without recursion: checked before a parser sees the text.
bool NestsDeeperThan(std::string_view text, int limit);

// Parses `text` as one JSON value, as Python's json.loads would (less its NaN and Infinity, and a
// number out of double's range, which Python reads as infinity and this refuses): an
// InvalidArgument error says what is wrong and where ("not valid JSON: parse error at line 3,
// column 7: syntax error while parsing value - ...", "number overflow parsing '1e400'"), without
// naming the text (the caller does). A NUL byte is refused naming its offset: nlohmann reads one as
// the end of the input and would ignore what follows. Nesting past `max_nesting` is refused before
// the parser recurses. Instantiated for nlohmann::json and nlohmann::ordered_json.
template <typename Json = nlohmann::json>
absl::StatusOr<Json> ParseJson(std::string_view text, int max_nesting = kMaxJsonFileNesting);

// Parses the JSON file at `path`; NotFound / InvalidArgument name the path and what ParseJson
// found wrong.
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

}  // namespace moe
