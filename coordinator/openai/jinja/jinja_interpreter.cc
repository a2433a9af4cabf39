#include "coordinator/openai/jinja/jinja_interpreter.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "coordinator/openai/jinja/jinja_builtins.h"
#include "coordinator/openai/jinja/jinja_text.h"

namespace moe::jinja {
namespace {

bool IsDunder(const std::string& name) {
  return name.size() > 4 && name.compare(0, 2, "__") == 0 && name.compare(name.size() - 2, 2, "__") == 0;
}

// Python's slice.indices(): clamps start/stop for a sequence of `length` items.
std::vector<int64_t> SliceIndices(int64_t length, const Value& start_v, const Value& stop_v, int64_t step) {
  auto adjust = [&](const Value& v, int64_t dflt) -> int64_t {
    if (v.is_none()) return dflt;
    int64_t i = v.as_int();
    if (i < 0) {
      i += length;
      if (i < 0) i = step < 0 ? -1 : 0;
    } else if (i >= length) {
      i = step < 0 ? length - 1 : length;
    }
    return i;
  };
  const int64_t start = adjust(start_v, step < 0 ? length - 1 : 0);
  const int64_t stop = adjust(stop_v, step < 0 ? -1 : length);
  // Steps are compared against the remaining distance, so a huge step cannot overflow the index.
  std::vector<int64_t> indices;
  if (step > 0) {
    for (int64_t i = start; i < stop; i += step) {
      indices.push_back(i);
      if (stop - i <= step) break;
    }
  } else {
    for (int64_t i = start; i > stop; i += step) {
      indices.push_back(i);
      if (i - stop - 1 <= -(step + 1)) break;  // i + step <= stop, without computing -step
    }
  }
  return indices;
}

std::string SliceRepr(const Value& a, const Value& b, const Value& c) {
  return absl::StrCat("slice(", Repr(a), ", ", Repr(b), ", ", Repr(c), ")");
}

// A filter chain whose innermost input is missing: `{% filter a | b %}` and `{% set x | a %}` feed it
// the rendered body.
bool IsOpenChain(const Expr* e) {
  for (; e != nullptr && e->kind == Expr::Kind::kFilter; e = e->operands[0].get()) {
    if (!e->operands[0]) return true;
  }
  return false;
}

}  // namespace

Scope::~Scope() {
  std::vector<Value> values;
  values.reserve(vars_.size());
  for (auto& [name, value] : vars_) values.push_back(std::move(value));
  DestroyValues(values);
}

const Value* Scope::Lookup(const std::string& name) const {
  for (const Scope* s = this; s != nullptr; s = s->parent_.get()) {
    const auto it = s->vars_.find(name);
    if (it != s->vars_.end()) return &it->second;
  }
  return nullptr;
}

Interpreter::~Interpreter() {
  for (const std::weak_ptr<Namespace>& weak : namespaces_) {
    if (std::shared_ptr<Namespace> ns = weak.lock()) ns->attributes.Clear();
  }
}

std::string Interpreter::Render(const nlohmann::ordered_json& context) {
  deadline_ = std::chrono::steady_clock::now() +
              std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(limits_.max_seconds));
  root_ = std::make_shared<Scope>(nullptr);
  InstallGlobals(*root_);
  if (context.is_object()) {
    for (const auto& [key, value] : context.items()) root_->Set(key, FromJson(value));
  }
  std::string out;
  Execute(program_.body, root_, out);
  return out;
}

void Interpreter::CheckTime() {
  if (std::chrono::steady_clock::now() > deadline_) {
    Fail(absl::StrCat("the template ran longer than its limit of ", limits_.max_seconds, " s"));
  }
}

void Interpreter::Write(std::string& out, std::string_view text) {
  output_bytes_ += text.size();
  if (output_bytes_ > limits_.max_output_bytes) {
    Fail(absl::StrCat("rendered output exceeds the limit of ", limits_.max_output_bytes, " bytes"));
  }
  out.append(text);
}

void Interpreter::Charge(const Value& produced) {
  int64_t bytes = 0;
  if (produced.is_string()) {
    bytes = static_cast<int64_t>(produced.as_string().size());
  } else if (produced.kind() == Value::Kind::kList) {
    bytes = 16 * static_cast<int64_t>(produced.list()->items.size());
  }
  produced_bytes_ += bytes;
  if (bytes > static_cast<int64_t>(limits_.max_output_bytes) ||
      produced_bytes_ > limits_.max_produced_bytes) {
    Fail("the template builds values that are too large");
  }
}

