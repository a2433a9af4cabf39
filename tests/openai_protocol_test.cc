// OpenAI's completions and chat-completions protocols against the gRPC API, rule by rule: which
// request fields become which SamplingParams (OpenAI's names and defaults, vLLM's extensions), what
// is refused with which HTTP status and parameter, and the response JSON built from a stream of
// GenerateResponses.
#include "coordinator/openai/openai_protocol.h"
#include "tests/support/json_mutation.h"
#include "worker/json_schema.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <tuple>

namespace moe::openai {
namespace {

using nlohmann::json;

CompletionCall Ok(const json& body) {
  auto r = ParseCompletionRequest(body.dump(), "m");
  if (auto* e = std::get_if<HttpError>(&r)) ADD_FAILURE() << body.dump() << " -> " << e->message;
  return std::get_if<CompletionCall>(&r) ? std::get<CompletionCall>(r) : CompletionCall{};
}

HttpError Err(const std::string& body) {
  auto r = ParseCompletionRequest(body, "m");
  if (std::get_if<CompletionCall>(&r)) ADD_FAILURE() << body << " was accepted";
  return std::get_if<HttpError>(&r) ? std::get<HttpError>(r) : HttpError{};
}

TEST(OpenAiProtocolTest, FieldsMapToSamplingParamsUnsetOnesStayUnset) {
  CompletionCall c = Ok({{"prompt", "hi"}});
  EXPECT_EQ(c.request.prompt().text(), "hi");
  // OpenAI's default of 16, set here: the coordinator's default for an unset max_tokens may be the
  // model's generation_config.json max_new_tokens, which vLLM's completions never take over 16.
  EXPECT_EQ(c.request.sampling().max_tokens(), 16u);
  EXPECT_FALSE(c.request.sampling().has_temperature()) << "unset: the model's default where it recommends one";
  EXPECT_FALSE(c.stream);
  EXPECT_EQ(c.n, 1u);

  c = Ok({{"prompt", {1, 2, 3}}, {"model", "m"}, {"max_tokens", 7}, {"temperature", 0.5}, {"top_p", 0.9},
          {"top_k", -1}, {"min_p", 0.1}, {"seed", 9}, {"n", 2}, {"best_of", 2}, {"stop", "END"},
          {"stop_token_ids", {5}}, {"presence_penalty", 0.5}, {"frequency_penalty", -0.5},
          {"repetition_penalty", 1.2}, {"min_tokens", 2}, {"ignore_eos", true}, {"logit_bias", {{"17", -3}}},
          {"stream", true}, {"stream_options", {{"include_usage", true}}}, {"user", "ignored"},
          {"include_stop_str_in_output", true}, {"truncate_prompt_tokens", 2}, {"allowed_token_ids", {9, 4}}});
  const v1::SamplingParams& s = c.request.sampling();
  EXPECT_EQ(std::vector<int32_t>(c.request.prompt().token_ids().ids().begin(), c.request.prompt().token_ids().ids().end()),
            (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(s.max_tokens(), 7u);
  EXPECT_EQ(s.temperature(), 0.5f);
  EXPECT_EQ(s.top_p(), 0.9f);
  EXPECT_EQ(s.top_k(), 0) << "vLLM's -1 is off";
  EXPECT_EQ(s.min_p(), 0.1f);
  EXPECT_EQ(s.seed(), 9u);
  EXPECT_EQ(s.n(), 2u);
  EXPECT_EQ(c.n, 2u);
  EXPECT_EQ(std::vector<std::string>(s.stop().begin(), s.stop().end()), (std::vector<std::string>{"END"}));
  EXPECT_EQ(s.stop_token_ids(0), 5);
  EXPECT_EQ(s.presence_penalty(), 0.5f);
  EXPECT_EQ(s.frequency_penalty(), -0.5f);
  EXPECT_EQ(s.repetition_penalty(), 1.2f);
  EXPECT_EQ(s.min_tokens(), 2u);
  EXPECT_TRUE(s.ignore_eos());
  EXPECT_EQ(s.logit_bias().at(17), -3.0f);
  EXPECT_TRUE(c.stream);
  EXPECT_TRUE(c.include_usage);
  EXPECT_FALSE(c.continuous_usage);
  EXPECT_TRUE(c.request.request_id().empty());
  EXPECT_EQ(Ok({{"prompt", "x"}, {"request_id", "trace-7"}}).request.request_id(), "trace-7");  // vLLM's
  EXPECT_FALSE(c.request.return_prompt_token_ids());
  // vLLM's continuous_usage_stats: with include_usage only, and then each stream's prompt ids come
  // first (the chunks count its tokens).
  const CompletionCall every = Ok({{"prompt", "x"}, {"stream", true},
                                   {"stream_options", {{"include_usage", true}, {"continuous_usage_stats", true}}}});
  EXPECT_TRUE(every.continuous_usage);
  EXPECT_TRUE(every.request.return_prompt_token_ids());
  const CompletionCall alone =
      Ok({{"prompt", "x"}, {"stream", true}, {"stream_options", {{"continuous_usage_stats", true}}}});
  EXPECT_FALSE(alone.continuous_usage);
  EXPECT_FALSE(alone.request.return_prompt_token_ids());
  EXPECT_TRUE(s.include_stop_str_in_output());
  EXPECT_EQ(Ok({{"prompt", "x"}, {"priority", -4}}).request.priority(), -4);
  EXPECT_EQ(Err(json{{"prompt", "x"}, {"priority", 1.5}}.dump()).param, "priority");
  EXPECT_EQ(s.truncate_prompt_tokens(), 2u);
  EXPECT_EQ(std::vector<int32_t>(s.allowed_token_ids().begin(), s.allowed_token_ids().end()), (std::vector<int32_t>{9, 4}));
  EXPECT_FALSE(Ok({{"prompt", "x"}, {"truncate_prompt_tokens", -1}}).request.sampling().has_truncate_prompt_tokens())
      << "vLLM's -1: no truncation";
  EXPECT_EQ(Err(json{{"prompt", "x"}, {"truncate_prompt_tokens", 0}}.dump()).param, "truncate_prompt_tokens");
  EXPECT_EQ(Err(json{{"prompt", "x"}, {"allowed_token_ids", json::array()}}.dump()).param, "allowed_token_ids");
  EXPECT_EQ(Err(json{{"prompt", "x"}, {"allowed_token_ids", {1, "2"}}}.dump()).param, "allowed_token_ids");
  EXPECT_EQ(Err(json{{"prompt", "x"}, {"allowed_token_ids", {-3}}}.dump()).param, "allowed_token_ids");
  // Ids beyond int32 are refused, never wrapped into another id.
  EXPECT_EQ(Err(json{{"prompt", "x"}, {"stop_token_ids", {4294967298LL}}}.dump()).param, "stop_token_ids");
  EXPECT_EQ(Err(json{{"prompt", "x"}, {"allowed_token_ids", {4294967298LL}}}.dump()).param, "allowed_token_ids");
  EXPECT_EQ(Err(json{{"prompt", {1, 4294967298LL}}}.dump()).param, "prompt");
  EXPECT_EQ(Err(json{{"prompt", "x"}, {"include_stop_str_in_output", "yes"}}.dump()).param, "include_stop_str_in_output");
  // echo with truncate_prompt_tokens: the echo is the truncated prompt (the server cuts it; e2e).
  EXPECT_EQ(Ok({{"prompt", "x"}, {"echo", true}, {"logprobs", 1}, {"truncate_prompt_tokens", 5}})
                .request.sampling().truncate_prompt_tokens(),
            5u);

  EXPECT_EQ(Ok({{"prompt", {"one"}}}).request.prompt().text(), "one") << "a batch of one prompt";
  const CompletionCall batch = Ok({{"prompt", {{1, 2}, {3}}}});
  ASSERT_EQ(batch.prompts.size(), 2u);
  EXPECT_EQ(batch.prompts[1].token_ids().ids(0), 3);
  EXPECT_EQ(batch.request.prompt().token_ids().ids_size(), 2) << "the request carries the first";
  EXPECT_EQ(Ok({{"prompt", {"a", "b", "c"}}}).prompts[2].text(), "c");
  EXPECT_EQ(Err(json{{"prompt", std::vector<std::string>(65, "p")}}.dump()).param, "prompt") << "at most 64";
  EXPECT_EQ(Ok({{"prompt", {{4, 5}}}}).request.prompt().token_ids().ids_size(), 2);
  EXPECT_EQ(Ok({{"prompt", "x"}, {"stop", {"a", "b"}}}).request.sampling().stop_size(), 2);
  EXPECT_FALSE(Ok({{"prompt", "x"}, {"temperature", nullptr}}).request.sampling().has_temperature()) << "null: unset";
  EXPECT_EQ(Ok({{"prompt", "x"}, {"response_format", {{"type", "json_object"}}}}).request.sampling().response_format().type(),
            v1::ResponseFormat::TYPE_JSON_OBJECT);
  EXPECT_EQ(Ok({{"prompt", "x"}, {"response_format", {{"type", "text"}}}}).request.sampling().response_format().type(),
            v1::ResponseFormat::TYPE_TEXT);
  EXPECT_EQ(Err(json{{"prompt", "x"}, {"response_format", {{"type", "json_schema"}}}}.dump()).param, "response_format");
  // A schema keeps its properties' order (the order the output writes them in), as OpenAI's field
  // or vLLM's guided_json.
  const std::string body = R"({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "n",
      "schema": {"type": "object", "properties": {"z": {"type": "integer"}, "a": {"type": "string"}}}}}})";
  std::variant<CompletionCall, HttpError> got = ParseCompletionRequest(body, "m");
  ASSERT_TRUE(std::holds_alternative<CompletionCall>(got));
  const v1::ResponseFormat& f = std::get<CompletionCall>(got).request.sampling().response_format();
  EXPECT_EQ(f.type(), v1::ResponseFormat::TYPE_JSON_SCHEMA);
  EXPECT_EQ(f.json_schema(), R"({"type":"object","properties":{"z":{"type":"integer"},"a":{"type":"string"}}})");
  // TGI's response_format (its Messages API's grammar), which huggingface_hub's InferenceClient
  // sends for a json_schema: the value is the schema (properties in order) or the regex, never
  // dropped for an unconstrained JSON object.
  for (const char* type : {"json_object", "json"}) {
    got = ParseCompletionRequest(std::string(R"({"prompt": "x", "response_format": {"type": ")") + type +
                                     R"(", "value": {"type": "object", "properties": {"z": {"type": "integer"}, "a": {}}}}})",
                                 "m");
    ASSERT_TRUE(std::holds_alternative<CompletionCall>(got)) << type;
    const v1::ResponseFormat& tgi = std::get<CompletionCall>(got).request.sampling().response_format();
    EXPECT_EQ(tgi.type(), v1::ResponseFormat::TYPE_JSON_SCHEMA) << type;
    EXPECT_EQ(tgi.json_schema(), R"({"type":"object","properties":{"z":{"type":"integer"},"a":{}}})") << type;
  }
  // TGI's json_schema: OpenAI's {"name", "schema"} under "value".
  got = ParseCompletionRequest(R"({"prompt": "x", "response_format": {"type": "json_schema", "value": {"name": "n",
      "schema": {"type": "object", "properties": {"z": {"type": "integer"}}}}}})",
                               "m");
  ASSERT_TRUE(std::holds_alternative<CompletionCall>(got));
  EXPECT_EQ(std::get<CompletionCall>(got).request.sampling().response_format().json_schema(),
            R"({"type":"object","properties":{"z":{"type":"integer"}}})");
  EXPECT_EQ(Err(R"({"prompt": "x", "response_format": {"type": "json_schema", "value": {"name": "n"}}})").param,
            "response_format");
  got = ParseCompletionRequest(R"({"prompt": "x", "response_format": {"type": "regex", "value": "[a-z]{3}"}})", "m");
  ASSERT_TRUE(std::holds_alternative<CompletionCall>(got));
  EXPECT_EQ(std::get<CompletionCall>(got).request.sampling().response_format().type(), v1::ResponseFormat::TYPE_REGEX);
  EXPECT_EQ(std::get<CompletionCall>(got).request.sampling().response_format().regex(), "[a-z]{3}");
  EXPECT_EQ(Err(R"({"prompt": "x", "response_format": {"type": "json", "value": 3}})").param, "response_format.value");
  EXPECT_EQ(Err(R"({"prompt": "x", "response_format": {"type": "regex", "value": ""}})").param, "response_format.value");
  EXPECT_EQ(Err(R"({"prompt": "x", "response_format": {"type": "json"}})").param, "response_format") << "no value";
  got = ParseCompletionRequest(R"({"prompt": "x", "guided_choice": ["yes", "no"]})", "m");
  ASSERT_TRUE(std::holds_alternative<CompletionCall>(got));
  EXPECT_EQ(std::get<CompletionCall>(got).request.sampling().response_format().type(), v1::ResponseFormat::TYPE_CHOICE);
  EXPECT_EQ(std::get<CompletionCall>(got).request.sampling().response_format().choices_size(), 2);
  EXPECT_EQ(Err(R"({"prompt": "x", "guided_choice": "yes"})").param, "guided_choice");
  EXPECT_EQ(Err(R"({"prompt": "x", "guided_choice": ["a"], "response_format": {"type": "json_object"}})").param,
            "guided_choice");
  got = ParseCompletionRequest(R"({"prompt": "x", "guided_regex": "[a-z]+\\d"})", "m");
  ASSERT_TRUE(std::holds_alternative<CompletionCall>(got));
  EXPECT_EQ(std::get<CompletionCall>(got).request.sampling().response_format().type(), v1::ResponseFormat::TYPE_REGEX);
  EXPECT_EQ(std::get<CompletionCall>(got).request.sampling().response_format().regex(), "[a-z]+\\d");
  EXPECT_EQ(Err(R"({"prompt": "x", "guided_regex": ""})").param, "guided_regex");
  EXPECT_EQ(Err(R"({"prompt": "x", "guided_regex": ["a"]})").param, "guided_regex");
  EXPECT_EQ(Err(R"({"prompt": "x", "guided_regex": "a", "guided_choice": ["a"]})").param, "guided_regex");
  got = ParseCompletionRequest(R"({"prompt": "x", "guided_grammar": "root ::= [a-z]+"})", "m");
  ASSERT_TRUE(std::holds_alternative<CompletionCall>(got));
  EXPECT_EQ(std::get<CompletionCall>(got).request.sampling().response_format().type(), v1::ResponseFormat::TYPE_GRAMMAR);
  EXPECT_EQ(std::get<CompletionCall>(got).request.sampling().response_format().grammar(), "root ::= [a-z]+");
  // vLLM's structured_outputs (its name since v0.12): the same constraints, disable_any_whitespace
  // and disable_additional_properties honoured, what is not served refused naming it.
  auto format_of = [](const std::string& body) {
    auto r = ParseCompletionRequest(body, "m");
    EXPECT_TRUE(std::holds_alternative<CompletionCall>(r)) << (std::holds_alternative<HttpError>(r) ? std::get<HttpError>(r).message : "");
    return std::holds_alternative<CompletionCall>(r) ? std::get<CompletionCall>(r).request.sampling().response_format()
                                                      : v1::ResponseFormat();
  };
  v1::ResponseFormat so = format_of(
      R"({"prompt": "x", "structured_outputs": {"json": {"type": "object", "properties": {"z": {"type": "object"}, "a": {}}},
          "disable_any_whitespace": true, "disable_additional_properties": true}})");
  EXPECT_EQ(so.type(), v1::ResponseFormat::TYPE_JSON_SCHEMA);
  EXPECT_TRUE(so.compact());
  EXPECT_EQ(so.json_schema(),
            R"({"type":"object","properties":{"z":{"type":"object","additionalProperties":false},"a":{}},"additionalProperties":false})");
  so = format_of(R"({"prompt": "x", "structured_outputs": {"regex": "[0-9]+", "disable_fallback": true}})");
  EXPECT_EQ(so.type(), v1::ResponseFormat::TYPE_REGEX);
  EXPECT_EQ(so.regex(), "[0-9]+");
  EXPECT_FALSE(so.compact());
  so = format_of(R"({"prompt": "x", "structured_outputs": {"choice": ["a", "b"]}})");
  EXPECT_EQ(so.type(), v1::ResponseFormat::TYPE_CHOICE);
  EXPECT_EQ(so.choices_size(), 2);
  EXPECT_EQ(format_of(R"({"prompt": "x", "structured_outputs": {"json_object": true}})").type(), v1::ResponseFormat::TYPE_JSON_OBJECT);
  EXPECT_EQ(format_of(R"({"prompt": "x", "structured_outputs": {"json": "{\"type\": \"integer\"}"}})").json_schema(),
            R"({"type": "integer"})");
  EXPECT_EQ(format_of(R"({"prompt": "x", "structured_outputs": {}})").type(), v1::ResponseFormat::TYPE_TEXT);
  so = format_of(R"({"prompt": "x", "structured_outputs": {"grammar": "root ::= \"a\""}})");
  EXPECT_EQ(so.type(), v1::ResponseFormat::TYPE_GRAMMAR);
  EXPECT_EQ(so.grammar(), "root ::= \"a\"");
  EXPECT_EQ(Err(R"({"prompt": "x", "structured_outputs": {"grammar": ""}})").param, "structured_outputs.grammar");
  EXPECT_EQ(Err(R"({"prompt": "x", "structured_outputs": {"grammar": "root ::= \"a\"", "regex": "a"}})").param,
            "structured_outputs");
  EXPECT_EQ(Err(R"({"prompt": "x", "structured_outputs": {"structural_tag": "{}"}})").param,
            "structured_outputs.structural_tag");
  EXPECT_EQ(Err(R"({"prompt": "x", "structured_outputs": {"whitespace_pattern": " ?"}})").param,
            "structured_outputs.whitespace_pattern");
  EXPECT_EQ(Err(R"({"prompt": "x", "structured_outputs": {"regex": "a", "choice": ["a"]}})").param, "structured_outputs");
  EXPECT_EQ(Err(R"({"prompt": "x", "structured_outputs": {"regx": "a"}})").param, "structured_outputs.regx");
  EXPECT_EQ(Err(R"({"prompt": "x", "structured_outputs": {"json": 3}})").param, "structured_outputs.json");
  EXPECT_EQ(Err(R"({"prompt": "x", "structured_outputs": {"choice": "a"}})").param, "structured_outputs.choice");
  EXPECT_EQ(Err(R"({"prompt": "x", "structured_outputs": {"json_object": 1}})").param, "structured_outputs.json_object");
  EXPECT_EQ(Err(R"({"prompt": "x", "structured_outputs": ["a"]})").param, "structured_outputs");
  EXPECT_EQ(Err(R"({"prompt": "x", "guided_regex": "a", "structured_outputs": {"regex": "b"}})").param, "structured_outputs");
  got = ParseCompletionRequest(R"({"prompt": "x", "guided_json": {"type": "object", "properties": {"z": {}, "a": {}}}})", "m");
  ASSERT_TRUE(std::holds_alternative<CompletionCall>(got));
  EXPECT_EQ(std::get<CompletionCall>(got).request.sampling().response_format().json_schema(),
            R"({"type":"object","properties":{"z":{},"a":{}}})");
}

