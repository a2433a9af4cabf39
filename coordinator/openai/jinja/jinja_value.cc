#include "coordinator/openai/jinja/jinja_value.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "coordinator/openai/jinja/jinja_text.h"

namespace moe::jinja {
namespace {

// Containers can hold themselves through a namespace; Python reports a RecursionError, so do we
// instead of overflowing the stack.
constexpr int kMaxNesting = 200;

void CheckDepth(int depth) {
  if (depth > kMaxNesting) Fail("maximum recursion depth exceeded while handling a nested value");
}

bool IsSequence(const Value& v) {
  return v.kind() == Value::Kind::kList &&
         (v.list()->flavor == List::Flavor::kList || v.list()->flavor == List::Flavor::kTuple);
}

std::string ReprImpl(const Value& v, int depth);

std::string JoinRepr(const std::vector<Value>& items, int depth) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ", ";
    out += ReprImpl(items[i], depth + 1);
    CheckStringSize(out.size());
  }
  return out;
}

std::string DictRepr(const Dict& d, int depth) {
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : d.entries()) {
    if (!first) out += ", ";
    first = false;
    absl::StrAppend(&out, ReprImpl(k, depth + 1), ": ", ReprImpl(v, depth + 1));
    CheckStringSize(out.size());
  }
  return out + "}";
}

std::string ReprImpl(const Value& v, int depth) {
  CheckDepth(depth);
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kString:
      return text::PyRepr(v.as_string());
    case Value::Kind::kList: {
      const List& l = *v.list();
      switch (l.flavor) {
        case List::Flavor::kList:
          return "[" + JoinRepr(l.items, depth) + "]";
        case List::Flavor::kTuple:
          return "(" + JoinRepr(l.items, depth) + (l.items.size() == 1 ? ",)" : ")");
        case List::Flavor::kIterator:
          return "<" + l.iterator_type + " object>";
        case List::Flavor::kDictItems:
          return "dict_items([" + JoinRepr(l.items, depth) + "])";
        case List::Flavor::kDictKeys:
          return "dict_keys([" + JoinRepr(l.items, depth) + "])";
        case List::Flavor::kDictValues:
          return "dict_values([" + JoinRepr(l.items, depth) + "])";
      }
      return "";
    }
    case Value::Kind::kDict:
      return DictRepr(*v.dict(), depth);
    case Value::Kind::kNamespace:
      return "<Namespace " + DictRepr(v.ns()->attributes, depth) + ">";
    case Value::Kind::kCallable:
      return "<" + v.callable()->TypeName() + " " + v.callable()->Name() + ">";
    case Value::Kind::kLoop: {
      const LoopState& loop = *v.loop();
      return absl::StrCat("<LoopContext ", loop.index0 + 1, "/", loop.items->items.size(), ">");
    }
    default:
      return ToStr(v);
  }
}

bool EqualsImpl(const Value& a, const Value& b, int depth) {
  CheckDepth(depth);
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() == b.as_int();
    return a.as_float() == b.as_float();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone:
      return true;
    case K::kString:
      return a.as_string() == b.as_string();
    case K::kList: {
      const List &x = *a.list(), &y = *b.list();
      if (a.list() == b.list()) return true;
      if (x.flavor != y.flavor || x.flavor == List::Flavor::kIterator ||
          x.flavor == List::Flavor::kDictValues || x.items.size() != y.items.size()) {
        return false;
      }
      if (x.flavor == List::Flavor::kDictKeys || x.flavor == List::Flavor::kDictItems) {
        // Set semantics: every element of one appears in the other.
        for (const Value& item : x.items) {
          bool found = false;
          for (const Value& other : y.items) found = found || EqualsImpl(item, other, depth + 1);
          if (!found) return false;
        }
        return true;
      }
      for (size_t i = 0; i < x.items.size(); ++i) {
        if (!EqualsImpl(x.items[i], y.items[i], depth + 1)) return false;
      }
      return true;
    }
    case K::kDict: {
      const Dict &x = *a.dict(), &y = *b.dict();
      if (x.size() != y.size()) return false;
      for (const auto& [k, v] : x.entries()) {
        const Value* other = y.Find(k);
        if (other == nullptr || !EqualsImpl(v, *other, depth + 1)) return false;
      }
      return true;
    }
    case K::kNamespace:
      return a.ns() == b.ns();
    case K::kCallable:
      return a.callable() == b.callable();
    case K::kLoop:
      return a.loop() == b.loop();
    default:
      return false;
  }
}

