// Runtime values of the template engine and the Python semantics jinja2 gives them: truthiness,
// str()/repr() printing, equality and ordering, iteration, arithmetic and JSON conversion.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"

namespace moe::jinja {

// A template failure while rendering: raise_exception(), an undefined value used where jinja2 raises
// UndefinedError, a Python TypeError, a limit. The interpreter throws it so that deep recursion unwinds in
// one step; Template::Render turns it into absl::InvalidArgument.
class RenderError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
[[noreturn]] void Fail(const std::string& message);

// Bounds on single values, so that a hostile template cannot make one operation (a repetition, a join,
// printing a list that holds one long string many times) allocate gigabytes before the output cap is
// reached. They match the 16 MiB output cap: no value larger than that can ever be rendered anyway.
inline constexpr size_t kMaxStringBytes = size_t{16} << 20;
inline constexpr size_t kMaxListItems = size_t{1} << 20;
// Fails when a string of `bytes` would exceed kMaxStringBytes.
void CheckStringSize(size_t bytes);

class Value;
class Interpreter;

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keywords;
};

// Anything a template can call: macros, globals such as range(), bound methods such as str.split.
class Callable {
 public:
  virtual ~Callable() = default;
  virtual std::string Name() const = 0;
  // Python's type(x).__name__, for error messages: "function", "Macro", "builtin_function_or_method".
  virtual std::string TypeName() const = 0;
  virtual Value Call(Interpreter& interp, CallArgs args) const = 0;
};

struct List;
class Dict;
struct Namespace;
struct LoopState;

class Value {
 public:
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kCallable,
    kLoop
  };

  // An undefined value; `message` is what jinja2's UndefinedError would say when it is misused.
  static Value Undefined(std::string message);
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double f);
  static Value String(std::string s);
  // markupsafe.Markup, what `safe` and `escape` return: a str whose `+` HTML-escapes the other side.
  static Value Markup(std::string s);
  static Value FromList(std::shared_ptr<List> list);
  static Value FromDict(std::shared_ptr<Dict> dict);
  static Value FromNamespace(std::shared_ptr<Namespace> ns);
  static Value FromCallable(std::shared_ptr<const Callable> callable);
  static Value FromLoop(std::shared_ptr<LoopState> loop);

  Value() : Value(Undefined("value is undefined")) {}

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_markup() const { return kind_ == Kind::kString && markup_; }
  // Python's int includes bool.
  bool is_integral() const { return kind_ == Kind::kInt || kind_ == Kind::kBool; }
  bool is_number() const { return is_integral() || kind_ == Kind::kFloat; }

  bool as_bool() const { return bool_; }
  int64_t as_int() const { return kind_ == Kind::kBool ? static_cast<int64_t>(bool_) : int_; }
  double as_float() const { return kind_ == Kind::kFloat ? float_ : static_cast<double>(as_int()); }
  const std::string& as_string() const { return str_ ? *str_ : EmptyString(); }
  const std::string& undefined_message() const { return as_string(); }
  const std::shared_ptr<List>& list() const { return list_; }
  const std::shared_ptr<Dict>& dict() const { return dict_; }
  const std::shared_ptr<Namespace>& ns() const { return ns_; }
  const std::shared_ptr<const Callable>& callable() const { return callable_; }
  const std::shared_ptr<LoopState>& loop() const { return loop_; }


 private:
  explicit Value(Kind kind) : kind_(kind) {}
  static const std::string& EmptyString();

  Kind kind_ = Kind::kNone;
  bool bool_ = false;
  bool markup_ = false;
  int64_t int_ = 0;
  double float_ = 0;
  // Shared so that passing a long message content around never copies it.
  std::shared_ptr<const std::string> str_;
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Namespace> ns_;
  std::shared_ptr<const Callable> callable_;
  std::shared_ptr<LoopState> loop_;
};

// Destroys `values`, emptying it, and what only they hold, a level at a time: every object that holds
// values (List, Dict, LoopState, Scope, a bound method) hands them here from its destructor, and
// while one call drains its worklist the others only add to it. A template nests values as deep
// as its loops go (`{% set ns.l = [ns.l] %}`, `{% set ns.v = loop %}`, 10^6 levels), which
// destructors calling destructors took past the thread's stack.
void DestroyValues(std::vector<Value>& values) noexcept;