Interpreter::Flow Interpreter::Execute(const Body& body, const std::shared_ptr<Scope>& scope,
                                       std::string& out) {
  for (const NodePtr& node : body) {
    const Flow flow = ExecuteNode(*node, scope, out);
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

std::string Interpreter::RenderToString(const Body& body, const std::shared_ptr<Scope>& scope) {
  std::string out;
  Execute(body, scope, out);
  return out;
}

Interpreter::Flow Interpreter::ExecuteNode(const Node& node, const std::shared_ptr<Scope>& scope,
                                           std::string& out) {
  CheckTime();
  switch (node.kind) {
    case Node::Kind::kText:
      Write(out, node.text);
      return Flow::kNormal;
    case Node::Kind::kOutput:
      Write(out, ToStr(Eval(*node.expr, scope)));
      return Flow::kNormal;
    case Node::Kind::kIf:
      for (const auto& [condition, body] : node.branches) {
        if (condition == nullptr || Truthy(Eval(*condition, scope))) return Execute(body, scope, out);
      }
      return Flow::kNormal;
    case Node::Kind::kFor:
      return ExecuteFor(node, scope, out);
    case Node::Kind::kSet:
      Assign(*node.target, Eval(*node.expr, scope), *scope);
      return Flow::kNormal;
    case Node::Kind::kSetBlock: {
      // A break or continue inside the block leaves it (and skips the assignment), as in jinja2.
      std::string captured;
      if (const Flow flow = Execute(node.body, std::make_shared<Scope>(scope), captured);
          flow != Flow::kNormal) {
        return flow;
      }
      Value value = Value::String(std::move(captured));
      if (node.expr) value = EvalFilterChain(*node.expr, std::move(value), scope);
      Assign(*node.target, value, *scope);
      return Flow::kNormal;
    }
    case Node::Kind::kMacro:
      scope->Set(node.macro->name, MakeMacro(node.macro, scope));
      return Flow::kNormal;
    case Node::Kind::kCallBlock: {
      const Value caller = MakeMacro(node.macro, scope);
      Write(out, ToStr(EvalCall(*node.expr, scope, &caller)));
      return Flow::kNormal;
    }
    case Node::Kind::kFilterBlock: {
      std::string captured;
      if (const Flow flow = Execute(node.body, std::make_shared<Scope>(scope), captured);
          flow != Flow::kNormal) {
        return flow;
      }
      Write(out, ToStr(EvalFilterChain(*node.expr, Value::String(std::move(captured)), scope)));
      return Flow::kNormal;
    }
    case Node::Kind::kWith: {
      auto inner = std::make_shared<Scope>(scope);
      for (const auto& [target, value] : node.assignments) Assign(*target, Eval(*value, scope), *inner);
      return Execute(node.body, inner, out);
    }
    case Node::Kind::kScoped:
      return Execute(node.body, std::make_shared<Scope>(scope), out);
    case Node::Kind::kBreak:
      return Flow::kBreak;
    case Node::Kind::kContinue:
      return Flow::kContinue;
  }
  return Flow::kNormal;
}

Interpreter::Flow Interpreter::ExecuteFor(const Node& node, const std::shared_ptr<Scope>& scope,
                                          std::string& out) {
  std::vector<Value> items = Iterate(Eval(*node.expr, scope));
  if (node.condition) {
    // The loop's `if` sees the loop target but not `loop`, and runs before loop.length is known.
    std::vector<Value> kept;
    for (Value& item : items) {
      if (++loop_iterations_ > limits_.max_loop_iterations) Fail("too many loop iterations");
      auto probe = std::make_shared<Scope>(scope);
      Assign(*node.target, item, *probe);
      if (Truthy(Eval(*node.condition, probe))) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  auto loop = std::make_shared<LoopState>();
  loop->items = std::make_shared<List>();
  loop->items->items = std::move(items);
  const Value loop_value = Value::FromLoop(loop);
  // jinja2 clears its "run the else block" flag at the end of a completed iteration, so the else block
  // also runs when every iteration ended in break or continue.
  bool completed_iteration = false;
  for (size_t i = 0; i < loop->items->items.size(); ++i) {
    if (++loop_iterations_ > limits_.max_loop_iterations) {
      Fail(absl::StrCat("the template ran more than ", limits_.max_loop_iterations, " loop iterations"));
    }
    loop->index0 = static_cast<int64_t>(i);
    auto iteration = std::make_shared<Scope>(scope);
    Assign(*node.target, loop->items->items[i], *iteration);
    iteration->Set("loop", loop_value);
    const Flow flow = Execute(node.body, iteration, out);
    if (flow == Flow::kBreak) break;
    completed_iteration |= flow == Flow::kNormal;
  }
  if (completed_iteration) return Flow::kNormal;
  // The else block runs after the loop, so a break or continue in it belongs to an enclosing loop.
  return Execute(node.else_body, std::make_shared<Scope>(scope), out);
}

void Interpreter::Assign(const Expr& target, const Value& value, Scope& scope) {
  if (target.kind == Expr::Kind::kName) {
    scope.Set(target.name, value);
    return;
  }
  if (target.kind == Expr::Kind::kGetAttr) {
    const std::string& ns_name = target.operands[0]->name;
    const Value* ns = scope.Lookup(ns_name);
    if (ns == nullptr || ns->kind() != Value::Kind::kNamespace) {
      Fail("cannot assign attribute on non-namespace object");
    }
    if (!target.name.empty() && target.name[0] == '_') {
      Fail("Chat templates cannot store underscore-prefixed attributes on a namespace, but got " +
           text::PyRepr(target.name) + ". Please rename the attribute.");
    }
    ns->ns()->attributes.Set(Value::String(target.name), value);
    return;
  }
  // Tuple unpacking, with Python's messages.
  const size_t want = target.operands.size();
  if (!(value.is_string() || value.kind() == Value::Kind::kList || value.kind() == Value::Kind::kDict ||
        value.is_undefined())) {
    Fail("cannot unpack non-iterable " + TypeName(value) + " object");
  }
  const std::vector<Value> items = Iterate(value);
  if (items.size() < want) {
    Fail(absl::StrCat("not enough values to unpack (expected ", want, ", got ", items.size(), ")"));
  }
  if (items.size() > want) Fail(absl::StrCat("too many values to unpack (expected ", want, ")"));
  for (size_t i = 0; i < want; ++i) Assign(*target.operands[i], items[i], scope);
}

Value Interpreter::Eval(const Expr& e, const std::shared_ptr<Scope>& scope) {
  CheckTime();
  Value v = EvalUncharged(e, scope);
  switch (e.kind) {
    case Expr::Kind::kName:
    case Expr::Kind::kLiteral:
    case Expr::Kind::kGetAttr:
    case Expr::Kind::kGetItem:
      break;  // lookups share the stored value
    default:
      Charge(v);
  }
  return v;
}

Value Interpreter::EvalUncharged(const Expr& e, const std::shared_ptr<Scope>& scope) {
  switch (e.kind) {
    case Expr::Kind::kLiteral:
      return e.value;
    case Expr::Kind::kName: {
      const Value* v = scope->Lookup(e.name);
      return v != nullptr ? *v : UndefinedName(e.name);
    }
    case Expr::Kind::kList:
    case Expr::Kind::kTuple: {
      std::vector<Value> items;
      for (const ExprPtr& op : e.operands) items.push_back(Eval(*op, scope));
      return MakeList(std::move(items),
                      e.kind == Expr::Kind::kTuple ? List::Flavor::kTuple : List::Flavor::kList);
    }
    case Expr::Kind::kDict: {
      auto dict = std::make_shared<Dict>();
      for (size_t i = 0; i + 1 < e.operands.size(); i += 2) {
        Value key = Eval(*e.operands[i], scope);
        dict->Set(key, Eval(*e.operands[i + 1], scope));
      }
      return MakeDict(std::move(dict));
    }
    case Expr::Kind::kGetAttr:
      return GetAttr(Eval(*e.operands[0], scope), e.name);
    case Expr::Kind::kGetItem: {
      const Value obj = Eval(*e.operands[0], scope);
      return GetItem(obj, Eval(*e.operands[1], scope));
    }
    case Expr::Kind::kSlice:
      return EvalSlice(e, scope);
    case Expr::Kind::kCall:
      return EvalCall(e, scope, nullptr);
    case Expr::Kind::kFilter:
      return EvalFilterChain(e, Value(), scope);
    case Expr::Kind::kTest: {
      const Value input = Eval(*e.operands[0], scope);
      const CallArgs args = EvalArgs(e, 1, scope);
      return Value::Bool(ApplyTest(e.name, input, args) != e.negated);
    }
    case Expr::Kind::kNegate:
      return Negate(Eval(*e.operands[0], scope));
    case Expr::Kind::kPositive: {
      Value v = Eval(*e.operands[0], scope);
      if (v.is_undefined()) Fail(v.undefined_message());
      if (!v.is_number()) Fail("bad operand type for unary +: '" + TypeName(v) + "'");
      return v.kind() == Value::Kind::kBool ? Value::Int(v.as_int()) : v;
    }
    case Expr::Kind::kNot:
      return Value::Bool(!Truthy(Eval(*e.operands[0], scope)));
    case Expr::Kind::kBinary: {
      const Value a = Eval(*e.operands[0], scope);
      return BinaryOp(e.name, a, Eval(*e.operands[1], scope));
    }
    case Expr::Kind::kConcat: {
      std::string out;
      for (const ExprPtr& op : e.operands) {
        out += ToStr(Eval(*op, scope));
        if (out.size() > limits_.max_output_bytes) Fail("the template builds values that are too large");
      }
      return Value::String(std::move(out));
    }
    case Expr::Kind::kAnd: {
      Value a = Eval(*e.operands[0], scope);
      return Truthy(a) ? Eval(*e.operands[1], scope) : a;
    }
    case Expr::Kind::kOr: {
      Value a = Eval(*e.operands[0], scope);
      return Truthy(a) ? a : Eval(*e.operands[1], scope);
    }
    case Expr::Kind::kCompare: {
      Value left = Eval(*e.operands[0], scope);
      for (size_t i = 0; i < e.compare_ops.size(); ++i) {
        Value right = Eval(*e.operands[i + 1], scope);
        if (!Compare(e.compare_ops[i], left, right)) return Value::Bool(false);
        left = std::move(right);
      }
      return Value::Bool(true);
    }
    case Expr::Kind::kCondition: {
      if (Truthy(Eval(*e.operands[1], scope))) return Eval(*e.operands[0], scope);
      if (e.operands[2]) return Eval(*e.operands[2], scope);
      return Value::Undefined(absl::StrCat("the inline if-expression on line ", e.line,
                                           " evaluated to false and no else section was defined."));
    }
  }
  return Value();
}

CallArgs Interpreter::EvalArgs(const Expr& e, size_t first_positional, const std::shared_ptr<Scope>& scope) {
  CallArgs args;
  for (size_t i = first_positional; i < e.operands.size(); ++i)
    args.positional.push_back(Eval(*e.operands[i], scope));
  for (const auto& [name, value] : e.keywords) args.keywords.emplace_back(name, Eval(*value, scope));
  return args;
}

Value Interpreter::EvalCall(const Expr& call, const std::shared_ptr<Scope>& scope, const Value* caller) {
  const Value callee = Eval(*call.operands[0], scope);
  CallArgs args = EvalArgs(call, 1, scope);
  if (caller != nullptr) args.keywords.emplace_back("caller", *caller);
  return CallValue(callee, std::move(args));
}

Value Interpreter::CallValue(const Value& callee, CallArgs args) {
  if (callee.is_undefined()) Fail(callee.undefined_message());
  if (callee.kind() != Value::Kind::kCallable) Fail("'" + TypeName(callee) + "' object is not callable");
  if (++call_depth_ > limits_.max_call_depth) Fail("maximum recursion depth exceeded in macro calls");
  struct Unwind {
    int& depth;
    ~Unwind() { --depth; }
  } unwind{call_depth_};
  return callee.callable()->Call(*this, std::move(args));
}

Value Interpreter::EvalFilterChain(const Expr& filter, Value input, const std::shared_ptr<Scope>& scope) {
  const Expr* inner = filter.operands[0].get();
  Value in;
  if (inner == nullptr) {
    in = std::move(input);
  } else if (IsOpenChain(inner)) {
    in = EvalFilterChain(*inner, std::move(input), scope);
  } else {
    in = Eval(*inner, scope);
  }
  const CallArgs args = EvalArgs(filter, 1, scope);
  Value result = ApplyFilter(filter.name, in, args);
  Charge(result);
  return result;
}

Value Interpreter::EvalSlice(const Expr& e, const std::shared_ptr<Scope>& scope) {
  const Value obj = Eval(*e.operands[0], scope);
  auto part = [&](size_t i) { return e.operands[i] ? Eval(*e.operands[i], scope) : Value::None(); };
  const Value start = part(1), stop = part(2), step_v = part(3);
  if (obj.is_undefined()) Fail(obj.undefined_message());
  const bool indexable =
      obj.is_string() || (obj.kind() == Value::Kind::kList && (obj.list()->flavor == List::Flavor::kList ||
                                                               obj.list()->flavor == List::Flavor::kTuple));
  auto valid = [](const Value& v) { return v.is_none() || v.is_integral(); };
  if (!indexable || !valid(start) || !valid(stop) || !valid(step_v)) {
    return UndefinedElement(
        obj, Value::String(SliceRepr(start, stop, step_v)));  // the sandbox swallows the TypeError
  }
  const int64_t step = step_v.is_none() ? 1 : step_v.as_int();
  if (step == 0) Fail("slice step cannot be zero");
  if (obj.is_string()) {
    const std::u32string cps = text::Decode(obj.as_string());
    std::u32string out;
    for (int64_t i : SliceIndices(static_cast<int64_t>(cps.size()), start, stop, step)) out += cps[i];
    return Value::String(text::Encode(out));
  }
  const auto& items = obj.list()->items;
  std::vector<Value> out;
  for (int64_t i : SliceIndices(static_cast<int64_t>(items.size()), start, stop, step))
    out.push_back(items[i]);
  return MakeList(std::move(out), obj.list()->flavor);
}

Value Interpreter::GetAttr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) Fail(obj.undefined_message());
  if (IsDunder(name)) {
    return Value::Undefined("access to attribute " + text::PyRepr(name) + " of " +
                            text::PyRepr(TypeName(obj)) + " object is unsafe.");
  }
  if (std::optional<Value> method = LookupMethod(obj, name)) return *method;
  switch (obj.kind()) {
    case Value::Kind::kDict:
      if (const Value* v = obj.dict()->Find(name)) return *v;
      break;
    case Value::Kind::kNamespace:
      if (const Value* v = obj.ns()->attributes.Find(name)) return *v;
      break;
    case Value::Kind::kLoop:
      return LoopAttribute(obj, name);
    default:
      break;
  }
  return UndefinedAttribute(obj, name);
}

Value Interpreter::GetItem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) Fail(obj.undefined_message());
  switch (obj.kind()) {
    case Value::Kind::kDict:
      if (key.kind() == Value::Kind::kList && key.list()->flavor != List::Flavor::kTuple)
        break;  // unhashable
      if (key.kind() == Value::Kind::kDict || key.kind() == Value::Kind::kNamespace) break;
      if (const Value* v = obj.dict()->Find(key)) return *v;
      break;
    case Value::Kind::kString:
    case Value::Kind::kList: {
      const bool indexable = obj.is_string() || obj.list()->flavor == List::Flavor::kList ||
                             obj.list()->flavor == List::Flavor::kTuple;
      if (!indexable || !key.is_integral()) break;
      const int64_t n = Length(obj);
      int64_t i = key.as_int();
      if (i < 0) i += n;
      if (i < 0 || i >= n) return UndefinedElement(obj, key);
      if (obj.is_string()) {
        return Value::String(text::Encode(std::u32string(1, text::Decode(obj.as_string())[i])));
      }
      return obj.list()->items[i];
    }
    default:
      break;
  }
  // obj[key] failed with a TypeError or LookupError: the sandbox then tries getattr for string keys.
  if (key.is_string()) return GetAttr(obj, key.as_string());
  return UndefinedElement(obj, key);
}