[[noreturn]] void FailUndefined(const Value& v) { Fail(v.undefined_message()); }

void FailIfUndefined(const Value& a, const Value& b) {
  if (a.is_undefined()) FailUndefined(a);
  if (b.is_undefined()) FailUndefined(b);
}

[[noreturn]] void Unsupported(std::string_view op, const Value& a, const Value& b) {
  const std::string name = op == "**" ? "** or pow()" : std::string(op);  // CPython's wording
  Fail(absl::StrCat("unsupported operand type(s) for ", name, ": '", TypeName(a), "' and '", TypeName(b),
                    "'"));
}

[[noreturn]] void FailOverflow() { Fail("integer overflow: this engine's integers are 64-bit"); }

int64_t AddInt(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) FailOverflow();
  return r;
}

int64_t SubInt(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_sub_overflow(a, b, &r)) FailOverflow();
  return r;
}

int64_t MulInt(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) FailOverflow();
  return r;
}

Value Repeat(const Value& seq, int64_t n) {
  if (n <= 0) {
    return seq.is_string() ? Value::String("") : MakeList({}, seq.list()->flavor);
  }
  if (seq.is_string()) {
    if (static_cast<double>(seq.as_string().size()) * static_cast<double>(n) > kMaxStringBytes)
      Fail("string repetition is too large");
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.as_string();
    return Value::String(std::move(out));
  }
  const auto& items = seq.list()->items;
  if (static_cast<double>(items.size()) * static_cast<double>(n) > kMaxListItems) {
    Fail("list repetition is too large");
  }
  std::vector<Value> out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), items.begin(), items.end());
  return MakeList(std::move(out), seq.list()->flavor);
}

// CPython's float divmod, so that -7.5 // 2 and -7.5 % 2 come out as Python's.
std::pair<double, double> FloatDivMod(double x, double y) {
  double mod = std::fmod(x, y);
  double div = (x - mod) / y;
  if (mod != 0) {
    if ((y < 0) != (mod < 0)) {
      mod += y;
      div -= 1.0;
    }
  } else {
    mod = std::copysign(0.0, y);
  }
  double floordiv;
  if (div != 0) {
    floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = std::copysign(0.0, x / y);
  }
  return {floordiv, mod};
}

Value IntPow(int64_t base, int64_t exponent) {
  int64_t result = 1;
  while (exponent > 0) {
    if (exponent & 1) result = MulInt(result, base);
    exponent >>= 1;
    if (exponent > 0) base = MulInt(base, base);
  }
  return Value::Int(result);
}

