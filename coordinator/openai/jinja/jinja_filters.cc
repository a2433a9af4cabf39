#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "coordinator/openai/jinja/jinja_args.h"
#include "coordinator/openai/jinja/jinja_builtins.h"
#include "coordinator/openai/jinja/jinja_text.h"

// The filters and tests of transformers' jinja2 environment, with jinja2's argument names and defaults.
namespace moe::jinja {
namespace {

// Attribute paths as jinja2's make_attrgetter reads them: "a.b.0", each step an item lookup.
Value GetPath(Interpreter& interp, const Value& item, const Value& attribute) {
  if (!attribute.is_string()) return interp.GetItem(item, attribute);
  Value v = item;
  for (const std::string& part : text::Split(attribute.as_string(), std::string("."), -1)) {
    const bool digits =
        !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    v = interp.GetItem(v, digits ? Value::Int(std::strtoll(part.c_str(), nullptr, 10)) : Value::String(part));
  }
  return v;
}

Value IgnoreCase(const Value& v, bool case_sensitive) {
  return (!case_sensitive && v.is_string()) ? Value::String(text::Lower(v.as_string())) : v;
}

// Sort keys for sort/dictsort/unique/min/max: the attribute(s) named (comma separated), case-folded.
Value SortKey(Interpreter& interp, const Value& item, const Value& attribute, bool case_sensitive) {
  if (attribute.is_none()) return IgnoreCase(item, case_sensitive);
  if (!attribute.is_string()) return IgnoreCase(GetPath(interp, item, attribute), case_sensitive);
  const std::vector<std::string> parts = text::Split(attribute.as_string(), std::string(","), -1);
  if (parts.size() == 1) return IgnoreCase(GetPath(interp, item, attribute), case_sensitive);
  std::vector<Value> keys;
  for (const std::string& p : parts)
    keys.push_back(IgnoreCase(GetPath(interp, item, Value::String(p)), case_sensitive));
  return MakeList(std::move(keys));
}

std::vector<Value> SortedBy(std::vector<Value> items, const std::vector<Value>& keys, bool reverse) {
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return reverse ? Less(keys[b], keys[a]) : Less(keys[a], keys[b]);
  });
  std::vector<Value> out;
  for (size_t i : order) out.push_back(items[i]);
  return out;
}

using FilterFn = Value (*)(Interpreter&, const Value&, const CallArgs&);

Value FilterAbs(Interpreter&, const Value& v, const CallArgs& a) {
  Args("abs", a, {});
  if (v.is_integral()) return v.as_int() < 0 ? Negate(v) : Value::Int(v.as_int());
  if (v.kind() == Value::Kind::kFloat) return Value::Float(std::fabs(v.as_float()));
  Fail("bad operand type for abs(): '" + TypeName(v) + "'");
}

Value FilterAttr(Interpreter& interp, const Value& v, const CallArgs& a) {
  const Args args("attr", a, {"name"});
  const Value name = args.get(0);
  if (v.is_undefined()) Fail(v.undefined_message());
  // Python getattr only: unlike `x.name`, the filter never falls back to dict keys.
  if (name.is_string()) {
    if (std::optional<Value> method = LookupMethod(v, name.as_string())) return *method;
    if (v.kind() == Value::Kind::kNamespace || v.kind() == Value::Kind::kLoop)
      return interp.GetAttr(v, name.as_string());
  }
  return UndefinedAttribute(v, ToStr(name));
}

Value FilterBatch(Interpreter&, const Value& v, const CallArgs& a) {
  const Args args("batch", a, {"linecount", "fill_with"});
  const int64_t n = ToIndex(args.get(0));
  if (n <= 0) Fail("batch size must be positive");
  if (n > static_cast<int64_t>(kMaxListItems)) Fail("batch size is too large");
  std::vector<Value> batches, current;
  for (const Value& item : Iterate(v)) {
    current.push_back(item);
    if (static_cast<int64_t>(current.size()) == n) batches.push_back(MakeList(std::exchange(current, {})));
  }
  if (!current.empty()) {
    if (args.has(1) && !args.get(1).is_none()) {
      while (static_cast<int64_t>(current.size()) < n) current.push_back(args.get(1));
    }
    batches.push_back(MakeList(std::move(current)));
  }
  return MakeIterator(std::move(batches));
}