// Bodies with any field of any type, at any depth: parsed, or refused with a 400 (404 for another
// model) and a message; never a crash (this test also runs under AddressSanitizer and UBSan).
TEST(OpenAiProtocolTest, BodiesWithFieldsOfEveryTypeAreParsedOrRefused) {
  const json tool = {{"type", "function"}, {"function", {{"name", "f"}, {"parameters", {{"type", "object"},
      {"properties", {{"a", {{"type", "string"}, {"pattern", "^x+$"}}}}}}}}}};
  const std::vector<json> bodies = {
      {{"prompt", "x"}, {"max_tokens", 5}, {"temperature", 0.5}, {"logprobs", 2}, {"echo", true}, {"stop", {"a"}},
       {"logit_bias", {{"5", 1}}}, {"n", 2}, {"best_of", 2}, {"stream", true}, {"stream_options", {{"include_usage", true}}}},
      {{"prompt", {1, 2, 3}}, {"guided_regex", "[a-z]+"}, {"min_tokens", 1}, {"seed", 3},
       {"include_stop_str_in_output", true}, {"truncate_prompt_tokens", 2}, {"allowed_token_ids", {1, 2}}},
      {{"prompt", "x"}, {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "s"}, {"schema", {{"type", "integer"}}}}}}}},
      {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"tools", {tool}}, {"tool_choice", "required"},
       {"max_completion_tokens", 9}, {"top_logprobs", 1}, {"logprobs", true}, {"parallel_tool_calls", false}},
      {{"messages", {{{"role", "system"}, {"content", {{{"type", "text"}, {"text", "be"}}}}}, {{"role", "user"}, {"content", "q"}}}},
       {"guided_choice", {"a", "b"}}, {"chat_template", "{{ messages[0].content }}"}}};
  static const char* const kKeys[] = {"prompt", "messages", "tools", "tool_choice", "response_format", "n",
                                      "max_tokens", "content", "role", "type", "schema", "guided_json", "stop"};
  std::mt19937 rng(9);
  const moe::testing::MutationCounts counts =
      moe::testing::ParseMutatedBodies(bodies, kKeys, rng, 3000, [](const json& body, const std::string& text, std::mt19937&) {
        std::optional<HttpError> error;
        if (body.contains("messages")) {
          auto r = ParseChatRequest(text, "m");
          if (auto* e = std::get_if<HttpError>(&r)) error = *e;
        } else {
          auto r = ParseCompletionRequest(text, "m");
          if (auto* e = std::get_if<HttpError>(&r)) error = *e;
        }
        if (!error) return true;
        EXPECT_TRUE(error->status == 400 || error->status == 404) << error->status << " " << text;
        EXPECT_FALSE(error->message.empty()) << text;
        return false;
      });
  EXPECT_GT(counts.parsed, 300);
  EXPECT_GT(counts.refused, 300);
}

