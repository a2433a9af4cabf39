// One command-line argument read as a flag, the same way by every program of the project:
// "--name=VALUE" carries its value inline; "--name" takes the next argument when the flag needs one.
// What a flag means, and the error texts, stay with each program's parser.
#pragma once

#include <optional>
#include <string>

namespace moe {

struct FlagArg {
  std::string name;                  // "--name" (or the argument as given when it is not a flag)
  std::optional<std::string> value;  // the inline value of "--name=VALUE"
};

inline FlagArg SplitFlagArg(const std::string& arg) {
  const size_t eq = arg.find('=');
  if (arg.rfind("--", 0) != 0 || eq == std::string::npos) return {arg, std::nullopt};
  return {arg.substr(0, eq), arg.substr(eq + 1)};
}

}  // namespace moe