Value FilterCapitalize(Interpreter&, const Value& v, const CallArgs& a) {
  Args("capitalize", a, {});
  return Value::String(text::Capitalize(ToStr(v)));
}

Value FilterCenter(Interpreter&, const Value& v, const CallArgs& a) {
  const Args args("center", a, {"width"});
  const int64_t width = ToIndex(args.get(0, Value::Int(80)));
  CheckStringSize(std::max<int64_t>(0, width));
  return Value::String(text::Center(ToStr(v), width));
}

Value FilterDefault(Interpreter&, const Value& v, const CallArgs& a) {
  const Args args("default", a, {"default_value", "boolean"});
  if (v.is_undefined() || (Truthy(args.get(1, Value::Bool(false))) && !Truthy(v))) {
    return args.get(0, Value::String(""));
  }
  return v;
}

Value FilterDictsort(Interpreter&, const Value& v, const CallArgs& a) {
  const Args args("dictsort", a, {"case_sensitive", "by", "reverse"});
  if (v.is_undefined()) Fail(v.undefined_message());
  if (v.kind() != Value::Kind::kDict) Fail("'" + TypeName(v) + "' object has no attribute 'items'");
  const bool case_sensitive = Truthy(args.get(0, Value::Bool(false)));
  const std::string by = ToStr(args.get(1, Value::String("key")));
  if (by != "key" && by != "value") Fail("You can only sort by either 'key' or 'value'");
  std::vector<Value> items, keys;
  for (const auto& [k, item] : v.dict()->entries()) {
    items.push_back(MakeList({k, item}, List::Flavor::kTuple));
    keys.push_back(IgnoreCase(by == "key" ? k : item, case_sensitive));
  }
  return MakeList(SortedBy(std::move(items), keys, Truthy(args.get(2, Value::Bool(false)))));
}

Value FilterEscape(Interpreter&, const Value& v, const CallArgs& a) {
  Args("escape", a, {});
  return v.is_markup() ? v : Value::Markup(text::HtmlEscape(ToStr(v)));
}

Value FilterForceEscape(Interpreter&, const Value& v, const CallArgs& a) {
  Args("forceescape", a, {});
  return Value::Markup(text::HtmlEscape(ToStr(v)));
}

Value FilterFirst(Interpreter&, const Value& v, const CallArgs& a) {
  Args("first", a, {});
  const std::vector<Value> items = Iterate(v);
  if (items.empty()) return Value::Undefined("No first item, sequence was empty.");
  return items.front();
}

Value FilterLast(Interpreter&, const Value& v, const CallArgs& a) {
  Args("last", a, {});
  const bool reversible = v.is_undefined() || v.is_string() || v.kind() == Value::Kind::kDict ||
                          (v.kind() == Value::Kind::kList && v.list()->flavor != List::Flavor::kIterator);
  if (!reversible) Fail("'" + TypeName(v) + "' object is not reversible");
  const std::vector<Value> items = Iterate(v);
  if (items.empty()) return Value::Undefined("No last item, sequence was empty.");
  return items.back();
}

std::optional<double> ParsePythonFloat(const std::string& raw) {
  std::string s = text::Strip(raw, std::nullopt, true, true);
  std::string clean;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_') {
      const bool ok = i > 0 && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i - 1])) &&
                      std::isdigit(static_cast<unsigned char>(s[i + 1]));
      if (!ok) return std::nullopt;
      continue;
    }
    clean += s[i];
  }
  if (clean.empty()) return std::nullopt;
  std::string lower = text::Lower(clean);
  const std::string unsigned_part = (lower[0] == '+' || lower[0] == '-') ? lower.substr(1) : lower;
  const double sign = lower[0] == '-' ? -1 : 1;
  if (unsigned_part == "inf" || unsigned_part == "infinity") return sign * HUGE_VAL;
  if (unsigned_part == "nan") return std::nan("");
  for (char c : unsigned_part) {
    if (!std::isdigit(static_cast<unsigned char>(c)) && c != '.' && c != 'e' && c != '+' && c != '-')
      return std::nullopt;
  }
  char* end = nullptr;
  const double d = std::strtod(clean.c_str(), &end);
  if (end != clean.c_str() + clean.size()) return std::nullopt;
  return d;
}