// Bodies nested past kMaxBodyNesting are refused before any recursive pass over them; brackets
// inside strings (escaped quotes included) do not count.
TEST(OpenAiProtocolTest, DeeplyNestedBodiesAreRefusedBeforeParsing) {
  const auto nested = [](int levels) {
    return "{\"prompt\": \"x\", \"k\": " + std::string(static_cast<size_t>(levels - 1), '[') +
           std::string(static_cast<size_t>(levels - 1), ']') + "}";
  };
  EXPECT_FALSE(CheckBodyBeforeParsing(nested(kMaxBodyNesting)));
  const std::optional<HttpError> deep = CheckBodyBeforeParsing(nested(kMaxBodyNesting + 1));
  ASSERT_TRUE(deep);
  EXPECT_EQ(deep->status, 400);
  EXPECT_NE(deep->message.find("512 levels"), std::string::npos) << deep->message;
  EXPECT_FALSE(CheckBodyBeforeParsing("{\"prompt\": \"" + std::string(100000, '[') + "\\\"{{{\"}"));
  EXPECT_TRUE(CheckBodyBeforeParsing("{\"a\": \"\\\\\", \"b\": " + std::string(600, '{')));
  // A NUL byte, where the parser would stop reading (and take what came before as the body).
  const std::optional<HttpError> nul = CheckBodyBeforeParsing(std::string("{\"prompt\": \"x\"}\0{junk", 20));
  ASSERT_TRUE(nul);
  EXPECT_EQ(nul->message, "the request body is not valid JSON: a NUL byte at offset 15");
  // What is not JSON is said with where.
  const auto bad = ParseCompletionRequest("{\"prompt\": \"x\",, }", "m");
  ASSERT_TRUE(std::holds_alternative<HttpError>(bad));
  EXPECT_NE(std::get<HttpError>(bad).message.find("the request body is not valid JSON: parse error at line 1, column 16"),
            std::string::npos) << std::get<HttpError>(bad).message;
  // What the parser would take whole: the same body one level less deep is an ordinary request.
  EXPECT_TRUE(std::holds_alternative<CompletionCall>(ParseCompletionRequest(nested(kMaxBodyNesting), "m")));
}

TEST(OpenAiProtocolTest, HttpUrlsSplitIntoHostPortAndPath) {
  absl::StatusOr<HttpUrl> u = ParseHttpUrl("http://127.0.0.1:9400/metrics");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 9400);
  EXPECT_EQ(u->path, "/metrics");
  u = ParseHttpUrl("http://coordinator");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "coordinator");
  EXPECT_EQ(u->port, 80);
  EXPECT_EQ(u->path, "/");
  u = ParseHttpUrl("http://[::1]:9400/m");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 9400);
  for (const char* bad : {"https://x/metrics", "127.0.0.1:9400", "http://:9400/", "http://x:0/", "http://x:port/"}) {
    EXPECT_FALSE(ParseHttpUrl(bad).ok()) << bad;
  }
}

TEST(OpenAiProtocolTest, RefusalsNameTheParameterWithTheRightStatus) {
  struct Case {
    std::string body;
    int status;
    std::optional<std::string> param;
  };
  for (const Case& c : std::vector<Case>{
           {"{not json", 400, std::nullopt},
           {"[1]", 400, std::nullopt},
           {R"({"max_tokens": 3})", 400, "prompt"},
           {R"({"prompt": 5})", 400, "prompt"},
           {R"({"prompt": []})", 400, "prompt"},
           {R"({"prompt": ["a", 5]})", 400, "prompt"},
           {R"({"prompt": [[1, 2], [3, "x"]]})", 400, "prompt"},
           {R"({"prompt": [1, "a"]})", 400, "prompt"},
           {R"({"prompt": "x", "model": "other"})", 404, "model"},
           {R"({"prompt": "x", "model": 3})", 400, "model"},
           {R"({"prompt": "x", "max_tokens": -1})", 400, "max_tokens"},
           {R"({"prompt": "x", "max_tokens": 1.5})", 400, "max_tokens"},
           {R"({"prompt": "x", "top_k": -2})", 400, "top_k"},
           {R"({"prompt": "x", "seed": 9223372036854775808})", 400, "seed"},  // past torch.long, vLLM's range
           {R"({"prompt": "x", "seed": 18446744073709551615})", 400, "seed"},
           {R"({"prompt": "x", "max_tokens": 18446744073709551616})", 400, "max_tokens"},
           {R"({"prompt": "x", "temperature": "warm"})", 400, "temperature"},
           {R"({"prompt": "x", "stop": 3})", 400, "stop"},
           {R"({"prompt": "x", "stop_token_ids": "2"})", 400, "stop_token_ids"},
           {R"({"prompt": "x", "logit_bias": {"12x": 1}})", 400, "logit_bias"},
           {R"({"prompt": "x", "logit_bias": {"12": "up"}})", 400, "logit_bias"},
           {R"({"prompt": "x", "logit_bias": [1]})", 400, "logit_bias"},
           {R"({"prompt": "x", "ignore_eos": 1})", 400, "ignore_eos"},
           {R"({"prompt": "x", "stream": "yes"})", 400, "stream"},
           {R"({"prompt": "x", "stream_options": {"include_usage": true}})", 400, "stream_options"},
           {R"({"prompt": "x", "stream": true, "stream_options": {"continuous_usage_stats": "yes"}})", 400, "stream_options"},
           {R"({"prompt": "x", "stream": true, "stream_options": {"include_usag": true}})", 400, "stream_options"},
           {R"({"prompt": "x", "logprobs": 21})", 400, "logprobs"},
           {R"({"prompt": "x", "echo": 1})", 400, "echo"},
           {R"({"prompt": "x", "max_tokens": 0})", 400, "max_tokens"},
           {R"({"prompt": "x", "suffix": "y"})", 400, "suffix"},
           {R"({"prompt": "x", "n": 2, "best_of": 3})", 400, "best_of"},
           // vLLM's fields asking for what is not served: refused, not ignored.
           {R"({"prompt": "x", "use_beam_search": 1})", 400, "use_beam_search"},
           // use_beam_search with what it does not serve, or wider than the top logprobs allow.
           {R"({"prompt": "x", "use_beam_search": true, "stream": true})", 400, "stream"},
           {R"({"prompt": "x", "use_beam_search": true, "logprobs": 1})", 400, "logprobs"},
           {R"({"prompt": "x", "use_beam_search": true, "echo": true})", 400, "echo"},
           {R"({"prompt": "x", "use_beam_search": true, "top_p": 0.5})", 400, "top_p"},
           {R"({"prompt": "x", "use_beam_search": true, "stop": ["."]})", 400, "stop"},
           {R"({"prompt": "x", "use_beam_search": true, "response_format": {"type": "json_object"}})", 400, "response_format"},
           {R"({"prompt": "x", "use_beam_search": true, "n": 11})", 400, "n"},
           {R"({"prompt": "x", "use_beam_search": true, "n": 0})", 400, "n"},
           {R"({"prompt": "x", "use_beam_search": true, "length_penalty": "long"})", 400, "length_penalty"},
           {R"({"prompt": "x", "logits_processors": ["my.module"]})", 400, "logits_processors"},
           {R"({"prompt": "x", "skip_special_tokens": "no"})", 400, "skip_special_tokens"},
           {R"({"prompt": "x", "return_tokens_as_token_ids": 1})", 400, "return_tokens_as_token_ids"},
           {R"({"prompt": "x", "return_token_ids": "yes"})", 400, "return_token_ids"},
           {R"({"prompt": "x", "cache_salt": ""})", 400, "cache_salt"},
           {R"({"prompt": "x", "request_id": ""})", 400, "request_id"},
           {R"({"prompt": "x", "request_id": 7})", 400, "request_id"},
           {R"({"prompt": "x", "cache_salt": 7})", 400, "cache_salt"},
           {R"({"prompt": "x", "guided_grammar": ""})", 400, "guided_grammar"},
           {R"({"prompt": "x", "guided_grammar": "root ::= \"a\"", "guided_regex": "a"})", 400, "guided_grammar"},
           {R"({"prompt": "x", "guided_whitespace_pattern": " "})", 400, "guided_whitespace_pattern"},
           {R"({"prompt": "x", "add_special_tokens": "no"})", 400, "add_special_tokens"},
       }) {
    const HttpError e = Err(c.body);
    EXPECT_EQ(e.status, c.status) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << " -> " << e.message;
    EXPECT_FALSE(e.message.empty());
    const json j = e.ToJson();
    EXPECT_EQ(j["error"]["code"], c.status);
    EXPECT_EQ(j["error"]["message"], e.message);
  }
  EXPECT_EQ(Ok({{"prompt", "x"}, {"logprobs", 3}}).request.sampling().logprobs(), 3u);
  EXPECT_TRUE(Ok({{"prompt", "x"}, {"logprobs", 0}}).logprobs);
  const CompletionCall echo = Ok({{"prompt", "x"}, {"echo", true}, {"max_tokens", 0}, {"logprobs", 1}});
  EXPECT_TRUE(echo.echo);
  EXPECT_EQ(echo.max_tokens, 0u);
  // vLLM serves echo streamed and with n > 1 (each choice after the prompt): so do we.
  const CompletionCall streamed_echo = Ok({{"prompt", "x"}, {"echo", true}, {"stream", true}, {"n", 2}});
  EXPECT_TRUE(streamed_echo.echo && streamed_echo.stream);
  EXPECT_EQ(streamed_echo.n, 2u);
  EXPECT_EQ(Ok({{"prompt", "x"}}).max_tokens, 16u) << "OpenAI's default";
  EXPECT_FALSE(Ok({{"prompt", "x"}}).max_tokens_to_context);
  // An explicit null is vLLM's None: each prompt's room, which the server counts (MaxTokens of a
  // prompt it has not counted is the call's).
  CompletionCall to_context = Ok({{"prompt", {"x", "yz"}}, {"max_tokens", nullptr}});
  EXPECT_TRUE(to_context.max_tokens_to_context);
  to_context.prompt_max_tokens = {7, 3};
  EXPECT_EQ(to_context.MaxTokens(0), 7u);
  EXPECT_EQ(to_context.MaxTokens(1), 3u);
  EXPECT_EQ(Ok({{"prompt", "x"}, {"max_tokens", 4}}).MaxTokens(0), 4u);
  // Accepted as OpenAI allows: logprobs and echo switched off explicitly.
  Ok({{"prompt", "x"}, {"logprobs", nullptr}, {"echo", false}});
  // vLLM's fields at their defaults pass; add_special_tokens false is served (no BOS).
  Ok({{"prompt", "x"}, {"use_beam_search", false}, {"logits_processors", json::array()}, {"skip_special_tokens", true},
      {"return_tokens_as_token_ids", false}, {"guided_grammar", nullptr}, {"guided_decoding_backend", "xgrammar"}});
  EXPECT_TRUE(Ok({{"prompt", "x"}}).add_special_tokens);
  // use_beam_search (vLLM's): n beams, their length penalty; off unless asked.
  const CompletionCall beams = Ok({{"prompt", "x"}, {"use_beam_search", true}, {"n", 3}, {"max_tokens", 5},
                                   {"temperature", 0}, {"length_penalty", 0.5}, {"ignore_eos", true}});
  EXPECT_TRUE(beams.beam_search);
  EXPECT_EQ(beams.n, 3u);
  EXPECT_EQ(beams.length_penalty, 0.5);
  EXPECT_FALSE(Ok({{"prompt", "x"}}).beam_search);
  EXPECT_EQ(Ok({{"prompt", "x"}}).length_penalty, 1.0);
  // skip_special_tokens false is served (control tokens written out); absent or true: the default.
  EXPECT_FALSE(Ok({{"prompt", "x"}}).request.sampling().has_skip_special_tokens());
  EXPECT_FALSE(Ok({{"prompt", "x"}, {"skip_special_tokens", true}}).request.sampling().has_skip_special_tokens());
  const v1::SamplingParams keep = Ok({{"prompt", "x"}, {"skip_special_tokens", false}}).request.sampling();
  EXPECT_TRUE(keep.has_skip_special_tokens() && !keep.skip_special_tokens());
  EXPECT_EQ(Ok({{"prompt", "x"}, {"cache_salt", "tenant-a"}}).request.cache_salt(), "tenant-a");
  EXPECT_FALSE(Ok({{"prompt", "x"}, {"add_special_tokens", false}}).add_special_tokens);
}

