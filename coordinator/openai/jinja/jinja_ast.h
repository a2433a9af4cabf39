// The parsed form of a template: expressions and statements, shared read-only between renders.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/openai/jinja/jinja_value.h"

namespace moe::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,   // value
    kName,      // name
    kList,      // operands: items
    kTuple,     // operands: items
    kDict,      // operands: key, value, key, value, ...
    kGetAttr,   // operands[0].name
    kGetItem,   // operands[0][operands[1]]
    kSlice,     // operands[0][operands[1]:operands[2]:operands[3]], omitted parts null
    kCall,      // operands[0](operands[1...], keywords)
    kFilter,    // operands[0] | name(operands[1...], keywords); operands[0] is null in {% filter %}
    kTest,      // operands[0] is [not] name(operands[1...], keywords)
    kNegate,    // -operands[0]
    kPositive,  // +operands[0]
    kNot,       // not operands[0]
    kBinary,    // operands[0] name operands[1], name one of + - * / // % **
    kConcat,    // operands joined with ~
    kAnd,
    kOr,
    kCompare,    // operands[0] compare_ops[0] operands[1] compare_ops[1] ... (chained like Python)
    kCondition,  // operands[0] if operands[1] else operands[2]; a missing else is null
  };

  Kind kind = Kind::kLiteral;
  int line = 0;
  // Height of this subtree. The parser bounds it, so that evaluating or destroying an expression such as
  // 1+1+1+... cannot exhaust the stack.
  int depth = 1;
  Value value;
  std::string name;
  std::vector<ExprPtr> operands;
  std::vector<std::pair<std::string, ExprPtr>> keywords;
  std::vector<std::string> compare_ops;  // "==", "!=", "<", "<=", ">", ">=", "in", "not in"
  bool negated = false;                  // `is not`
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

// A macro, or the body of a {% call %} block (which jinja2 passes to the macro as `caller`).
struct MacroDef {
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // one per param; null when the param is required
  Body body;
  // jinja2 only lets a macro receive these when its body mentions them.
  bool uses_caller = false;
  bool uses_varargs = false;
  bool uses_kwargs = false;
  int line = 0;
};

struct Node {
  enum class Kind {
    kText,         // text
    kOutput,       // {{ expr }}
    kIf,           // branches; the else branch has a null condition
    kFor,          // for target in expr [if condition]: body, else_body
    kSet,          // set target = expr
    kSetBlock,     // set target [| filters in expr]: body
    kMacro,        // macro
    kCallBlock,    // call [(macro params)] expr: body is the caller
    kFilterBlock,  // filter expr (a filter chain with a null input): body
    kWith,         // with targets = values: body
    kScoped,       // a body with its own scope: {% generation %} from transformers' AssistantTracker
    kBreak,
    kContinue,
  };

  Kind kind = Kind::kText;
  int line = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr target;  // a kName, a kGetAttr of a name (namespace attribute), or a kTuple of kNames
  ExprPtr condition;
  std::vector<std::pair<ExprPtr, Body>> branches;
  std::vector<std::pair<ExprPtr, ExprPtr>> assignments;  // kWith
  Body body;
  Body else_body;
  std::shared_ptr<MacroDef> macro;
};

struct Program {
  Body body;
};

}  // namespace moe::jinja