Value FilterFloat(Interpreter&, const Value& v, const CallArgs& a) {
  const Args args("float", a, {"default"});
  if (v.is_undefined()) Fail(v.undefined_message());
  if (v.is_number()) return Value::Float(v.as_float());
  if (v.is_string()) {
    if (std::optional<double> d = ParsePythonFloat(v.as_string())) return Value::Float(*d);
  }
  return args.get(0, Value::Float(0.0));
}

Value FilterFormat(Interpreter&, const Value& v, const CallArgs& a) {
  if (!a.keywords.empty() && !a.positional.empty())
    Fail("can't handle positional and keyword arguments at the same time");
  if (!a.keywords.empty()) Fail("the format filter's keyword form is not supported");
  return BinaryOp("%", Value::String(ToStr(v)), MakeList(a.positional, List::Flavor::kTuple));
}

Value FilterIndent(Interpreter&, const Value& v, const CallArgs& a) {
  const Args args("indent", a, {"width", "first", "blank"});
  const Value width = args.get(0, Value::Int(4));
  if (!width.is_string()) CheckStringSize(std::max<int64_t>(0, ToIndex(width)));
  const std::string indentation =
      width.is_string() ? width.as_string() : std::string(std::max<int64_t>(0, ToIndex(width)), ' ');
  // jinja2 runs `s += "\n"` on the value itself before splitlines(), so non-strings fail the way Python does.
  if (v.is_undefined()) Fail(v.undefined_message());
  if (v.kind() == Value::Kind::kList && v.list()->flavor == List::Flavor::kList) {
    Fail("'list' object has no attribute 'splitlines'");
  }
  if (v.kind() == Value::Kind::kList && v.list()->flavor == List::Flavor::kTuple) {
    Fail("can only concatenate tuple (not \"str\") to tuple");
  }
  if (!v.is_string()) Fail("unsupported operand type(s) for +=: '" + TypeName(v) + "' and 'str'");
  const std::string s = v.as_string() + "\n";
  const std::vector<std::string> lines = text::SplitLines(s, false);
  CheckStringSize(s.size() + lines.size() * indentation.size());
  std::string out;
  if (Truthy(args.get(2, Value::Bool(false)))) {
    out = absl::StrJoin(lines, "\n" + indentation);
  } else {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i == 0) {
        out = lines[0];
        continue;
      }
      out += "\n";
      if (!lines[i].empty()) out += indentation;
      out += lines[i];
    }
  }
  if (Truthy(args.get(1, Value::Bool(false)))) out = indentation + out;
  return Value::String(std::move(out));
}

std::optional<int64_t> ParsePythonInt(const std::string& raw, int64_t base) {
  std::string s = text::Strip(raw, std::nullopt, true, true);
  bool negative = false;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    negative = s[0] == '-';
    s.erase(0, 1);
  }
  if (base == 0 || base == 16 || base == 8 || base == 2) {
    const std::string prefix = text::Lower(s.substr(0, 2));
    int64_t detected = base == 0 ? 10 : base;
    if (prefix == "0x") detected = 16;
    if (prefix == "0o") detected = 8;
    if (prefix == "0b") detected = 2;
    if (detected != 10 && (base == 0 || base == detected)) s.erase(0, 2);
    base = detected;
  }
  std::string digits;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_' && i > 0 && i + 1 < s.size() && s[i - 1] != '_') continue;
    digits += s[i];
  }
  if (digits.empty() || base < 2 || base > 36) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(digits.c_str(), &end, static_cast<int>(base));
  if (end != digits.c_str() + digits.size() || errno == ERANGE || digits[0] == '-' || digits[0] == '+')
    return std::nullopt;
  return negative ? -v : v;
}

