// A JSON Schema compiled for constrained generation (response_format json_schema): a graph of
// nodes the byte grammar (json_grammar.h) walks while it reads a value. The subset is what a
// deterministic byte-at-a-time reader can enforce exactly; anything else is refused at compile
// time with the schema path and the keyword, never ignored:
//   - "type": one of object, array, string, integer, number, boolean, null (a list of types is
//     read as anyOf of each);
//   - object: "properties", "required", "additionalProperties" (false, or absent with properties
//     listed: only those, as OpenAI's strict structured outputs; true, or absent with none listed:
//     any keys and values; a schema, with no properties listed: any keys, values it admits, as
//     Pydantic writes dict[str, T]). Properties come in the schema's order (as xgrammar and OpenAI's
//     structured outputs write them); optional ones may be left out;
//   - array: "items" (a schema, or false after prefixItems), "prefixItems" (tuples), "minItems",
//     "maxItems";
//   - string: "minLength", "maxLength" (in code points), "pattern" (byte_dfa.h's regex subset, found
//     anywhere in the string unless anchored, as re.search and ECMA-262 read it; the string's
//     characters must then be raw or one of the escapes \" \\ \/ \b \f \n \r \t, not \u), "format"
//     (date, time, date-time, uuid, ipv4, email, uri: a pattern a strict checker accepts, RFC 3339's
//     with an upper-case T and Z, the 29th of February left out, URIs with a host); a maxLength too
//     large to fold into the automaton is kept by refusing characters after which no match fits;
//   - integer: "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum" (magnitudes up to 1e18);
//     number: "minimum" and "maximum" with integral values up to 2^53, read without an exponent
//     (rounding to a float cannot take such a value past them);
//   - "enum" and "const" of any JSON values (written as their compact JSON text);
//   - "anyOf" / "oneOf" whose alternatives start with different bytes (a string or null; an object
//     or an array), so that a value's first byte chooses the alternative; and among them objects
//     told apart by their first property, required in each, whose enum or const values differ
//     ({"name": {"const": "get_weather"}, ...}: a tagged union, as tool_choice "required" writes its
//     calls), so that its value chooses the object;
//   - "$ref" to "#/$defs/NAME" or "#/definitions/NAME" (recursion allowed); "allOf" of one schema;
//   - annotations that constrain nothing: title, description, default, examples, $schema, $id,
//     $comment, OpenAPI's discriminator, readOnly, writeOnly, deprecated, contentEncoding,
//     contentMediaType. Everything else (multipleOf, other formats, ...) is refused: a promise not kept.
// A schema no output can finish is refused too, naming the path of the part that cannot be: false
// or an empty type list anywhere, and a root with no finite value (every value needs another of
// itself inside: a required property or a minItems item that refers back) or only values nesting
// deeper than the recogniser's kMaxDepth levels. An optional part like that is never begun
// (JsonGrammar::Fits).
// An empty schema ({} or true) is any JSON value.
#pragma once

#include <bitset>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "worker/byte_dfa.h"