// printf-style '%s' % args, the subset templates use: %s %r %d %i %f %% with optional precision.
Value PercentFormat(const std::string& format, const Value& args, bool markup) {
  std::vector<Value> values;
  if (args.kind() == Value::Kind::kList && args.list()->flavor == List::Flavor::kTuple) {
    values = args.list()->items;
  } else {
    values.push_back(args);
  }
  // Python treats a non-tuple, non-str argument with __getitem__ (a dict, a list, jinja2's Undefined) as a
  // mapping: %(key)s looks it up, and leftover arguments are not an error.
  const bool mapping = args.kind() == Value::Kind::kDict || args.is_undefined() ||
                       (args.kind() == Value::Kind::kList && args.list()->flavor == List::Flavor::kList);
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%') {
      out += format[i];
      continue;
    }
    if (++i >= format.size()) Fail("incomplete format");
    int precision = -1;
    if (format[i] == '.') {
      precision = 0;
      while (++i < format.size() && std::isdigit(static_cast<unsigned char>(format[i]))) {
        precision = precision * 10 + (format[i] - '0');
      }
      if (i >= format.size()) Fail("incomplete format");
    }
    std::optional<Value> keyed;
    if (format[i] == '(' && mapping) {
      const size_t close = format.find(')', i);
      if (close == std::string::npos) Fail("incomplete format key");
      if (args.is_undefined()) Fail(args.undefined_message());
      if (args.kind() != Value::Kind::kDict) Fail("format requires a mapping");
      const Value* found = args.dict()->Find(std::string_view(format).substr(i + 1, close - i - 1));
      if (found == nullptr) Fail(text::PyRepr(format.substr(i + 1, close - i - 1)));
      keyed = *found;
      i = close + 1;
      if (i >= format.size()) Fail("incomplete format");
    }
    const char spec = format[i];
    if (spec == '%') {
      out += '%';
      continue;
    }
    if (!keyed && next >= values.size()) Fail("not enough arguments for format string");
    const Value& v = keyed ? *keyed : values[next++];
    switch (spec) {
      case 's':
        out += ToStr(v);
        break;
      case 'r':
        out += Repr(v);
        break;
      case 'd':
      case 'i':
        if (!v.is_number())
          Fail(absl::StrCat("%", std::string(1, spec), " format: a real number is required, not ",
                            TypeName(v)));
        out +=
            std::to_string(v.kind() == Value::Kind::kFloat ? static_cast<int64_t>(v.as_float()) : v.as_int());
        break;
      case 'f': {
        if (!v.is_number()) Fail("must be real number, not " + TypeName(v));
        char buf[512];
        std::snprintf(buf, sizeof(buf), "%.*f", precision < 0 ? 6 : std::min(precision, 100), v.as_float());
        out += buf;
        break;
      }
      default:
        Fail(absl::StrCat("unsupported format character '", std::string(1, spec), "'"));
    }
  }
  if (!mapping && next < values.size()) Fail("not all arguments converted during string formatting");
  return markup ? Value::Markup(std::move(out)) : Value::String(std::move(out));
}

std::string JsonKey(const Value& k) {
  switch (k.kind()) {
    case Value::Kind::kString:
      return k.as_string();
    case Value::Kind::kBool:
      return k.as_bool() ? "true" : "false";
    case Value::Kind::kInt:
      return std::to_string(k.as_int());
    case Value::Kind::kNone:
      return "null";
    case Value::Kind::kFloat: {
      const double f = k.as_float();
      if (std::isnan(f)) return "NaN";
      if (std::isinf(f)) return f > 0 ? "Infinity" : "-Infinity";
      return text::FormatFloat(f);
    }
    default:
      Fail("keys must be str, int, float, bool or None, not " + TypeName(k));
  }
}

