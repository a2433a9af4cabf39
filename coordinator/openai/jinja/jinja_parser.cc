#include "coordinator/openai/jinja/jinja_parser.h"

#include <initializer_list>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "coordinator/openai/jinja/jinja_lexer.h"

namespace moe::jinja {
namespace {

// Deeply nested input ("((((...") must fail cleanly rather than exhaust the stack.
constexpr int kMaxDepth = 200;
constexpr int kMaxExprDepth = 300;

class ParseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The block being parsed, for "expected 'endfor'" messages.
struct OpenBlock {
  std::string tag;
  int line;
  std::vector<std::string> end_tags;
};

void MarkMacroNames(const Expr* e, MacroDef& macro);

void MarkMacroNames(const Body& body, MacroDef& macro) {
  for (const NodePtr& node : body) {
    if (node->kind == Node::Kind::kMacro) continue;  // a nested macro has its own caller
    MarkMacroNames(node->expr.get(), macro);
    MarkMacroNames(node->condition.get(), macro);
    for (const auto& [cond, branch] : node->branches) {
      MarkMacroNames(cond.get(), macro);
      MarkMacroNames(branch, macro);
    }
    for (const auto& [target, value] : node->assignments) MarkMacroNames(value.get(), macro);
    MarkMacroNames(node->body, macro);
    MarkMacroNames(node->else_body, macro);
    if (node->kind == Node::Kind::kCallBlock && node->macro) {
      for (const ExprPtr& d : node->macro->defaults) MarkMacroNames(d.get(), macro);
    }
  }
}

void MarkMacroNames(const Expr* e, MacroDef& macro) {
  if (e == nullptr) return;
  if (e->kind == Expr::Kind::kName) {
    macro.uses_caller |= e->name == "caller";
    macro.uses_varargs |= e->name == "varargs";
    macro.uses_kwargs |= e->name == "kwargs";
  }
  for (const ExprPtr& op : e->operands) MarkMacroNames(op.get(), macro);
  for (const auto& [name, value] : e->keywords) MarkMacroNames(value.get(), macro);
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  std::shared_ptr<const Program> Run() {
    auto program = std::make_shared<Program>();
    program->body = ParseBody(nullptr);
    return program;
  }

 private:
  // ---- token helpers ----
  const Token& Peek(size_t ahead = 0) const {
    const size_t i = std::min(pos_ + ahead, tokens_.size() - 1);
    return tokens_[i];
  }
  const Token& Next() {
    const Token& t = tokens_[pos_];
    if (pos_ + 1 < tokens_.size()) ++pos_;
    return t;
  }
  bool IsOp(std::string_view op, size_t ahead = 0) const {
    return Peek(ahead).kind == TokenKind::kOperator && Peek(ahead).value == op;
  }
  bool IsName(std::string_view name, size_t ahead = 0) const {
    return Peek(ahead).kind == TokenKind::kName && Peek(ahead).value == name;
  }
  bool SkipOp(std::string_view op) {
    if (!IsOp(op)) return false;
    Next();
    return true;
  }
  bool SkipName(std::string_view name) {
    if (!IsName(name)) return false;
    Next();
    return true;
  }

  [[noreturn]] void Fail(const std::string& message, int line = -1) const {
    throw ParseError(
        absl::StrCat("template syntax error at line ", line < 0 ? Peek().line : line, ": ", message));
  }
  [[noreturn]] void Unexpected(const std::string& expected) const {
    Fail(absl::StrCat("expected ", expected, ", got ", Describe(Peek())));
  }
  void ExpectOp(std::string_view op) {
    if (!SkipOp(op)) Unexpected(absl::StrCat("'", std::string(op), "'"));
  }
  std::string ExpectName(const std::string& what = "a name") {
    if (Peek().kind != TokenKind::kName) Unexpected(what);
    return Next().value;
  }
  void ExpectBlockEnd() {
    if (Peek().kind != TokenKind::kBlockEnd) Unexpected("end of statement block '%}'");
    Next();
  }

  struct DepthGuard {
    explicit DepthGuard(Parser& p) : parser(p) {
      if (++parser.depth_ > kMaxDepth) parser.Fail("template is nested too deeply");
    }
    ~DepthGuard() { --parser.depth_; }
    Parser& parser;
  };

  static ExprPtr MakeExpr(Expr::Kind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  // Attaches an operand (possibly null), keeping the parent's depth and its bound.
  void Adopt(Expr& parent, ExprPtr child) {
    if (child) {
      parent.depth = std::max(parent.depth, child->depth + 1);
      if (parent.depth > kMaxExprDepth) Fail("expression is nested too deeply");
    }
    parent.operands.push_back(std::move(child));
  }

  // ---- statements ----

  // Parses nodes until one of `block`'s end tags (consumed, with its name left in end_tag_) or, at
  // top level, the end of the template.
  Body ParseBody(const OpenBlock* block) {
    DepthGuard guard(*this);
    Body body;
    while (true) {
      const Token& t = Peek();
      if (t.kind == TokenKind::kEof) {
        if (block != nullptr) {
          Fail(absl::StrCat("unexpected end of template; expected ", QuoteList(block->end_tags),
                            " to close the '", block->tag, "' block opened at line ", block->line));
        }
        return body;
      }
      if (t.kind == TokenKind::kText) {
        auto node = std::make_unique<Node>();
        node->kind = Node::Kind::kText;
        node->line = t.line;
        node->text = Next().value;
        body.push_back(std::move(node));
        continue;
      }
      if (t.kind == TokenKind::kVariableBegin) {
        auto node = std::make_unique<Node>();
        node->kind = Node::Kind::kOutput;
        node->line = Next().line;
        node->expr = ParseTuple(true, {});
        if (Peek().kind != TokenKind::kVariableEnd) Unexpected("end of print statement '}}'");
        Next();
        body.push_back(std::move(node));
        continue;
      }
      if (t.kind != TokenKind::kBlockBegin) Unexpected("template text or a tag");
      Next();
      const int line = Peek().line;
      const std::string tag = ExpectName("a statement name");
      if (block != nullptr) {
        for (const std::string& end : block->end_tags) {
          if (tag == end) {
            end_tag_ = tag;
            return body;
          }
        }
      }
      body.push_back(ParseStatement(tag, line, block));
    }
  }

  static std::string QuoteList(const std::vector<std::string>& tags) {
    std::vector<std::string> quoted;
    for (const std::string& t : tags) quoted.push_back("'" + t + "'");
    return absl::StrJoin(quoted, " or ");
  }

  NodePtr ParseStatement(const std::string& tag, int line, const OpenBlock* enclosing) {
    auto node = std::make_unique<Node>();
    node->line = line;
    if (tag == "if") {
      ParseIf(*node);
    } else if (tag == "for") {
      ParseFor(*node);
    } else if (tag == "set") {
      ParseSet(*node);
    } else if (tag == "macro") {
      ParseMacro(*node);
    } else if (tag == "call") {
      ParseCallBlock(*node);
    } else if (tag == "filter") {
      node->kind = Node::Kind::kFilterBlock;
      node->expr = ParseFilterChain(nullptr, /*start_inline=*/true);
      ExpectBlockEnd();
      node->body = ParseBlockBody("filter", line, {"endfilter"});
      ExpectBlockEnd();
    } else if (tag == "with") {
      ParseWith(*node);
    } else if (tag == "generation") {
      node->kind = Node::Kind::kScoped;
      ExpectBlockEnd();
      const int saved_loop_depth = std::exchange(loop_depth_, 0);  // a call block: its body is a function
      node->body = ParseBlockBody("generation", line, {"endgeneration"});
      loop_depth_ = saved_loop_depth;
      ExpectBlockEnd();
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) Fail(absl::StrCat("'", tag, "' outside of a for loop"), line);
      node->kind = tag == "break" ? Node::Kind::kBreak : Node::Kind::kContinue;
      ExpectBlockEnd();
    } else if (enclosing != nullptr) {
      Fail(absl::StrCat("unexpected tag '", tag, "'; expected ", QuoteList(enclosing->end_tags),
                        " to close the '", enclosing->tag, "' block opened at line ", enclosing->line),
           line);
    } else {
      Fail(absl::StrCat("unknown tag '", tag, "'"), line);
    }
    return node;
  }

  Body ParseBlockBody(const std::string& tag, int line, std::vector<std::string> end_tags) {
    OpenBlock block{tag, line, std::move(end_tags)};
    Body body = ParseBody(&block);
    return body;
  }

  void ParseIf(Node& node) {
    node.kind = Node::Kind::kIf;
    const int line = node.line;
    ExprPtr condition = ParseTuple(false, {});
    while (true) {
      ExpectBlockEnd();
      Body body = ParseBlockBody("if", line, {"elif", "else", "endif"});
      node.branches.emplace_back(std::move(condition), std::move(body));
      if (end_tag_ == "elif") {
        condition = ParseTuple(false, {});
        continue;
      }
      if (end_tag_ == "else") {
        ExpectBlockEnd();
        node.branches.emplace_back(nullptr, ParseBlockBody("if", line, {"endif"}));
      }
      ExpectBlockEnd();
      return;
    }
  }

  void ParseFor(Node& node) {
    node.kind = Node::Kind::kFor;
    node.target = ParseAssignTarget(false);
    if (!SkipName("in")) Unexpected("'in'");
    node.expr = ParseTuple(false, {"recursive"});
    if (SkipName("if")) node.condition = ParseExpression(true);
    if (IsName("recursive")) Fail("recursive for loops are not supported");
    ExpectBlockEnd();
    ++loop_depth_;
    node.body = ParseBlockBody("for", node.line, {"endfor", "else"});
    --loop_depth_;
    if (end_tag_ == "else") {
      ExpectBlockEnd();
      node.else_body = ParseBlockBody("for", node.line, {"endfor"});
    }
    ExpectBlockEnd();
  }

  void ParseSet(Node& node) {
    node.target = ParseAssignTarget(true);
    if (SkipOp("=")) {
      node.kind = Node::Kind::kSet;
      node.expr = ParseTuple(true, {});
      ExpectBlockEnd();
      return;
    }
    node.kind = Node::Kind::kSetBlock;
    if (node.target->kind != Expr::Kind::kName) Fail("a block assignment needs a plain variable name");
    if (IsOp("|")) node.expr = ParseFilterChain(nullptr);
    ExpectBlockEnd();
    node.body = ParseBlockBody("set", node.line, {"endset"});  // inlined by jinja2: break/continue stay legal
    ExpectBlockEnd();
  }

  void ParseWith(Node& node) {
    node.kind = Node::Kind::kWith;
    while (Peek().kind != TokenKind::kBlockEnd) {
      if (!node.assignments.empty()) ExpectOp(",");
      ExprPtr target = ParseAssignTarget(false);
      ExpectOp("=");
      node.assignments.emplace_back(std::move(target), ParseExpression(true));
    }
    ExpectBlockEnd();
    node.body = ParseBlockBody("with", node.line, {"endwith"});
    ExpectBlockEnd();
  }

  std::shared_ptr<MacroDef> ParseSignature(std::string name, int line) {
    auto macro = std::make_shared<MacroDef>();
    macro->name = std::move(name);
    macro->line = line;
    ExpectOp("(");
    while (!SkipOp(")")) {
      if (!macro->params.empty()) {
        ExpectOp(",");
        if (SkipOp(")")) break;
      }
      macro->params.push_back(ExpectName("a parameter name"));
      macro->defaults.push_back(SkipOp("=") ? ParseExpression(true) : nullptr);
    }
    return macro;
  }

  void ParseMacro(Node& node) {
    node.kind = Node::Kind::kMacro;
    std::string name = ExpectName("a macro name");
    node.macro = ParseSignature(std::move(name), node.line);
    ExpectBlockEnd();
    const int saved_loop_depth = std::exchange(loop_depth_, 0);
    node.macro->body = ParseBlockBody("macro", node.line, {"endmacro"});
    loop_depth_ = saved_loop_depth;
    ExpectBlockEnd();
    MarkMacroNames(node.macro->body, *node.macro);
  }

  void ParseCallBlock(Node& node) {
    node.kind = Node::Kind::kCallBlock;
    if (IsOp("(")) {
      node.macro = ParseSignature("caller", node.line);
    } else {
      node.macro = std::make_shared<MacroDef>();
      node.macro->name = "caller";
      node.macro->line = node.line;
    }
    node.expr = ParseExpression(true);
    if (node.expr->kind != Expr::Kind::kCall) Fail("expected a call after 'call'", node.line);
    ExpectBlockEnd();
    const int saved_loop_depth = std::exchange(loop_depth_, 0);
    node.macro->body = ParseBlockBody("call", node.line, {"endcall"});
    loop_depth_ = saved_loop_depth;
    ExpectBlockEnd();
    MarkMacroNames(node.macro->body, *node.macro);
  }

  // `name`, `ns.attr` (set only) or `a, b`.
  ExprPtr ParseAssignTarget(bool allow_attribute) {
    const int line = Peek().line;
    auto name = MakeExpr(Expr::Kind::kName, line);
    name->name = ExpectName("a variable name");
    if (allow_attribute && IsOp(".") && Peek(1).kind == TokenKind::kName) {
      Next();
      auto attr = MakeExpr(Expr::Kind::kGetAttr, line);
      attr->name = Next().value;
      Adopt(*attr, std::move(name));
      return attr;
    }
    if (!IsOp(",")) return name;
    auto tuple = MakeExpr(Expr::Kind::kTuple, line);
    Adopt(*tuple, std::move(name));
    while (SkipOp(",")) {
      if (Peek().kind != TokenKind::kName || IsName("in")) break;
      auto item = MakeExpr(Expr::Kind::kName, Peek().line);
      item->name = Next().value;
      Adopt(*tuple, std::move(item));
    }
    return tuple;
  }

  // ---- expressions ----

  bool AtTupleEnd(const std::set<std::string>& extra_end_names) const {
    const Token& t = Peek();
    if (t.kind == TokenKind::kVariableEnd || t.kind == TokenKind::kBlockEnd || t.kind == TokenKind::kEof)
      return true;
    if (IsOp(")")) return true;
    return t.kind == TokenKind::kName && extra_end_names.count(t.value) > 0;
  }

  ExprPtr ParseTuple(bool with_condexpr, const std::set<std::string>& extra_end_names,
                     bool explicit_parentheses = false) {
    const int line = Peek().line;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) ExpectOp(",");
      if (AtTupleEnd(extra_end_names)) break;
      items.push_back(with_condexpr ? ParseExpression(true) : ParseOr());
      if (IsOp(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parentheses) Unexpected("an expression");
    }
    auto tuple = MakeExpr(Expr::Kind::kTuple, line);
    for (ExprPtr& item : items) Adopt(*tuple, std::move(item));
    return tuple;
  }

