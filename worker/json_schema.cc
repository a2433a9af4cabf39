#include "worker/json_schema.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"

namespace moe {
namespace {

// Ordered: an object's properties come in the order the schema's text lists them.
using json = nlohmann::ordered_json;

constexpr const char* kSupported =
    "supported: type, properties, required, additionalProperties (false, or true or a schema without properties), "
    "items, prefixItems, minItems, "
    "maxItems, minLength, maxLength, pattern, format (date, time, date-time, uuid, ipv4, email), minimum, maximum, "
    "exclusiveMinimum, exclusiveMaximum (integers; minimum and maximum for numbers), enum, const, anyOf/oneOf "
    "(alternatives starting with different bytes, or objects told apart by their first property), allOf of one "
    "schema, $ref to #/$defs or #/definitions, and annotations";

const std::set<std::string>& Annotations() {
  // Also OpenAPI's "discriminator" (a hint naming a union's tag; JSON Schema validators ignore it)
  // and 2020-12's content and meta-data keywords, which validate nothing.
  static const std::set<std::string> k = {"title",         "description",     "default",          "examples",
                                          "$schema",       "$id",             "$comment",         "$defs",
                                          "definitions",   "discriminator",   "readOnly",         "writeOnly",
                                          "deprecated",    "contentEncoding", "contentMediaType"};
  return k;
}

// The type each type-specific keyword belongs to.
const std::map<std::string, std::string>& Owners() {
  static const std::map<std::string, std::string> k = {
      {"properties", "object"},    {"required", "object"},     {"additionalProperties", "object"},
      {"items", "array"},          {"minItems", "array"},      {"maxItems", "array"},
      {"prefixItems", "array"},
      {"minLength", "string"},     {"maxLength", "string"},    {"pattern", "string"},
      {"format", "string"},        {"minimum", "number"},      {"maximum", "number"},
      {"exclusiveMinimum", "number"}, {"exclusiveMaximum", "number"}};
  return k;
}

// A keyword of `owner` applies to values of `type` (integers are numbers).
bool Owns(const std::string& owner, const std::string& type) {
  return owner == type || (owner == "number" && type == "integer");
}

// The formats served, as patterns a strict checker accepts (Python jsonschema's FormatChecker with
// rfc3339-validator): days past the 28th only in months that have them, never the 29th of February
// (leap years are beyond a small automaton's reach), years 0001 to 9999.
const std::map<std::string, std::string>& Formats() {
  static const std::string kDate =
      "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})-"
      "(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)";
  static const std::string kTime =
      "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]+)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])";
  static const std::string kOctet = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
  static const std::string kPathChar = "(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})";
  static const std::string kLabel = "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?";
  static const std::string kPort = "(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
  static const std::map<std::string, std::string> k = {
      {"date", kDate},
      {"time", kTime},
      {"date-time", kDate + "T" + kTime},
      {"uuid", "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"},
      {"ipv4", kOctet + "(?:\\." + kOctet + "){3}"},
      {"email", "[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\\.[A-Za-z0-9-]+)*"},
      // RFC 3986 absolute URIs with a host: scheme://host[:port][/path][?query][#fragment], their
      // characters unreserved, sub-delims, ':' '@', or percent-encoded (as rfc3987 checks "uri");
      // the host a dotted IPv4 address or DNS labels whose last one starts with a letter, the port
      // at most 65535 (what a WHATWG URL parser, Pydantic's, also takes).
      {"uri", "[A-Za-z][A-Za-z0-9+.-]*://(?:" + kOctet + "(?:\\." + kOctet + "){3}|(?:" + kLabel + "\\.)*[A-Za-z]" +
                  "(?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?::" + kPort + ")?(?:/" + kPathChar + "*)*(?:\\?(?:" + kPathChar +
                  "|[/?])*)?(?:#(?:" + kPathChar + "|[/?])*)?"}};
  return k;
}

std::string Alternatives(const std::vector<std::string>& parts) {
  if (parts.size() == 1) return parts[0];
  std::string out = "(?:";
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? "|" : "") + parts[i];
  return out + ")";
}

// The digit strings from a to b, both of the same length (leading zeros are digits here).
std::string SameLength(const std::string& a, const std::string& b) {
  const size_t n = a.size();
  if (a == b) return a;
  if (a.find_first_not_of('0') == std::string::npos && b.find_first_not_of('9') == std::string::npos) {
    return "[0-9]{" + std::to_string(n) + "}";
  }
  if (n == 1) return std::string("[") + a + "-" + b + "]";
  if (a[0] == b[0]) return a.substr(0, 1) + SameLength(a.substr(1), b.substr(1));
  std::vector<std::string> parts = {a.substr(0, 1) + SameLength(a.substr(1), std::string(n - 1, '9'))};
  if (b[0] - a[0] > 1) {
    parts.push_back(std::string("[") + static_cast<char>(a[0] + 1) + "-" + static_cast<char>(b[0] - 1) + "][0-9]{" +
                    std::to_string(n - 1) + "}");
  }
  parts.push_back(b.substr(0, 1) + SameLength(std::string(n - 1, '0'), b.substr(1)));
  return Alternatives(parts);
}

// JSON's decimal texts (no leading zeros) of the integers lo..hi; no hi: no upper bound. lo <= hi <= 1e18.
std::string NaturalRange(uint64_t lo, std::optional<uint64_t> hi) {
  const size_t lo_len = std::to_string(lo).size();
  const size_t hi_len = hi ? std::to_string(*hi).size() : lo_len;
  std::vector<std::string> parts;
  uint64_t power = 1;  // 10^(len - 1)
  for (size_t len = 1; len < lo_len; ++len) power *= 10;
  for (size_t len = lo_len; len <= hi_len; ++len, power *= 10) {
    const uint64_t first = len == 1 ? 0 : power, last = power * 10 - 1;
    const uint64_t a = std::max(lo, first), b = hi ? std::min(*hi, last) : last;
    if (a <= b) parts.push_back(SameLength(std::to_string(a), std::to_string(b)));
  }
  if (!hi) parts.push_back("[1-9][0-9]{" + std::to_string(lo_len) + ",}");
  return Alternatives(parts);
}

uint64_t Magnitude(int64_t v) { return static_cast<uint64_t>(v < 0 ? -v : v); }

// JSON integers in lo..hi (either may be absent), "-0" left out.
std::string IntegerRange(std::optional<int64_t> lo, std::optional<int64_t> hi) {
  std::vector<std::string> parts;
  if (!hi || *hi >= 0) {
    parts.push_back(NaturalRange(lo && *lo > 0 ? static_cast<uint64_t>(*lo) : 0,
                                 hi ? std::optional<uint64_t>(*hi) : std::nullopt));
  }
  if (!lo || *lo < 0) {
    const uint64_t from = hi && *hi < 0 ? Magnitude(*hi) : 1;
    parts.push_back("-" + NaturalRange(from, lo ? std::optional<uint64_t>(Magnitude(*lo)) : std::nullopt));
  }
  return Alternatives(parts);
}

// JSON numbers without an exponent in lo..hi (integral bounds, either may be absent): the integer
// part decides, except at a bound, which only a zero fraction may follow. No negative zero.
std::string NumberRange(std::optional<int64_t> lo, std::optional<int64_t> hi) {
  const std::string fraction = "(?:\\.[0-9]+)?", zeros = "(?:\\.0+)?";
  std::vector<std::string> parts;
  if (!hi || *hi >= 0) {
    const uint64_t from = lo && *lo > 0 ? static_cast<uint64_t>(*lo) : 0;
    if (!hi) {
      parts.push_back(NaturalRange(from, std::nullopt) + fraction);
    } else {
      if (static_cast<uint64_t>(*hi) > from) parts.push_back(NaturalRange(from, static_cast<uint64_t>(*hi) - 1) + fraction);
      parts.push_back(std::to_string(*hi) + zeros);
    }
  }
  if (!lo || *lo < 0) {  // the magnitude m of a negative value: m >= -hi, m <= -lo, m > 0
    const uint64_t q = hi && *hi < 0 ? Magnitude(*hi) : 0, from = std::max<uint64_t>(q, 1);
    std::vector<std::string> negative;
    if (!lo) {
      negative.push_back(NaturalRange(from, std::nullopt) + fraction);
    } else {
      const uint64_t m = Magnitude(*lo);
      if (m > from) negative.push_back(NaturalRange(from, m - 1) + fraction);
      if (m >= from) negative.push_back(std::to_string(m) + zeros);
    }
    if (q == 0) negative.push_back("0\\.[0-9]*[1-9][0-9]*");
    parts.push_back("-" + Alternatives(negative));
  }
  return Alternatives(parts);
}

std::bitset<256> ValueStartBytes() {
  std::bitset<256> b;
  for (unsigned char c : std::string("{[\"-0123456789tfn")) b.set(c);
  return b;
}

std::string Join(const std::string& path, const std::string& key) { return path.empty() ? key : path + "." + key; }

// A schema path as errors name it: the root is "schema".
std::string Named(const std::string& path) { return path.empty() ? std::string("schema") : path; }

absl::Status Error(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(Named(path) + ": " + what);
}

}  // namespace