void ToJsonImpl(const Value& v, const JsonOptions& o, int level, std::string& out) {
  CheckDepth(level);
  CheckStringSize(out.size());
  switch (v.kind()) {
    case Value::Kind::kNone:
      out += "null";
      return;
    case Value::Kind::kBool:
      out += v.as_bool() ? "true" : "false";
      return;
    case Value::Kind::kInt:
      out += std::to_string(v.as_int());
      return;
    case Value::Kind::kFloat: {
      const double f = v.as_float();
      if (std::isnan(f)) {
        out += "NaN";
      } else if (std::isinf(f)) {
        out += f > 0 ? "Infinity" : "-Infinity";
      } else {
        out += text::FormatFloat(f);
      }
      return;
    }
    case Value::Kind::kString:
      out += text::JsonQuote(v.as_string(), o.ensure_ascii);
      return;
    default:
      break;
  }
  // json.dumps layout: with an indent every item starts on its own line, one level deeper.
  std::string newline_indent;
  if (o.indent) {
    // Each level repeats the indent: a long one nested deep would be gigabytes before the output's check.
    CheckStringSize(out.size() + (static_cast<size_t>(level) + 1) * o.indent->size());
    newline_indent = "\n";
    for (int i = 0; i <= level; ++i) newline_indent += *o.indent;
  }
  const std::string separator = o.item_separator + newline_indent;
  auto open = [&](char bracket) { out += bracket + newline_indent; };
  auto close = [&](char bracket) {
    if (o.indent) {
      out += '\n';
      for (int i = 0; i < level; ++i) out += *o.indent;
    }
    out += bracket;
  };
  if (IsSequence(v)) {
    const auto& items = v.list()->items;
    if (items.empty()) {
      out += "[]";
      return;
    }
    open('[');
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) out += separator;
      ToJsonImpl(items[i], o, level + 1, out);
    }
    close(']');
    return;
  }
  if (v.kind() == Value::Kind::kDict) {
    std::vector<std::pair<std::string, const Value*>> entries;
    for (const auto& [k, item] : v.dict()->entries()) entries.emplace_back(JsonKey(k), &item);
    if (entries.empty()) {
      out += "{}";
      return;
    }
    if (o.sort_keys) {
      std::stable_sort(entries.begin(), entries.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
    }
    open('{');
    for (size_t i = 0; i < entries.size(); ++i) {
      if (i > 0) out += separator;
      out += text::JsonQuote(entries[i].first, o.ensure_ascii);
      out += o.key_separator;
      ToJsonImpl(*entries[i].second, o, level + 1, out);
    }
    close('}');
    return;
  }
  Fail("Object of type " + TypeName(v) + " is not JSON serializable");
}

}  // namespace

void Fail(const std::string& message) { throw RenderError(message); }

void CheckStringSize(size_t bytes) {
  if (bytes > kMaxStringBytes)
    Fail(absl::StrCat("the template builds a string larger than ", kMaxStringBytes, " bytes"));
}

const std::string& Value::EmptyString() {
  static const std::string* const kEmpty = new std::string();
  return *kEmpty;
}

Value Value::Undefined(std::string message) {
  Value v(Kind::kUndefined);
  v.str_ = std::make_shared<const std::string>(std::move(message));
  return v;
}

Value Value::None() { return Value(Kind::kNone); }

Value Value::Bool(bool b) {
  Value v(Kind::kBool);
  v.bool_ = b;
  return v;
}

Value Value::Int(int64_t i) {
  Value v(Kind::kInt);
  v.int_ = i;
  return v;
}

Value Value::Float(double f) {
  Value v(Kind::kFloat);
  v.float_ = f;
  return v;
}

Value Value::String(std::string s) {
  Value v(Kind::kString);
  v.str_ = std::make_shared<const std::string>(std::move(s));
  return v;
}

Value Value::Markup(std::string s) {
  Value v = String(std::move(s));
  v.markup_ = true;
  return v;
}

Value Value::FromList(std::shared_ptr<List> list) {
  Value v(Kind::kList);
  v.list_ = std::move(list);
  return v;
}

Value Value::FromDict(std::shared_ptr<Dict> dict) {
  Value v(Kind::kDict);
  v.dict_ = std::move(dict);
  return v;
}

Value Value::FromNamespace(std::shared_ptr<Namespace> ns) {
  Value v(Kind::kNamespace);
  v.ns_ = std::move(ns);
  return v;
}

Value Value::FromCallable(std::shared_ptr<const Callable> callable) {
  Value v(Kind::kCallable);
  v.callable_ = std::move(callable);
  return v;
}

Value Value::FromLoop(std::shared_ptr<LoopState> loop) {
  Value v(Kind::kLoop);
  v.loop_ = std::move(loop);
  return v;
}

const Value* Dict::Find(const Value& key) const {
  const auto it = index_.find(HashKey(key));
  return it == index_.end() ? nullptr : &entries_[it->second].second;
}

const Value* Dict::Find(std::string_view key) const {
  const auto it = index_.find(absl::StrCat("s", std::string(key)));
  return it == index_.end() ? nullptr : &entries_[it->second].second;
}