Value FilterInt(Interpreter&, const Value& v, const CallArgs& a) {
  const Args args("int", a, {"default", "base"});
  if (v.is_undefined()) Fail(v.undefined_message());
  if (v.is_integral()) return Value::Int(v.as_int());
  if (v.kind() == Value::Kind::kFloat) {
    const double f = v.as_float();
    if (std::isnan(f)) Fail("cannot convert float NaN to integer");
    if (std::isinf(f) || std::fabs(f) >= 9.2e18) Fail("cannot convert float infinity to integer");
    return Value::Int(static_cast<int64_t>(f));
  }
  if (v.is_string()) {
    if (std::optional<int64_t> i = ParsePythonInt(v.as_string(), ToIndex(args.get(1, Value::Int(10))))) {
      return Value::Int(*i);
    }
    // jinja2 retries as int(float(value)) so that "42.23"|int gives 42.
    if (std::optional<double> d = ParsePythonFloat(v.as_string())) {
      if (std::isfinite(*d) && std::fabs(*d) < 9.2e18) return Value::Int(static_cast<int64_t>(*d));
      if (std::isnan(*d)) Fail("cannot convert float NaN to integer");
      Fail("cannot convert float infinity to integer");
    }
  }
  return args.get(0, Value::Int(0));
}

Value FilterItems(Interpreter&, const Value& v, const CallArgs& a) {
  Args("items", a, {});
  if (v.is_undefined()) return MakeIterator({});
  if (v.kind() != Value::Kind::kDict) Fail("Can only get item pairs from a mapping.");
  return MakeIterator(DictView(v, List::Flavor::kDictItems).list()->items);
}

Value FilterJoin(Interpreter& interp, const Value& v, const CallArgs& a) {
  const Args args("join", a, {"d", "attribute"});
  std::vector<std::string> parts;
  size_t total = 0;
  for (const Value& item : Iterate(v)) {
    parts.push_back(ToStr(args.has(1) && !args.get(1).is_none() ? GetPath(interp, item, args.get(1)) : item));
    CheckStringSize(total += parts.back().size());
  }
  return Value::String(absl::StrJoin(parts, ToStr(args.get(0, Value::String("")))));
}

Value FilterLength(Interpreter&, const Value& v, const CallArgs& a) {
  Args("length", a, {});
  return Value::Int(Length(v));
}

Value FilterList(Interpreter&, const Value& v, const CallArgs& a) {
  Args("list", a, {});
  return MakeList(Iterate(v));
}

Value FilterLower(Interpreter&, const Value& v, const CallArgs& a) {
  Args("lower", a, {});
  return Value::String(text::Lower(ToStr(v)));
}

Value FilterUpper(Interpreter&, const Value& v, const CallArgs& a) {
  Args("upper", a, {});
  return Value::String(text::Upper(ToStr(v)));
}

Value FilterMap(Interpreter& interp, const Value& v, const CallArgs& a) {
  std::vector<Value> out;
  if (!Truthy(v)) return MakeIterator({});  // jinja2 guards the loop with `if value:`
  if (a.positional.empty()) {
    std::optional<Value> attribute, dflt;
    for (const auto& [key, value] : a.keywords) {
      if (key == "attribute") {
        attribute = value;
      } else if (key == "default") {
        dflt = value;
      } else {
        Fail("Unexpected keyword argument " + text::PyRepr(key));
      }
    }
    if (!attribute) Fail("map requires a filter argument");
    for (const Value& item : Iterate(v)) {
      Value got = GetPath(interp, item, *attribute);
      if (got.is_undefined() && dflt) got = *dflt;
      out.push_back(std::move(got));
    }
    return MakeIterator(std::move(out));
  }
  const std::string name = ToStr(a.positional[0]);
  CallArgs rest;
  rest.positional.assign(a.positional.begin() + 1, a.positional.end());
  rest.keywords = a.keywords;
  for (const Value& item : Iterate(v)) out.push_back(interp.ApplyFilter(name, item, rest));
  return MakeIterator(std::move(out));
}

