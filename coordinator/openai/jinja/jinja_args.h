// Python-style binding of a call's arguments to parameter names, shared by the filters, tests, methods
// and globals, so that each of them reads its parameters by position and reports misuse the way
// Python's TypeError does.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/openai/jinja/jinja_text.h"
#include "coordinator/openai/jinja/jinja_value.h"

namespace moe::jinja {

// Binds positional and keyword arguments to a function's parameter names, with Python's complaints.
class Args {
 public:
  Args(std::string_view function, const CallArgs& args, std::initializer_list<std::string_view> names)
      : names_(names), values_(names.size()) {
    if (args.positional.size() > names_.size()) {
      Fail(absl::StrCat(std::string(function), "() takes at most ", names_.size(), " argument(s) (",
                        args.positional.size(), " given)"));
    }
    for (size_t i = 0; i < args.positional.size(); ++i) values_[i] = args.positional[i];
    for (const auto& [key, value] : args.keywords) {
      const auto it = std::find(names_.begin(), names_.end(), key);
      if (it == names_.end())
        Fail(absl::StrCat(std::string(function), "() got an unexpected keyword argument '", key, "'"));
      auto& slot = values_[it - names_.begin()];
      if (slot)
        Fail(absl::StrCat(std::string(std::string(function)), "() got multiple values for argument '", key,
                          "'"));
      slot = value;
    }
  }

  bool has(size_t i) const { return values_[i].has_value(); }
  Value get(size_t i, Value dflt = Value::None()) const { return values_[i] ? *values_[i] : dflt; }

 private:
  std::vector<std::string_view> names_;
  std::vector<std::optional<Value>> values_;
};

inline int64_t ToIndex(const Value& v) {
  if (v.is_undefined()) Fail(v.undefined_message());
  if (!v.is_integral()) Fail("'" + TypeName(v) + "' object cannot be interpreted as an integer");
  return v.as_int();
}

inline std::optional<std::string> OptionalString(const Value& v, std::string_view what) {
  if (v.is_none()) return std::nullopt;
  if (!v.is_string()) Fail(absl::StrCat(std::string(what), " must be None or str, not ", TypeName(v)));
  return v.as_string();
}

inline std::vector<Value> Strings(const std::vector<std::string>& parts) {
  std::vector<Value> out;
  for (const std::string& p : parts) out.push_back(Value::String(p));
  return out;
}

// str.replace, refused before building a result larger than kMaxStringBytes.
inline Value ReplaceChecked(const std::string& s, const std::string& old, const std::string& replacement,
                            int64_t count) {
  int64_t hits = text::Count(s, old);
  if (count >= 0) hits = std::min(hits, count);
  const int64_t growth = static_cast<int64_t>(replacement.size()) - static_cast<int64_t>(old.size());
  if (growth > 0) CheckStringSize(s.size() + static_cast<size_t>(hits) * static_cast<size_t>(growth));
  return Value::String(text::Replace(s, old, replacement, count));
}

}  // namespace moe::jinja