Value Interpreter::LoopAttribute(const Value& loop_value, const std::string& name) {
  const LoopState& loop = *loop_value.loop();
  const auto& items = loop.items->items;
  const int64_t length = static_cast<int64_t>(items.size()), i = loop.index0;
  if (name == "index") return Value::Int(i + 1);
  if (name == "index0") return Value::Int(i);
  if (name == "revindex") return Value::Int(length - i);
  if (name == "revindex0") return Value::Int(length - i - 1);
  if (name == "first") return Value::Bool(i == 0);
  if (name == "last") return Value::Bool(i == length - 1);
  if (name == "length") return Value::Int(length);
  if (name == "depth") return Value::Int(1);
  if (name == "depth0") return Value::Int(0);
  if (name == "previtem") return i > 0 ? items[i - 1] : Value::Undefined("there is no previous item");
  if (name == "nextitem") return i + 1 < length ? items[i + 1] : Value::Undefined("there is no next item");
  if (name == "cycle" || name == "changed") return LoopMethod(loop_value, name);
  return UndefinedAttribute(loop_value, name);
}

Value Interpreter::ApplyFilter(const std::string& name, const Value& input, const CallArgs& args) {
  return CallFilter(*this, name, input, args);
}

bool Interpreter::ApplyTest(const std::string& name, const Value& input, const CallArgs& args) {
  return CallTest(*this, name, input, args);
}