namespace moe {

struct JsonSchemaNode {
  // kToken: a value read by an automaton over its bytes, with nothing around it (bounded numbers;
  // guided_regex's whole output). kUnion: objects told apart by their first property's value.
  enum class Kind : uint8_t {
    kAny, kObject, kArray, kString, kInteger, kNumber, kBoolean, kNull, kEnum, kAnyOf, kToken, kUnion
  };
  Kind kind = Kind::kAny;
  // kObject: the properties in order, their value nodes, which are required. kUnion: one, the tag,
  // whose node is a kEnum of every alternative's tag values.
  std::vector<std::string> property_names;
  std::vector<uint16_t> property_nodes;
  std::vector<bool> required;
  bool additional = false;  // other keys may follow the listed properties (there are none then) ...
  uint16_t additional_node = 0;  // ... with values of this node (kAnyNode: any)
  // kArray: item i follows prefix_items[i] (a tuple's), later ones `items`.
  std::vector<uint16_t> prefix_items;
  uint16_t items = 0;
  uint32_t min_items = 0, max_items = UINT32_MAX;
  // kString
  uint32_t min_length = 0, max_length = UINT32_MAX;
  // kString: the automaton its characters must match (pattern, format); kToken: its bytes'. -1: none.
  int32_t dfa = -1;
  // kEnum: the allowed values' compact JSON texts.
  std::vector<std::string> texts;
  // kAnyOf: the alternatives, whose first bytes do not overlap. kUnion: the object each of the tag
  // enum's texts chooses.
  std::vector<uint16_t> alternatives;
  std::bitset<256> first_bytes;  // the bytes a value of this node can start with
  // The fewest levels of nesting any value of this node opens, as JsonGrammar counts them (an
  // object or array is one, its required properties' and its first minItems items' values below it;
  // a scalar or an enum value none); kNoFiniteValue where every value needs another of itself
  // inside, forever.
  uint16_t min_depth = 0;
  static constexpr uint16_t kNoFiniteValue = UINT16_MAX;
};

class JsonSchema {
 public:
  static constexpr size_t kMaxNodes = 4096;
  static constexpr size_t kMaxProperties = 64;  // per object
  static constexpr size_t kMaxEnum = 64;        // values per enum
  // The levels of nesting (open objects and arrays) the recogniser follows (JsonGrammar::kMaxDepth):
  // a schema whose every value nests deeper, or that has no finite value at all, is refused.
  static constexpr int kMaxDepth = 32;
  // The automaton work (ByteDfa::WorkBudget) of all of a schema's patterns, formats and bounds
  // together, identical ones counted once: each is bounded on its own, but hundreds of them took
  // 10-20 s to compile, first in the coordinator's validation, then on every rank's serving loop,
  // stalling its other requests. This is about a second of compiling (~10 ns a step on this project's 2-core
  // test machine), some 40 patterns as costly as (a|b)*a(a|b){10} in search mode, thousands of formats.
  static constexpr int64_t kMaxDfaWork = 100'000'000;

  // InvalidArgument "<schema path>: <what>" (e.g. "properties.age.minimum: not supported ...").
  static absl::StatusOr<JsonSchema> Compile(const nlohmann::ordered_json& schema);
  static absl::StatusOr<JsonSchema> CompileText(std::string_view text);  // the schema as JSON text
  // response_format json_object: an object with any keys and values.
  static JsonSchema AnyObject();
  // guided_choice: exactly one of `choices` (raw texts, not JSON), no whitespace around it.
  // InvalidArgument "choices: ..." when there are none, more than kMaxEnum, or an empty one.
  static absl::StatusOr<JsonSchema> Choice(const std::vector<std::string>& choices);
  // guided_regex: a text the whole of which matches `pattern` (byte_dfa.h), nothing around it.
  // InvalidArgument "regex: ..." naming what is wrong.
  static absl::StatusOr<JsonSchema> Regex(std::string_view pattern);

  const JsonSchemaNode& node(uint16_t id) const { return nodes_[id]; }
  const ByteDfa& dfa(int32_t id) const { return dfas_[static_cast<size_t>(id)]; }
  uint16_t root() const { return root_; }
  // The value stands alone: no whitespace before or after it (guided_choice).
  bool exact() const { return exact_; }
  // No whitespace between tokens either (vLLM's disable_any_whitespace).
  bool compact() const { return compact_; }
  void set_compact(bool compact) { compact_ = compact; }
  // Nodes every schema has: any value, an object and an array of any values (free-form JSON).
  static constexpr uint16_t kAnyNode = 0, kAnyObjectNode = 1, kAnyArrayNode = 2;

 private:
  JsonSchema();
  std::vector<JsonSchemaNode> nodes_;
  std::vector<ByteDfa> dfas_;
  uint16_t root_ = kAnyNode;
  bool exact_ = false;
  bool compact_ = false;
  friend class JsonSchemaCompiler;
};

}  // namespace moe
