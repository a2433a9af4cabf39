// Fuzz target: a request's structured-output spec as the worker compiles it (serving_loop.cc's
// MasksFor): the first byte picks the kind (JSON schema text, regular expression, GBNF grammar,
// choices separated by NUL bytes), the rest is its text. A spec that compiles is then walked as a
// constrained sequence would be: each step's mask over a small vocabulary of byte and multi-byte
// pieces, a token the mask allows (chosen by the input's hash), fed back. Bad specs must be refused
// with a status, never crash, corrupt memory or run without bound.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/json_util.h"
#include "worker/gbnf.h"
#include "worker/json_constraint.h"
#include "worker/json_schema.h"
#include "worker/token_mask.h"

namespace {

using moe::GbnfGrammar;
using moe::JsonSchema;

// Token 0 ends the output (no text, as EOS); then every byte; then pieces a real vocabulary has.
const std::shared_ptr<const moe::TokenTextTrie>& Vocabulary() {
  static const auto* vocab = [] {
    std::vector<std::string> texts = {""};
    for (int b = 0; b < 256; ++b) texts.emplace_back(1, static_cast<char>(b));
    for (const char* piece : {"{\"", "\":", "\": ", "\",", "\"}", "true", "false", "null", "  ", "    ", "\n", ",\n",
                              "0", "12", "-1", "1.5", "e+", "abc", "name", "\xC3\xA9", "\xE2\x82\xAC", "\\u00",
                              "\\\"", "[]", "{}", "\"\"", " [", "]}"}) {
      texts.emplace_back(piece);
    }
    return new std::shared_ptr<const moe::TokenTextTrie>(std::make_shared<moe::TokenTextTrie>(texts));
  }();
  return *vocab;
}

uint64_t Hash(const uint8_t* data, size_t size) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 1099511628211ull;
  return h;
}

template <class Grammar>
void Walk(std::shared_ptr<const typename Grammar::Spec> spec, uint64_t seed) {
  moe::MaskCache<Grammar> masks(Vocabulary(), std::move(spec), /*max_states=*/64);
  moe::GrammarConstraint<Grammar> constraint(masks, /*end_ids=*/{0});
  const int64_t n = Vocabulary()->vocab_size();
  for (int step = 0; step < 48; ++step) {
    moe::TokenMask allowed(n);
    for (int64_t id = 0; id < n; ++id) allowed.Allow(id);
    if (!constraint.Allowed(allowed)) return;
    std::vector<int32_t> ids;
    for (int64_t id = 0; id < n; ++id) {
      if (allowed.allowed(id)) ids.push_back(static_cast<int32_t>(id));
    }
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    const int32_t token = ids[(seed >> 33) % ids.size()];
    if (token == 0) return;  // the end: only once the output is complete
    constraint.Add(token);
  }
  (void)constraint.Complete();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > 16 * 1024) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const uint64_t seed = Hash(data, size);
  switch (data[0] % 4) {
    case 0: {  // the coordinator refuses deeper nesting before a schema reaches a rank
      if (moe::NestsDeeperThan(text, moe::kMaxJsonFileNesting)) return 0;
      absl::StatusOr<JsonSchema> s = JsonSchema::CompileText(text);
      if (s.ok()) {
        s->set_compact((data[0] & 4) != 0);
        Walk<moe::JsonGrammar>(std::make_shared<const JsonSchema>(*std::move(s)), seed);
      }
      break;
    }
    case 1: {
      absl::StatusOr<JsonSchema> s = JsonSchema::Regex(text);
      if (s.ok()) Walk<moe::JsonGrammar>(std::make_shared<const JsonSchema>(*std::move(s)), seed);
      break;
    }
    case 2: {
      absl::StatusOr<GbnfGrammar> g = GbnfGrammar::Parse(text);
      if (g.ok()) Walk<moe::GbnfState>(std::make_shared<const GbnfGrammar>(*std::move(g)), seed);
      break;
    }
    default: {
      std::vector<std::string> choices;
      size_t start = 0;
      for (size_t i = 0; i <= text.size(); ++i) {
        if (i == text.size() || text[i] == '\0') {
          choices.emplace_back(text.substr(start, i - start));
          start = i + 1;
        }
      }
      absl::StatusOr<JsonSchema> s = JsonSchema::Choice(choices);
      if (s.ok()) Walk<moe::JsonGrammar>(std::make_shared<const JsonSchema>(*std::move(s)), seed);
      break;
    }
  }
  return 0;
}