// Lists, tuples and the lazy sequences jinja2 filters return. Lists are never mutated once shared: the
// sandbox forbids append() and friends, so copies can share them.
struct List {
  List() = default;
  List(const List&) = default;
  List& operator=(const List&) = default;
  ~List() { DestroyValues(items); }
  enum class Flavor {
    kList,
    kTuple,
    kIterator,   // a generator or reversed(): always truthy, no len(), consumed by one iteration
    kDictItems,  // dict.items()/keys()/values() views
    kDictKeys,
    kDictValues,
  };
  std::vector<Value> items;
  Flavor flavor = Flavor::kList;
  std::string iterator_type = "generator";  // type(x).__name__ for kIterator
  bool consumed = false;
};

// An insertion-ordered dict keyed like Python's (1, 1.0 and True are the same key).
class Dict {
 public:
  Dict() = default;
  Dict(const Dict&) = default;
  Dict& operator=(const Dict&) = default;
  ~Dict() { Clear(); }
  const Value* Find(const Value& key) const;
  const Value* Find(std::string_view key) const;
  void Set(const Value& key, Value value);
  void Clear();  // without recursion, however deep the values (DestroyValues)
  size_t size() const { return entries_.size(); }
  const std::vector<std::pair<Value, Value>>& entries() const { return entries_; }

 private:
  std::vector<std::pair<Value, Value>> entries_;
  std::unordered_map<std::string, size_t> index_;
};

// namespace(): the one mutable object a template has; `{% set ns.x = ... %}` writes into it.
struct Namespace {
  Dict attributes;
};

// The `loop` variable of a for loop.
struct LoopState {
  LoopState() = default;
  LoopState(const LoopState&) = delete;
  LoopState& operator=(const LoopState&) = delete;
  ~LoopState() {
    if (last_changed) DestroyValues(*last_changed);
  }
  std::shared_ptr<List> items;  // the iterated items after the loop's `if` filter
  int64_t index0 = 0;
  std::optional<std::vector<Value>> last_changed;  // loop.changed()'s memory
};

Value MakeList(std::vector<Value> items, List::Flavor flavor = List::Flavor::kList);
Value MakeIterator(std::vector<Value> items, std::string type_name = "generator");
Value MakeDict(std::shared_ptr<Dict> dict);
// dict.items() / keys() / values() of a dict value (flavor kDictItems, kDictKeys or kDictValues).
Value DictView(const Value& dict, List::Flavor flavor);

// Undefined values with jinja2's own messages.
Value UndefinedName(std::string_view name);                              // 'x' is undefined
Value UndefinedAttribute(const Value& obj, std::string_view attribute);  // 'dict object' has no attribute 'x'
Value UndefinedElement(const Value& obj, const Value& key);              // list object has no element 3

std::string TypeName(const Value& v);        // type(v).__name__
std::string ObjectTypeRepr(const Value& v);  // jinja2.utils.object_type_repr
bool Truthy(const Value& v);
std::string ToStr(const Value& v);  // str(v); undefined prints as ""
std::string Repr(const Value& v);   // repr(v)
bool Equals(const Value& a, const Value& b);
// a < b with Python's rules. Unorderable types fail with Python's TypeError text for operator `op`,
// naming the operand types in source order (`swapped` when the caller passed them reversed, as for >).
bool Less(const Value& a, const Value& b, std::string_view op = "<", bool swapped = false);
// A comparison operator of the template language: == != < <= > >= in, "not in".
bool Compare(std::string_view op, const Value& a, const Value& b);
int64_t Length(const Value& v);
// The items a for loop over `v` sees (dict keys, string characters, ...).
std::vector<Value> Iterate(const Value& v);
bool Contains(const Value& container, const Value& item);
// The key under which a Dict stores `v`; fails for unhashable values such as lists.
std::string HashKey(const Value& v);

// Python's binary operators (+ - * / // % **) with jinja2's undefined and error behavior.
Value BinaryOp(std::string_view op, const Value& a, const Value& b);
Value Negate(const Value& v);

// Nested ordered JSON objects become dicts, arrays lists, numbers int or float as Python's json.loads.
Value FromJson(const nlohmann::ordered_json& j);

struct JsonOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // unset: single line
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
};
// json.dumps(v, ...) as transformers' tojson filter calls it.
std::string ToJson(const Value& v, const JsonOptions& options);

}  // namespace moe::jinja
