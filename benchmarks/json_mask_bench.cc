// moe-json-mask-bench: what response_format json_object (or a json_schema) costs a step on the
// host. A JSON document (--document object: nested objects and arrays, prose strings, numbers,
// non-ASCII text under json_object; --document records: a list of records under a schema with a
// pattern, formats and numeric bounds, whose automata multiply the grammar states; --document
// object-gbnf: the object document under llama.cpp's JSON grammar in GBNF, read by the GBNF
// recogniser instead of the JSON one) is tokenised with a real vocabulary and fed token by token to
// a constraint; at every position the mask of the next step (OutputConstraint::Apply over a
// vocabulary-wide row) is timed, on a cold mask cache
// (the first pass) and a warm one (later passes, as later requests find it). Writes the per-step
// figures (mean, median, p90, max; split by whether the position is inside a string) and the trie's
// build time as JSON with the machine, the commit and the command.
//
//   moe-json-mask-bench [--document object|records|object-gbnf] [--tokenizer FILE] [--repeats N] [--out FILE]
//                       [--commit SHA]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "worker/json_constraint.h"
#include "worker/tokenizer.h"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// A document in the shape chat models answer with: two-space indents, keys and prose values, a
// list of records, numbers and literals, and text outside ASCII.
const char* const kDocument = R"({
  "title": "The Tragedy of Romeo and Juliet",
  "author": "William Shakespeare",
  "year": 1597,
  "rating": 4.85,
  "in_print": true,
  "scenes": [
    {"act": 1, "scene": 1, "place": "Verona. A public place.", "speakers": ["SAMPSON", "GREGORY", "ABRAHAM"]},
    {"act": 2, "scene": 2, "place": "Capulet's orchard.", "speakers": ["ROMEO", "JULIET", "NURSE"]},
    {"act": 5, "scene": 3, "place": "A churchyard; in it a tomb belonging to the Capulets.", "speakers": null}
  ],
  "summary": "Two households, both alike in dignity, in fair Verona, where we lay our scene, from ancient grudge break to new mutiny, where civil blood makes civil hands unclean.",
  "translations": {"fr": "Roméo et Juliette", "de": "Romeo und Julia", "ru": "Ромео и Джульетта", "ja": "ロミオとジュリエット"},
  "notes": "Quoted \"lines\" keep their escapes\n and\ttabs; the prologue is a sonnet (14 lines, 3.5e-1 of a page)."
})";

// Records as a schema with automata describes them (the e2e test's schema, in a list).
const char* const kRecordsSchema = R"({"type": "array", "items": {"type": "object", "properties": {
  "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
  "day": {"type": "string", "format": "date"},
  "id": {"type": "string", "format": "uuid"},
  "age": {"type": "integer", "minimum": 18, "maximum": 99},
  "p": {"type": "number", "minimum": 0, "maximum": 1}},
  "required": ["code", "day", "id", "age", "p"], "additionalProperties": false}})";
const char* const kRecords = R"([
  {"code": "VR-001", "day": "1597-07-16", "id": "3f2b8c1e-9a4d-4e7f-b6a1-2c5d8e9f0a1b", "age": 19, "p": 0.25},
  {"code": "MN-114", "day": "2024-02-28", "id": "a0b1c2d3-e4f5-4678-9abc-def012345678", "age": 42, "p": 1},
  {"code": "CP-777", "day": "1999-12-31", "id": "ffffffff-0000-4000-8000-123456789abc", "age": 99, "p": 0.999},
  {"code": "MT-530", "day": "2023-04-30", "id": "0123abcd-4567-89ef-0123-456789abcdef", "age": 18, "p": 0}
])";

// llama.cpp's grammars/json.gbnf with an object at the root, whitespace allowed before it as the
// JSON recogniser allows it (the vocabulary's first piece of the document is " {"). Its whitespace:
// nothing, a space, or a newline and up to 20 spaces or tabs.
const char* const kJsonGbnf = R"g(root   ::= ws object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt/] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
)g";

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5)];
}