Value Interpreter::InvokeMacro(const MacroDef& macro, const std::shared_ptr<Scope>& scope, CallArgs args) {
  // jinja2's Macro.__call__: positional arguments first, then keywords by name, then defaults; the
  // special names caller/varargs/kwargs exist only when the body mentions them.
  auto frame = std::make_shared<Scope>(scope);
  const size_t n = macro.params.size();
  std::vector<std::optional<Value>> bound(n);
  for (size_t i = 0; i < n && i < args.positional.size(); ++i) bound[i] = args.positional[i];
  auto take_keyword = [&](const std::string& key) -> std::optional<Value> {
    for (auto it = args.keywords.begin(); it != args.keywords.end(); ++it) {
      if (it->first == key) {
        Value v = std::move(it->second);
        args.keywords.erase(it);
        return v;
      }
    }
    return std::nullopt;
  };
  bool found_caller = false;
  for (size_t i = args.positional.size(); i < n; ++i) {
    bound[i] = take_keyword(macro.params[i]);
    found_caller |= macro.params[i] == "caller";
  }
  if (macro.uses_caller && !found_caller) {
    std::optional<Value> caller = take_keyword("caller");
    frame->Set("caller", caller ? *caller : Value::Undefined("No caller defined"));
  }
  if (macro.uses_kwargs) {
    auto kwargs = std::make_shared<Dict>();
    for (auto& [key, value] : args.keywords) kwargs->Set(Value::String(key), std::move(value));
    frame->Set("kwargs", MakeDict(std::move(kwargs)));
  } else if (!args.keywords.empty()) {
    if (std::any_of(args.keywords.begin(), args.keywords.end(),
                    [](const auto& kw) { return kw.first == "caller"; })) {
      Fail("macro " + text::PyRepr(macro.name) +
           " was invoked with two values for the special caller argument. This is most likely a bug.");
    }
    Fail("macro " + text::PyRepr(macro.name) + " takes no keyword argument " +
         text::PyRepr(args.keywords[0].first));
  }
  if (macro.uses_varargs) {
    std::vector<Value> rest;
    for (size_t i = n; i < args.positional.size(); ++i) rest.push_back(args.positional[i]);
    frame->Set("varargs", MakeList(std::move(rest), List::Flavor::kTuple));
  } else if (args.positional.size() > n) {
    Fail(absl::StrCat("macro ", text::PyRepr(macro.name), " takes not more than ", n, " argument(s)"));
  }
  // Defaults are evaluated in the macro's own frame, so a default can use an earlier parameter.
  for (size_t i = 0; i < n; ++i) {
    if (bound[i]) {
      frame->Set(macro.params[i], *bound[i]);
    } else if (macro.defaults[i]) {
      frame->Set(macro.params[i], Eval(*macro.defaults[i], frame));
    } else {
      frame->Set(macro.params[i],
                 Value::Undefined("parameter " + text::PyRepr(macro.params[i]) + " was not provided"));
    }
  }
  return Value::String(RenderToString(macro.body, frame));
}

}  // namespace moe::jinja