Value FilterMinMax(Interpreter& interp, const Value& v, const CallArgs& a, bool want_max) {
  const Args args(want_max ? "max" : "min", a, {"case_sensitive", "attribute"});
  const bool case_sensitive = Truthy(args.get(0, Value::Bool(false)));
  const std::vector<Value> items = Iterate(v);
  if (items.empty()) return Value::Undefined("No aggregated item, sequence was empty.");
  size_t best = 0;
  Value best_key = SortKey(interp, items[0], args.get(1), case_sensitive);
  for (size_t i = 1; i < items.size(); ++i) {
    Value key = SortKey(interp, items[i], args.get(1), case_sensitive);
    // Python's max() asks `item > best`, min() `item < best`; the order shows in TypeError messages.
    if (Compare(want_max ? ">" : "<", key, best_key)) best = i, best_key = std::move(key);
  }
  return items[best];
}

Value FilterMax(Interpreter& interp, const Value& v, const CallArgs& a) {
  return FilterMinMax(interp, v, a, true);
}
Value FilterMin(Interpreter& interp, const Value& v, const CallArgs& a) {
  return FilterMinMax(interp, v, a, false);
}

Value FilterReplace(Interpreter&, const Value& v, const CallArgs& a) {
  const Args args("replace", a, {"old", "new", "count"});
  const Value count = args.get(2);
  return ReplaceChecked(ToStr(v), ToStr(args.get(0)), ToStr(args.get(1)),
                        count.is_none() ? -1 : ToIndex(count));
}

Value FilterReverse(Interpreter&, const Value& v, const CallArgs& a) {
  Args("reverse", a, {});
  if (v.is_string()) {
    std::u32string cps = text::Decode(v.as_string());
    std::reverse(cps.begin(), cps.end());
    return Value::String(text::Encode(cps));
  }
  const bool iterator = v.kind() == Value::Kind::kList && v.list()->flavor == List::Flavor::kIterator;
  const bool iterable = v.is_undefined() || v.kind() == Value::Kind::kList || v.kind() == Value::Kind::kDict;
  if (!iterable) Fail("argument must be iterable");
  std::vector<Value> items = Iterate(v);
  std::reverse(items.begin(), items.end());
  // reversed() of a generator fails, and jinja2 falls back to a reversed list.
  if (iterator) return MakeList(std::move(items));
  return MakeIterator(std::move(items),
                      v.kind() == Value::Kind::kDict ? "dict_reversekeyiterator" : "list_reverseiterator");
}

Value FilterRound(Interpreter&, const Value& v, const CallArgs& a) {
  const Args args("round", a, {"precision", "method"});
  const int64_t precision = ToIndex(args.get(0, Value::Int(0)));
  const std::string method = ToStr(args.get(1, Value::String("common")));
  if (method != "common" && method != "ceil" && method != "floor")
    Fail("method must be common, ceil or floor");
  if (v.is_undefined() && method == "common") Fail("type Undefined doesn't define __round__ method");
  if (v.is_undefined()) Fail(v.undefined_message());
  if (!v.is_number()) Fail("type " + TypeName(v) + " doesn't define __round__ method");
  if (method == "common") {
    if (v.is_integral()) return Value::Int(v.as_int());  // round(int, n) stays an int
    // printf rounds the exact binary value half-to-even, as Python's round() does.
    char buf[512];
    std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(std::clamp<int64_t>(precision, 0, 300)),
                  v.as_float());
    double r = std::strtod(buf, nullptr);
    if (precision < 0) {
      const double scale = std::pow(10.0, static_cast<double>(-precision));
      r = std::nearbyint(v.as_float() / scale) * scale;
    }
    return Value::Float(r);
  }
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double scaled = v.as_float() * scale;
  return Value::Float((method == "ceil" ? std::ceil(scaled) : std::floor(scaled)) / scale);
}