json Stats(const std::vector<double>& us) {
  double sum = 0;
  for (double x : us) sum += x;
  return {{"steps", us.size()},
          {"mean_us", us.empty() ? 0 : sum / static_cast<double>(us.size())},
          {"median_us", Percentile(us, 0.5)},
          {"p90_us", Percentile(us, 0.9)},
          {"max_us", us.empty() ? 0 : *std::max_element(us.begin(), us.end())}};
}

std::string CpuModel() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer = std::string(MOE_SOURCE_DIR) + "/tests/data/tokenizers/mistral-v1.model";
  std::string out;
  std::string commit = std::getenv("MOE_COMMIT") != nullptr ? std::getenv("MOE_COMMIT") : "unknown";
  int repeats = 5;
  std::string document = "object";
  std::string command = argv[0];
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
  const char* usage = "usage: moe-json-mask-bench [--document object|records|object-gbnf] [--tokenizer FILE] "
                      "[--repeats N] [--out FILE] [--commit SHA]\n";
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--help" || std::string_view(argv[i]) == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--document") {
      document = v;
    } else if (k == "--tokenizer") {
      tokenizer = v;
    } else if (k == "--repeats") {
      repeats = std::max(1, std::atoi(v.c_str()));
    } else if (k == "--out") {
      out = v;
    } else if (k == "--commit") {
      commit = v;
    } else {
      std::fputs(usage, stderr);
      return 2;
    }
  }
  if (document != "object" && document != "records" && document != "object-gbnf") {
    std::fprintf(stderr, "moe-json-mask-bench: --document: expected object, records or object-gbnf, got %s\n",
                 document.c_str());
    return 2;
  }
  const bool records = document == "records", gbnf = document == "object-gbnf";
  absl::StatusOr<moe::GbnfGrammar> grammar = moe::GbnfGrammar::Parse(kJsonGbnf);
  if (!grammar.ok()) {
    std::fprintf(stderr, "moe-json-mask-bench: the JSON grammar: %s\n", std::string(grammar.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<moe::JsonSchema> schema =
      records ? moe::JsonSchema::CompileText(kRecordsSchema) : absl::StatusOr<moe::JsonSchema>(moe::JsonSchema::AnyObject());
  if (!schema.ok()) {
    std::fprintf(stderr, "moe-json-mask-bench: %s\n", std::string(schema.status().message()).c_str());
    return 1;
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr, "moe-json-mask-bench: %s needs a value\n", argv[argc - 1]);
    return 2;
  }
  auto tok = moe::Tokenizer::FromFile(tokenizer, /*add_bos=*/false);
  if (!tok.ok()) {
    std::fprintf(stderr, "moe-json-mask-bench: %s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  const std::vector<std::string> texts = (*tok)->TokenTexts();
  const Clock::time_point t0 = Clock::now();
  auto trie = std::make_shared<const moe::TokenTextTrie>(texts);
  const double build_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();

  const std::vector<int32_t> ids = (*tok)->Encode(records ? kRecords : kDocument);  // object-gbnf: the object
  std::vector<bool> in_string(ids.size() + 1, false);  // position i: the text before it is inside a string
  {
    std::string so_far;
    for (size_t i = 0; i <= ids.size(); ++i) {
      int quotes = 0;  // unescaped
      for (size_t k = 0; k < so_far.size(); ++k) {
        if (so_far[k] == '\\') {
          ++k;
        } else if (so_far[k] == '"') {
          ++quotes;
        }
      }
      in_string[i] = quotes % 2 == 1;
      if (i < ids.size()) so_far += texts[static_cast<size_t>(ids[i])];
    }
  }
  // One pass over the document with a new constraint on the masks: each position's Apply time.
  moe::JsonMaskCache json_masks(trie, std::make_shared<const moe::JsonSchema>(*std::move(schema)));
  moe::GbnfMaskCache gbnf_masks(trie, std::make_shared<const moe::GbnfGrammar>(*std::move(grammar)));
  std::vector<float> row(texts.size());
  auto pass = [&](std::vector<double>& us) -> bool {
    std::unique_ptr<moe::OutputConstraint> made;
    if (gbnf) {
      made = std::make_unique<moe::GbnfConstraint>(gbnf_masks, std::vector<int32_t>{(*tok)->eos_id()});
    } else {
      made = std::make_unique<moe::JsonConstraint>(json_masks, std::vector<int32_t>{(*tok)->eos_id()});
    }
    moe::OutputConstraint& constraint = *made;
    for (size_t i = 0; i <= ids.size(); ++i) {
      std::vector<double> runs;
      for (int r = 0; r < 1; ++r) {
        std::fill(row.begin(), row.end(), 0.0f);
        const Clock::time_point a = Clock::now();
        const bool any = constraint.Apply(row);
        runs.push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count());
        if (!any) {
          std::fprintf(stderr, "moe-json-mask-bench: no token allowed at position %zu\n", i);
          return false;
        }
      }
      if (i < ids.size() && row[static_cast<size_t>(ids[i])] != 0.0f) {
        std::fprintf(stderr, "moe-json-mask-bench: the document's token %zu (%d) is masked\n", i, ids[i]);
        return false;
      }
      us.push_back(runs.front());
      if (i < ids.size()) constraint.Add(ids[i]);
    }
    if (!constraint.Complete()) {
      std::fprintf(stderr, "moe-json-mask-bench: the document did not close its value\n");
      return false;
    }
    return true;
  };
  // The first pass computes each state's mask once (a cold cache: a server's first JSON request);
  // later passes find them all (every later request in the same states). Per position, the median
  // over the later passes.
  std::vector<double> cold;
  if (!pass(cold)) return 1;
  const int64_t states = gbnf ? gbnf_masks.misses() : json_masks.misses();
  std::vector<std::vector<double>> warm_runs(static_cast<size_t>(repeats));
  for (std::vector<double>& w : warm_runs) {
    if (!pass(w)) return 1;
  }
  std::vector<double> warm(cold.size());
  for (size_t i = 0; i < warm.size(); ++i) {
    std::vector<double> at;
    for (const std::vector<double>& w : warm_runs) at.push_back(w[i]);
    warm[i] = Percentile(at, 0.5);
  }
  auto split = [&](const std::vector<double>& us, bool inside) {
    std::vector<double> out;
    for (size_t i = 0; i < us.size(); ++i) {
      if (in_string[i] == inside) out.push_back(us[i]);
    }
    return out;
  };
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  const json result = {
      {"benchmark", "json_mask"},
      {"commit", commit},
      {"command", command},
      {"machine", {{"host", host}, {"cpu", CpuModel()}, {"threads", std::thread::hardware_concurrency()}}},
      {"document", document},
      {"tokenizer", tokenizer},
      {"vocab_size", texts.size()},
      {"document_tokens", ids.size()},
      {"trie_build_ms", build_ms},
      {"grammar_states", states},
      {"warm_passes", repeats},
      {"cold", {{"all", Stats(cold)}, {"in_string", Stats(split(cold, true))}, {"outside_strings", Stats(split(cold, false))}}},
      {"warm", {{"all", Stats(warm)}, {"in_string", Stats(split(warm, true))}, {"outside_strings", Stats(split(warm, false))}}},
      {"note", "cold: the first pass over the document, each grammar state's mask computed once; warm: median "
               "per position over later passes with new constraints on the same cache (what later requests pay)"},
  };
  std::printf("%s\n", result.dump(2).c_str());
  if (!out.empty()) {
    std::ofstream f(out);
    f << result.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "moe-json-mask-bench: cannot write %s\n", out.c_str());
      return 1;
    }
  }
  return 0;
}