  ExprPtr ParseExpression(bool with_condexpr) { return with_condexpr ? ParseCondition() : ParseOr(); }

  ExprPtr ParseCondition() {
    DepthGuard guard(*this);
    ExprPtr expr = ParseOr();
    while (IsName("if")) {
      const int line = Next().line;
      auto cond = MakeExpr(Expr::Kind::kCondition, line);
      ExprPtr test = ParseOr();
      ExprPtr otherwise = SkipName("else") ? ParseCondition() : nullptr;
      Adopt(*cond, std::move(expr));
      Adopt(*cond, std::move(test));
      Adopt(*cond, std::move(otherwise));
      expr = std::move(cond);
    }
    return expr;
  }

  ExprPtr ParseOr() {
    ExprPtr left = ParseAnd();
    while (IsName("or")) {
      auto e = MakeExpr(Expr::Kind::kOr, Next().line);
      Adopt(*e, std::move(left));
      Adopt(*e, ParseAnd());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr ParseAnd() {
    ExprPtr left = ParseNot();
    while (IsName("and")) {
      auto e = MakeExpr(Expr::Kind::kAnd, Next().line);
      Adopt(*e, std::move(left));
      Adopt(*e, ParseNot());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr ParseNot() {
    if (IsName("not")) {
      DepthGuard guard(*this);
      auto e = MakeExpr(Expr::Kind::kNot, Next().line);
      Adopt(*e, ParseNot());
      return e;
    }
    return ParseCompare();
  }

  ExprPtr ParseCompare() {
    const int line = Peek().line;
    ExprPtr first = ParseMath1();
    auto cmp = MakeExpr(Expr::Kind::kCompare, line);
    Adopt(*cmp, std::move(first));
    while (true) {
      static const std::set<std::string> kOps = {"==", "!=", "<", "<=", ">", ">="};
      if (Peek().kind == TokenKind::kOperator && kOps.count(Peek().value)) {
        cmp->compare_ops.push_back(Next().value);
      } else if (SkipName("in")) {
        cmp->compare_ops.push_back("in");
      } else if (IsName("not") && IsName("in", 1)) {
        Next();
        Next();
        cmp->compare_ops.push_back("not in");
      } else {
        break;
      }
      Adopt(*cmp, ParseMath1());
    }
    if (cmp->compare_ops.empty()) return std::move(cmp->operands[0]);
    return cmp;
  }

  ExprPtr Binary(const std::string& op, ExprPtr left, ExprPtr right, int line) {
    auto e = MakeExpr(Expr::Kind::kBinary, line);
    e->name = op;
    Adopt(*e, std::move(left));
    Adopt(*e, std::move(right));
    return e;
  }

  ExprPtr ParseMath1() {
    ExprPtr left = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      const Token& op = Next();
      left = Binary(op.value, std::move(left), ParseConcat(), op.line);
    }
    return left;
  }

  ExprPtr ParseConcat() {
    const int line = Peek().line;
    ExprPtr first = ParseMath2();
    if (!IsOp("~")) return first;
    auto e = MakeExpr(Expr::Kind::kConcat, line);
    Adopt(*e, std::move(first));
    while (SkipOp("~")) Adopt(*e, ParseMath2());
    return e;
  }

  ExprPtr ParseMath2() {
    ExprPtr left = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const Token& op = Next();
      left = Binary(op.value, std::move(left), ParsePow(), op.line);
    }
    return left;
  }

  ExprPtr ParsePow() {
    ExprPtr left = ParseUnary(true);
    while (IsOp("**")) {
      const Token& op = Next();
      left = Binary("**", std::move(left), ParseUnary(true), op.line);
    }
    return left;
  }

  ExprPtr ParseUnary(bool with_filter) {
    DepthGuard guard(*this);
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      const Token& op = Next();
      node = MakeExpr(op.value == "-" ? Expr::Kind::kNegate : Expr::Kind::kPositive, op.line);
      Adopt(*node, ParseUnary(false));
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr ParsePrimary() {
    DepthGuard guard(*this);
    const Token& t = Peek();
    const int line = t.line;
    if (t.kind == TokenKind::kName) {
      const std::string name = Next().value;
      auto e = MakeExpr(Expr::Kind::kLiteral, line);
      if (name == "true" || name == "True") {
        e->value = Value::Bool(true);
      } else if (name == "false" || name == "False") {
        e->value = Value::Bool(false);
      } else if (name == "none" || name == "None") {
        e->value = Value::None();
      } else {
        e->kind = Expr::Kind::kName;
        e->name = name;
      }
      return e;
    }
    if (t.kind == TokenKind::kString) {
      std::string s = Next().value;
      while (Peek().kind == TokenKind::kString) s += Next().value;  // adjacent literals concatenate
      auto e = MakeExpr(Expr::Kind::kLiteral, line);
      e->value = Value::String(std::move(s));
      return e;
    }
    if (t.kind == TokenKind::kInteger || t.kind == TokenKind::kFloat) {
      auto e = MakeExpr(Expr::Kind::kLiteral, line);
      e->value = t.kind == TokenKind::kInteger ? Value::Int(t.int_value) : Value::Float(t.float_value);
      Next();
      return e;
    }
    if (SkipOp("(")) {
      ExprPtr e = ParseTuple(true, {}, true);
      ExpectOp(")");
      return e;
    }
    if (SkipOp("[")) {
      auto e = MakeExpr(Expr::Kind::kList, line);
      while (!IsOp("]")) {
        if (!e->operands.empty()) {
          ExpectOp(",");
          if (IsOp("]")) break;
        }
        Adopt(*e, ParseExpression(true));
      }
      ExpectOp("]");
      return e;
    }
    if (SkipOp("{")) {
      auto e = MakeExpr(Expr::Kind::kDict, line);
      while (!IsOp("}")) {
        if (!e->operands.empty()) {
          ExpectOp(",");
          if (IsOp("}")) break;
        }
        Adopt(*e, ParseExpression(true));
        ExpectOp(":");
        Adopt(*e, ParseExpression(true));
      }
      ExpectOp("}");
      return e;
    }
    Unexpected("an expression");
  }

  ExprPtr ParsePostfix(ExprPtr node) {
    while (true) {
      if (IsOp(".") || IsOp("[")) {
        node = ParseSubscript(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        node = ParseFilterChain(std::move(node));
      } else if (IsName("is")) {
        node = ParseTest(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseSubscript(ExprPtr node) {
    const Token& t = Next();
    if (t.value == ".") {
      const Token& attr = Peek();
      if (attr.kind == TokenKind::kName) {
        auto e = MakeExpr(Expr::Kind::kGetAttr, t.line);
        e->name = Next().value;
        Adopt(*e, std::move(node));
        return e;
      }
      if (attr.kind == TokenKind::kInteger) {
        auto e = MakeExpr(Expr::Kind::kGetItem, t.line);
        auto key = MakeExpr(Expr::Kind::kLiteral, t.line);
        key->value = Value::Int(Next().int_value);
        Adopt(*e, std::move(node));
        Adopt(*e, std::move(key));
        return e;
      }
      Unexpected("an attribute name");
    }
    // '[' key ']' or a slice.
    std::vector<ExprPtr> keys;
    ExprPtr slice;
    while (!IsOp("]")) {
      if (!keys.empty() || slice) ExpectOp(",");
      ExprPtr start;
      if (!IsOp(":")) {
        start = ParseExpression(true);
        if (!IsOp(":")) {
          keys.push_back(std::move(start));
          continue;
        }
      }
      Next();  // ':'
      if (slice || !keys.empty()) Fail("a subscript can hold one slice and nothing else");
      slice = MakeExpr(Expr::Kind::kSlice, t.line);
      Adopt(*slice, nullptr);  // the object, filled below
      Adopt(*slice, std::move(start));
      Adopt(*slice, IsOp("]") || IsOp(",") || IsOp(":") ? nullptr : ParseExpression(true));
      if (SkipOp(":")) {
        Adopt(*slice, IsOp("]") || IsOp(",") ? nullptr : ParseExpression(true));
      } else {
        Adopt(*slice, nullptr);
      }
    }
    ExpectOp("]");
    if (slice) {
      if (!keys.empty()) Fail("a subscript can hold one slice and nothing else");
      slice->depth = std::max(slice->depth, node->depth + 1);
      if (slice->depth > kMaxExprDepth) Fail("expression is nested too deeply");
      slice->operands[0] = std::move(node);
      return slice;
    }
    if (keys.empty()) Unexpected("a subscript");
    auto e = MakeExpr(Expr::Kind::kGetItem, t.line);
    Adopt(*e, std::move(node));
    if (keys.size() == 1) {
      Adopt(*e, std::move(keys[0]));
    } else {
      auto tuple = MakeExpr(Expr::Kind::kTuple, t.line);
      for (ExprPtr& key : keys) Adopt(*tuple, std::move(key));
      Adopt(*e, std::move(tuple));
    }
    return e;
  }

  // Arguments in parentheses, appended to `call` (positional after operands[0], keywords).
  void ParseArguments(Expr& call) {
    ExpectOp("(");
    bool first = true;
    while (!IsOp(")")) {
      if (!first) {
        ExpectOp(",");
        if (IsOp(")")) break;
      }
      first = false;
      if (IsOp("*") || IsOp("**")) Fail("*args and **kwargs in calls are not supported");
      if (Peek().kind == TokenKind::kName && IsOp("=", 1)) {
        std::string key = Next().value;
        Next();
        ExprPtr value = ParseExpression(true);
        call.depth = std::max(call.depth, value->depth + 1);
        if (call.depth > kMaxExprDepth) Fail("expression is nested too deeply");
        call.keywords.emplace_back(std::move(key), std::move(value));
        continue;
      }
      if (!call.keywords.empty()) Fail("a positional argument follows a keyword argument");
      Adopt(call, ParseExpression(true));
    }
    ExpectOp(")");
  }

  ExprPtr ParseCall(ExprPtr callee) {
    auto e = MakeExpr(Expr::Kind::kCall, Peek().line);
    Adopt(*e, std::move(callee));
    ParseArguments(*e);
    return e;
  }

  std::string ParseDottedName() {
    std::string name = ExpectName("a filter or test name");
    while (IsOp(".") && Peek(1).kind == TokenKind::kName) {
      Next();
      name += "." + Next().value;
    }
    return name;
  }

  // `| f(args) | g ...` applied to `input` (null for {% filter %} and block sets). {% filter f | g %}
  // starts inline, without the first pipe.
  ExprPtr ParseFilterChain(ExprPtr input, bool start_inline = false) {
    while (start_inline || IsOp("|")) {
      const int line = start_inline ? Peek().line : Next().line;
      start_inline = false;
      auto e = MakeExpr(Expr::Kind::kFilter, line);
      e->name = ParseDottedName();
      Adopt(*e, std::move(input));
      if (IsOp("(")) ParseArguments(*e);
      input = std::move(e);
    }
    return input;
  }

  ExprPtr ParseTest(ExprPtr input) {
    const int line = Next().line;  // 'is'
    auto e = MakeExpr(Expr::Kind::kTest, line);
    e->negated = SkipName("not");
    e->name = ParseDottedName();
    Adopt(*e, std::move(input));
    const Token& t = Peek();
    if (IsOp("(")) {
      ParseArguments(*e);
    } else if ((t.kind == TokenKind::kName || t.kind == TokenKind::kString || t.kind == TokenKind::kInteger ||
                t.kind == TokenKind::kFloat || IsOp("(") || IsOp("[") || IsOp("{")) &&
               !IsName("else") && !IsName("or") && !IsName("and")) {
      if (IsName("is")) Fail("you cannot chain multiple tests with is");
      Adopt(*e, ParsePostfix(ParsePrimary()));
    }
    return e;
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  std::string end_tag_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<const Program>> ParseTemplate(std::string_view source) {
  absl::StatusOr<std::vector<Token>> tokens = Tokenize(source);
  if (!tokens.ok()) return tokens.status();
  try {
    return Parser(std::move(*tokens)).Run();
  } catch (const ParseError& e) {
    return absl::InvalidArgumentError(e.what());
  }
}

}  // namespace moe::jinja
