// Error handling shared by every module: absl::Status / absl::StatusOr across module boundaries,
// never exit() inside a library. The macros keep the early-return plumbing to one line.
#pragma once

#include <stdexcept>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define MOE_CONCAT_INNER_(a, b) a##b
#define MOE_CONCAT_(a, b) MOE_CONCAT_INNER_(a, b)

// Returns the status of `expr` from the enclosing function when it is not OK.
#define MOE_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    ::absl::Status moe_status_ = (expr);           \
    if (!moe_status_.ok()) return moe_status_;     \
  } while (0)

// `MOE_ASSIGN_OR_RETURN(auto x, MakeX());` assigns the value or returns the error.
#define MOE_ASSIGN_OR_RETURN(lhs, expr) \
  MOE_ASSIGN_OR_RETURN_IMPL_(MOE_CONCAT_(moe_statusor_, __LINE__), lhs, expr)
#define MOE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

namespace moe {

// Thrown for broken internal invariants (a bug, not bad input); carries file:line.
class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// Unwraps a StatusOr where an error can only mean the caller broke a precondition it checked.
template <typename T>
T ValueOrThrow(absl::StatusOr<T> v) {
  if (!v.ok()) throw std::runtime_error(std::string(v.status().message()));
  return std::move(v).value();
}

}  // namespace moe

#define MOE_CHECK(cond, ...)                                                                  \
  do {                                                                                        \
    if (!(cond))                                                                              \
      throw ::moe::InternalError(::absl::StrCat(__FILE__, ":", __LINE__, ": check failed: ", \
                                                #cond, " " __VA_OPT__(, ) __VA_ARGS__));      \
  } while (0)