Value FilterSafe(Interpreter&, const Value& v, const CallArgs& a) {
  Args("safe", a, {});
  return v.is_markup() ? v : Value::Markup(ToStr(v));
}

// select/reject/selectattr/rejectattr share this: keep items whose (attribute's) test result is `want`.
Value SelectOrReject(Interpreter& interp, const Value& v, const CallArgs& a, bool want, bool by_attribute) {
  size_t next = 0;
  std::optional<Value> attribute;
  if (by_attribute) {
    if (a.positional.empty()) Fail("Missing parameter for attribute name");
    attribute = a.positional[next++];
  }
  std::optional<std::string> test;
  if (next < a.positional.size()) test = ToStr(a.positional[next++]);
  CallArgs test_args;
  test_args.positional.assign(a.positional.begin() + next, a.positional.end());
  test_args.keywords = a.keywords;
  std::vector<Value> out;
  if (!Truthy(v)) return MakeIterator({});  // jinja2 guards the loop with `if value:`
  for (const Value& item : Iterate(v)) {
    const Value subject = attribute ? GetPath(interp, item, *attribute) : item;
    const bool result = test ? interp.ApplyTest(*test, subject, test_args) : Truthy(subject);
    if (result == want) out.push_back(item);
  }
  return MakeIterator(std::move(out));
}

Value FilterSelect(Interpreter& i, const Value& v, const CallArgs& a) {
  return SelectOrReject(i, v, a, true, false);
}
Value FilterReject(Interpreter& i, const Value& v, const CallArgs& a) {
  return SelectOrReject(i, v, a, false, false);
}
Value FilterSelectAttr(Interpreter& i, const Value& v, const CallArgs& a) {
  return SelectOrReject(i, v, a, true, true);
}
Value FilterRejectAttr(Interpreter& i, const Value& v, const CallArgs& a) {
  return SelectOrReject(i, v, a, false, true);
}

Value FilterSort(Interpreter& interp, const Value& v, const CallArgs& a) {
  const Args args("sort", a, {"reverse", "case_sensitive", "attribute"});
  std::vector<Value> items = Iterate(v), keys;
  const bool case_sensitive = Truthy(args.get(1, Value::Bool(false)));
  for (const Value& item : items) keys.push_back(SortKey(interp, item, args.get(2), case_sensitive));
  return MakeList(SortedBy(std::move(items), keys, Truthy(args.get(0, Value::Bool(false)))));
}

Value FilterString(Interpreter&, const Value& v, const CallArgs& a) {
  Args("string", a, {});
  return v.is_string() ? v : Value::String(ToStr(v));  // soft_str keeps a Markup as it is
}

Value FilterSum(Interpreter& interp, const Value& v, const CallArgs& a) {
  const Args args("sum", a, {"attribute", "start"});
  Value total = args.get(1, Value::Int(0));
  if (total.is_string()) Fail("sum() can't sum strings [use ''.join(seq) instead]");
  for (const Value& item : Iterate(v)) {
    total = BinaryOp("+", total,
                     args.has(0) && !args.get(0).is_none() ? GetPath(interp, item, args.get(0)) : item);
  }
  return total;
}

Value FilterTitle(Interpreter&, const Value& v, const CallArgs& a) {
  Args("title", a, {});
  return Value::String(text::JinjaTitle(ToStr(v)));
}

