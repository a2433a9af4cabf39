#include "coordinator/openai/jinja/jinja_builtins.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "coordinator/openai/jinja/jinja_args.h"
#include "coordinator/openai/jinja/jinja_text.h"

// Callables: the globals transformers installs, macros, and the str/dict/list methods the sandbox allows.
namespace moe::jinja {
namespace {

// jinja2.sandbox.MAX_RANGE
constexpr int64_t kMaxRange = 100000;

class Builtin : public Callable {
 public:
  using Fn = std::function<Value(Interpreter&, CallArgs)>;
  Builtin(std::string name, Fn fn) : name_(std::move(name)), fn_(std::move(fn)) {}
  std::string Name() const override { return name_; }
  std::string TypeName() const override { return "function"; }
  Value Call(Interpreter& interp, CallArgs args) const override { return fn_(interp, std::move(args)); }

 private:
  std::string name_;
  Fn fn_;
};

Value MakeBuiltin(std::string name, Builtin::Fn fn) {
  return Value::FromCallable(std::make_shared<Builtin>(std::move(name), std::move(fn)));
}

Value CallMethod(const Value& self, const std::string& name, const CallArgs& args);

class BoundMethod : public Callable {
 public:
  BoundMethod(Value self, std::string name) : self_(std::move(self)), name_(std::move(name)) {}
  ~BoundMethod() override {  // `{% set ns.v = {'k': ns.v}.items %}` nests through methods too
    std::vector<Value> self;
    self.push_back(std::move(self_));
    DestroyValues(self);
  }
  std::string Name() const override { return name_; }
  std::string TypeName() const override { return "builtin_function_or_method"; }
  Value Call(Interpreter&, CallArgs args) const override { return CallMethod(self_, name_, args); }

 private:
  Value self_;
  std::string name_;
};

class Macro : public Callable {
 public:
  Macro(std::shared_ptr<const MacroDef> def, std::weak_ptr<Scope> scope)
      : def_(std::move(def)), scope_(std::move(scope)) {}
  std::string Name() const override { return def_->name; }
  std::string TypeName() const override { return "Macro"; }
  Value Call(Interpreter& interp, CallArgs args) const override {
    // The defining scope is held weakly (a macro stored in its own scope would otherwise keep it alive
    // forever); when it is gone, the template's top level is the best remaining closure.
    std::shared_ptr<Scope> scope = scope_.lock();
    return interp.InvokeMacro(*def_, scope ? scope : interp.root(), std::move(args));
  }

 private:
  std::shared_ptr<const MacroDef> def_;
  std::weak_ptr<Scope> scope_;
};

class Joiner : public Callable {
 public:
  explicit Joiner(std::string sep) : sep_(std::move(sep)) {}
  std::string Name() const override { return "joiner"; }
  std::string TypeName() const override { return "Joiner"; }
  Value Call(Interpreter&, CallArgs) const override {
    if (!used_) {
      used_ = true;
      return Value::String("");
    }
    return Value::String(sep_);
  }

