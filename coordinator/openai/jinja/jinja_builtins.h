// What transformers' jinja2 environment provides beyond the language: filters, tests, the methods of
// str/dict/list values that the sandbox lets templates call, and the globals (raise_exception,
// strftime_now, range, namespace, dict, joiner).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "coordinator/openai/jinja/jinja_ast.h"
#include "coordinator/openai/jinja/jinja_interpreter.h"
#include "coordinator/openai/jinja/jinja_value.h"

namespace moe::jinja {

void InstallGlobals(Scope& scope);

// Unknown names fail with jinja2's "No filter named 'x'." / "No test named 'x'.".
Value CallFilter(Interpreter& interp, const std::string& name, const Value& input, const CallArgs& args);
bool CallTest(Interpreter& interp, const std::string& name, const Value& input, const CallArgs& args);

// getattr(obj, name) for a Python method of a str, dict, list or tuple: the bound method, an undefined
// that fails when called if the method would mutate (ImmutableSandboxedEnvironment), or nullopt when
// the type has no such method.
std::optional<Value> LookupMethod(const Value& obj, const std::string& name);

// loop.cycle and loop.changed.
Value LoopMethod(const Value& loop, const std::string& name);

// A macro (or call block body) closed over the scope it was defined in.
Value MakeMacro(std::shared_ptr<const MacroDef> def, std::weak_ptr<Scope> scope);

}  // namespace moe::jinja