void Dict::Set(const Value& key, Value value) {
  const std::string hash = HashKey(key);
  const auto it = index_.find(hash);
  if (it != index_.end()) {
    entries_[it->second].second = std::move(value);
    return;
  }
  index_.emplace(hash, entries_.size());
  entries_.emplace_back(key, std::move(value));
}

namespace {

thread_local std::vector<Value>* draining = nullptr;  // the worklist of the DestroyValues running

}  // namespace

void DestroyValues(std::vector<Value>& values) noexcept {
  if (values.empty()) return;
  if (draining != nullptr) {  // inside a destruction already: its loop destroys them
    for (Value& v : values) draining->push_back(std::move(v));
    values.clear();
    return;
  }
  std::vector<Value> pending = std::move(values);
  values.clear();
  draining = &pending;
  while (!pending.empty()) {
    Value v = std::move(pending.back());
    pending.pop_back();
  }  // v's destructor hands what it held back to `pending`
  draining = nullptr;
}

void Dict::Clear() {
  std::vector<Value> pending;
  pending.reserve(2 * entries_.size());
  for (auto& [key, value] : entries_) {
    pending.push_back(std::move(key));
    pending.push_back(std::move(value));
  }
  entries_.clear();
  index_.clear();
  DestroyValues(pending);
}

Value MakeList(std::vector<Value> items, List::Flavor flavor) {
  auto list = std::make_shared<List>();
  list->items = std::move(items);
  list->flavor = flavor;
  return Value::FromList(std::move(list));
}

Value MakeIterator(std::vector<Value> items, std::string type_name) {
  auto list = std::make_shared<List>();
  list->items = std::move(items);
  list->flavor = List::Flavor::kIterator;
  list->iterator_type = std::move(type_name);
  return Value::FromList(std::move(list));
}

Value MakeDict(std::shared_ptr<Dict> dict) { return Value::FromDict(std::move(dict)); }

Value DictView(const Value& dict, List::Flavor flavor) {
  std::vector<Value> out;
  for (const auto& [k, item] : dict.dict()->entries()) {
    if (flavor == List::Flavor::kDictKeys) {
      out.push_back(k);
    } else if (flavor == List::Flavor::kDictValues) {
      out.push_back(item);
    } else {
      out.push_back(MakeList({k, item}, List::Flavor::kTuple));
    }
  }
  return MakeList(std::move(out), flavor);
}

Value UndefinedName(std::string_view name) {
  return Value::Undefined(absl::StrCat(text::PyRepr(name), " is undefined"));
}

Value UndefinedAttribute(const Value& obj, std::string_view attribute) {
  return Value::Undefined(
      absl::StrCat(text::PyRepr(ObjectTypeRepr(obj)), " has no attribute ", text::PyRepr(attribute)));
}

Value UndefinedElement(const Value& obj, const Value& key) {
  return Value::Undefined(absl::StrCat(ObjectTypeRepr(obj), " has no element ", Repr(key)));
}

std::string TypeName(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNone:
      return "NoneType";
    case Value::Kind::kBool:
      return "bool";
    case Value::Kind::kInt:
      return "int";
    case Value::Kind::kFloat:
      return "float";
    case Value::Kind::kString:
      return v.is_markup() ? "Markup" : "str";
    case Value::Kind::kList:
      switch (v.list()->flavor) {
        case List::Flavor::kList:
          return "list";
        case List::Flavor::kTuple:
          return "tuple";
        case List::Flavor::kIterator:
          return v.list()->iterator_type;
        case List::Flavor::kDictItems:
          return "dict_items";
        case List::Flavor::kDictKeys:
          return "dict_keys";
        case List::Flavor::kDictValues:
          return "dict_values";
      }
      return "list";
    case Value::Kind::kDict:
      return "dict";
    case Value::Kind::kNamespace:
      return "TemplateNamespace";
    case Value::Kind::kCallable:
      return v.callable()->TypeName();
    case Value::Kind::kLoop:
      return "LoopContext";
  }
  return "object";
}