 private:
  std::string sep_;
  mutable bool used_ = false;  // per-render object: created by the template's own joiner() call
};

bool IsStrMethod(std::string_view name) {
  static const auto* const kStrMethods = new std::set<std::string_view>{
      "capitalize", "center",  "count",      "endswith", "find",      "format",  "index",
      "isalnum",    "isalpha", "isdigit",    "islower",  "isspace",   "istitle", "isupper",
      "join",       "ljust",   "lower",      "lstrip",   "partition", "replace", "rfind",
      "rindex",     "rjust",   "rpartition", "rsplit",   "rstrip",    "split",   "splitlines",
      "startswith", "strip",   "swapcase",   "title",    "upper",     "zfill"};
  return kStrMethods->count(name) > 0;
}

std::u32string SliceCodePoints(const std::u32string& s, const Args& args, size_t start_index) {
  auto bound = [&](size_t i, int64_t dflt) {
    const Value v = args.get(i);
    if (v.is_none()) return dflt;
    int64_t b = ToIndex(v);
    const int64_t n = static_cast<int64_t>(s.size());
    if (b < 0) b = std::max<int64_t>(0, b + n);
    return std::min(b, n);
  };
  const int64_t start = bound(start_index, 0), end = bound(start_index + 1, static_cast<int64_t>(s.size()));
  return start >= end ? std::u32string() : s.substr(start, end - start);
}

Value StrFormat(const std::string& format, const CallArgs& a) {
  // str.format with plain fields: {} {0} {name}, and {{ }} escapes. Format specs are not supported.
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < format.size(); ++i) {
    const char c = format[i];
    if (c == '}') {
      if (i + 1 < format.size() && format[i + 1] == '}') {
        out += '}';
        ++i;
        continue;
      }
      Fail("Single '}' encountered in format string");
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < format.size() && format[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    const size_t close = format.find('}', i);
    if (close == std::string::npos) Fail("Single '{' encountered in format string");
    const std::string field = format.substr(i + 1, close - i - 1);
    if (field.find_first_of(":![.") != std::string::npos)
      Fail("format specs in str.format are not supported");
    const Value* value = nullptr;
    if (field.empty() ||
        std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
      const size_t index = field.empty() ? auto_index++ : std::stoul(field);
      if (index >= a.positional.size())
        Fail("Replacement index " + std::to_string(index) + " out of range for positional args tuple");
      value = &a.positional[index];
    } else {
      for (const auto& [key, kv] : a.keywords) {
        if (key == field) value = &kv;
      }
      if (value == nullptr) Fail(text::PyRepr(field));
    }
    out += ToStr(*value);
    CheckStringSize(out.size());
    i = close;
  }
  return Value::String(std::move(out));
}

Value CallStrMethod(const std::string& self, const std::string& name, const CallArgs& a) {
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const Args args(name, a, {"chars"});
    return Value::String(
        text::Strip(self, OptionalString(args.get(0), name + " arg"), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    const Args args(name, a, {"sep", "maxsplit"});
    const std::optional<std::string> sep = OptionalString(args.get(0), "sep");
    if (sep && sep->empty()) Fail("empty separator");
    const int64_t maxsplit = ToIndex(args.get(1, Value::Int(-1)));
    return MakeList(
        Strings(name == "split" ? text::Split(self, sep, maxsplit) : text::RSplit(self, sep, maxsplit)));
  }
  if (name == "splitlines") {
    const Args args(name, a, {"keepends"});
    return MakeList(Strings(text::SplitLines(self, Truthy(args.get(0, Value::Bool(false))))));
  }
  if (name == "startswith" || name == "endswith") {
    const Args args(name, a, {"prefix", "start", "end"});
    const std::u32string s = SliceCodePoints(text::Decode(self), args, 1);
    const Value prefix = args.get(0);
    std::vector<std::string> candidates;
    if (prefix.is_string()) {
      candidates.push_back(prefix.as_string());
    } else if (prefix.kind() == Value::Kind::kList && prefix.list()->flavor == List::Flavor::kTuple) {
      for (const Value& p : prefix.list()->items) {
        if (!p.is_string()) Fail("tuple for " + name + " must only contain str, not " + TypeName(p));
        candidates.push_back(p.as_string());
      }
    } else {
      Fail(name + " first arg must be str or a tuple of str, not " + TypeName(prefix));
    }
    for (const std::string& c : candidates) {
      const std::u32string p = text::Decode(c);
      if (p.size() > s.size()) continue;
      if (name == "startswith" ? s.compare(0, p.size(), p) == 0
                               : s.compare(s.size() - p.size(), p.size(), p) == 0) {
        return Value::Bool(true);
      }
    }
    return Value::Bool(false);
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize" || name == "swapcase") {
    Args(name, a, {});
    if (name == "upper") return Value::String(text::Upper(self));
    if (name == "lower") return Value::String(text::Lower(self));
    if (name == "title") return Value::String(text::Title(self));
    if (name == "capitalize") return Value::String(text::Capitalize(self));
    std::string out;
    for (char32_t c : text::Decode(self)) {
      const std::string one = text::Encode(std::u32string(1, c));
      out += text::IsUpper(c) ? text::Lower(one) : text::Upper(one);
    }
    return Value::String(std::move(out));
  }
  if (name == "replace") {
    const Args args(name, a, {"old", "new", "count"});
    if (!args.get(0).is_string() || !args.get(1).is_string()) Fail("replace() arguments must be str");
    return ReplaceChecked(self, args.get(0).as_string(), args.get(1).as_string(),
                          ToIndex(args.get(2, Value::Int(-1))));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    const Args args(name, a, {"sub", "start", "end"});
    if (!args.get(0).is_string()) Fail("must be str, not " + TypeName(args.get(0)));
    const std::u32string all = text::Decode(self);
    const std::u32string s = SliceCodePoints(all, args, 1);
    int64_t offset = 0;
    if (!args.get(1).is_none()) {
      offset = ToIndex(args.get(1));
      if (offset < 0) offset = std::max<int64_t>(0, offset + static_cast<int64_t>(all.size()));
    }
    const std::string sub = args.get(0).as_string();
    if (name == "count") return Value::Int(text::Count(text::Encode(s), sub));
    const int64_t at = (name == "find" || name == "index") ? text::Find(text::Encode(s), sub)
                                                           : text::RFind(text::Encode(s), sub);
    if (at < 0) {
      if (name == "index" || name == "rindex") Fail("substring not found");
      return Value::Int(-1);
    }
    return Value::Int(at + offset);
  }
  if (name == "join") {
    const Args args(name, a, {"iterable"});
    std::vector<std::string> parts;
    const std::vector<Value> items = Iterate(args.get(0));
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_string()) {
        Fail(absl::StrCat("sequence item ", i, ": expected str instance, ", TypeName(items[i]), " found"));
      }
      parts.push_back(items[i].as_string());
    }
    return Value::String(absl::StrJoin(parts, self));
  }
  if (name.compare(0, 2, "is") == 0) {
    Args(name, a, {});
    const std::u32string s = text::Decode(self);
    if (name == "islower") return Value::Bool(text::IsLowerString(self));
    if (name == "isupper") return Value::Bool(text::IsUpperString(self));
    if (name == "istitle") return Value::Bool(text::IsTitleString(self));
    if (s.empty()) return Value::Bool(false);
    std::function<bool(char32_t)> pred;
    if (name == "isdigit") pred = text::IsDigit;
    if (name == "isalpha") pred = text::IsAlpha;
    if (name == "isalnum") pred = [](char32_t c) { return text::IsAlpha(c) || text::IsDigit(c); };
    if (name == "isspace") pred = text::IsSpace;
    return Value::Bool(std::all_of(s.begin(), s.end(), pred));
  }
  if (name == "center" || name == "ljust" || name == "rjust") {
    const Args args(name, a, {"width", "fillchar"});
    const int64_t width = ToIndex(args.get(0));
    const std::string fill = args.has(1) ? ToStr(args.get(1)) : " ";
    CheckStringSize(std::max<int64_t>(0, width) * fill.size());
    if (text::CodePointCount(fill) != 1) Fail("The fill character must be exactly one character long");
    const int64_t len = static_cast<int64_t>(text::CodePointCount(self));
    if (width <= len) return Value::String(self);
    const int64_t pad = width - len;
    int64_t left = name == "ljust" ? 0 : name == "rjust" ? pad : pad / 2 + (pad & width & 1);
    std::string out;
    for (int64_t i = 0; i < left; ++i) out += fill;
    out += self;
    for (int64_t i = 0; i < pad - left; ++i) out += fill;
    return Value::String(std::move(out));
  }
  if (name == "zfill") {
    const Args args(name, a, {"width"});
    const int64_t width = ToIndex(args.get(0));
    CheckStringSize(std::max<int64_t>(0, width));
    const int64_t len = static_cast<int64_t>(text::CodePointCount(self));
    if (width <= len) return Value::String(self);
    const bool sign = !self.empty() && (self[0] == '+' || self[0] == '-');
    return Value::String((sign ? self.substr(0, 1) : "") + std::string(width - len, '0') +
                         self.substr(sign ? 1 : 0));
  }
  if (name == "partition" || name == "rpartition") {
    const Args args(name, a, {"sep"});
    if (!args.get(0).is_string()) Fail("must be str, not " + TypeName(args.get(0)));
    const std::string sep = args.get(0).as_string();
    if (sep.empty()) Fail("empty separator");
    const size_t at = name == "partition" ? self.find(sep) : self.rfind(sep);
    if (at == std::string::npos) {
      return name == "partition" ? MakeList(Strings({self, "", ""}), List::Flavor::kTuple)
                                 : MakeList(Strings({"", "", self}), List::Flavor::kTuple);
    }
    return MakeList(Strings({self.substr(0, at), sep, self.substr(at + sep.size())}), List::Flavor::kTuple);
  }
  if (name == "format") return StrFormat(self, a);
  Fail("str has no method " + name);
}

Value CallMethod(const Value& self, const std::string& name, const CallArgs& a) {
  if (self.is_string()) return CallStrMethod(self.as_string(), name, a);
  if (self.kind() == Value::Kind::kDict) {
    if (name == "get") {
      const Args args("get", a, {"key", "default"});
      const Value* v = self.dict()->Find(args.get(0));
      return v != nullptr ? *v : args.get(1);
    }
    Args(name, a, {});
    if (name == "items") return DictView(self, List::Flavor::kDictItems);
    if (name == "keys") return DictView(self, List::Flavor::kDictKeys);
    return DictView(self, List::Flavor::kDictValues);
  }
  // list and tuple: index and count
  const std::vector<Value>& items = self.list()->items;
  if (name == "count") {
    const Args args("count", a, {"value"});
    return Value::Int(
        std::count_if(items.begin(), items.end(), [&](const Value& x) { return Equals(x, args.get(0)); }));
  }
  const Args args("index", a, {"value", "start", "stop"});
  for (size_t i = 0; i < items.size(); ++i) {
    if (Equals(items[i], args.get(0))) return Value::Int(static_cast<int64_t>(i));
  }
  Fail(Repr(args.get(0)) + " is not in " + TypeName(self));
}

class LoopCallable : public Callable {
 public:
  LoopCallable(std::shared_ptr<LoopState> loop, std::string name)
      : loop_(std::move(loop)), name_(std::move(name)) {}
  std::string Name() const override { return name_; }
  std::string TypeName() const override { return "method"; }
  Value Call(Interpreter&, CallArgs args) const override {
    if (!args.keywords.empty()) Fail("loop." + name_ + "() takes no keyword arguments");
    if (name_ == "cycle") {
      if (args.positional.empty()) Fail("no items for cycling given");
      return args.positional[loop_->index0 % static_cast<int64_t>(args.positional.size())];
    }
    bool changed = !loop_->last_changed.has_value() || loop_->last_changed->size() != args.positional.size();
    for (size_t i = 0; !changed && i < args.positional.size(); ++i) {
      changed = !Equals((*loop_->last_changed)[i], args.positional[i]);
    }
    if (changed) loop_->last_changed = args.positional;
    return Value::Bool(changed);
  }