Value FilterToJson(Interpreter&, const Value& v, const CallArgs& a) {
  // transformers replaces jinja2's tojson with json.dumps(x, ensure_ascii=False, indent=indent,
  // separators=separators, sort_keys=sort_keys), so nothing is HTML-escaped.
  const Args args("tojson", a, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonOptions options;
  options.ensure_ascii = Truthy(args.get(0, Value::Bool(false)));
  const Value indent = args.get(1);
  if (indent.is_string()) {
    options.indent = indent.as_string();
  } else if (!indent.is_none()) {
    const int64_t spaces = std::max<int64_t>(0, ToIndex(indent));
    CheckStringSize(static_cast<size_t>(spaces));  // before the string is built, as every level repeats it
    options.indent = std::string(static_cast<size_t>(spaces), ' ');
  }
  if (options.indent) options.item_separator = ",";
  const Value separators = args.get(2);
  if (!separators.is_none()) {
    const std::vector<Value> parts = Iterate(separators);
    if (parts.size() != 2 || !parts[0].is_string() || !parts[1].is_string()) {
      Fail("separators must be a pair of strings");
    }
    options.item_separator = parts[0].as_string();
    options.key_separator = parts[1].as_string();
  }
  options.sort_keys = Truthy(args.get(3, Value::Bool(false)));
  return Value::String(ToJson(v, options));
}

Value FilterTrim(Interpreter&, const Value& v, const CallArgs& a) {
  const Args args("trim", a, {"chars"});
  return Value::String(text::Strip(ToStr(v), OptionalString(args.get(0), "trim chars"), true, true));
}

Value FilterUnique(Interpreter& interp, const Value& v, const CallArgs& a) {
  const Args args("unique", a, {"case_sensitive", "attribute"});
  const bool case_sensitive = Truthy(args.get(0, Value::Bool(false)));
  std::set<std::string> seen;
  std::vector<Value> out;
  for (const Value& item : Iterate(v)) {
    if (seen.insert(HashKey(SortKey(interp, item, args.get(1), case_sensitive))).second) out.push_back(item);
  }
  return MakeIterator(std::move(out));
}

Value FilterWordcount(Interpreter&, const Value& v, const CallArgs& a) {
  Args("wordcount", a, {});
  int64_t words = 0;
  bool in_word = false;
  for (char32_t c : text::Decode(ToStr(v))) {
    const bool w = text::IsWordChar(c);
    words += w && !in_word;
    in_word = w;
  }
  return Value::Int(words);
}

const std::unordered_map<std::string_view, FilterFn>& Filters() {
  static const auto* const kFilters = new std::unordered_map<std::string_view, FilterFn>{
      {"abs", FilterAbs},
      {"attr", FilterAttr},
      {"batch", FilterBatch},
      {"capitalize", FilterCapitalize},
      {"center", FilterCenter},
      {"count", FilterLength},
      {"d", FilterDefault},
      {"default", FilterDefault},
      {"dictsort", FilterDictsort},
      {"e", FilterEscape},
      {"escape", FilterEscape},
      {"first", FilterFirst},
      {"float", FilterFloat},
      {"forceescape", FilterForceEscape},
      {"format", FilterFormat},
      {"indent", FilterIndent},
      {"int", FilterInt},
      {"items", FilterItems},
      {"join", FilterJoin},
      {"last", FilterLast},
      {"length", FilterLength},
      {"list", FilterList},
      {"lower", FilterLower},
      {"map", FilterMap},
      {"max", FilterMax},
      {"min", FilterMin},
      {"reject", FilterReject},
      {"rejectattr", FilterRejectAttr},
      {"replace", FilterReplace},
      {"reverse", FilterReverse},
      {"round", FilterRound},
      {"safe", FilterSafe},
      {"select", FilterSelect},
      {"selectattr", FilterSelectAttr},
      {"sort", FilterSort},
      {"string", FilterString},
      {"sum", FilterSum},
      {"title", FilterTitle},
      {"tojson", FilterToJson},
      {"trim", FilterTrim},
      {"unique", FilterUnique},
      {"upper", FilterUpper},
      {"wordcount", FilterWordcount},
  };
  return *kFilters;
}

bool IsIterable(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kString:
    case Value::Kind::kList:
    case Value::Kind::kDict:
    case Value::Kind::kLoop:
      return true;
    default:
      return false;
  }
}

bool IsSequence(const Value& v) {
  if (v.kind() == Value::Kind::kList) {
    return v.list()->flavor == List::Flavor::kList || v.list()->flavor == List::Flavor::kTuple;
  }
  return v.is_undefined() || v.is_string() || v.kind() == Value::Kind::kDict;
}