std::string ObjectTypeRepr(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kUndefined:
      return "jinja2.runtime.Undefined object";
    case Value::Kind::kNamespace:
      return "transformers.utils.chat_template_utils.TemplateNamespace object";
    case Value::Kind::kLoop:
      return "jinja2.runtime.LoopContext object";
    case Value::Kind::kCallable:
      if (v.callable()->TypeName() == "Macro") return "jinja2.runtime.Macro object";
      return TypeName(v) + " object";
    default:
      return TypeName(v) + " object";
  }
}

bool Truthy(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return false;
    case Value::Kind::kBool:
      return v.as_bool();
    case Value::Kind::kInt:
      return v.as_int() != 0;
    case Value::Kind::kFloat:
      return v.as_float() != 0;
    case Value::Kind::kString:
      return !v.as_string().empty();
    case Value::Kind::kList:
      return v.list()->flavor == List::Flavor::kIterator || !v.list()->items.empty();
    case Value::Kind::kDict:
      return v.dict()->size() > 0;
    default:
      return true;
  }
}

std::string ToStr(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kBool:
      return v.as_bool() ? "True" : "False";
    case Value::Kind::kInt:
      return std::to_string(v.as_int());
    case Value::Kind::kFloat:
      return text::FormatFloat(v.as_float());
    case Value::Kind::kString:
      return v.as_string();
    default:
      return ReprImpl(v, 0);
  }
}

std::string Repr(const Value& v) { return ReprImpl(v, 0); }

bool Equals(const Value& a, const Value& b) { return EqualsImpl(a, b, 0); }

bool Less(const Value& a, const Value& b, std::string_view op, bool swapped) {
  if (swapped) {
    FailIfUndefined(b, a);
  } else {
    FailIfUndefined(a, b);
  }
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() < b.as_int();
    return a.as_float() < b.as_float();
  }
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();
  if (IsSequence(a) && IsSequence(b) && a.list()->flavor == b.list()->flavor) {
    const auto &x = a.list()->items, &y = b.list()->items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!Equals(x[i], y[i])) return Less(x[i], y[i], op, swapped);
    }
    return x.size() < y.size();
  }
  const Value& left = swapped ? b : a;
  const Value& right = swapped ? a : b;
  Fail(absl::StrCat("'", std::string(op), "' not supported between instances of '", TypeName(left), "' and '",
                    TypeName(right), "'"));
}

bool Compare(std::string_view op, const Value& a, const Value& b) {
  if (op == "==") return Equals(a, b);
  if (op == "!=") return !Equals(a, b);
  if (op == "in") return Contains(b, a);
  if (op == "not in") return !Contains(b, a);
  if (op == "<") return Less(a, b, "<");
  if (op == ">") return Less(b, a, ">", /*swapped=*/true);
  if (op == "<=") return !Less(b, a, "<=", /*swapped=*/true);
  if (op == ">=") return !Less(a, b, ">=");
  Fail(absl::StrCat("unknown comparison operator ", std::string(op)));
}

int64_t Length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return 0;
    case Value::Kind::kString:
      return static_cast<int64_t>(text::CodePointCount(v.as_string()));
    case Value::Kind::kDict:
      return static_cast<int64_t>(v.dict()->size());
    case Value::Kind::kList:
      if (v.list()->flavor != List::Flavor::kIterator) return static_cast<int64_t>(v.list()->items.size());
      break;
    default:
      break;
  }
  Fail("object of type '" + TypeName(v) + "' has no len()");
}

std::vector<Value> Iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return {};
    case Value::Kind::kString: {
      if (v.as_string().size() > (size_t{1} << 22)) Fail("string is too long to iterate over");
      std::vector<Value> out;
      for (char32_t c : text::Decode(v.as_string()))
        out.push_back(Value::String(text::Encode(std::u32string(1, c))));
      return out;
    }
    case Value::Kind::kList: {
      List& list = *v.list();
      if (list.flavor == List::Flavor::kIterator) {
        // A generator yields its items once; a second loop over the same object sees nothing.
        if (list.consumed) return {};
        list.consumed = true;
      }
      return list.items;
    }
    case Value::Kind::kDict: {
      std::vector<Value> keys;
      for (const auto& [k, item] : v.dict()->entries()) keys.push_back(k);
      return keys;
    }
    default:
      Fail("'" + TypeName(v) + "' object is not iterable");
  }
}