 private:
  std::shared_ptr<LoopState> loop_;
  std::string name_;
};

Value GlobalRange(Interpreter&, CallArgs a) {
  if (!a.keywords.empty()) Fail("range() takes no keyword arguments");
  if (a.positional.empty() || a.positional.size() > 3) {
    Fail(absl::StrCat("range expected at most 3 arguments, got ", a.positional.size()));
  }
  int64_t start = 0, stop, step = 1;
  if (a.positional.size() == 1) {
    stop = ToIndex(a.positional[0]);
  } else {
    start = ToIndex(a.positional[0]);
    stop = ToIndex(a.positional[1]);
    if (a.positional.size() == 3) step = ToIndex(a.positional[2]);
  }
  if (step == 0) Fail("range() arg 3 must not be zero");
  // 128-bit arithmetic: the length and every element are exact even for extreme bounds.
  const __int128 lo = start, hi = stop, st = step;
  __int128 count = 0;
  if (st > 0 && hi > lo) count = (hi - lo + st - 1) / st;
  if (st < 0 && hi < lo) count = (lo - hi - st - 1) / -st;
  if (count > kMaxRange) {
    Fail(absl::StrCat("Range too big. The sandbox blocks ranges larger than MAX_RANGE (", kMaxRange, ")."));
  }
  std::vector<Value> items;
  for (__int128 i = 0; i < count; ++i) items.push_back(Value::Int(static_cast<int64_t>(lo + i * st)));
  return MakeList(std::move(items));
}

std::shared_ptr<Dict> DictFromArgs(const CallArgs& a, std::string_view function) {
  auto dict = std::make_shared<Dict>();
  if (a.positional.size() > 1)
    Fail(absl::StrCat(std::string(function), " expected at most 1 argument, got ", a.positional.size()));
  if (!a.positional.empty()) {
    const Value& source = a.positional[0];
    if (source.kind() == Value::Kind::kDict) {
      for (const auto& [k, v] : source.dict()->entries()) dict->Set(k, v);
    } else {
      for (const Value& pair : Iterate(source)) {
        const std::vector<Value> kv = Iterate(pair);
        if (kv.size() != 2)
          Fail("dictionary update sequence element has length " + std::to_string(kv.size()) +
               "; 2 is required");
        dict->Set(kv[0], kv[1]);
      }
    }
  }
  for (const auto& [key, value] : a.keywords) dict->Set(Value::String(key), value);
  return dict;
}

Value GlobalNamespace(Interpreter& interp, CallArgs a) {
  auto ns = std::make_shared<Namespace>();
  interp.TrackNamespace(ns);
  const std::shared_ptr<Dict> attributes = DictFromArgs(a, "namespace");
  for (const auto& [k, v] : attributes->entries()) {
    if (k.is_string() && !k.as_string().empty() && k.as_string()[0] == '_') {
      Fail("Chat templates cannot store underscore-prefixed attributes on a namespace, but got " +
           text::PyRepr(k.as_string()) + ". Please rename the attribute.");
    }
    ns->attributes.Set(k, v);
  }
  return Value::FromNamespace(std::move(ns));
}

Value GlobalDict(Interpreter&, CallArgs a) { return MakeDict(DictFromArgs(a, "dict")); }

Value GlobalRaiseException(Interpreter&, CallArgs a) {
  const Args args("raise_exception", a, {"message"});
  if (!args.has(0)) Fail("raise_exception() missing 1 required positional argument: 'message'");
  Fail(ToStr(args.get(0)));
}

Value GlobalStrftimeNow(Interpreter&, CallArgs a) {
  const Args args("strftime_now", a, {"format"});
  if (!args.get(0).is_string()) Fail("strftime() argument 1 must be str, not " + TypeName(args.get(0)));
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  std::string buf(256, '\0');
  const std::string& format = args.get(0).as_string();
  while (true) {
    const size_t n = std::strftime(buf.data(), buf.size(), format.c_str(), &local);
    if (n > 0 || format.empty() || buf.size() > 65536) {
      buf.resize(n);
      return Value::String(buf);
    }
    buf.resize(buf.size() * 4);
  }
}

Value GlobalJoiner(Interpreter&, CallArgs a) {
  const Args args("joiner", a, {"sep"});
  return Value::FromCallable(std::make_shared<Joiner>(ToStr(args.get(0, Value::String(", ")))));
}

}  // namespace

void InstallGlobals(Scope& scope) {
  scope.Set("range", MakeBuiltin("range", GlobalRange));
  scope.Set("namespace", MakeBuiltin("namespace", GlobalNamespace));
  scope.Set("dict", MakeBuiltin("dict", GlobalDict));
  scope.Set("joiner", MakeBuiltin("joiner", GlobalJoiner));
  scope.Set("raise_exception", MakeBuiltin("raise_exception", GlobalRaiseException));
  scope.Set("strftime_now", MakeBuiltin("strftime_now", GlobalStrftimeNow));
}

std::optional<Value> LookupMethod(const Value& obj, const std::string& name) {
  static const std::set<std::string_view> kDictMethods = {"get", "items", "keys", "values"};
  static const std::set<std::string_view> kDictMutators = {"clear", "pop", "popitem", "setdefault", "update"};
  static const std::set<std::string_view> kListMethods = {"index", "count"};
  static const std::set<std::string_view> kListMutators = {"append", "clear",  "extend",  "insert",
                                                           "pop",    "remove", "reverse", "sort"};
  bool method = false, mutator = false;
  if (obj.is_string()) {
    method = IsStrMethod(name);
  } else if (obj.kind() == Value::Kind::kDict) {
    method = kDictMethods.count(name) > 0;
    mutator = kDictMutators.count(name) > 0;
  } else if (obj.kind() == Value::Kind::kList && obj.list()->flavor == List::Flavor::kList) {
    method = kListMethods.count(name) > 0;
    mutator = kListMutators.count(name) > 0;
  } else if (obj.kind() == Value::Kind::kList && obj.list()->flavor == List::Flavor::kTuple) {
    method = kListMethods.count(name) > 0;
  }
  if (mutator) {
    return Value::Undefined("access to attribute " + text::PyRepr(name) + " of " +
                            text::PyRepr(TypeName(obj)) + " object is unsafe.");
  }
  if (!method) return std::nullopt;
  return Value::FromCallable(std::make_shared<BoundMethod>(obj, name));
}

Value LoopMethod(const Value& loop, const std::string& name) {
  return Value::FromCallable(std::make_shared<LoopCallable>(loop.loop(), name));
}

Value MakeMacro(std::shared_ptr<const MacroDef> def, std::weak_ptr<Scope> scope) {
  return Value::FromCallable(std::make_shared<Macro>(std::move(def), std::move(scope)));
}

}  // namespace moe::jinja