// Integer fields name the bound a value passes and the value as sent; vLLM's seed takes torch.long's
// range, -1 meaning none.
TEST(OpenAiProtocolTest, IntegerFieldsNameTheirBoundsAndSeedsAreVllms) {
  const ServedModel served("m");
  const auto refusal = [&](const std::string& body) {
    std::variant<CompletionCall, HttpError> r = ParseCompletionRequest(body, served);
    const HttpError* e = std::get_if<HttpError>(&r);
    return e ? e->message : std::string("accepted");
  };
  EXPECT_EQ(refusal(R"({"prompt": "x", "n": -3})"), "n: must be at least 0, got -3");
  EXPECT_EQ(refusal(R"({"prompt": "x", "max_tokens": -1})"), "max_tokens: must be at least 0, got -1");
  EXPECT_EQ(refusal(R"({"prompt": "x", "max_tokens": 18446744073709551616})"),
            "max_tokens: must be in [0, 4294967295], got 1.8446744073709552e+19");
  EXPECT_EQ(refusal(R"({"prompt": "x", "logprobs": 21})"), "logprobs: must be in [0, 20], got 21");
  EXPECT_NE(refusal(R"({"prompt": [1, 18446744073709551615]})").find("token id 18446744073709551615 out of range"),
            std::string::npos);
  EXPECT_NE(refusal(R"({"prompt": "x", "seed": 9223372036854775808})").find("seed: must be in"), std::string::npos);
  for (const auto& [seed, expected] : std::vector<std::pair<std::string, std::optional<uint64_t>>>{
           {"-1", std::nullopt}, {"-5", static_cast<uint64_t>(-5)}, {"9223372036854775807", INT64_MAX}, {"0", 0}}) {
    std::variant<CompletionCall, HttpError> r = ParseCompletionRequest(R"({"prompt": "x", "seed": )" + seed + "}", served);
    ASSERT_TRUE(std::holds_alternative<CompletionCall>(r)) << seed;
    const v1::SamplingParams& s = std::get<CompletionCall>(r).request.sampling();
    EXPECT_EQ(s.has_seed() ? std::optional<uint64_t>(s.seed()) : std::nullopt, expected) << seed;
  }
}

TEST(OpenAiProtocolTest, GrpcErrorsBecomeHttpStatusesWithTheFieldAsParam) {
  HttpError e = FromGrpcError(3, "sampling.top_p: must be in (0, 1], got 1.5");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "top_p");
  EXPECT_EQ(e.message, "sampling.top_p: must be in (0, 1], got 1.5");
  EXPECT_EQ(FromGrpcError(3, "prompt.token_ids.ids[1]: token id 9999 is outside").param, "prompt.token_ids.ids[1]");
  EXPECT_EQ(FromGrpcError(3, "the request has no prompt: set it").param, std::nullopt) << "no field path first";
  EXPECT_EQ(FromGrpcError(8, "queue full (256 waiting)").status, 429);
  EXPECT_EQ(FromGrpcError(14, "no workers").status, 503);
  EXPECT_EQ(FromGrpcError(4, "deadline").status, 504);
  EXPECT_EQ(FromGrpcError(13, "worker error: x").status, 500);
  // A cancelled call says nothing of why (the server tells a client that left, 499, from its own stop).
  EXPECT_EQ(FromGrpcError(1, "request cancelled").status, 500);
  // A refused schema that tool_choice made of the tools names "tools"; one the request sent keeps
  // its own field.
  CompletionCall call;
  const std::string refused = "response_format.json_schema: items.anyOf[1363]: the schema has more than 4096 parts";
  EXPECT_EQ(FromGrpcError(call, 0, 3, refused).param, "response_format.json_schema");
  for (const ToolChoice::Kind kind : {ToolChoice::Kind::kRequired, ToolChoice::Kind::kNamed}) {
    call.tool_choice.kind = kind;
    const HttpError tools = FromGrpcError(call, 0, 3, refused);
    EXPECT_EQ(tools.status, 400);
    EXPECT_EQ(tools.param, "tools");
    EXPECT_NE(tools.message.find("tools: the JSON schema of the tool calls"), std::string::npos) << tools.message;
    EXPECT_NE(tools.message.find(refused), std::string::npos) << tools.message;
    EXPECT_EQ(FromGrpcError(call, 0, 3, "sampling.top_p: bad").param, "top_p");
  }
  // A batch's refused prompt is named with its index; a lone prompt as the coordinator names it.
  const std::string bad_id = "prompt.token_ids.ids[0]: token id 99999999 is outside the vocabulary";
  call.prompts.resize(1);
  EXPECT_EQ(FromGrpcError(call, 0, 3, bad_id).param, "prompt.token_ids.ids[0]");
  call.prompts.resize(2);
  const HttpError second = FromGrpcError(call, 1, 3, bad_id);
  EXPECT_EQ(second.param, "prompt[1].token_ids.ids[0]");
  EXPECT_EQ(second.message, "prompt[1].token_ids.ids[0]: token id 99999999 is outside the vocabulary");
  EXPECT_EQ(FromGrpcError(call, 1, 3, "prompt: 900 tokens leave no room").param, "prompt[1]");
  const HttpError long_one = FromGrpcError(call, 0, 3, "max_tokens: prompt (9 tokens) + max_tokens 99 exceeds 64");
  EXPECT_EQ(long_one.param, "max_tokens");
  EXPECT_EQ(long_one.message, "max_tokens: prompt (9 tokens) + max_tokens 99 exceeds 64 (prompt[0] of the batch)");
}

v1::GenerateResponse Msg(uint32_t index, const std::string& text, v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED,
                         uint32_t completion_tokens = 0) {
  v1::GenerateResponse r;
  r.set_request_id("req-7");
  r.set_index(index);
  r.set_text(text);
  if (reason != v1::FINISH_REASON_UNSPECIFIED) {
    r.set_finish_reason(reason);
    r.mutable_usage()->set_prompt_tokens(4);
    r.mutable_usage()->set_completion_tokens(completion_tokens);
  }
  return r;
}

