// Where in a text something came from: the bytes [begin, end).
#pragma once

#include <cstddef>

namespace moe {

struct TextSpan {
  size_t begin = 0;
  size_t end = 0;
  bool operator==(const TextSpan&) const = default;
};

}  // namespace moe