bool Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kUndefined:
      return false;
    case Value::Kind::kString:
      if (!item.is_string()) {
        Fail("'in <string>' requires string as left operand, not " + TypeName(item));
      }
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::kDict:
      return container.dict()->Find(item) != nullptr;
    case Value::Kind::kList:
      for (const Value& x : Iterate(container)) {
        if (Equals(x, item)) return true;
      }
      return false;
    default:
      Fail("argument of type '" + TypeName(container) + "' is not iterable");
  }
}

std::string HashKey(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kString:
      return "s" + v.as_string();
    case Value::Kind::kBool:
    case Value::Kind::kInt:
      return "i" + std::to_string(v.as_int());
    case Value::Kind::kFloat: {
      const double f = v.as_float();
      if (std::isfinite(f) && f == std::floor(f) && std::fabs(f) < 9.2e18) {
        return "i" + std::to_string(static_cast<int64_t>(f));
      }
      return "f" + text::FormatFloat(f);
    }
    case Value::Kind::kNone:
      return "n";
    case Value::Kind::kUndefined:
      return "u";
    case Value::Kind::kList:
      if (v.list()->flavor == List::Flavor::kTuple) {
        std::vector<std::string> parts;
        for (const Value& item : v.list()->items) parts.push_back(HashKey(item));
        return "t(" + absl::StrJoin(parts, ",") + ")";
      }
      break;
    case Value::Kind::kCallable:
      return absl::StrCat("c", reinterpret_cast<uintptr_t>(v.callable().get()));
    default:
      break;
  }
  Fail("unhashable type: '" + TypeName(v) + "'");
}

