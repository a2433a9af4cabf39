// TGI's request rules (coordinator/openai/tgi_protocol.h) as its router and Python shard state them
// (text-generation-inference's validation.rs and utils/tokens.py): the defaults with and without
// "parameters", when it samples, its ranges and their messages, and the kinds of its errors.
#include "coordinator/openai/tgi_protocol.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "tests/support/json_mutation.h"

#include "absl/status/status.h"

namespace moe::openai {
namespace {

using nlohmann::json;

TgiCall Ok(const json& body, TgiRoute route = TgiRoute::kGenerate) {
  std::variant<TgiCall, TgiError> got = ParseTgiRequest(body.dump(), route);
  if (const TgiError* e = std::get_if<TgiError>(&got)) {
    ADD_FAILURE() << body.dump() << " -> " << e->error;
    return {};
  }
  return std::get<TgiCall>(got);
}

TgiError Err(const std::string& body, TgiRoute route = TgiRoute::kGenerate) {
  std::variant<TgiCall, TgiError> got = ParseTgiRequest(body, route);
  if (std::holds_alternative<TgiCall>(got)) {
    ADD_FAILURE() << body << " was accepted";
    return {};
  }
  return std::get<TgiError>(got);
}

TEST(TgiProtocolTest, WithoutParametersTgiSamplesAHundredTokens) {
  const TgiCall c = Ok({{"inputs", "Hello"}});
  EXPECT_TRUE(c.sampling) << "default_parameters(): do_sample true";
  EXPECT_EQ(c.request.prompt().text(), "Hello");
  EXPECT_EQ(c.request.sampling().max_tokens(), 100u);
  EXPECT_EQ(c.request.sampling().temperature(), 1.0f);
  EXPECT_FALSE(c.details || c.stream || c.return_full_text || c.seed);
  EXPECT_TRUE(c.request.sampling().include_stop_str_in_output()) << "TGI's text keeps the stop sequence";
}

TEST(TgiProtocolTest, WithParametersItIsGreedyUnlessASamplingParameterIsGiven) {
  EXPECT_FALSE(Ok({{"inputs", "x"}, {"parameters", json::object()}}).sampling);
  EXPECT_EQ(Ok({{"inputs", "x"}, {"parameters", json::object()}}).request.sampling().temperature(), 0.0f);
  EXPECT_FALSE(Ok({{"inputs", "x"}, {"parameters", {{"temperature", 1.0}}}}).sampling) << "1.0 changes nothing";
  EXPECT_FALSE(Ok({{"inputs", "x"}, {"parameters", {{"repetition_penalty", 1.2}}}}).sampling);
  for (const json& p : {json{{"do_sample", true}}, json{{"temperature", 0.7}}, json{{"top_k", 5}}, json{{"top_p", 0.9}}}) {
    const TgiCall c = Ok({{"inputs", "x"}, {"parameters", p}});
    EXPECT_TRUE(c.sampling) << p.dump();
  }
  const TgiCall c = Ok({{"inputs", "x"}, {"parameters", {{"temperature", 0.7}, {"top_k", 5}, {"top_p", 0.9}, {"seed", 42},
                                                         {"repetition_penalty", 1.1}, {"frequency_penalty", -0.5},
                                                         {"max_new_tokens", 7}, {"truncate", 3}, {"stop", {"\n"}}}}});
  const v1::SamplingParams& s = c.request.sampling();
  EXPECT_FLOAT_EQ(s.temperature(), 0.7f);
  EXPECT_EQ(s.top_k(), 5);
  EXPECT_FLOAT_EQ(s.top_p(), 0.9f);
  EXPECT_EQ(c.seed, 42u);
  EXPECT_FLOAT_EQ(s.repetition_penalty(), 1.1f);
  EXPECT_FLOAT_EQ(s.frequency_penalty(), -0.5f);
  EXPECT_EQ(s.max_tokens(), 7u);
  EXPECT_EQ(s.truncate_prompt_tokens(), 3u);
  ASSERT_EQ(s.stop_size(), 1);
  EXPECT_EQ(s.stop(0), "\n");
}

TEST(TgiProtocolTest, RoutesDecideStreamingAndTheFullTextDefault) {
  EXPECT_TRUE(Ok({{"inputs", "x"}}, TgiRoute::kGenerateStream).stream);
  EXPECT_FALSE(Ok({{"inputs", "x"}, {"stream", true}}, TgiRoute::kGenerate).stream) << "only POST / reads it";
  EXPECT_TRUE(Ok({{"inputs", "x"}, {"stream", true}}, TgiRoute::kCompat).stream);
  EXPECT_TRUE(Ok({{"inputs", "x"}}, TgiRoute::kCompat).return_full_text) << "a text-generation model's default on /";
  EXPECT_FALSE(Ok({{"inputs", "x"}, {"parameters", {{"return_full_text", false}}}}, TgiRoute::kCompat).return_full_text);
  EXPECT_TRUE(Ok({{"inputs", "x"}, {"parameters", {{"return_full_text", true}}}}).return_full_text);
  // max_new_tokens null: what the context leaves (the server counts the inputs' tokens).
  const TgiCall c = Ok({{"inputs", "x"}, {"parameters", {{"max_new_tokens", nullptr}}}});
  EXPECT_TRUE(c.max_new_tokens_to_context);
  EXPECT_FALSE(c.request.sampling().has_max_tokens());
  // decoder_input_details asks for the details too.
  EXPECT_TRUE(Ok({{"inputs", "x"}, {"parameters", {{"decoder_input_details", true}}}}).details);
  EXPECT_EQ(Ok({{"inputs", "x"}, {"parameters", {{"top_n_tokens", 5}}}}).top_n_tokens, 5u);
}

TEST(TgiProtocolTest, GrammarsBecomeResponseFormats) {
  const json schema = {{"type", "object"}, {"properties", {{"b", {{"type", "integer"}}}, {"a", {{"type", "string"}}}}}};
  for (const json& value : {schema, json(schema.dump())}) {
    const TgiCall c = Ok({{"inputs", "x"}, {"parameters", {{"grammar", {{"type", "json"}, {"value", value}}}}}});
    EXPECT_EQ(c.request.sampling().response_format().type(), v1::ResponseFormat::TYPE_JSON_SCHEMA);
    EXPECT_EQ(json::parse(c.request.sampling().response_format().json_schema()), schema);
  }
  const TgiCall r = Ok({{"inputs", "x"}, {"parameters", {{"grammar", {{"type", "regex"}, {"value", "[0-9]+"}}}}}});
  EXPECT_EQ(r.request.sampling().response_format().type(), v1::ResponseFormat::TYPE_REGEX);
  EXPECT_EQ(r.request.sampling().response_format().regex(), "[0-9]+");
}

TEST(TgiProtocolTest, ValidationErrorsAre422WithTgisMessages) {
  struct Case {
    std::string body;
    std::string message;
  };
  for (const Case& c : std::initializer_list<Case>{
           {R"({"inputs": ""})", "`inputs` cannot be empty"},
           {R"({"parameters": {}})", "`inputs`"},
           {R"({"inputs": "x", "parameters": {"temperature": 0}})", "`temperature` must be strictly positive"},
           {R"({"inputs": "x", "parameters": {"repetition_penalty": 0}})", "`repetition_penalty` must be strictly positive"},
           {R"({"inputs": "x", "parameters": {"frequency_penalty": 2.5}})", "`frequency_penalty` must be >= -2.0 and <= 2.0"},
           {R"({"inputs": "x", "parameters": {"top_p": 1.0}})", "`top_p` must be > 0.0 and < 1.0"},
           {R"({"inputs": "x", "parameters": {"typical_p": 1.5}})", "`typical_p` must be > 0.0 and < 1.0"},
           {R"({"inputs": "x", "parameters": {"typical_p": 0.5}})", "typical sampling is not served"},
           {R"({"inputs": "x", "parameters": {"top_k": 0}})", "`top_k` must be strictly positive"},
           {R"({"inputs": "x", "parameters": {"max_new_tokens": 0}})", "`max_new_tokens` must be strictly positive"},
           {R"({"inputs": "x", "parameters": {"top_n_tokens": 6}})", "`top_n_tokens` must be >= 0 and <= 5. Given: 6"},
           {R"({"inputs": "x", "parameters": {"truncate": 0}})", "`truncate` must be strictly positive"},
           {R"({"inputs": "x", "parameters": {"best_of": 2}})", "you must use sampling when `best_of` is > 1"},
           {R"({"inputs": "x", "parameters": {"best_of": 2, "do_sample": true, "seed": 1}})",
            "`seed` must not be set when `best_of` > 1"},
           {R"({"inputs": "x", "parameters": {"best_of": 9, "do_sample": true}})", "`best_of` must be > 0 and <= 8. Given: 9"},
           {R"({"inputs": "x", "parameters": {"watermark": true}})", "`watermark`"},
           {R"({"inputs": "x", "parameters": {"adapter_id": "lora"}})", "`adapter_id`"},
           {R"({"inputs": "x", "parameters": {"stop": "\n"}})", "`stop`"},
           {R"({"inputs": "x", "parameters": {"grammar": {"type": "xml", "value": "x"}}})", "grammar is not supported"},
           {R"({"inputs": "x", "parameters": {"do_sample": "yes"}})", "`do_sample`"},
           {R"({"inputs": "x", "parameters": 5})", "`parameters`"},
       }) {
    const TgiError e = Err(c.body);
    EXPECT_EQ(e.status, 422) << c.body;
    EXPECT_EQ(e.error_type, "validation") << c.body;
    EXPECT_EQ(e.error.rfind("Input validation error: ", 0), 0u) << e.error;
    EXPECT_NE(e.error.find(c.message), std::string::npos) << c.body << " -> " << e.error;
  }
  EXPECT_NE(Err(R"({"inputs": "x", "parameters": {"best_of": 2, "do_sample": true}})", TgiRoute::kGenerateStream)
                .error.find("`best_of` != 1 is not supported when streaming tokens"),
            std::string::npos);
  EXPECT_EQ(Ok({{"inputs", "x"}, {"parameters", {{"best_of", 3}, {"temperature", 0.5}}}}).best_of, 3u);
  EXPECT_EQ(Ok({{"inputs", "x"}}).best_of, 1u);
  const TgiError streamed = Err(R"({"inputs": "x", "parameters": {"decoder_input_details": true}})", TgiRoute::kGenerateStream);
  EXPECT_NE(streamed.error.find("`decoder_input_details` == true is not supported when streaming tokens"), std::string::npos);
  EXPECT_EQ(Err("{not json").status, 400);
  const json body = Err(R"({"inputs": ""})").ToJson();
  EXPECT_EQ(body.size(), 2u);
  EXPECT_TRUE(body.contains("error") && body.contains("error_type"));
}

TEST(TgiProtocolTest, CoordinatorErrorsTakeTgisKinds) {
  EXPECT_EQ(TgiErrorFromGrpc(static_cast<int>(absl::StatusCode::kInvalidArgument), "too long").status, 422);
  EXPECT_EQ(TgiErrorFromGrpc(static_cast<int>(absl::StatusCode::kInvalidArgument), "too long").error, "Input validation error: too long");
  const TgiError busy = TgiErrorFromGrpc(static_cast<int>(absl::StatusCode::kResourceExhausted), "queue full");
  EXPECT_EQ(busy.status, 429);
  EXPECT_EQ(busy.error_type, "overloaded");
  const TgiError lost = TgiErrorFromGrpc(static_cast<int>(absl::StatusCode::kUnavailable), "rank 1 lost");
  EXPECT_EQ(lost.status, 424);
  EXPECT_EQ(lost.error_type, "generation");
  EXPECT_EQ(TgiErrorFromHttp(499, "gone").status, 499);  // a client that left
  EXPECT_EQ(TgiErrorFromHttp(499, "gone").error_type, "cancelled");
  // The front's own refusals: validation (400), kept statuses (405, 413); a stopping front (503) as a
  // lost cluster (UNAVAILABLE) is answered.
  EXPECT_EQ(TgiErrorFromHttp(400, "bad").status, 422);
  EXPECT_EQ(TgiErrorFromHttp(400, "bad").error, "Input validation error: bad");
  EXPECT_EQ(TgiErrorFromHttp(413, "too big").status, 413);
  EXPECT_EQ(TgiErrorFromHttp(413, "too big").error_type, "validation");
  EXPECT_EQ(TgiErrorFromHttp(405, "use POST").status, 405);
  const TgiError stopping = TgiErrorFromHttp(503, "the server is stopping");
  EXPECT_EQ(stopping.status, lost.status);
  EXPECT_EQ(stopping.error_type, lost.error_type);
  EXPECT_EQ(TgiErrorFromHttp(500, "boom").status, 424);
  EXPECT_EQ(TgiFinishReason(v1::FINISH_REASON_STOP), "eos_token");
  EXPECT_EQ(TgiFinishReason(v1::FINISH_REASON_STOP_SEQUENCE), "stop_sequence");
  EXPECT_EQ(TgiFinishReason(v1::FINISH_REASON_LENGTH), "length");
}

// /tokenize: the inputs with offsets asked for, special tokens parsed, BOS and EOS as asked, the
// parameters not read (TGI's own ignores truncate there); the answer's places are bytes (TGI's) and
// its text those bytes (here with two- and four-byte characters).
TEST(TgiProtocolTest, TokenizeTakesTheInputsAndAnswersEachTokensBytes) {
  auto call = std::get<TgiTokenizeCall>(ParseTgiTokenizeRequest(R"({"inputs": "é𝄞x", "parameters": {"truncate": 2}})"));
  EXPECT_EQ(call.request.text(), "é𝄞x");
  EXPECT_TRUE(call.request.parse_special_tokens());
  EXPECT_TRUE(call.request.return_offsets());
  EXPECT_FALSE(call.request.has_add_bos() || call.request.has_add_eos()) << "add_special_tokens defaults to true: the config's";
  call = std::get<TgiTokenizeCall>(ParseTgiTokenizeRequest(R"({"inputs": "", "add_special_tokens": false})"));
  EXPECT_TRUE(call.request.has_add_bos() && !call.request.add_bos());
  EXPECT_TRUE(call.request.has_add_eos() && !call.request.add_eos());
  for (const char* bad : {R"({"inputs": 1})", R"({"inputs": "x", "parameters": 3})", R"({"inputs": "x", "add_special_tokens": 1})",
                          R"({"parameters": {}})", "[]"}) {
    auto e = ParseTgiTokenizeRequest(bad);
    ASSERT_TRUE(std::holds_alternative<TgiError>(e)) << bad;
    EXPECT_EQ(std::get<TgiError>(e).error_type, "validation") << bad;
  }

  v1::TokenizeResponse r;  // BOS, then "é" + "𝄞" as one token's bytes [0, 6), then "x"
  for (auto [id, start, end] : {std::tuple{1, 0, 0}, {7, 0, 6}, {8, 6, 7}}) {
    r.add_token_ids(id);
    v1::ByteSpan* o = r.add_offsets();
    o->set_start(start);
    o->set_end(end);
  }
  EXPECT_EQ(TgiTokenizeAnswer("é𝄞x", r), json::parse(R"([{"id": 1, "text": "", "start": 0, "stop": 0},
      {"id": 7, "text": "é𝄞", "start": 0, "stop": 6}, {"id": 8, "text": "x", "start": 6, "stop": 7}])"));
  r.mutable_offsets(2)->set_end(99);  // past the text: clamped to it
  EXPECT_EQ(TgiTokenizeAnswer("é𝄞x", r)[2], json::parse(R"({"id": 8, "text": "x", "start": 6, "stop": 7})"));
  r.clear_offsets();  // no offsets: TGI's answer for such a tokenizer
  EXPECT_EQ(TgiTokenizeAnswer("é𝄞x", r)[2], json::parse(R"({"id": 8, "text": "", "start": 0, "stop": 0})"));
}

// Bodies with any field of any type, at any depth, on every route (and /tokenize's reading of
// them): parsed, or refused with TGI's 422 and a message of its kind; never an exception (this test
// also runs under AddressSanitizer and UBSan).
TEST(TgiProtocolTest, BodiesWithFieldsOfEveryTypeAreParsedOrRefused) {
  const std::vector<json> bodies = {
      {{"inputs", "x"}},
      {{"inputs", "x"}, {"parameters", {{"max_new_tokens", 5}, {"temperature", 0.5}, {"top_k", 3}, {"top_p", 0.9},
                                        {"repetition_penalty", 1.1}, {"stop", {"a"}}, {"seed", 3}, {"details", true},
                                        {"decoder_input_details", true}, {"top_n_tokens", 2}, {"return_full_text", true}}}},
      {{"inputs", "x"}, {"stream", true}, {"parameters", {{"do_sample", true}, {"best_of", 2}, {"truncate", 4},
                                                          {"frequency_penalty", 0.5}, {"grammar", {{"type", "json"},
                                                          {"value", {{"type", "object"}}}}}}}},
      {{"inputs", "x"}, {"parameters", {{"grammar", {{"type", "regex"}, {"value", "[a-z]+"}}}, {"max_new_tokens", nullptr}}}}};
  static const char* const kKeys[] = {"inputs", "parameters", "stream", "max_new_tokens", "temperature", "top_p",
                                      "best_of", "do_sample", "stop", "grammar", "type", "value", "seed", "truncate",
                                      "top_n_tokens", "details", "watermark", "typical_p", "adapter_id"};
  std::mt19937 rng(11);
  const moe::testing::MutationCounts counts =
      moe::testing::ParseMutatedBodies(bodies, kKeys, rng, 3000, [](const json&, const std::string& text, std::mt19937& r) {
        const TgiRoute route = std::vector<TgiRoute>{TgiRoute::kGenerate, TgiRoute::kGenerateStream, TgiRoute::kCompat}[r() % 3];
        const std::variant<TgiCall, TgiError> got = ParseTgiRequest(text, route);
        const std::variant<TgiTokenizeCall, TgiError> tokenize = ParseTgiTokenizeRequest(text);  // /tokenize's reading
        if (const TgiError* t = std::get_if<TgiError>(&tokenize)) {
          EXPECT_EQ(t->error_type, "validation") << text;
        }
        const TgiError* e = std::get_if<TgiError>(&got);
        if (e == nullptr) return true;
        EXPECT_EQ(e->status, 422) << text;
        EXPECT_EQ(e->error_type, "validation") << text;
        EXPECT_FALSE(e->error.empty()) << text;
        return false;
      });
  EXPECT_GT(counts.parsed, 300);
  EXPECT_GT(counts.refused, 300);
}

}  // namespace
}  // namespace moe::openai
