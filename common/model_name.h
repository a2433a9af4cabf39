// The name the APIs give a model by default: its folder's last path component ("/m/mixtral/" ->
// "mixtral"), as vLLM names a model by the path it was given.
#pragma once

#include <string>

namespace moe {

inline std::string ModelNameOfDir(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir.substr(dir.find_last_of('/') + 1);
}

}  // namespace moe