Value BinaryOp(std::string_view op, const Value& a, const Value& b) {
  if (op == "%" && a.is_string()) return PercentFormat(a.as_string(), b, a.is_markup());  // accepts anything
  FailIfUndefined(a, b);
  if (a.is_markup() || b.is_markup()) {
    // markupsafe: `+` escapes the plain side; `*` needs an int.
    if (op == "+" && (a.is_markup() || a.is_string())) {
      if (!a.is_string() || !b.is_string()) Unsupported(op, a, b);
      auto escaped = [](const Value& v) {
        return v.is_markup() ? v.as_string() : text::HtmlEscape(v.as_string());
      };
      return Value::Markup(escaped(a) + escaped(b));
    }
    if (op == "*") {
      const Value& other = a.is_markup() ? b : a;
      if (!other.is_integral()) Fail("'" + TypeName(other) + "' object cannot be interpreted as an integer");
      const Value repeated = Repeat(a.is_markup() ? a : b, other.as_int());
      return Value::Markup(repeated.as_string());
    }
  }
  const bool ints = a.is_integral() && b.is_integral();
  const bool numbers = a.is_number() && b.is_number();
  if (op == "+") {
    if (ints) return Value::Int(AddInt(a.as_int(), b.as_int()));
    if (numbers) return Value::Float(a.as_float() + b.as_float());
    if (a.is_string() && b.is_string()) {
      CheckStringSize(a.as_string().size() + b.as_string().size());
      return Value::String(a.as_string() + b.as_string());
    }
    if (IsSequence(a) && IsSequence(b) && a.list()->flavor == b.list()->flavor) {
      if (a.list()->items.size() + b.list()->items.size() > kMaxListItems)
        Fail("list concatenation is too large");
      std::vector<Value> items = a.list()->items;
      items.insert(items.end(), b.list()->items.begin(), b.list()->items.end());
      return MakeList(std::move(items), a.list()->flavor);
    }
    if (a.is_string() || IsSequence(a)) {
      Fail(absl::StrCat("can only concatenate ", TypeName(a), " (not \"", TypeName(b), "\") to ",
                        TypeName(a)));
    }
    Unsupported(op, a, b);
  }
  if (op == "-") {
    if (ints) return Value::Int(SubInt(a.as_int(), b.as_int()));
    if (numbers) return Value::Float(a.as_float() - b.as_float());
    Unsupported(op, a, b);
  }
  if (op == "*") {
    if (ints) return Value::Int(MulInt(a.as_int(), b.as_int()));
    if (numbers) return Value::Float(a.as_float() * b.as_float());
    const bool a_seq = a.is_string() || IsSequence(a), b_seq = b.is_string() || IsSequence(b);
    if (a_seq && b.is_integral()) return Repeat(a, b.as_int());
    if (b_seq && a.is_integral()) return Repeat(b, a.as_int());
    if (a_seq || b_seq) Fail("can't multiply sequence by non-int of type '" + TypeName(a_seq ? b : a) + "'");
    Unsupported(op, a, b);
  }
  if (op == "/") {
    if (!numbers) Unsupported(op, a, b);
    if (b.as_float() == 0) Fail(ints ? "division by zero" : "float division by zero");
    return Value::Float(a.as_float() / b.as_float());
  }
  if (op == "//" || op == "%") {
    if (!numbers) Unsupported(op, a, b);
    if (ints) {
      const int64_t x = a.as_int(), y = b.as_int();
      if (y == 0) Fail(op == "//" ? "integer division or modulo by zero" : "integer modulo by zero");
      if (x == std::numeric_limits<int64_t>::min() && y == -1) FailOverflow();
      int64_t q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) --q, r += y;
      return Value::Int(op == "//" ? q : r);
    }
    if (b.as_float() == 0) Fail(op == "//" ? "float floor division by zero" : "float modulo");
    const auto [q, r] = FloatDivMod(a.as_float(), b.as_float());
    return Value::Float(op == "//" ? q : r);
  }
  if (op == "**") {
    if (!numbers) Unsupported(op, a, b);
    if (ints && b.as_int() >= 0) return IntPow(a.as_int(), b.as_int());
    if (a.as_float() == 0 && b.as_float() < 0) Fail("0.0 cannot be raised to a negative power");
    const double r = std::pow(a.as_float(), b.as_float());
    if (std::isnan(r) && !std::isnan(a.as_float()) && !std::isnan(b.as_float())) {
      Fail("a negative number raised to a fractional power is complex, which templates cannot use");
    }
    return Value::Float(r);
  }
  Fail(absl::StrCat("unknown operator ", std::string(op)));
}

Value Negate(const Value& v) {
  if (v.is_undefined()) FailUndefined(v);
  if (v.is_integral()) return Value::Int(SubInt(0, v.as_int()));
  if (v.kind() == Value::Kind::kFloat) return Value::Float(-v.as_float());
  Fail("bad operand type for unary -: '" + TypeName(v) + "'");
}

Value FromJson(const nlohmann::ordered_json& j) {
  using J = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case J::null:
    case J::discarded:
      return Value::None();
    case J::boolean:
      return Value::Bool(j.get<bool>());
    case J::number_integer:
      return Value::Int(j.get<int64_t>());
    case J::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return Value::Int(static_cast<int64_t>(u));
      return Value::Float(static_cast<double>(u));
    }
    case J::number_float:
      return Value::Float(j.get<double>());
    case J::string:
      return Value::String(j.get<std::string>());
    case J::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& item : j) items.push_back(FromJson(item));
      return MakeList(std::move(items));
    }
    case J::object: {
      auto dict = std::make_shared<Dict>();
      for (const auto& [k, item] : j.items()) dict->Set(Value::String(k), FromJson(item));
      return MakeDict(std::move(dict));
    }
    case J::binary: {
      std::vector<Value> bytes;
      for (uint8_t b : j.get_binary()) bytes.push_back(Value::Int(b));
      return MakeList(std::move(bytes));
    }
  }
  return Value::None();
}

std::string ToJson(const Value& v, const JsonOptions& options) {
  std::string out;
  ToJsonImpl(v, options, 0, out);
  return out;
}

}  // namespace moe::jinja