JsonSchema::JsonSchema() {
  nodes_.resize(3);
  nodes_[kAnyNode].kind = JsonSchemaNode::Kind::kAny;
  nodes_[kAnyNode].first_bytes = ValueStartBytes();
  nodes_[kAnyObjectNode].kind = JsonSchemaNode::Kind::kObject;
  nodes_[kAnyObjectNode].additional = true;
  nodes_[kAnyObjectNode].first_bytes.set('{');
  nodes_[kAnyArrayNode].kind = JsonSchemaNode::Kind::kArray;
  nodes_[kAnyArrayNode].items = kAnyNode;
  nodes_[kAnyArrayNode].first_bytes.set('[');
  nodes_[kAnyObjectNode].min_depth = nodes_[kAnyArrayNode].min_depth = 1;
}

JsonSchema JsonSchema::AnyObject() {
  JsonSchema s;
  s.root_ = kAnyObjectNode;
  return s;
}

absl::StatusOr<JsonSchema> JsonSchema::Choice(const std::vector<std::string>& choices) {
  if (choices.empty()) return absl::InvalidArgumentError("choices: empty");
  if (choices.size() > kMaxEnum) {
    return absl::InvalidArgumentError(absl::StrCat("choices: at most ", kMaxEnum, ", got ", choices.size()));
  }
  JsonSchemaNode n;
  n.kind = JsonSchemaNode::Kind::kEnum;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (choices[i].empty()) return absl::InvalidArgumentError(absl::StrCat("choices[", i, "]: empty"));
    if (std::find(n.texts.begin(), n.texts.end(), choices[i]) == n.texts.end()) n.texts.push_back(choices[i]);
    n.first_bytes.set(static_cast<unsigned char>(choices[i][0]));
  }
  JsonSchema s;
  s.nodes_.push_back(std::move(n));
  s.root_ = static_cast<uint16_t>(s.nodes_.size() - 1);
  s.exact_ = true;
  return s;
}

absl::StatusOr<JsonSchema> JsonSchema::Regex(std::string_view pattern) {
  absl::StatusOr<ByteDfa> dfa = ByteDfa::FromRegex(pattern, ByteDfa::Match::kWhole);
  if (!dfa.ok()) return absl::InvalidArgumentError("regex: " + std::string(dfa.status().message()));
  JsonSchemaNode n;
  n.kind = JsonSchemaNode::Kind::kToken;
  n.first_bytes = dfa->FirstBytes();
  n.dfa = 0;
  JsonSchema s;
  s.dfas_.push_back(std::move(*dfa));
  s.nodes_.push_back(std::move(n));
  s.root_ = static_cast<uint16_t>(s.nodes_.size() - 1);
  s.exact_ = true;
  return s;
}