TEST(OpenAiProtocolTest, ResponsesFoldTheStreamPerCompletion) {
  CompletionAccumulator acc(2, false);
  EXPECT_TRUE(acc.Add(Msg(1, "b")));
  EXPECT_TRUE(acc.Add(Msg(0, "a")));
  v1::GenerateResponse stopped = Msg(0, "c", v1::FINISH_REASON_STOP_SEQUENCE, 2);
  stopped.set_stop_string("END");
  EXPECT_TRUE(acc.Add(stopped));
  EXPECT_TRUE(acc.Add(Msg(1, "d", v1::FINISH_REASON_LENGTH, 3)));
  EXPECT_FALSE(acc.Add(Msg(2, "x")));
  const json j = acc.ToJson("m", 1000);
  EXPECT_EQ(j["id"], "cmpl-req-7");
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["created"], 1000);
  EXPECT_EQ(j["model"], "m");
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["text"], "ac");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["choices"][1]["text"], "bd");
  EXPECT_EQ(j["choices"][1]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][0]["stop_reason"], "END") << "vLLM's";
  EXPECT_TRUE(j["choices"][1]["stop_reason"].is_null());
  EXPECT_EQ(j["usage"], (json{{"prompt_tokens", 4}, {"completion_tokens", 5}, {"total_tokens", 9}}));

  size_t offset = 0;
  const json chunk = StreamChunkJson(Msg(1, "z"), "m", 5, false, offset);
  EXPECT_TRUE(chunk["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(chunk["choices"][0]["index"], 1);
  EXPECT_EQ(chunk["choices"][0]["text"], "z");
  EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(chunk["choices"][0]["stop_reason"].is_null());
  v1::GenerateResponse by_id = Msg(0, "", v1::FINISH_REASON_STOP, 1);
  by_id.set_stop_token_id(13);
  EXPECT_EQ(StreamChunkJson(by_id, "m", 5, false, offset)["choices"][0]["stop_reason"], 13);
  EXPECT_EQ(StreamChunkJson(by_id, "m", 5, false, offset, Api::kChat)["choices"][0]["stop_reason"], 13);
  EXPECT_EQ(StreamChunkJson(Msg(0, "", v1::FINISH_REASON_STOP, 1), "m", 5, false, offset)["choices"][0]["finish_reason"],
            "stop");
  EXPECT_EQ(StreamUsageJson("req-7", "m", 5, 4, 6)["usage"]["total_tokens"], 10);
  EXPECT_EQ(ModelsJson("m", 4096, 5)["data"][0]["max_model_len"], 4096);
  EXPECT_EQ(FinishReasonName(v1::FINISH_REASON_CANCELLED), "abort");
}

// A token with its text (what it added), logprob and top alternatives.
// `top_ids`, when given, the alternatives' ids (else 0).
void AddToken(v1::GenerateResponse& r, int32_t id, const std::string& text, float logprob,
              std::vector<std::pair<std::string, float>> top, std::vector<int32_t> top_ids = {}) {
  r.add_token_ids(id);
  r.set_text(r.text() + text);
  v1::TokenLogprob* lp = r.add_logprobs();
  lp->set_token_id(id);
  lp->set_text(text);
  lp->set_logprob(logprob);
  for (size_t i = 0; i < top.size(); ++i) {
    v1::TopLogprob* x = lp->add_top();
    x->set_text(top[i].first);
    x->set_logprob(top[i].second);
    if (i < top_ids.size()) x->set_token_id(top_ids[i]);
  }
}

TEST(OpenAiProtocolTest, LogprobsTakeOpenAisCompletionsShapeWithOffsetsAcrossMessages) {
  v1::GenerateResponse a = Msg(0, ""), b = Msg(0, "", v1::FINISH_REASON_LENGTH, 3);
  AddToken(a, 5, "He", -0.5f, {{"He", -0.5f}, {"She", -1.5f}});
  AddToken(a, 6, "llo", -0.25f, {{"llo", -0.25f}, {"llo", -3.0f}});  // two ids with one text: the first kept
  AddToken(b, 7, " you", -2.0f, {});
  CompletionAccumulator acc(1, true);
  ASSERT_TRUE(acc.Add(a));
  ASSERT_TRUE(acc.Add(b));
  const json lp = acc.ToJson("m", 1)["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], (json{"He", "llo", " you"}));
  EXPECT_EQ(lp["token_logprobs"], (json{-0.5, -0.25, -2.0}));
  // The chosen token is always among them (OpenAI's up to logprobs + 1 entries; vLLM's too).
  EXPECT_EQ(lp["top_logprobs"], (json{{{"He", -0.5}, {"She", -1.5}}, {{"llo", -0.25}}, {{" you", -2.0}}}));
  EXPECT_EQ(lp["text_offset"], (json{0, 2, 5}));
  size_t offset = 0;
  EXPECT_EQ(StreamChunkJson(a, "m", 1, true, offset)["choices"][0]["logprobs"]["text_offset"], (json{0, 2}));
  EXPECT_EQ(StreamChunkJson(b, "m", 1, true, offset)["choices"][0]["logprobs"]["text_offset"], (json{5}));
  EXPECT_EQ(offset, 9u);
}

// text_offset counts characters, as OpenAI's and vLLM's (Python's len of each token's text), not
// UTF-8 bytes: a token held back while its character is incomplete adds none.
TEST(OpenAiProtocolTest, TextOffsetsCountCharacters) {
  v1::GenerateResponse a = Msg(0, "", v1::FINISH_REASON_LENGTH, 5);
  AddToken(a, 5, "O", -0.5f, {});
  AddToken(a, 6, "", -0.5f, {});  // the first byte of "ù"
  AddToken(a, 7, "\xC3\xB9", -0.5f, {});
  AddToken(a, 8, " \xE6\x97\xA5\xE6\x9C\xAC", -0.5f, {});
  AddToken(a, 9, "!", -0.5f, {});
  CompletionAccumulator acc(1, true);
  ASSERT_TRUE(acc.Add(a));
  EXPECT_EQ(acc.ToJson("m", 1)["choices"][0]["logprobs"]["text_offset"], (json{0, 1, 1, 2, 5}));
  size_t offset = 0;
  EXPECT_EQ(StreamChunkJson(a, "m", 1, true, offset)["choices"][0]["logprobs"]["text_offset"], (json{0, 1, 1, 2, 5}));
  EXPECT_EQ(offset, 6u);
}

// The chosen token goes by its name in "tokens" (its text in the completion, " I"), also where it
// is one of the alternatives (whose names are their texts decoded alone, "I"), and only once: so
// top_logprobs[i][tokens[i]] is token_logprobs[i], as in vLLM. A more probable id with the same
// text alone ("the" beside the chosen "▁the") does not hide it.
TEST(OpenAiProtocolTest, CompletionTopLogprobsHoldTheChosenTokenOnce) {
  v1::GenerateResponse r = Msg(0, "", v1::FINISH_REASON_LENGTH, 3);
  AddToken(r, 9, " I", -3.0f, {{"I", -3.0f}, {"and", -3.05f}}, {9, 4});
  AddToken(r, 7, " you", -4.0f, {{"x", -1.0f}}, {3});
  AddToken(r, 12, " the", -2.0f, {{"the", -0.5f}}, {11});
  CompletionAccumulator acc(1, true);
  ASSERT_TRUE(acc.Add(r));
  const json lp = acc.ToJson("m", 1)["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], (json{" I", " you", " the"}));
  EXPECT_EQ(lp["top_logprobs"], (json{{{" I", -3.0}, {"and", -3.05f}}, {{"x", -1.0}, {" you", -4.0}},
                                      {{"the", -0.5}, {" the", -2.0}}}));
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(lp["top_logprobs"][i][lp["tokens"][i].get<std::string>()], lp["token_logprobs"][i]);
}

// vLLM's return_token_ids and return_tokens_as_token_ids: the ids beside the text, and logprobs
// naming tokens "token_id:<id>" (offsets still into the text; chat's bytes those of the name).
TEST(OpenAiProtocolTest, TokenIdsAndTokensNamedByIdAsVllmReturnsThem) {
  const CompletionCall call =
      std::get<CompletionCall>(ParseCompletionRequest(R"({"prompt": "x", "return_token_ids": true,
          "return_tokens_as_token_ids": true, "logprobs": 1})", "m"));
  EXPECT_TRUE(call.request.return_prompt_token_ids()) << "the coordinator is asked for the prompt's ids";
  const CompletionCall plain = std::get<CompletionCall>(ParseCompletionRequest(R"({"prompt": "x"})", "m"));
  EXPECT_FALSE(plain.request.return_prompt_token_ids());
  EXPECT_FALSE(plain.return_token_ids || plain.tokens_as_ids);

  v1::GenerateResponse first;  // what the coordinator sends first when asked
  first.set_request_id("r");
  for (int32_t id : {1, 870, 2007}) first.add_prompt_token_ids(id);
  v1::GenerateResponse a = Msg(0, ""), b = Msg(0, "", v1::FINISH_REASON_LENGTH, 2);
  AddToken(a, 13, "\n", -0.5f, {});
  v1::TopLogprob* alt = a.mutable_logprobs(0)->add_top();
  alt->set_token_id(14);
  alt->set_text("!");
  alt->set_logprob(-1.0f);
  AddToken(b, 2012, "Then", -0.25f, {});
  for (const Api api : {Api::kCompletions, Api::kChat}) {
    CompletionAccumulator acc(1, /*logprobs=*/true, api, false, TokenReportOf(call));
    for (const v1::GenerateResponse* m : {&first, &a, &b}) ASSERT_TRUE(acc.Add(*m));
    const json j = acc.ToJson("m", 1);
    EXPECT_EQ(j["choices"][0]["token_ids"], (json{13, 2012}));
    const json& prompt_ids = api == Api::kChat ? j["prompt_token_ids"] : j["choices"][0]["prompt_token_ids"];
    EXPECT_EQ(prompt_ids, (json{1, 870, 2007})) << "vLLM's place for each API";
    EXPECT_EQ(api == Api::kChat ? j["choices"][0].contains("prompt_token_ids") : j.contains("prompt_token_ids"), false);
    if (api == Api::kChat) {
      const json& content = j["choices"][0]["logprobs"]["content"];
      EXPECT_EQ(content[0]["token"], "token_id:13");
      EXPECT_EQ(content[0]["bytes"], json({116, 111, 107, 101, 110, 95, 105, 100, 58, 49, 51}));
      EXPECT_EQ(content[0]["top_logprobs"][0]["token"], "token_id:14");
      EXPECT_EQ(content[1]["token"], "token_id:2012");
    } else {
      const json& lp = j["choices"][0]["logprobs"];
      EXPECT_EQ(lp["tokens"], (json{"token_id:13", "token_id:2012"}));
      EXPECT_EQ(lp["top_logprobs"][0], (json{{"token_id:13", -0.5}, {"token_id:14", -1.0}}));
      EXPECT_EQ(lp["text_offset"], (json{0, 1})) << "offsets into the text, not into the names";
    }
  }
  // Without them: no ids, tokens by their text.
  CompletionAccumulator off(1, /*logprobs=*/true);
  for (const v1::GenerateResponse* m : {&first, &a, &b}) ASSERT_TRUE(off.Add(*m));
  const json j = off.ToJson("m", 1);
  EXPECT_FALSE(j["choices"][0].contains("token_ids"));
  EXPECT_FALSE(j["choices"][0].contains("prompt_token_ids"));
  EXPECT_EQ(j["choices"][0]["logprobs"]["tokens"], (json{"\n", "Then"}));
  // A streamed chunk carries its own ids (the prompt's the server adds to a choice's first chunk).
  size_t offset = 0;
  EXPECT_EQ(StreamChunkJson(a, "m", 1, false, offset, Api::kCompletions, TokenReportOf(call))["choices"][0]["token_ids"],
            (json{13}));
  EXPECT_EQ(StreamChunkJson(b, "m", 1, false, offset, Api::kChat, TokenReportOf(call))["choices"][0]["token_ids"],
            (json{2012}));
  EXPECT_FALSE(StreamChunkJson(b, "m", 1, false, offset)["choices"][0].contains("token_ids"));
  // echo's prompt tokens are named the same way.
  v1::ScoreRollingResult scored;
  for (int32_t id : {870, 2007}) scored.add_token_ids(id);
  scored.add_token_texts("RO");
  scored.add_token_texts("MEO:");
  scored.add_logprobs(-3.0f);
  scored.add_argmax_ids(5);
  scored.add_argmax_texts("x");
  scored.add_argmax_logprobs(-1.0f);
  v1::Prompt text_prompt;
  text_prompt.set_text("ROMEO:");
  const Echo echo = EchoOf(text_prompt, scored, true, /*tokens_as_ids=*/true);
  EXPECT_EQ(echo.logprobs["tokens"], (json{"token_id:870", "token_id:2007"}));
  EXPECT_EQ(echo.logprobs["top_logprobs"][1], (json{{"token_id:2007", -3.0}})) << "logprobs 0: the prompt's token";
  EXPECT_EQ(echo.token_ids, (std::vector<int32_t>{870, 2007}));
}

// echo, as lm-evaluation-harness's local-completions reads it (logprobs 1): token_logprobs[ctxlen:]
// are the prompt's (null first), top_logprobs hold the most probable token's logprob and the
// prompt token's (vLLM's prompt_logprobs), then the completion's.
TEST(OpenAiProtocolTest, EchoPutsThePromptsLogprobsBeforeTheCompletions) {
  v1::ScoreRollingResult prompt;
  for (int32_t id : {1, 20, 21}) prompt.add_token_ids(id);
  for (const char* t : {"", "To", " be"}) prompt.add_token_texts(t);
  prompt.add_logprobs(-1.5f);
  prompt.add_logprobs(-0.5f);
  prompt.add_argmax_ids(30);
  prompt.add_argmax_ids(21);
  prompt.add_argmax_logprobs(-0.75f);
  prompt.add_argmax_logprobs(-0.5f);
  prompt.add_argmax_texts("So");
  prompt.add_argmax_texts(" be");
  for (const auto& [id, text, logprob] : {std::tuple{30, "So", -0.75f}, std::tuple{21, " be", -0.5f}}) {
    v1::TopLogprob* t = prompt.add_top()->add_top();
    t->set_token_id(id);
    t->set_text(text);
    t->set_logprob(logprob);
  }
  v1::GenerateResponse done = Msg(0, "", v1::FINISH_REASON_LENGTH, 1);
  AddToken(done, 40, ",", -0.25f, {{",", -0.25f}});
  CompletionAccumulator acc(1, true);
  ASSERT_TRUE(acc.Add(done));
  json answer = acc.ToJson("m", 1);
  v1::Prompt text_prompt;
  text_prompt.set_text("To be");
  const Echo echo = EchoOf(text_prompt, prompt, true);
  EXPECT_EQ(echo.tokens, 3u);
  PrependEcho(answer["choices"][0], echo, echo.text.size());
  const json& c = answer["choices"][0];
  EXPECT_EQ(c["text"], "To be,");
  EXPECT_EQ(c["logprobs"]["tokens"], (json{"", "To", " be", ","}));
  EXPECT_EQ(c["logprobs"]["token_logprobs"], (json{nullptr, -1.5, -0.5, -0.25}));
  EXPECT_EQ(c["logprobs"]["top_logprobs"],
            (json{nullptr, {{"So", -0.75}, {"To", -1.5}}, {{" be", -0.5}}, {{",", -0.25}}}));
  EXPECT_EQ(c["logprobs"]["text_offset"], (json{0, 0, 2, 5}));

  // Streamed: the completion's offsets start past the prompt, and its first chunk carries the echo.
  size_t offset = echo.text.size();
  json chunk = StreamChunkJson(done, "m", 1, true, offset);
  PrependEcho(chunk["choices"][0], echo, 0);
  EXPECT_EQ(chunk["choices"][0]["text"], c["text"]);
  EXPECT_EQ(chunk["choices"][0]["logprobs"], c["logprobs"]);

  // A prompt of token ids echoes the detokenizer's texts, which add up to its text.
  v1::Prompt ids_prompt;
  for (int32_t id : {1, 20, 21}) ids_prompt.mutable_token_ids()->add_ids(id);
  EXPECT_EQ(EchoOf(ids_prompt, prompt, false).text, "To be");

  json plain = CompletionAccumulator(1, false).ToJson("m", 1);
  const Echo plain_echo = EchoOf(text_prompt, prompt, false);
  EXPECT_TRUE(plain_echo.logprobs.is_null());
  PrependEcho(plain["choices"][0], plain_echo, plain_echo.text.size());
  EXPECT_EQ(plain["choices"][0]["text"], "To be");
  EXPECT_TRUE(plain["choices"][0]["logprobs"].is_null());

  // max_tokens 0, streamed: one chunk per choice, the prompt alone.
  const json only = EchoOnlyChunkJson(echo, "r1", 3, "m", 1);
  EXPECT_EQ(only["id"], "cmpl-r1");
  EXPECT_EQ(only["choices"][0]["index"], 3);
  EXPECT_EQ(only["choices"][0]["text"], "To be");
  EXPECT_EQ(only["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(only["choices"][0]["logprobs"]["token_logprobs"], (json{nullptr, -1.5, -0.5}));
}

// With prompt_tokens_details (vLLM's --enable-prompt-tokens-details) the usage says the prompt's
// cached tokens: the fewest any completion found (the prompt is counted once); merged answers sum them.
TEST(OpenAiProtocolTest, PromptTokensDetailsSayTheCachedPromptTokens) {
  TokenReport report;
  report.cached_tokens = true;
  CompletionAccumulator acc(2, false, Api::kCompletions, false, report);
  v1::GenerateResponse a = Msg(0, "a", v1::FINISH_REASON_LENGTH, 1), b = Msg(1, "b", v1::FINISH_REASON_LENGTH, 1);
  a.mutable_usage()->set_cached_prompt_tokens(0);  // the first completion computed the prompt
  b.mutable_usage()->set_cached_prompt_tokens(16);
  ASSERT_TRUE(acc.Add(a) && acc.Add(b));
  EXPECT_EQ(acc.ToJson("m", 1)["usage"], (json{{"prompt_tokens", 4}, {"completion_tokens", 2}, {"total_tokens", 6},
                                               {"prompt_tokens_details", {{"cached_tokens", 0}}}}));
  CompletionAccumulator plain(1, false);
  b.set_index(0);
  ASSERT_TRUE(plain.Add(b));
  EXPECT_FALSE(plain.ToJson("m", 1)["usage"].contains("prompt_tokens_details")) << "only when asked";
  EXPECT_EQ(StreamUsageJson("r", "m", 1, 4, 1, Api::kChat, 16)["usage"]["prompt_tokens_details"]["cached_tokens"], 16);
  const json merged = MergeAnswers({json{{"choices", json::array()}, {"usage", UsageJson(20, 1, 16)}},
                                    json{{"choices", json::array()}, {"usage", UsageJson(40, 1, 32)}}},
                                   1);
  EXPECT_EQ(merged["usage"]["prompt_tokens_details"]["cached_tokens"], 48);
  EXPECT_EQ(merged["usage"]["prompt_tokens"], 60);
}

TEST(OpenAiProtocolTest, ABatchsAnswersMergeWithChoicesNumberedPromptByPrompt) {
  const auto answer = [](const std::string& id, std::vector<std::string> texts, int prompt_tokens, int completion) {
    json choices = json::array();
    for (size_t i = 0; i < texts.size(); ++i) choices.push_back({{"index", i}, {"text", texts[i]}});
    return json{{"id", id}, {"choices", choices},
                {"usage", {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion}, {"total_tokens", 0}}}};
  };
  const json merged = MergeAnswers({answer("cmpl-a", {"x", "y"}, 3, 4), answer("cmpl-b", {"z", "w"}, 5, 6)}, 2);
  EXPECT_EQ(merged["id"], "cmpl-a");
  ASSERT_EQ(merged["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(merged["choices"][i]["index"], i);
  EXPECT_EQ(merged["choices"][2]["text"], "z");
  EXPECT_EQ(merged["usage"], (json{{"prompt_tokens", 8}, {"completion_tokens", 10}, {"total_tokens", 18}}));
}

// --- chat completions ---------------------------------------------------------------------------

ChatCall ChatOk(const json& body) {
  auto r = ParseChatRequest(body.dump(), "m");
  if (auto* e = std::get_if<HttpError>(&r)) ADD_FAILURE() << body.dump() << " -> " << e->message;
  return std::get_if<ChatCall>(&r) ? std::get<ChatCall>(r) : ChatCall{};
}

HttpError ChatErr(const json& body) {
  auto r = ParseChatRequest(body.dump(), "m");
  if (std::get_if<ChatCall>(&r)) ADD_FAILURE() << body.dump() << " was accepted";
  return std::get_if<HttpError>(&r) ? std::get<HttpError>(r) : HttpError{};
}

TEST(OpenAiProtocolTest, ChatRequestsKeepTheConversationAndMapTheSameSamplingFields) {
  const json user = {{"role", "user"}, {"content", "hi"}};
  ChatCall c = ChatOk({{"messages", {user}}});
  EXPECT_TRUE(c.add_generation_prompt);
  EXPECT_FALSE(c.max_tokens_given) << "the server fills in what the context leaves";
  EXPECT_TRUE(c.tools.is_null());
  EXPECT_FALSE(c.completion.logprobs);

  // Key order survives (templates print messages with tojson); text parts are joined by newlines.
  c = ChatOk({{"messages", {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}}}},
              {"max_completion_tokens", 9}, {"max_tokens", 3}, {"temperature", 0.5}, {"top_k", 5}, {"seed", 2},
              {"n", 2}, {"stop", {"x"}}, {"logprobs", true}, {"top_logprobs", 3}, {"repetition_penalty", 1.1},
              {"chat_template_kwargs", {{"add_system", true}}}, {"stream", true},
              {"stream_options", {{"include_usage", true}}}});
  EXPECT_EQ(c.messages[0]["content"], "a\nb");
  // Null content (an assistant turn beside its tool_calls) is "" to the template, as vLLM gives it; the
  // calls stay. An assistant's refusal part is text.
  const json call = {{"id", "abcdefghi"}, {"type", "function"}, {"function", {{"name", "f"}, {"arguments", "{}"}}}};
  ChatCall nulled = ChatOk({{"messages", {user, {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", {call}}}, user}}});
  EXPECT_EQ(nulled.messages[1]["content"], "");
  EXPECT_EQ(nulled.messages[1]["tool_calls"][0]["id"], "abcdefghi");
  ChatCall absent = ChatOk({{"messages", {user, {{"role", "assistant"}, {"tool_calls", {call}}}, user}}});
  EXPECT_EQ(absent.messages[1]["content"], "") << "no content at all is null's \"\"";
  ChatCall refused = ChatOk({{"messages", {user, {{"role", "assistant"}, {"content", {{{"type", "refusal"}, {"refusal", "no"}}}}}, user}}});
  EXPECT_EQ(refused.messages[1]["content"], "no");
  auto raw = ParseChatRequest(R"({"messages": [{"role": "user", "name": "x", "content": "hi"}]})", "m");
  ASSERT_TRUE(std::get_if<ChatCall>(&raw));
  std::vector<std::string> keys;
  for (const auto& [key, value] : std::get<ChatCall>(raw).messages[0].items()) keys.push_back(key);
  EXPECT_EQ(keys, (std::vector<std::string>{"role", "name", "content"}));
  EXPECT_TRUE(c.max_tokens_given);
  EXPECT_EQ(c.completion.request.sampling().max_tokens(), 9u) << "max_completion_tokens, OpenAI's newer name, wins";
  EXPECT_EQ(c.completion.request.sampling().temperature(), 0.5f);
  EXPECT_EQ(c.completion.request.sampling().top_k(), 5);
  EXPECT_EQ(c.completion.request.sampling().logprobs(), 3u);
  EXPECT_EQ(c.completion.request.sampling().n(), 2u);
  EXPECT_FLOAT_EQ(c.completion.request.sampling().repetition_penalty(), 1.1f);
  EXPECT_TRUE(c.completion.logprobs && c.completion.stream && c.completion.include_usage);
  EXPECT_EQ(c.template_kwargs["add_system"], true);

  c = ChatOk({{"messages", {user, {{"role", "assistant"}, {"content", "he"}}}}, {"continue_final_message", true},
              {"tools", json::array({{{"type", "function"}, {"function", {{"name", "f"}}}}})}, {"tool_choice", "none"}});
  EXPECT_FALSE(c.add_generation_prompt);
  EXPECT_TRUE(c.continue_final_message);
  EXPECT_EQ(c.tools.size(), 1u);

  for (const auto& [body, param] : std::vector<std::pair<json, std::string>>{
           {{{"max_tokens", 3}}, "messages"},
           {{{"messages", json::array()}}, "messages"},
           {{{"messages", {"hi"}}}, "messages[0]"},
           {{{"messages", {{{"content", "x"}}}}}, "messages[0].role"},
           {{{"messages", {{{"role", "user"}, {"content", 5}}}}}, "messages[0].content"},
           {{{"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}}}}}}}}, "messages[0].content"},
           {{{"messages", {user}}, {"max_tokens", 0}}, "max_tokens"},
           {{{"messages", {user}}, {"top_logprobs", 2}}, "top_logprobs"},
           {{{"messages", {user}}, {"logprobs", true}, {"top_logprobs", 21}}, "top_logprobs"},
           {{{"messages", {user}}, {"tools", json::array()}, {"tool_choice", "auto"}}, "tool_choice"},
           {{{"messages", {user}}, {"response_format", {{"type", "json_schema"}}}}, "response_format"},
           {{{"messages", {user}}, {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "x"}}}}}},
            "response_format"},
           {{{"messages", {user}}, {"response_format", "json_object"}}, "response_format"},
           {{{"messages", {user}}, {"echo", "yes"}}, "echo"},
           {{{"messages", {user}}, {"add_special_tokens", true}}, "add_special_tokens"},
           {{{"messages", {user}}, {"use_beam_search", true}, {"logprobs", true}}, "logprobs"},
           {{{"messages", {user}}, {"use_beam_search", true}, {"echo", true}, {"add_generation_prompt", false}}, "echo"},
           {{{"messages", {user}},
             {"use_beam_search", true},
             {"tools", {{{"type", "function"}, {"function", {{"name", "f"}}}}}},
             {"tool_choice", "required"}},
            "tool_choice"},
           // Tool calls are read from the text without control tokens.
           {{{"messages", {user}},
             {"skip_special_tokens", false},
             {"tools", {{{"type", "function"}, {"function", {{"name", "f"}}}}}},
             {"tool_choice", "required"}},
            "skip_special_tokens"},
           {{{"messages", {user}}, {"continue_final_message", true}, {"add_generation_prompt", true}}, "continue_final_message"},
           {{{"messages", {user}}, {"chat_template", 3}}, "chat_template"},
           {{{"messages", {user}}, {"temperature", "hot"}}, "temperature"}}) {
    const HttpError e = ChatErr(body);
    EXPECT_EQ(e.status, 400) << body.dump();
    EXPECT_EQ(e.param, param) << body.dump() << " -> " << e.message;
  }
  EXPECT_EQ(ChatErr({{"messages", {user}}, {"model", "other"}}).status, 404);

  // vLLM's chat echo: the last message's content goes before the answer's when its role is the
  // answer's ("assistant"; without a generation prompt, the last message's own).
  const json partial = {{"role", "assistant"}, {"content", "Fair "}};
  auto echo_of = [](const json& body) {
    const auto r = ParseChatRequest(body.dump(), "m");
    return std::holds_alternative<ChatCall>(r) ? std::get<ChatCall>(r).completion.chat_echo : std::string("<refused>");
  };
  EXPECT_EQ(echo_of({{"messages", {user, partial}}, {"echo", true}, {"continue_final_message", true}}), "Fair ");
  EXPECT_EQ(echo_of({{"messages", {user, partial}}, {"echo", true}}), "Fair ");
  EXPECT_EQ(echo_of({{"messages", {user}}, {"echo", true}}), "") << "the user's message is not the answer's role";
  EXPECT_EQ(echo_of({{"messages", {user}}, {"echo", true}, {"add_generation_prompt", false}}), "hi");
  EXPECT_EQ(echo_of({{"messages", {user, partial}}, {"echo", false}}), "");
}

// tool_choice: a named function constrains the output to its parameters' schema, "required" to a
// list of {"name", "parameters"}; the text then becomes the message's tool_calls.
TEST(OpenAiProtocolTest, ToolChoiceConstrainsTheOutputAndAnswersWithToolCalls) {
  const json weather = {{"type", "function"},
                        {"function", {{"name", "weather"}, {"parameters", {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}, {"required", {"city"}}}}}}};
  const json clock = {{"type", "function"}, {"function", {{"name", "clock"}}}};
  const json user = {{"role", "user"}, {"content", "hi"}};
  auto chat = [&](const json& extra) {
    json body = {{"messages", {user}}, {"tools", {weather, clock}}};
    body.update(extra);
    return ParseChatRequest(body.dump(), "m");
  };
  auto ok = [&](const json& extra) {
    auto r = chat(extra);
    EXPECT_TRUE(std::holds_alternative<ChatCall>(r)) << (std::holds_alternative<HttpError>(r) ? std::get<HttpError>(r).message : "");
    return std::holds_alternative<ChatCall>(r) ? std::get<ChatCall>(r) : ChatCall{};
  };
  ChatCall named = ok({{"tool_choice", {{"type", "function"}, {"function", {{"name", "weather"}}}}}});
  EXPECT_EQ(named.completion.tool_choice.kind, ToolChoice::Kind::kNamed);
  EXPECT_EQ(named.completion.tool_choice.name, "weather");
  EXPECT_EQ(named.completion.request.sampling().response_format().type(), v1::ResponseFormat::TYPE_JSON_SCHEMA);
  EXPECT_EQ(json::parse(named.completion.request.sampling().response_format().json_schema()), weather["function"]["parameters"]);
  EXPECT_EQ(named.tools.size(), 2u) << "the tools still reach the template";
  // TGI's bare name is the same named choice.
  ChatCall bare = ok({{"tool_choice", "weather"}});
  EXPECT_EQ(bare.completion.tool_choice.kind, ToolChoice::Kind::kNamed);
  EXPECT_EQ(bare.completion.tool_choice.name, "weather");
  EXPECT_EQ(bare.completion.request.sampling().response_format().json_schema(),
            named.completion.request.sampling().response_format().json_schema());
  ChatCall required = ok({{"tool_choice", "required"}});
  EXPECT_EQ(required.completion.tool_choice.kind, ToolChoice::Kind::kRequired);
  const json schema = json::parse(required.completion.request.sampling().response_format().json_schema());
  EXPECT_EQ(schema["type"], "array");
  ASSERT_EQ(schema["items"]["anyOf"].size(), 2u) << schema.dump();
  EXPECT_EQ(schema["items"]["anyOf"][0]["properties"]["name"]["const"], "weather");
  EXPECT_EQ(schema["items"]["anyOf"][0]["properties"]["parameters"], weather["function"]["parameters"]);
  EXPECT_EQ(schema["items"]["anyOf"][1]["properties"]["name"]["const"], "clock");
  EXPECT_TRUE(JsonSchema::Compile(nlohmann::ordered_json::parse(schema.dump())).ok()) << "each call's parameters constrained";
  EXPECT_FALSE(schema.contains("maxItems"));
  // parallel_tool_calls: false allows one call.
  ChatCall single = ok({{"tool_choice", "required"}, {"parallel_tool_calls", false}});
  EXPECT_TRUE(single.completion.tool_choice.single_call);
  EXPECT_EQ(json::parse(single.completion.request.sampling().response_format().json_schema())["maxItems"], 1);
  EXPECT_FALSE(ok({{"tool_choice", "required"}, {"parallel_tool_calls", true}}).completion.tool_choice.single_call);
  ASSERT_TRUE(std::holds_alternative<HttpError>(chat({{"tool_choice", "required"}, {"parallel_tool_calls", "no"}})));
  EXPECT_EQ(std::get<HttpError>(chat({{"tool_choice", "required"}, {"parallel_tool_calls", "no"}})).param, "parallel_tool_calls");
  // Tools' definitions move to the root, where their references point.
  const json with_defs = {{"type", "function"}, {"function", {{"name", "pick"}, {"parameters", {
      {"$defs", {{"color", {{"enum", {"red", "blue"}}}}}}, {"type", "object"},
      {"properties", {{"c", {{"$ref", "#/$defs/color"}}}}}}}}}};
  ChatCall hoisted = ok({{"tool_choice", "required"}, {"tools", {weather, with_defs}}});
  const json hoisted_schema = json::parse(hoisted.completion.request.sampling().response_format().json_schema());
  EXPECT_EQ(hoisted_schema["$defs"]["color"]["enum"], json({"red", "blue"}));
  EXPECT_FALSE(hoisted_schema["items"]["anyOf"][1]["properties"]["parameters"].contains("$defs"));
  EXPECT_TRUE(JsonSchema::Compile(nlohmann::ordered_json::parse(hoisted_schema.dump())).ok());
  EXPECT_EQ(ok({{"tool_choice", "none"}}).completion.request.sampling().response_format().type(), v1::ResponseFormat::TYPE_TEXT);
  // As vLLM's request model: a tool's "type" defaults to "function" (the template sees it filled in);
  // two tools of one name are refused only where tool_choice tells calls apart by name.
  const ChatCall untyped = ok({{"tool_choice", "required"}, {"tools", {{{"function", {{"name", "f"}}}}}}});
  EXPECT_EQ(untyped.tools[0]["type"], "function");
  EXPECT_EQ(ok({{"tool_choice", "none"}, {"tools", {weather, weather}}}).tools.size(), 2u);
  for (const auto& [extra, param] : std::vector<std::pair<json, std::string>>{
           {{{"tool_choice", "auto"}}, "tool_choice"},
           {{{"tool_choice", {{"type", "function"}, {"function", {{"name", "other"}}}}}}, "tool_choice"},
           {{{"tool_choice", "other"}}, "tool_choice"},
           {{{"tool_choice", 7}}, "tool_choice"},
           {{{"tool_choice", "required"}, {"tools", {{{"type", "function"}}}}}, "tools[0]"},
           {{{"tools", {{{"type", "function"}}}}}, "tools[0]"},  // a tool's shape, whatever tool_choice says
           {{{"tool_choice", "none"}, {"tools", {weather, {{"type", "function"}, {"function", 3}}}}}, "tools[1]"},
           {{{"tool_choice", "required"}, {"tools", json::array()}}, "tool_choice"},
           {{{"tool_choice", "required"}, {"tools", {weather, weather}}}, "tools[1]"},
           {{{"tool_choice", "required"}, {"response_format", {{"type", "json_object"}}}}, "tool_choice"},
           {{{"tool_choice", "required"},
             {"tools", {{{"type", "function"}, {"function", {{"name", "f"}, {"parameters", {{"type", "integer"}, {"multipleOf", 2}}}}}}}}},
            "tools"}}) {
    auto r = chat(extra);
    ASSERT_TRUE(std::holds_alternative<HttpError>(r)) << extra.dump();
    EXPECT_EQ(std::get<HttpError>(r).param, param) << extra.dump() << " -> " << std::get<HttpError>(r).message;
  }

  // Answers: the text becomes tool calls (content ""), or stays content when it does not read as them.
  json answer = {{"choices", {{{"message", {{"role", "assistant"}, {"content", R"({"city": "Verona"})"}}}}}}};
  ApplyToolCalls(named.completion.tool_choice, answer, {-1});
  const json& call = answer["choices"][0]["message"]["tool_calls"][0];
  EXPECT_EQ(answer["choices"][0]["message"]["content"], "");
  EXPECT_EQ(call["type"], "function");
  EXPECT_EQ(call["function"]["name"], "weather");
  EXPECT_EQ(call["function"]["arguments"], R"({"city": "Verona"})");
  EXPECT_EQ(call["id"].get<std::string>().rfind("chatcmpl-tool-", 0), 0u);
  EXPECT_EQ(call["id"].get<std::string>().size(), 14u + 32u);
  const json calls = ToolCallsJson(required.completion.tool_choice,
                                   R"([{"name": "clock", "parameters": {}}, {"name": "weather", "parameters": {"city": "Rome"}}])");
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1]["function"]["name"], "weather");
  EXPECT_EQ(calls[1]["function"]["arguments"], R"({"city": "Rome"})") << "as written, as the stream sends it";
  EXPECT_NE(calls[0]["id"], calls[1]["id"]);
  EXPECT_TRUE(ToolCallsJson(required.completion.tool_choice, R"([{"name": "clock", "param)").is_null()) << "cut short";
  const json start = NamedToolCallDelta(named.completion.tool_choice, "{\"ci", true);
  EXPECT_EQ(start["tool_calls"][0]["function"]["name"], "weather");
  EXPECT_EQ(start["tool_calls"][0]["function"]["arguments"], "{\"ci");
  EXPECT_TRUE(start["tool_calls"][0].contains("id"));
  EXPECT_EQ(NamedToolCallDelta(named.completion.tool_choice, "ty", false),
            json({{"tool_calls", {{{"index", 0}, {"function", {{"arguments", "ty"}}}}}}}));
}

// tool_choice "auto" with a server that reads Mistral's [TOOL_CALLS] (here id 5): an answer whose
// first token is the marker becomes tool_calls (content null, finish_reason "tool_calls"); one that
// does not stays text. Without the parser "auto" is refused naming the server flag.
// "required" streamed: a call's id and name once its name is read, then its parameters' text as
// written; however the text is split, the entries add up to the whole answer's calls.
TEST(OpenAiProtocolTest, ToolCallsStreamAsTheyAreWritten) {
  const std::string text =
      "[{\"name\": \"weather\", \"parameters\": {\"city\": \"Ve\\\"rona\", \"n\": [1, {\"a\": 2}]}},\n"
      " {\"name\": \"cl\\u006fck\", \"parameters\": 5}, {\"name\":\"x\",\"parameters\":\"s,}\"}]";
  ToolChoice required;
  required.kind = ToolChoice::Kind::kRequired;
  const json whole = ToolCallsJson(required, text);
  ASSERT_EQ(whole.size(), 3u) << whole.dump();
  EXPECT_EQ(whole[0]["function"]["name"], "weather");
  EXPECT_EQ(whole[0]["function"]["arguments"], "{\"city\": \"Ve\\\"rona\", \"n\": [1, {\"a\": 2}]}");
  EXPECT_EQ(whole[1]["function"]["name"], "clock");
  EXPECT_EQ(whole[1]["function"]["arguments"], "5");
  EXPECT_EQ(whole[2]["function"]["arguments"], "s,}") << "arguments written as a JSON string: its value";
  for (size_t piece = 1; piece <= 9; ++piece) {
    ToolCallsStream stream;
    json calls = json::array();
    int deltas = 0;
    for (size_t at = 0; at < text.size(); at += piece) {
      const json entries = stream.Feed(std::string_view(text).substr(at, piece));
      deltas += entries.empty() ? 0 : 1;
      for (const json& e : entries) {
        const size_t i = e["index"].get<size_t>();
        if (e.contains("id")) {
          ASSERT_EQ(i, calls.size()) << "calls begin in order, once";
          EXPECT_EQ(e["type"], "function");
          calls.push_back({{"name", e["function"]["name"]}, {"arguments", e["function"]["arguments"]}});
        } else {
          ASSERT_LT(i, calls.size()) << "arguments after the call's name";
          calls[i]["arguments"] = calls[i]["arguments"].get<std::string>() + e["function"]["arguments"].get<std::string>();
        }
      }
    }
    ASSERT_EQ(calls.size(), whole.size()) << piece;
    for (size_t i = 0; i < calls.size(); ++i) {
      EXPECT_EQ(calls[i]["name"], whole[i]["function"]["name"]) << piece;
      EXPECT_EQ(calls[i]["arguments"], whole[i]["function"]["arguments"]) << piece;
    }
    EXPECT_EQ(stream.complete_calls(), 3);
    if (piece == 1) {
      EXPECT_GT(deltas, 20) << "arguments stream byte by byte";
    }
  }
  EXPECT_TRUE(ToolCallsJson(required, text.substr(0, 60)).is_null()) << "cut short";
  // "auto": Mistral's "arguments", streamed the same way.
  ToolChoice automatic;
  automatic.kind = ToolChoice::Kind::kAuto;
  const std::string mistral = R"([{"name": "f", "arguments": {"a": [1, 2]}}, {"name": "g", "arguments": "{\"b\": 3}"}])";
  ToolCallsStream stream("arguments");
  json entries = json::array();
  for (char c : mistral) {
    for (const json& e : stream.Feed(std::string(1, c))) entries.push_back(e);
  }
  const json calls = ToolCallsJson(automatic, mistral);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0]["function"]["arguments"], R"({"a": [1, 2]})");
  EXPECT_EQ(calls[1]["function"]["arguments"], R"({"b": 3})");
  std::string streamed_g;
  for (const json& e : entries) {
    if (e["index"] == 1 && !e.contains("id")) streamed_g += e["function"]["arguments"].get<std::string>();
  }
  EXPECT_EQ(streamed_g, R"({"b": 3})") << "a string's value, once whole";
  EXPECT_TRUE(ToolCallsJson(automatic, R"([{"name": "f", "parameters": {}}])").is_null()) << "Mistral's key is arguments";
  // Free text may write the arguments before the name: they follow the name's entry.
  const json reordered = ToolCallsJson(automatic, R"([{"arguments": {"x": 1}, "name": "h"}])");
  ASSERT_EQ(reordered.size(), 1u) << reordered.dump();
  EXPECT_EQ(reordered[0]["function"]["name"], "h");
  EXPECT_EQ(reordered[0]["function"]["arguments"], R"({"x": 1})");
  ToolCallsStream early("arguments");
  const json first = early.Feed(R"([{"arguments": {"x": 1}, )");
  EXPECT_TRUE(first.empty()) << first.dump();
  const json named_entries = early.Feed(R"("name": "h"}])");
  ASSERT_EQ(named_entries.size(), 1u);
  EXPECT_EQ(named_entries[0]["function"]["arguments"], R"({"x": 1})");
}

TEST(OpenAiProtocolTest, AutoToolChoiceReadsMistralsToolCalls) {
  const json tools = {{{"type", "function"}, {"function", {{"name", "weather"}}}}};
  const json user = {{"role", "user"}, {"content", "hi"}};
  const std::string body = json{{"messages", {user}}, {"tools", tools}, {"tool_choice", "auto"}}.dump();
  auto refused = ParseChatRequest(body, "m");
  ASSERT_TRUE(std::holds_alternative<HttpError>(refused));
  EXPECT_EQ(std::get<HttpError>(refused).param, "tool_choice");
  EXPECT_NE(std::get<HttpError>(refused).message.find("--tool-call-parser"), std::string::npos);
  // Without a tool_choice, tools alone only reach the template unless the server reads calls.
  const std::string implicit = json{{"messages", {user}}, {"tools", tools}}.dump();
  EXPECT_EQ(std::get<ChatCall>(ParseChatRequest(implicit, "m")).completion.tool_choice.kind, ToolChoice::Kind::kNone);
  for (const std::string& b : {body, implicit}) {
    auto parsed = ParseChatRequest(b, "m", /*auto_marker_id=*/5);
    ASSERT_TRUE(std::holds_alternative<ChatCall>(parsed));
    const ChatCall& call = std::get<ChatCall>(parsed);
    EXPECT_EQ(call.completion.tool_choice.kind, ToolChoice::Kind::kAuto);
    EXPECT_EQ(call.completion.tool_choice.marker_id, 5);
    EXPECT_EQ(call.completion.request.sampling().response_format().type(), v1::ResponseFormat::TYPE_TEXT) << "free text";
  }
  const ToolChoice choice = std::get<ChatCall>(ParseChatRequest(body, "m", 5)).completion.tool_choice;

  // Two choices of one answer, accumulated from the stream: the first starts with [TOOL_CALLS].
  CompletionAccumulator acc(2, /*logprobs=*/false, Api::kChat);
  v1::GenerateResponse calls, text;
  calls.set_index(0);
  calls.add_token_ids(5);
  calls.add_token_ids(77);
  calls.set_text(R"([{"name": "weather", "arguments": {"city": "Rome"}}])");
  calls.set_finish_reason(v1::FINISH_REASON_STOP);
  text.set_index(1);
  text.add_token_ids(9);
  text.set_text("Fair Verona");
  text.set_finish_reason(v1::FINISH_REASON_STOP);
  ASSERT_TRUE(acc.Add(calls));
  ASSERT_TRUE(acc.Add(text));
  EXPECT_EQ(acc.FirstTokens(), (std::vector<int32_t>{5, 9}));
  json answer = acc.ToJson("m", 0);
  ApplyToolCalls(choice, answer, acc.FirstTokens());
  const json& first = answer["choices"][0];
  EXPECT_TRUE(first["message"]["content"].is_null());
  EXPECT_EQ(first["finish_reason"], "tool_calls");
  EXPECT_EQ(first["message"]["tool_calls"][0]["function"]["name"], "weather");
  EXPECT_EQ(first["message"]["tool_calls"][0]["function"]["arguments"], R"({"city": "Rome"})") << "as written";
  EXPECT_EQ(answer["choices"][1]["message"]["content"], "Fair Verona");
  EXPECT_FALSE(answer["choices"][1]["message"].contains("tool_calls"));
  EXPECT_EQ(answer["choices"][1]["finish_reason"], "stop");
  EXPECT_TRUE(AnswersWithCalls(choice, 5));
  EXPECT_FALSE(AnswersWithCalls(choice, 9));
  EXPECT_FALSE(AnswersWithCalls(choice, -1));

  // parallel_tool_calls: false: of two calls only the first is answered, whole or streamed.
  const std::string single_body =
      json{{"messages", {user}}, {"tools", tools}, {"tool_choice", "auto"}, {"parallel_tool_calls", false}}.dump();
  const ToolChoice single = std::get<ChatCall>(ParseChatRequest(single_body, "m", 5)).completion.tool_choice;
  EXPECT_TRUE(single.single_call);
  const std::string two = R"([{"name": "weather", "arguments": {"city": "Rome"}}, {"name": "weather", "arguments": {"city": "Oslo"}}])";
  const json whole = ToolCallsJson(single, two);
  ASSERT_EQ(whole.size(), 1u) << whole.dump();
  EXPECT_EQ(whole[0]["function"]["arguments"], R"({"city": "Rome"})");
  EXPECT_EQ(ToolCallsJson(choice, two).size(), 2u);
  ToolCallsStream stream("arguments", 1);
  json entries = json::array();
  for (char c : two) {
    for (json& e : stream.Feed(std::string(1, c))) entries.push_back(std::move(e));
  }
  for (const json& e : entries) EXPECT_EQ(e["index"], 0) << e.dump();
  EXPECT_EQ(stream.calls(), 2);
}

TEST(OpenAiProtocolTest, ChatAnswersTakeOpenAisChatShape) {
  CompletionAccumulator acc(1, /*logprobs=*/true, Api::kChat);
  v1::GenerateResponse a;
  a.set_request_id("r1");
  a.set_text("Hel");
  v1::TokenLogprob* lp = a.add_logprobs();
  lp->set_text("Hel");
  lp->set_logprob(-0.5f);
  v1::TopLogprob* top = lp->add_top();
  top->set_text("Hel");
  top->set_logprob(-0.5f);
  v1::GenerateResponse b;
  b.set_text("lo");
  b.add_logprobs()->set_text("lo");
  b.set_finish_reason(v1::FINISH_REASON_LENGTH);
  b.mutable_usage()->set_prompt_tokens(4);
  b.mutable_usage()->set_completion_tokens(2);
  ASSERT_TRUE(acc.Add(a));
  ASSERT_TRUE(acc.Add(b));
  const json j = acc.ToJson("m", 7);
  EXPECT_EQ(j["id"], "chatcmpl-r1");
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"], json({{"role", "assistant"}, {"content", "Hello"}}));
  EXPECT_FALSE(j["choices"][0].contains("text"));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  const json& content = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], "Hel");
  EXPECT_EQ(content[0]["bytes"], json({72, 101, 108}));
  EXPECT_EQ(content[0]["top_logprobs"][0]["token"], "Hel");

  // Byte-fallback tokens: "bytes" holds each one's own raw byte (OpenAI's), which its text (held
  // back, then the whole character) cannot; a whole token's bytes are its text's.
  v1::GenerateResponse e;
  for (const auto& [text, raw] : std::vector<std::pair<std::string, std::string>>{
           {"", "\xC3"}, {"\xC3\xA9", "\xA9"}, {" x", " x"}}) {
    v1::TokenLogprob* lp = e.add_logprobs();
    lp->set_text(text);
    lp->set_token_bytes(raw);
    v1::TopLogprob* t = lp->add_top();
    t->set_text("\xEF\xBF\xBD");  // a byte token decoded alone
    t->set_token_bytes(raw);
  }
  const json bytes_of = ChatLogprobsJson(e);
  EXPECT_EQ(bytes_of[0]["bytes"], json({0xC3}));
  EXPECT_EQ(bytes_of[1]["bytes"], json({0xA9}));
  EXPECT_EQ(bytes_of[2]["bytes"], json({32, 120}));
  EXPECT_EQ(bytes_of[1]["top_logprobs"][0]["bytes"], json({0xA9}));
  EXPECT_EQ(bytes_of[2]["top_logprobs"][0]["bytes"], json({32, 120}));  // its own, not its text's
  EXPECT_EQ(content[1]["top_logprobs"], json::array());
  EXPECT_EQ(j["usage"]["total_tokens"], 6);

  size_t offset = 0;
  const json chunk = StreamChunkJson(b, "m", 7, /*logprobs=*/false, offset, Api::kChat);
  EXPECT_EQ(chunk["object"], "chat.completion.chunk");
  EXPECT_EQ(chunk["choices"][0]["delta"], json({{"content", "lo"}}));
  EXPECT_EQ(chunk["choices"][0]["finish_reason"], "length");
  const json role = ChatRoleChunkJson("r1", 0, "m", 7);
  EXPECT_EQ(role["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_EQ(role["id"], "chatcmpl-r1");
  EXPECT_EQ(StreamUsageJson("r1", "m", 7, 4, 2, Api::kChat)["object"], "chat.completion.chunk");
}

}  // namespace
}  // namespace moe::openai