bool SameAs(const Value& a, const Value& b) {
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::kNone:
    case Value::Kind::kBool:
      return Equals(a, b);
    case Value::Kind::kInt:
      return a.as_int() == b.as_int() && a.as_int() >= -5 && a.as_int() <= 256;  // CPython's cache
    // CPython interns equal string constants, which is where `is sameas` on strings shows up.
    case Value::Kind::kString:
      return a.as_string() == b.as_string();
    case Value::Kind::kList:
      return a.list() == b.list();
    case Value::Kind::kDict:
      return a.dict() == b.dict();
    case Value::Kind::kNamespace:
      return a.ns() == b.ns();
    case Value::Kind::kCallable:
      return a.callable() == b.callable();
    case Value::Kind::kLoop:
      return a.loop() == b.loop();
    default:
      return false;
  }
}

Value OnlyArg(std::string_view test, const CallArgs& a) {
  const Args args(test, a, {"other"});
  if (!args.has(0)) Fail(absl::StrCat("test '", std::string(test), "' needs an argument"));
  return args.get(0);
}

bool RunTest(const std::string& name, const Value& v, const CallArgs& a) {
  using K = Value::Kind;
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.kind() == K::kBool;
  if (name == "true") return v.kind() == K::kBool && v.as_bool();
  if (name == "false") return v.kind() == K::kBool && !v.as_bool();
  if (name == "integer") return v.kind() == K::kInt;
  if (name == "float") return v.kind() == K::kFloat;
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.kind() == K::kDict;
  if (name == "iterable") return IsIterable(v);
  if (name == "sequence") return IsSequence(v);
  if (name == "callable") return v.kind() == K::kCallable || v.kind() == K::kLoop || v.is_undefined();
  if (name == "escaped") return false;
  if (name == "lower") return text::IsLowerString(ToStr(v));
  if (name == "upper") return text::IsUpperString(ToStr(v));
  if (name == "odd") return Equals(BinaryOp("%", v, Value::Int(2)), Value::Int(1));
  if (name == "even") return Equals(BinaryOp("%", v, Value::Int(2)), Value::Int(0));
  if (name == "divisibleby") return Equals(BinaryOp("%", v, OnlyArg(name, a)), Value::Int(0));
  if (name == "sameas") return SameAs(v, OnlyArg(name, a));
  if (name == "in") return Contains(OnlyArg(name, a), v);
  if (name == "filter") return Filters().count(ToStr(v)) > 0;
  if (name == "test") {
    static const std::set<std::string_view> kTests = {
        "defined", "undefined", "none",    "boolean",     "true",     "false",    "integer",  "float",
        "number",  "string",    "mapping", "iterable",    "sequence", "callable", "escaped",  "lower",
        "upper",   "odd",       "even",    "divisibleby", "sameas",   "in",       "filter",   "test",
        "eq",      "equalto",   "==",      "ne",          "!=",       "lt",       "lessthan", "<",
        "le",      "<=",        "gt",      "greaterthan", ">",        "ge",       ">="};
    return kTests.count(ToStr(v)) > 0;
  }
  static const std::unordered_map<std::string_view, std::string_view> kComparisons = {
      {"eq", "=="}, {"equalto", "=="},    {"==", "=="}, {"ne", "!="}, {"!=", "!="},
      {"lt", "<"},  {"lessthan", "<"},    {"<", "<"},   {"le", "<="}, {"<=", "<="},
      {"gt", ">"},  {"greaterthan", ">"}, {">", ">"},   {"ge", ">="}, {">=", ">="}};
  const auto cmp = kComparisons.find(name);
  if (cmp != kComparisons.end()) return Compare(cmp->second, v, OnlyArg(name, a));
  Fail("No test named " + text::PyRepr(name) + ".");
}

}  // namespace

Value CallFilter(Interpreter& interp, const std::string& name, const Value& input, const CallArgs& args) {
  const auto it = Filters().find(name);
  if (it == Filters().end()) Fail("No filter named " + text::PyRepr(name) + ".");
  return it->second(interp, input, args);
}

bool CallTest(Interpreter&, const std::string& name, const Value& input, const CallArgs& args) {
  return RunTest(name, input, args);
}

}  // namespace moe::jinja
