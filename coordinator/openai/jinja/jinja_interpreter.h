// Executes a parsed template: scoping as jinja2 compiles it (a for loop's body gets a fresh scope each
// iteration, `if` shares its parent's), attribute and item lookup as the sandboxed environment does
// them, macros and call blocks, and the limits that keep a hostile template bounded.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "coordinator/openai/jinja/jinja_ast.h"
#include "coordinator/openai/jinja/jinja_value.h"
#include "nlohmann/json.hpp"

namespace moe::jinja {

struct Limits {
  size_t max_output_bytes = size_t{16} << 20;
  int64_t max_loop_iterations = 1'000'000;
  // Strings and lists built while rendering, in bytes (a list item counts 16): bounds the work a
  // template can do by repeatedly doubling a value.
  int64_t max_produced_bytes = int64_t{512} << 20;
  int max_call_depth = 100;
  // Wall-clock time of one render: the other limits bound sizes and loop iterations, not the work
  // between them (a macro calling itself twice 40 levels deep; a method over a 16 MB string in
  // each of 10^6 iterations).
  double max_seconds = 5;
};

class Scope {
 public:
  explicit Scope(std::shared_ptr<Scope> parent) : parent_(std::move(parent)) {}
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
  ~Scope();  // its values through DestroyValues
  const Value* Lookup(const std::string& name) const;
  void Set(const std::string& name, Value value) { vars_[name] = std::move(value); }

 private:
  std::shared_ptr<Scope> parent_;
  std::unordered_map<std::string, Value> vars_;
};

class Interpreter {
 public:
  Interpreter(const Program& program, Limits limits) : program_(program), limits_(limits) {}
  ~Interpreter();
  Interpreter(const Interpreter&) = delete;
  Interpreter& operator=(const Interpreter&) = delete;

  // Throws RenderError; Template::Render converts it.
  std::string Render(const nlohmann::ordered_json& context);

  // The sandboxed environment's attribute (`x.name`) and item (`x[key]`) lookups.
  Value GetAttr(const Value& obj, const std::string& name);
  Value GetItem(const Value& obj, const Value& key);
  Value CallValue(const Value& callee, CallArgs args);
  Value ApplyFilter(const std::string& name, const Value& input, const CallArgs& args);
  bool ApplyTest(const std::string& name, const Value& input, const CallArgs& args);

  // Runs a macro (or a call block's body) with bound arguments. Used by the macro callable.
  Value InvokeMacro(const MacroDef& macro, const std::shared_ptr<Scope>& scope, CallArgs args);
  std::shared_ptr<Scope> root() const { return root_; }
  void Charge(const Value& produced);
  // Namespaces are the one mutable container, so the only way to build a reference cycle
  // (`{% set ns.self = ns %}`); the interpreter empties them when the render ends.
  void TrackNamespace(const std::shared_ptr<Namespace>& ns) { namespaces_.push_back(ns); }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Flow Execute(const Body& body, const std::shared_ptr<Scope>& scope, std::string& out);
  Flow ExecuteNode(const Node& node, const std::shared_ptr<Scope>& scope, std::string& out);
  Flow ExecuteFor(const Node& node, const std::shared_ptr<Scope>& scope, std::string& out);
  void Assign(const Expr& target, const Value& value, Scope& scope);
  std::string RenderToString(const Body& body, const std::shared_ptr<Scope>& scope);
  void Write(std::string& out, std::string_view text);
  // Fails once the render has run past limits_.max_seconds (checked at every node and expression).
  void CheckTime();

  Value Eval(const Expr& e, const std::shared_ptr<Scope>& scope);
  Value EvalUncharged(const Expr& e, const std::shared_ptr<Scope>& scope);
  CallArgs EvalArgs(const Expr& e, size_t first_positional, const std::shared_ptr<Scope>& scope);
  Value EvalCall(const Expr& call, const std::shared_ptr<Scope>& scope, const Value* caller);
  Value EvalFilterChain(const Expr& filter, Value input, const std::shared_ptr<Scope>& scope);
  Value EvalSlice(const Expr& e, const std::shared_ptr<Scope>& scope);
  Value LoopAttribute(const Value& loop, const std::string& name);

  const Program& program_;
  Limits limits_;
  std::shared_ptr<Scope> root_;
  size_t output_bytes_ = 0;
  int64_t loop_iterations_ = 0;
  int64_t produced_bytes_ = 0;
  int call_depth_ = 0;
  std::chrono::steady_clock::time_point deadline_;
  std::vector<std::weak_ptr<Namespace>> namespaces_;
};

}  // namespace moe::jinja