class JsonSchemaCompiler {
 public:
  explicit JsonSchemaCompiler(const json& document) : doc_(document) {}

  // Schemas nest through properties, items, anyOf and type lists; past this the request is refused
  // (the grammar takes 32 levels of containers, and the compiler recurses once a level).
  static constexpr int kMaxNesting = 64;

  absl::StatusOr<uint16_t> Compile(const json& s, const std::string& path) {
    if (nesting_ == kMaxNesting) return Error(path, "nested deeper than " + std::to_string(kMaxNesting) + " schemas");
    ++nesting_;
    absl::StatusOr<uint16_t> id = CompileAt(s, path);
    --nesting_;
    return id;
  }

  absl::StatusOr<uint16_t> CompileAt(const json& s, const std::string& path) {
    if (s.is_boolean()) {
      if (s.get<bool>()) return JsonSchema::kAnyNode;
      return Error(path, "false admits no value");
    }
    if (!s.is_object()) return Error(path, "a schema must be an object or a boolean");
    for (const auto& [key, value] : s.items()) {
      static const std::set<std::string> kKeys = {"type", "properties", "required", "additionalProperties", "items", "prefixItems",
                                                  "minItems", "maxItems", "minLength", "maxLength", "enum", "const",
                                                  "anyOf", "oneOf", "allOf", "$ref", "pattern", "format", "minimum",
                                                  "maximum", "exclusiveMinimum", "exclusiveMaximum"};
      if (kKeys.count(key) == 0 && Annotations().count(key) == 0) {
        return Error(Join(path, key), std::string("not supported (") + kSupported + ")");
      }
    }
    if (s.contains("allOf")) return AllOf(s, path);
    if (s.contains("$ref")) return Ref(s, path);
    if (s.contains("anyOf") || s.contains("oneOf")) return AnyOf(s, path);
    if (s.contains("enum") || s.contains("const")) return Enum(s, path);
    if (s.contains("type") && s["type"].is_array()) {
      // ["string", "null"]: anyOf of the types, each with the keywords of its type.
      if (s["type"].empty()) return Error(Join(path, "type"), "an empty list of types admits no value");
      json alternatives = json::array();
      for (const json& t : s["type"]) {
        json one = json::object();
        for (const auto& [key, value] : s.items()) {
          const auto owner = Owners().find(key);
          if (owner == Owners().end() || (t.is_string() && Owns(owner->second, t.get<std::string>()))) one[key] = value;
        }
        one["type"] = t;
        alternatives.push_back(one);
      }
      return AnyOfList(alternatives, Join(path, "type"));
    }
    std::string type;
    if (s.contains("type")) {
      if (!s["type"].is_string()) return Error(Join(path, "type"), "expected a string or an array of strings");
      type = s["type"].get<std::string>();
    } else if (s.contains("properties") || s.contains("required") || s.contains("additionalProperties")) {
      type = "object";
    } else if (s.contains("items") || s.contains("prefixItems") || s.contains("minItems") || s.contains("maxItems")) {
      type = "array";
    } else if (s.contains("minLength") || s.contains("maxLength") || s.contains("pattern") || s.contains("format")) {
      type = "string";
    } else if (s.contains("minimum") || s.contains("maximum") || s.contains("exclusiveMinimum") ||
               s.contains("exclusiveMaximum")) {
      type = "number";
    } else {
      return JsonSchema::kAnyNode;
    }
    // Keywords that belong to another type are an error, not silently ignored.
    for (const auto& [key, owner] : Owners()) {
      if (s.contains(key) && !Owns(owner, type)) return Error(Join(path, key), "only for type " + owner + ", not " + type);
    }
    MOE_ASSIGN_OR_RETURN(const uint16_t id, NewNode(path));
    JsonSchemaNode n;
    using K = JsonSchemaNode::Kind;
    if (type == "object") {
      n.kind = K::kObject;
      n.first_bytes.set('{');
      MOE_RETURN_IF_ERROR(Object(s, path, n));
    } else if (type == "array") {
      n.kind = K::kArray;
      n.first_bytes.set('[');
      n.items = JsonSchema::kAnyNode;
      MOE_RETURN_IF_ERROR(Bound(s, "minItems", path, n.min_items));
      MOE_RETURN_IF_ERROR(Bound(s, "maxItems", path, n.max_items));
      if (s.contains("prefixItems")) {  // a tuple: item i follows prefixItems[i], later ones `items`
        const json& prefix = s["prefixItems"];
        if (!prefix.is_array()) return Error(Join(path, "prefixItems"), "expected an array of schemas");
        if (prefix.size() > JsonSchema::kMaxProperties) {
          return Error(Join(path, "prefixItems"), "more than " + std::to_string(JsonSchema::kMaxProperties));
        }
        for (size_t i = 0; i < prefix.size(); ++i) {
          MOE_ASSIGN_OR_RETURN(const uint16_t item, Compile(prefix[i], Join(path, "prefixItems") + "[" + std::to_string(i) + "]"));
          n.prefix_items.push_back(item);
        }
      }
      if (s.contains("items") && s["items"].is_boolean() && !s["items"].get<bool>()) {
        n.max_items = std::min<uint32_t>(n.max_items, static_cast<uint32_t>(n.prefix_items.size()));  // no more items
      } else if (s.contains("items")) {
        MOE_ASSIGN_OR_RETURN(n.items, Compile(s["items"], Join(path, "items")));
      }
      if (n.min_items > n.max_items) return Error(Join(path, "minItems"), "exceeds maxItems");
    } else if (type == "string") {
      n.kind = K::kString;
      n.first_bytes.set('"');
      MOE_RETURN_IF_ERROR(Bound(s, "minLength", path, n.min_length));
      MOE_RETURN_IF_ERROR(Bound(s, "maxLength", path, n.max_length));
      if (n.min_length > n.max_length) return Error(Join(path, "minLength"), "exceeds maxLength");
      MOE_RETURN_IF_ERROR(StringPattern(s, path, n));
    } else if (type == "integer" || type == "number") {
      n.kind = type == "integer" ? K::kInteger : K::kNumber;
      for (unsigned char c : std::string("-0123456789")) n.first_bytes.set(c);
      MOE_RETURN_IF_ERROR(NumberBounds(s, path, type, n));
    } else if (type == "boolean") {
      n.kind = K::kBoolean;
      n.first_bytes.set('t');
      n.first_bytes.set('f');
    } else if (type == "null") {
      n.kind = K::kNull;
      n.first_bytes.set('n');
    } else {
      return Error(Join(path, "type"), "unknown type \"" + type + "\"");
    }
    nodes_[id] = std::move(n);
    return id;
  }

  absl::StatusOr<JsonSchema> Finish(uint16_t root) {
    // anyOf's first bytes are its alternatives', which a $ref cycle may reach before they are known:
    // take the union until nothing changes, then check that alternatives do not overlap.
    for (bool changed = true; changed;) {
      changed = false;
      for (JsonSchemaNode& n : nodes_) {
        if (n.kind != JsonSchemaNode::Kind::kAnyOf) continue;
        std::bitset<256> b;
        for (uint16_t a : n.alternatives) b |= nodes_[a].first_bytes;
        if (b != n.first_bytes) {
          n.first_bytes = b;
          changed = true;
        }
      }
    }
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (nodes_[i].first_bytes.none()) {
        return Error(paths_[i], "admits no value (a $ref that leads only back to itself)");
      }
    }
    // Objects among an anyOf's alternatives become one tagged union (or the schema is refused).
    const size_t compiled = nodes_.size();
    for (size_t i = 0; i < compiled; ++i) {
      if (nodes_[i].kind != JsonSchemaNode::Kind::kAnyOf || nodes_[i].alternatives.size() < 2) continue;
      std::vector<uint16_t> objects, others;
      for (uint16_t a : nodes_[i].alternatives) (nodes_[a].first_bytes['{'] ? objects : others).push_back(a);
      if (objects.size() < 2) continue;
      MOE_ASSIGN_OR_RETURN(const uint16_t u, TaggedUnion(objects, paths_[i]));
      others.insert(others.begin(), u);
      nodes_[i].alternatives = std::move(others);
    }
    for (size_t i = 0; i < nodes_.size(); ++i) {
      const JsonSchemaNode& n = nodes_[i];
      if (n.kind != JsonSchemaNode::Kind::kAnyOf) continue;
      std::bitset<256> seen;
      for (uint16_t a : n.alternatives) {
        if ((seen & nodes_[a].first_bytes).any()) return Error(paths_[i], kOverlapping);
        seen |= nodes_[a].first_bytes;
      }
    }
    MOE_RETURN_IF_ERROR(MinDepths(root));
    JsonSchema schema;
    schema.nodes_ = std::move(nodes_);
    schema.dfas_ = std::move(dfas_);
    schema.root_ = root;
    return schema;
  }

 private:
  absl::StatusOr<uint16_t> NewNode(const std::string& path) {
    if (nodes_.size() >= JsonSchema::kMaxNodes) {
      return Error(path, "the schema has more than " + std::to_string(JsonSchema::kMaxNodes) + " parts");
    }
    nodes_.emplace_back();
    paths_.push_back(path);
    return static_cast<uint16_t>(nodes_.size() - 1);
  }

  static absl::Status Bound(const json& s, const char* key, const std::string& path, uint32_t& out) {
    if (!s.contains(key)) return absl::OkStatus();
    const json& v = s[key];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > UINT32_MAX - 1) {
      return Error(Join(path, key), "expected a non-negative integer");
    }
    out = static_cast<uint32_t>(v.get<int64_t>());
    return absl::OkStatus();
  }

  static constexpr const char* kOverlapping =
      "alternatives that can start with the same byte are not supported (each must be of another JSON type, e.g. "
      "a string or null, or objects whose first property, required in each, has different enum or const values)";

  // Through $ref placeholders (an anyOf of one alternative) to the node they stand for.
  uint16_t Resolve(uint16_t n) const {
    for (int hops = 0; hops < 1000 && nodes_[n].kind == JsonSchemaNode::Kind::kAnyOf && nodes_[n].alternatives.size() == 1;
         ++hops) {
      n = nodes_[n].alternatives[0];
    }
    return n;
  }

  // One node for objects told apart by the value of their first property: a kUnion whose only
  // property is that tag, read as an enum of every alternative's values, each choosing its object.
  // `path` by value: NewNode grows paths_, where the caller's path lives.
  absl::StatusOr<uint16_t> TaggedUnion(const std::vector<uint16_t>& alternatives, const std::string path) {
    std::string tag;
    std::vector<std::string> texts;
    std::vector<uint16_t> chosen;
    for (size_t k = 0; k < alternatives.size(); ++k) {
      const uint16_t o = Resolve(alternatives[k]);
      const JsonSchemaNode& object = nodes_[o];
      if (object.kind != JsonSchemaNode::Kind::kObject || object.property_names.empty() || !object.required[0]) {
        return Error(path, kOverlapping);
      }
      if (k == 0) tag = object.property_names[0];
      const uint16_t e = Resolve(object.property_nodes[0]);
      if (object.property_names[0] != tag || nodes_[e].kind != JsonSchemaNode::Kind::kEnum) return Error(path, kOverlapping);
      for (const std::string& text : nodes_[e].texts) {
        if (std::find(texts.begin(), texts.end(), text) != texts.end()) {
          return Error(path, "objects told apart by \"" + tag + "\" share its value " + text);
        }
        texts.push_back(text);
        chosen.push_back(o);
      }
    }
    if (texts.size() > JsonSchema::kMaxEnum) {
      return Error(path, "more than " + std::to_string(JsonSchema::kMaxEnum) + " values of \"" + tag + "\" in all");
    }
    MOE_ASSIGN_OR_RETURN(const uint16_t e, NewNode(path + "." + tag));
    nodes_[e].kind = JsonSchemaNode::Kind::kEnum;
    for (const std::string& text : texts) nodes_[e].first_bytes.set(static_cast<unsigned char>(text[0]));
    nodes_[e].texts = std::move(texts);
    MOE_ASSIGN_OR_RETURN(const uint16_t u, NewNode(path));
    JsonSchemaNode& n = nodes_[u];
    n.kind = JsonSchemaNode::Kind::kUnion;
    n.first_bytes.set('{');
    n.property_names = {tag};
    n.property_nodes = {e};
    n.required = {true};
    n.alternatives = std::move(chosen);
    return u;
  }

  // Each node's min_depth: the fewest levels of nesting its values open (JsonGrammar pushes a level
  // for each object and array and refuses one past kMaxDepth; enum texts, strings, numbers and
  // literals take none). An object needs its required properties' values inside it, an array its
  // first minItems items; an anyOf its cheapest alternative. $ref makes the graph cyclic: the
  // values are the greatest fixpoint from "none" down, so a node that needs itself inside every
  // value (a required property, or an item minItems asks for, that refers back to it) keeps none.
  // Refused: a root with no finite value, or every value of which nests deeper than the recogniser
  // follows, so that no output could complete it (before, such schemas compiled, and generation ran
  // into a dead end: "no allowed token ... continues the output", a worker error). Another part of
  // the schema that has no finite value, or none within the limit where it stands (an optional
  // property, an anyOf's alternative), is never begun by the recogniser (JsonGrammar::Fits: its
  // min_depth is past any depth); the schema's other values remain.
  absl::Status MinDepths(uint16_t root) {
    constexpr uint16_t kNone = JsonSchemaNode::kNoFiniteValue;
    for (JsonSchemaNode& n : nodes_) n.min_depth = kNone;
    auto below = [&](uint16_t child) -> uint32_t {  // a container's child: one level further
      return nodes_[child].min_depth == kNone ? kNone : nodes_[child].min_depth + 1u;
    };
    // Finite values are at most the number of nodes (a shallowest value repeats no node down a
    // path), so they never reach kNone; each pass settles at least one more node.
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t i = nodes_.size(); i-- > 0;) {  // children are mostly compiled after their parents
        const JsonSchemaNode& n = nodes_[i];
        uint32_t d = 0;
        switch (n.kind) {
          case JsonSchemaNode::Kind::kObject:
            d = 1;
            for (size_t k = 0; k < n.property_nodes.size(); ++k) {
              if (n.required[k]) d = std::max(d, below(n.property_nodes[k]));
            }
            break;
          case JsonSchemaNode::Kind::kArray:
            d = 1;
            for (size_t k = 0; k < n.prefix_items.size() && k < n.min_items; ++k) d = std::max(d, below(n.prefix_items[k]));
            if (n.min_items > n.prefix_items.size()) d = std::max(d, below(n.items));
            break;
          case JsonSchemaNode::Kind::kAnyOf:
          case JsonSchemaNode::Kind::kUnion:  // its objects (each counting its own level)
            d = kNone;
            for (uint16_t a : n.alternatives) d = std::min<uint32_t>(d, nodes_[a].min_depth);
            break;
          default:
            break;
        }
        d = std::min<uint32_t>(d, kNone);
        if (d != n.min_depth) {
          nodes_[i].min_depth = static_cast<uint16_t>(d);
          changed = true;
        }
      }
    }
    if (nodes_[root].min_depth == kNone) return NoFiniteValue(root);
    if (nodes_[root].min_depth > JsonSchema::kMaxDepth) return TooDeep(root);
    return absl::OkStatus();
  }

  // The child a container's fewest levels come from (the deepest of what it needs; among those
  // `avoid` leaves out, if any other), with the path of the keyword that leads to it; -1: none.
  std::pair<int, std::string> Needed(uint16_t i, const std::set<uint16_t>& avoid) const {
    const JsonSchemaNode& n = nodes_[i];
    std::vector<std::pair<uint16_t, std::string>> needed;
    if (n.kind == JsonSchemaNode::Kind::kObject) {
      for (size_t k = 0; k < n.property_nodes.size(); ++k) {
        if (n.required[k]) needed.emplace_back(n.property_nodes[k], Join(Join(paths_[i], "properties"), n.property_names[k]));
      }
    } else if (n.kind == JsonSchemaNode::Kind::kArray) {
      for (size_t k = 0; k < n.prefix_items.size() && k < n.min_items; ++k) {
        needed.emplace_back(n.prefix_items[k], Join(paths_[i], "prefixItems") + "[" + std::to_string(k) + "]");
      }
      if (n.min_items > n.prefix_items.size()) needed.emplace_back(n.items, Join(paths_[i], "items"));
    } else if (n.kind == JsonSchemaNode::Kind::kAnyOf || n.kind == JsonSchemaNode::Kind::kUnion) {
      // The cheapest alternative (all of them have no finite value when it has none).
      int best = -1;
      for (uint16_t a : n.alternatives) {
        if (best < 0 || nodes_[a].min_depth < nodes_[best].min_depth ||
            (nodes_[a].min_depth == nodes_[best].min_depth && avoid.count(static_cast<uint16_t>(best)) && !avoid.count(a))) {
          best = a;
        }
      }
      return {best, best < 0 ? std::string() : paths_[best]};
    }
    int best = -1;
    std::string where;
    for (const auto& [child, path] : needed) {
      if (best < 0 || nodes_[child].min_depth > nodes_[best].min_depth ||
          (nodes_[child].min_depth == nodes_[best].min_depth && avoid.count(static_cast<uint16_t>(best)) && !avoid.count(child))) {
        best = child;
        where = path;
      }
    }
    return {best, where};
  }

  // A node with no finite value: down what each value needs, a container comes again.
  absl::Status NoFiniteValue(uint16_t i) const {
    std::vector<uint16_t> walk;
    std::vector<std::string> via;  // via[k]: the keyword path from walk[k] to walk[k + 1]
    std::set<uint16_t> seen;
    for (int n = i; n >= 0 && seen.insert(static_cast<uint16_t>(n)).second;) {
      walk.push_back(static_cast<uint16_t>(n));
      auto [next, path] = Needed(static_cast<uint16_t>(n), seen);
      via.push_back(path);
      n = next;
      if (n >= 0 && seen.count(static_cast<uint16_t>(n))) {  // the cycle: from n's first visit on
        for (size_t k = static_cast<size_t>(std::find(walk.begin(), walk.end(), n) - walk.begin()); k < walk.size(); ++k) {
          const JsonSchemaNode::Kind kind = nodes_[walk[k]].kind;
          if (kind == JsonSchemaNode::Kind::kObject || kind == JsonSchemaNode::Kind::kArray) {
            return Error(paths_[i], "admits no finite value: every instance needs " + Named(paths_[walk[k]]) + " again (at " +
                                        via[k] + ", and so on forever)");
          }
        }
      }
    }
    return Error(paths_[i], "admits no finite value");
  }

  // A node every value of which nests deeper than the recogniser follows: the path where the first
  // level past it opens on the way down to its shallowest value.
  absl::Status TooDeep(uint16_t i) const {
    std::string where = Named(paths_[i]);
    int level = 0;
    for (int n = i; n >= 0 && level <= JsonSchema::kMaxDepth;) {
      const JsonSchemaNode::Kind kind = nodes_[n].kind;
      if (kind == JsonSchemaNode::Kind::kObject || kind == JsonSchemaNode::Kind::kArray) ++level;
      if (level > JsonSchema::kMaxDepth) break;
      auto [next, path] = Needed(static_cast<uint16_t>(n), {});
      if (kind == JsonSchemaNode::Kind::kObject || kind == JsonSchemaNode::Kind::kArray) where = path;
      n = next;
    }
    return Error(paths_[i], "every instance nests deeper than the " + std::to_string(JsonSchema::kMaxDepth) +
                                " levels the recogniser follows (at least " + std::to_string(nodes_[i].min_depth) +
                                "; level " + std::to_string(JsonSchema::kMaxDepth + 1) + " opens at " + where + ")");
  }

  int32_t AddDfa(ByteDfa dfa) {
    dfas_.push_back(std::move(dfa));
    return static_cast<int32_t>(dfas_.size() - 1);
  }

  // "pattern" or "format": an automaton over the string's characters (its length bounds folded in).
  absl::Status StringPattern(const json& s, const std::string& path, JsonSchemaNode& n) {
    if (!s.contains("pattern") && !s.contains("format")) return absl::OkStatus();
    if (s.contains("pattern") && s.contains("format")) return Error(Join(path, "format"), "not supported beside pattern");
    const std::string key = s.contains("pattern") ? "pattern" : "format";
    if (!s[key].is_string()) return Error(Join(path, key), "expected a string");
    const std::string value = s[key].get<std::string>();
    // The same pattern and bounds (a field repeated across a schema's objects) make the same
    // automaton: built once, shared by the nodes, and paid once from the schema's budget.
    const std::string same = key + '\0' + value + '\0' + std::to_string(n.min_length) + ',' + std::to_string(n.max_length);
    if (auto it = built_.find(same); it != built_.end()) {
      n.dfa = it->second;
      return absl::OkStatus();
    }
    absl::StatusOr<ByteDfa> dfa = absl::InternalError("unset");
    if (key == "pattern") {
      dfa = ByteDfa::FromRegex(value, ByteDfa::Match::kSearch, &budget_);
    } else {
      const auto format = Formats().find(value);
      if (format == Formats().end()) {
        return Error(Join(path, key),
                     "\"" + value + "\" is not supported (supported: date, time, date-time, uuid, ipv4, email, uri)");
      }
      dfa = ByteDfa::FromRegex(format->second, ByteDfa::Match::kWhole, &budget_);
    }
    // Characters are raw or escaped as \" \\ \/ \b \f \n \r \t (the grammar takes no \u escape in
    // such a string): other control characters cannot be written.
    std::bitset<256> unwritable;
    for (int c = 0; c < 0x20; ++c) {
      if (c != '\b' && c != '\f' && c != '\n' && c != '\r' && c != '\t') unwritable.set(static_cast<size_t>(c));
    }
    if (dfa.ok()) dfa = dfa->WithoutBytes(unwritable, &budget_);
    // Length bounds folded in; a maximum too large for that (a URL's 2,083) is kept by the grammar,
    // which refuses a character after which no match fits (ByteDfa::ShortestToAccept).
    const bool fold_max = n.max_length == UINT32_MAX ||
                          (dfa.ok() && static_cast<uint64_t>(n.max_length) + 1 <= ByteDfa::kMaxLengthProduct / dfa->states());
    if (dfa.ok() && (n.min_length > 0 || n.max_length != UINT32_MAX)) {
      dfa = dfa->WithLength(n.min_length, fold_max ? n.max_length : UINT32_MAX, &budget_);
    }
    if (!dfa.ok()) return DfaError(Join(path, key), dfa.status());
    if (dfa->ShortestToAccept(ByteDfa::start()) > n.max_length) {
      return Error(Join(path, key), "no match fits within maxLength " + std::to_string(n.max_length));
    }
    n.dfa = AddDfa(std::move(*dfa));
    built_[same] = n.dfa;
    return absl::OkStatus();
  }

  // An automaton's error at `path`: its own (the pattern is wrong or too large), or the schema's
  // budget used up there.
  static absl::Status DfaError(const std::string& path, const absl::Status& status) {
    if (status.code() != absl::StatusCode::kResourceExhausted) return Error(path, std::string(status.message()));
    return Error(path, absl::StrCat("the schema's patterns, formats and bounds together take too long to compile ",
                                    "(the limit is ", JsonSchema::kMaxDfaWork / 1'000'000,
                                    " million steps of automaton work for a whole schema, about a second; identical "
                                    "ones count once): the budget ran out here"));
  }

  // One of minimum, maximum and their exclusive forms, folded into [lo, hi].
  static absl::Status NumberBound(const json& s, const std::string& path, const std::string& type, const char* key,
                                  std::optional<int64_t>& lo, std::optional<int64_t>& hi) {
    if (!s.contains(key)) return absl::OkStatus();
    const std::string k = key;
    const json& v = s[key];
    const bool exclusive = k.rfind("exclusive", 0) == 0;
    const bool lower = k == "minimum" || k == "exclusiveMinimum";
    if (!v.is_number()) return Error(Join(path, k), "expected a number");
    constexpr double kLimit = 1e18, kExactDouble = 9007199254740992.0;  // 2^53
    const double x = v.get<double>();
    if (type == "number" && (exclusive || x != std::floor(x) || std::fabs(x) > kExactDouble)) {
      return Error(Join(path, k), "for type number only minimum and maximum with integral values up to 2^53 are supported");
    }
    if (!(std::fabs(x) <= kLimit)) return Error(Join(path, k), "bounds beyond 1e18 are not supported");
    // Integers exactly as written; others rounded inwards (an integer above 2.5 is at least 3).
    int64_t b;
    if (v.is_number_integer()) {
      b = v.get<int64_t>();
      if (exclusive) b += lower ? 1 : -1;
    } else {
      b = static_cast<int64_t>(lower ? (exclusive ? std::floor(x) + 1 : std::ceil(x))
                                     : (exclusive ? std::ceil(x) - 1 : std::floor(x)));
    }
    if (lower) {
      lo = lo ? std::max(*lo, b) : b;
    } else {
      hi = hi ? std::min(*hi, b) : b;
    }
    return absl::OkStatus();
  }

  // Bounds make the number a token read by an automaton of the texts within them.
  absl::Status NumberBounds(const json& s, const std::string& path, const std::string& type, JsonSchemaNode& n) {
    std::optional<int64_t> lo, hi;
    for (const char* key : {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"}) {
      MOE_RETURN_IF_ERROR(NumberBound(s, path, type, key, lo, hi));
    }
    if (!lo && !hi) return absl::OkStatus();
    if (lo && hi && *lo > *hi) return Error(Join(path, "minimum"), "admits no " + type + " up to the maximum");
    n.kind = JsonSchemaNode::Kind::kToken;
    const std::string regex = type == "integer" ? IntegerRange(lo, hi) : NumberRange(lo, hi);
    if (auto it = built_.find(regex); it != built_.end()) {  // (a regex never starts with "pattern\0")
      n.dfa = it->second;
    } else {
      absl::StatusOr<ByteDfa> dfa = ByteDfa::FromRegex(regex, ByteDfa::Match::kWhole, &budget_);
      if (!dfa.ok()) {
        if (dfa.status().code() == absl::StatusCode::kResourceExhausted) return DfaError(path, dfa.status());
        return Error(path, "bounds: " + std::string(dfa.status().message()));
      }
      n.dfa = AddDfa(std::move(*dfa));
      built_[regex] = n.dfa;
    }
    n.first_bytes = dfas_[static_cast<size_t>(n.dfa)].FirstBytes();
    return absl::OkStatus();
  }

  absl::Status Object(const json& s, const std::string& path, JsonSchemaNode& n) {
    // Absent: any keys when none are listed ({"type": "object"}), else only the listed ones.
    n.additional = !s.contains("properties") || s["properties"].empty();
    if (s.contains("additionalProperties")) {
      const json& a = s["additionalProperties"];
      if (a.is_boolean()) {
        n.additional = a.get<bool>();
      } else if (a.is_object()) {  // {}: any values; a schema: values it admits, under any keys
        n.additional = true;
        if (!a.empty() && s.contains("properties") && !s["properties"].empty()) {
          return Error(Join(path, "additionalProperties"), "a schema is supported only for an object without properties");
        }
        if (!a.empty()) {
          MOE_ASSIGN_OR_RETURN(n.additional_node, Compile(a, Join(path, "additionalProperties")));
        }
      } else {
        return Error(Join(path, "additionalProperties"), "expected a boolean or a schema");
      }
    }
    if (s.contains("properties")) {
      const json& props = s["properties"];
      if (!props.is_object()) return Error(Join(path, "properties"), "expected an object");
      if (props.size() > JsonSchema::kMaxProperties) {
        return Error(Join(path, "properties"), "more than " + std::to_string(JsonSchema::kMaxProperties));
      }
      if (!props.empty() && n.additional) {
        return Error(Join(path, "additionalProperties"), "true is supported only for an object without properties");
      }
      for (const auto& [name, sub] : props.items()) {
        for (unsigned char c : name) {
          if (c == '"' || c == '\\' || c < 0x20) {
            return Error(Join(Join(path, "properties"), name), "property names with quotes, backslashes or control "
                                                               "characters are not supported");
          }
        }
        n.property_names.push_back(name);
        MOE_ASSIGN_OR_RETURN(const uint16_t v, Compile(sub, Join(Join(path, "properties"), name)));
        n.property_nodes.push_back(v);
      }
    }
    n.required.assign(n.property_names.size(), false);
    if (s.contains("required")) {
      const json& req = s["required"];
      if (!req.is_array()) return Error(Join(path, "required"), "expected an array of property names");
      for (const json& r : req) {
        bool found = false;
        for (size_t i = 0; r.is_string() && i < n.property_names.size(); ++i) {
          if (n.property_names[i] == r.get<std::string>()) n.required[i] = found = true;
        }
        if (!found) return Error(Join(path, "required"), r.dump() + " is not among the properties");
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint16_t> Ref(const json& s, const std::string& path) {
    for (const auto& [key, value] : s.items()) {
      if (key != "$ref" && Annotations().count(key) == 0) {
        return Error(Join(path, key), "not supported beside $ref");
      }
    }
    if (!s["$ref"].is_string()) return Error(Join(path, "$ref"), "expected a string");
    const std::string ref = s["$ref"].get<std::string>();
    if (auto it = refs_.find(ref); it != refs_.end()) return it->second;
    std::string name;
    const json* defs = nullptr;
    for (const char* prefix : {"#/$defs/", "#/definitions/"}) {
      if (ref.rfind(prefix, 0) == 0) {
        name = ref.substr(std::string(prefix).size());
        const std::string section = std::string(prefix).substr(2, std::string(prefix).size() - 3);
        if (doc_.is_object() && doc_.contains(section)) defs = &doc_[section];
      }
    }
    if (name.empty() || name.find('/') != std::string::npos) {
      return Error(Join(path, "$ref"), "only \"#/$defs/NAME\" and \"#/definitions/NAME\" are supported, got \"" + ref + "\"");
    }
    if (defs == nullptr || !defs->is_object() || !defs->contains(name)) {
      return Error(Join(path, "$ref"), "\"" + ref + "\" names no definition");
    }
    // A placeholder first, so that a definition that refers to itself finds its node.
    MOE_ASSIGN_OR_RETURN(const uint16_t id, NewNode(Join(path, "$ref")));
    refs_[ref] = id;
    nodes_[id].kind = JsonSchemaNode::Kind::kAnyOf;  // one alternative: the definition
    MOE_ASSIGN_OR_RETURN(const uint16_t target, Compile((*defs)[name], ref.substr(2)));
    nodes_[id].alternatives = {target};
    return id;
  }

  // allOf of one schema (as Pydantic writes a field that refers to a model and has a description or
  // a default): that schema. Several would need their intersection: refused.
  absl::StatusOr<uint16_t> AllOf(const json& s, const std::string& path) {
    for (const auto& [k, value] : s.items()) {
      if (k != "allOf" && Annotations().count(k) == 0) return Error(Join(path, k), "not supported beside allOf");
    }
    const json& all = s["allOf"];
    if (!all.is_array() || all.size() != 1) {
      return Error(Join(path, "allOf"), "only an allOf of one schema is supported (its intersection is not computed)");
    }
    return Compile(all[0], Join(path, "allOf") + "[0]");
  }

  absl::StatusOr<uint16_t> AnyOf(const json& s, const std::string& path) {
    const char* key = s.contains("anyOf") ? "anyOf" : "oneOf";
    for (const auto& [k, value] : s.items()) {
      if (k != key && Annotations().count(k) == 0) return Error(Join(path, k), std::string("not supported beside ") + key);
    }
    if (!s[key].is_array() || s[key].empty()) return Error(Join(path, key), "expected a non-empty array of schemas");
    return AnyOfList(s[key], Join(path, key));
  }

  absl::StatusOr<uint16_t> AnyOfList(const json& alternatives, const std::string& path) {
    MOE_ASSIGN_OR_RETURN(const uint16_t id, NewNode(path));
    std::vector<uint16_t> alts;
    for (size_t i = 0; i < alternatives.size(); ++i) {
      MOE_ASSIGN_OR_RETURN(const uint16_t a, Compile(alternatives[i], path + "[" + std::to_string(i) + "]"));
      alts.push_back(a);
    }
    nodes_[id].kind = JsonSchemaNode::Kind::kAnyOf;
    nodes_[id].alternatives = std::move(alts);
    return id;
  }

  absl::StatusOr<uint16_t> Enum(const json& s, const std::string& path) {
    std::vector<json> values;
    if (s.contains("const")) values.push_back(s["const"]);
    if (s.contains("enum")) {
      if (!s["enum"].is_array() || s["enum"].empty()) return Error(Join(path, "enum"), "expected a non-empty array");
      if (s.contains("const")) return Error(Join(path, "const"), "not supported beside enum");
      values.assign(s["enum"].begin(), s["enum"].end());
    }
    if (values.size() > JsonSchema::kMaxEnum) {
      return Error(Join(path, "enum"), "more than " + std::to_string(JsonSchema::kMaxEnum) + " values");
    }
    for (const auto& [key, value] : s.items()) {
      if (key != "enum" && key != "const" && key != "type" && Annotations().count(key) == 0) {
        return Error(Join(path, key), "not supported beside enum or const");
      }
    }
    MOE_ASSIGN_OR_RETURN(const uint16_t id, NewNode(path));
    JsonSchemaNode n;
    n.kind = JsonSchemaNode::Kind::kEnum;
    std::set<std::string> seen;
    for (const json& v : values) {
      const std::string text = v.dump();  // compact, with \u escapes only where JSON needs them
      if (seen.insert(text).second) n.texts.push_back(text);
      n.first_bytes.set(static_cast<unsigned char>(text[0]));
    }
    nodes_[id] = std::move(n);
    return id;
  }

  const json& doc_;
  std::vector<JsonSchemaNode> nodes_ = JsonSchema::AnyObject().nodes_;
  std::vector<std::string> paths_ = std::vector<std::string>(3);
  std::vector<ByteDfa> dfas_;
  std::map<std::string, uint16_t> refs_;
  int nesting_ = 0;
  // The automata built so far, by what they were built from (StringPattern's and NumberBounds' keys).
  std::map<std::string, int32_t> built_;
  ByteDfa::WorkBudget budget_{JsonSchema::kMaxDfaWork};
};

absl::StatusOr<JsonSchema> JsonSchema::Compile(const nlohmann::ordered_json& schema) {
  JsonSchemaCompiler c(schema);
  MOE_ASSIGN_OR_RETURN(const uint16_t root, c.Compile(schema, ""));
  return c.Finish(root);
}

absl::StatusOr<JsonSchema> JsonSchema::CompileText(std::string_view text) {
  if (NestsDeeperThan(text, kMaxJsonFileNesting)) {  // compiling quotes values: no deep recursion
    return absl::InvalidArgumentError(
        absl::StrCat("schema: nests arrays and objects more than ", kMaxJsonFileNesting, " levels deep"));
  }
  nlohmann::ordered_json schema = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (schema.is_discarded()) return absl::InvalidArgumentError("schema: not valid JSON");
  return Compile(schema);
}

}  // namespace moe
