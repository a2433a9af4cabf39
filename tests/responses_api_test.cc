// The Responses API's translation (coordinator/openai/responses_api.h): requests into the chat
// request they amount to (which the chat parser then accepts), refusals naming the field, chat
// errors renamed, whole answers into response objects and streamed chunks into OpenAI's event
// sequence (the shapes of OpenAI's API reference; the server's answers are checked end to end in
// e2e_openai_server_test.py).
#include "coordinator/openai/responses_api.h"
#include "coordinator/openai/response_store.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "tests/support/json_mutation.h"

namespace moe::openai {
namespace {

using nlohmann::json;
using ojson = nlohmann::ordered_json;

ResponsesCall Parse(const std::string& body) {
  std::variant<ResponsesCall, HttpError> r = ParseResponsesRequest(body);
  if (auto* e = std::get_if<HttpError>(&r)) ADD_FAILURE() << body << ": " << e->message;
  return std::get_if<ResponsesCall>(&r) != nullptr ? std::get<ResponsesCall>(r) : ResponsesCall{};
}

// The chat request a Responses request amounts to, with no previous response.
ojson ChatOf(const std::string& body) { return ojson::parse(ChatBody(Parse(body), ojson::array())); }

TEST(ResponsesApiTest, RequestsBecomeTheChatRequestTheyAmountTo) {
  const ResponsesCall call = Parse(R"({
    "model": "m", "instructions": "Be brief.",
    "input": [{"role": "developer", "content": "Rhyme."},
              {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
              {"role": "assistant", "content": [{"type": "output_text", "text": "c"}]},
              {"role": "user", "content": "d"}],
    "max_output_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 4, "seed": 3, "stop": ["x"],
    "text": {"format": {"type": "json_schema", "name": "o", "strict": true,
                        "schema": {"type": "object", "properties": {"z": {"type": "integer"}, "a": {"type": "string"}}}}},
    "include": ["message.output_text.logprobs"], "top_logprobs": 3, "stream": true,
    "store": true, "metadata": {"k": "v"}, "user": "u", "tools": [], "tool_choice": "auto", "truncation": "disabled",
    "background": false, "reasoning": null, "unknown_field": 1})");
  const ojson chat = ojson::parse(ChatBody(call, ojson::array()));
  EXPECT_EQ(chat["messages"], ojson::parse(R"([
    {"role": "system", "content": "Be brief."}, {"role": "system", "content": "Rhyme."},
    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "c"}]}, {"role": "user", "content": "d"}])"));
  EXPECT_EQ(chat["max_tokens"], 7);
  EXPECT_EQ(chat["temperature"], 0.5);
  EXPECT_EQ(chat["top_k"], 4);
  EXPECT_EQ(chat["stop"], ojson::array({"x"}));
  EXPECT_EQ(chat["logprobs"], true);
  EXPECT_EQ(chat["top_logprobs"], 3);
  EXPECT_EQ(chat["stream"], true);
  EXPECT_TRUE(call.stream);
  // The schema keeps its key order (the order the output writes its properties in).
  EXPECT_EQ(chat["response_format"].dump(),
            R"({"type":"json_schema","json_schema":{"name":"o","schema":{"type":"object","properties":{"z":{"type":"integer"},"a":{"type":"string"}}},"strict":true}})");
  for (const char* dropped : {"store", "metadata", "user", "tools", "tool_choice", "include", "text", "unknown_field"}) {
    EXPECT_FALSE(chat.contains(dropped)) << dropped;
  }
  // The chat parser takes it as it is.
  std::variant<ChatCall, HttpError> parsed = ParseChatRequest(ChatBody(call, ojson::array()), "m");
  ASSERT_TRUE(std::holds_alternative<ChatCall>(parsed)) << std::get<HttpError>(parsed).message;
  const CompletionCall& c = std::get<ChatCall>(parsed).completion;
  EXPECT_EQ(c.max_tokens, 7u);
  EXPECT_EQ(c.request.sampling().logprobs(), 3u);
  EXPECT_TRUE(c.logprobs);
  // The response object repeats the request's fields, OpenAI's defaults for the others; nothing is stored.
  EXPECT_EQ(call.echo["instructions"], "Be brief.");
  EXPECT_EQ(call.echo["max_output_tokens"], 7);
  EXPECT_EQ(call.echo["top_logprobs"], 3);
  EXPECT_EQ(call.echo["metadata"], ojson::parse(R"({"k": "v"})"));
  EXPECT_TRUE(call.store);
  EXPECT_FALSE(Parse(R"({"input": "x", "store": false})").store);
  EXPECT_EQ(call.echo["text"]["format"]["name"], "o");

  // Each response gets its own id: 32 hex digits.
  EXPECT_EQ(call.id.size(), 32u);
  EXPECT_EQ(call.id.find_first_not_of("0123456789abcdef"), std::string::npos);
  const ResponsesCall plain = Parse(R"({"input": "hi"})");
  EXPECT_NE(plain.id, call.id);
  const ojson plain_chat = ojson::parse(ChatBody(plain, ojson::array()));
  EXPECT_EQ(plain_chat, ojson::parse(R"({"messages": [{"role": "user", "content": "hi"}]})"));
  EXPECT_FALSE(plain.stream);
  EXPECT_EQ(plain.echo["temperature"], 1.0);
  EXPECT_EQ(plain.echo["top_p"], 1.0);
  EXPECT_EQ(plain.echo["instructions"], nullptr);
  EXPECT_EQ(plain.echo["text"], ojson::parse(R"({"format": {"type": "text"}})"));
  // json_object; plain text format adds nothing; top_logprobs without the include asks no logprobs (vLLM's).
  EXPECT_EQ(ChatOf(R"({"input": "x", "text": {"format": {"type": "json_object"}}})")["response_format"],
            ojson::parse(R"({"type": "json_object"})"));
  EXPECT_FALSE(ChatOf(R"({"input": "x", "text": {"format": {"type": "text"}}})").contains("response_format"));
  EXPECT_FALSE(ChatOf(R"({"input": "x", "top_logprobs": 2})").contains("logprobs"));
}

// Function tools in chat's shape; function_call and function_call_output items as the assistant's
// tool_calls turn (calls in a row: one turn) and tool turns.
TEST(ResponsesApiTest, FunctionToolsAndCallItemsBecomeChatTools) {
  const ResponsesCall call = Parse(R"({
    "input": [{"role": "user", "content": "Weather?"},
              {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\": \"Rome\"}"},
              {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}", "id": "fc_1", "status": "completed"},
              {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
              {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "noon"}]},
              {"role": "user", "content": "And?"}],
    "tools": [{"type": "function", "name": "get_weather", "description": "d", "strict": true,
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    "tool_choice": {"type": "function", "name": "get_weather"}, "parallel_tool_calls": false})");
  const ojson chat = ojson::parse(ChatBody(call, ojson::array()));
  EXPECT_EQ(chat["messages"], ojson::parse(R"([
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": null, "tool_calls": [
      {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}},
      {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "noon"}]},
    {"role": "user", "content": "And?"}])"));
  EXPECT_EQ(chat["tools"], ojson::parse(R"([{"type": "function", "function": {"name": "get_weather", "description": "d",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": true}}])"));
  EXPECT_EQ(chat["tool_choice"], ojson::parse(R"({"type": "function", "function": {"name": "get_weather"}})"));
  EXPECT_EQ(chat["parallel_tool_calls"], false);
  EXPECT_EQ(call.echo["tools"][0]["name"], "get_weather");
  EXPECT_EQ(call.echo["tool_choice"]["name"], "get_weather");
  EXPECT_EQ(call.echo["parallel_tool_calls"], false);
  // The chat parser takes the named choice (its calls' schema becomes the output's constraint).
  std::variant<ChatCall, HttpError> parsed = ParseChatRequest(ChatBody(call, ojson::array()), "m");
  ASSERT_TRUE(std::holds_alternative<ChatCall>(parsed)) << std::get<HttpError>(parsed).message;
  EXPECT_EQ(std::get<ChatCall>(parsed).completion.tool_choice.kind, ToolChoice::Kind::kNamed);
  // "required" and "auto" pass as they are; with no tools a choice string adds nothing.
  EXPECT_EQ(ChatOf(R"({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": "required"})")["tool_choice"],
            "required");
  EXPECT_FALSE(ChatOf(R"({"input": "x", "tool_choice": "auto", "tools": []})").contains("tool_choice"));
}

// A stored conversation goes between the instructions and the input; what is stored after a
// response is the history, the input and the output as the assistant's turn (no instructions).
TEST(ResponsesApiTest, PreviousResponsesConversationGoesBeforeTheInput) {
  const ResponsesCall call = Parse(R"({"instructions": "Be brief.", "input": "And now?", "previous_response_id": "resp_a"})");
  EXPECT_EQ(call.previous_response_id, "resp_a");
  EXPECT_EQ(call.echo["previous_response_id"], "resp_a");
  const ojson history = ojson::parse(R"([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])");
  EXPECT_EQ(ojson::parse(ChatBody(call, history))["messages"], ojson::parse(R"([
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "And now?"}])"));
  const ojson text = ojson::parse(R"({"output": [{"type": "message", "content": [{"type": "output_text", "text": "Soon."}]}]})");
  EXPECT_EQ(ConversationAfter(call, history, text), ojson::parse(R"([
    {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "And now?"},
    {"role": "assistant", "content": "Soon."}])"));
  const ojson calls = ojson::parse(R"({"output": [
    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "[]"}]})");
  EXPECT_EQ(ConversationAfter(call, ojson::array(), calls), ojson::parse(R"([
    {"role": "user", "content": "And now?"},
    {"role": "assistant", "content": null, "tool_calls": [
      {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
      {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "[]"}}]}])"));
}

TEST(ResponsesApiTest, WhatIsNotServedIsRefusedNamingTheField) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"([1])", ""},
      {R"({"input": "x", "tools": [{"type": "web_search"}]})", "tools[0].type"},
      {R"({"input": "x", "tools": [{"type": "function"}]})", "tools[0].name"},
      {R"({"input": "x", "tools": {"type": "function"}})", "tools"},
      {R"({"input": "x", "tool_choice": {"type": "allowed_tools"}})", "tool_choice"},
      {R"({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]})", "input[0].arguments"},
      {R"({"input": [{"type": "function_call_output", "output": "1"}]})", "input[0].call_id"},
      {R"({"input": [{"type": "function_call_output", "call_id": "c"}]})", "input[0].output"},
      {R"({"input": [{"type": "reasoning", "summary": []}]})", "input[0].type"},
      {R"({"input": "x", "previous_response_id": 5})", "previous_response_id"},
      {R"({"input": "x", "store": "yes"})", "store"},
      {R"({"input": "x", "conversation": "c"})", "conversation"},
      {R"({"input": "x", "background": true, "store": false})", "background"},
      {R"({"input": "x", "background": true, "stream": true})", "background"},
      {R"({"input": "x", "background": "yes"})", "background"},
      {R"({"input": "x", "truncation": "auto"})", "truncation"},
      {R"({"input": "x", "prompt": {"id": "p"}})", "prompt"},
      {R"({"input": "x", "top_logprobs": 21})", "top_logprobs"},
      {R"({"input": "x", "include": "message.output_text.logprobs"})", "include"},
      {R"({"input": "x", "stream": "yes"})", "stream"},
      {R"({"input": "x", "instructions": 3})", "instructions"},
      {R"({})", "input"},
      {R"({"input": []})", "input"},
      {R"({"input": 5})", "input"},
      {R"({"input": ["x"]})", "input[0]"},
      {R"({"input": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]})", "input[1].role"},
      {R"({"input": [{"role": "user"}]})", "input[0].content"},
      {R"({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]})", "input[0].content[0].type"},
      {R"({"input": [{"role": "user", "content": [{"type": "input_text"}]}]})", "input[0].content[0].text"},
      {R"({"input": "x", "text": {"format": {"type": "grammar"}}})", "text.format.type"},
      {R"({"input": "x", "text": 1})", "text"},
  };
  for (const auto& [body, param] : cases) {
    std::variant<ResponsesCall, HttpError> r = ParseResponsesRequest(body);
    ASSERT_TRUE(std::holds_alternative<HttpError>(r)) << body;
    const HttpError& e = std::get<HttpError>(r);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param.value_or(""), param) << body << ": " << e.message;
    if (!param.empty()) {
      EXPECT_EQ(e.message.rfind(param + ": ", 0), 0u) << e.message;
    }
  }
}

TEST(ResponsesApiTest, ChatErrorsNameTheResponsesField) {
  EXPECT_EQ(ResponsesError(BadParam("max_tokens", "must be in [1, 9]")).message, "max_output_tokens: must be in [1, 9]");
  EXPECT_EQ(ResponsesError(BadParam("max_tokens", "x")).param, "max_output_tokens");
  // A message's index counts the instructions' turn: the field is named, not a shifted index.
  const HttpError input = ResponsesError(BadParam("messages[2].content", "bad"));
  EXPECT_EQ(input.param, "input");
  EXPECT_EQ(input.message, "input: bad");
  EXPECT_EQ(ResponsesError(BadParam("response_format.json_schema", "no")).param, "text.format.json_schema");
  EXPECT_EQ(ResponsesError(BadParam("temperature", "no")).param, "temperature");
  const HttpError no_param = ResponsesError(HttpError{503, "stopping", "server_error", {}});
  EXPECT_EQ(no_param.status, 503);
  EXPECT_FALSE(no_param.param);
}

json ChatAnswer(const std::string& text, const std::string& finish, bool with_logprobs) {
  json choice = {{"index", 0}, {"message", {{"role", "assistant"}, {"content", text}}}, {"finish_reason", finish}};
  choice["logprobs"] = with_logprobs ? json::parse(R"({"content": [{"token": "a", "logprob": -0.5, "bytes": [97],
                                                      "top_logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97]}]}]})")
                                     : json(nullptr);
  return {{"id", "chatcmpl-req-7"}, {"object", "chat.completion"}, {"choices", json::array({choice})},
          {"usage", {{"prompt_tokens", 5}, {"completion_tokens", 3}, {"total_tokens", 8},
                     {"prompt_tokens_details", {{"cached_tokens", 2}}}}}};
}

TEST(ResponsesApiTest, WholeAnswersBecomeResponseObjects) {
  const ResponsesCall call = Parse(R"({"input": "x", "max_output_tokens": 3, "metadata": {"k": 1}})");
  const ojson r = ResponseFromChat(call, ChatAnswer("abc", "stop", true), "m", 100);
  EXPECT_EQ(r["id"], "resp_" + call.id);
  EXPECT_EQ(r["object"], "response");
  EXPECT_EQ(r["created_at"], 100);
  EXPECT_EQ(r["status"], "completed");
  EXPECT_EQ(r["incomplete_details"], nullptr);
  EXPECT_EQ(r["model"], "m");
  EXPECT_EQ(r["max_output_tokens"], 3);
  EXPECT_EQ(r["metadata"]["k"], 1);
  ASSERT_EQ(r["output"].size(), 1u);
  const ojson& item = r["output"][0];
  EXPECT_EQ(item["id"], "msg_" + call.id);
  EXPECT_EQ(item["type"], "message");
  EXPECT_EQ(item["role"], "assistant");
  EXPECT_EQ(item["status"], "completed");
  EXPECT_EQ(item["content"][0]["type"], "output_text");
  EXPECT_EQ(item["content"][0]["text"], "abc");
  EXPECT_EQ(item["content"][0]["annotations"], ojson::array());
  EXPECT_EQ(item["content"][0]["logprobs"][0]["token"], "a");
  EXPECT_EQ(item["content"][0]["logprobs"][0]["top_logprobs"][0]["logprob"], -0.5);
  EXPECT_EQ(r["usage"], ojson::parse(R"({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 2},
    "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8})"));

  // An answer of calls: a function_call item per call, no empty message.
  json calls = ChatAnswer("", "stop", false);
  calls["choices"][0]["message"]["tool_calls"] = json::parse(R"([
    {"id": "chatcmpl-tool-1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}},
    {"id": "chatcmpl-tool-2", "type": "function", "function": {"name": "g", "arguments": "{}"}}])");
  const ojson with_calls = ResponseFromChat(call, calls, "m", 100);
  ojson want = ojson::parse(R"([
    {"id": "", "type": "function_call", "status": "completed", "call_id": "chatcmpl-tool-1", "name": "f", "arguments": "{\"a\": 1}"},
    {"id": "", "type": "function_call", "status": "completed", "call_id": "chatcmpl-tool-2", "name": "g", "arguments": "{}"}])");
  want[0]["id"] = "fc_" + call.id + "_0";
  want[1]["id"] = "fc_" + call.id + "_1";
  EXPECT_EQ(with_calls["output"], want);

  const ojson cut = ResponseFromChat(call, ChatAnswer("ab", "length", false), "m", 100);
  EXPECT_EQ(cut["status"], "incomplete");
  EXPECT_EQ(cut["incomplete_details"], ojson::parse(R"({"reason": "max_output_tokens"})"));
  EXPECT_EQ(cut["output"][0]["status"], "incomplete");
  EXPECT_EQ(cut["output"][0]["content"][0]["logprobs"], ojson::array());
}

json Chunk(const json& delta, const json& finish = nullptr, const json& logprobs = nullptr) {
  return {{"id", "chatcmpl-req-9"}, {"object", "chat.completion.chunk"},
          {"choices", json::array({{{"index", 0}, {"delta", delta}, {"logprobs", logprobs}, {"finish_reason", finish}}})}};
}

std::vector<ojson> Feed(ResponsesEvents& events, const std::vector<json>& chunks) {
  std::vector<ojson> out;
  for (const json& c : chunks) {
    for (ojson& e : events.Chunk(c)) out.push_back(std::move(e));
  }
  return out;
}

std::vector<std::string> Types(const std::vector<ojson>& events) {
  std::vector<std::string> t;
  for (const ojson& e : events) t.push_back(e["type"].get<std::string>());
  return t;
}

TEST(ResponsesApiTest, StreamedChunksBecomeOpenAisEventSequence) {
  const ResponsesCall call = Parse(R"({"input": "x", "stream": true})");
  ResponsesEvents events(call, "m", 50);
  const json lp = json::parse(R"({"content": [{"token": "He", "logprob": -1.0, "bytes": [72, 101], "top_logprobs": []}]})");
  std::vector<ojson> out = Feed(events, {Chunk({{"role", "assistant"}, {"content", ""}}), Chunk({{"content", "He"}}, nullptr, lp),
                                         Chunk({{"content", "llo"}}), Chunk(json::object(), "stop")});
  for (ojson& e : events.Finish(json{{"prompt_tokens", 4}, {"completion_tokens", 2}})) out.push_back(std::move(e));
  EXPECT_EQ(Types(out), (std::vector<std::string>{
                            "response.created", "response.in_progress", "response.output_item.added",
                            "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                            "response.output_text.done", "response.content_part.done", "response.output_item.done",
                            "response.completed"}));
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i]["sequence_number"], i);
  EXPECT_EQ(out[0]["response"]["status"], "in_progress");
  EXPECT_EQ(out[0]["response"]["id"], "resp_" + call.id);
  EXPECT_EQ(out[0]["response"]["output"], ojson::array());
  EXPECT_EQ(out[2]["item"]["id"], "msg_" + call.id);
  EXPECT_EQ(out[2]["item"]["status"], "in_progress");
  EXPECT_EQ(out[3]["part"]["text"], "");
  EXPECT_EQ(out[4]["delta"], "He");
  EXPECT_EQ(out[4]["item_id"], "msg_" + call.id);
  EXPECT_EQ(out[4]["logprobs"][0]["token"], "He");
  EXPECT_EQ(out[5]["delta"], "llo");
  EXPECT_EQ(out[6]["text"], "Hello");
  EXPECT_EQ(out[7]["part"]["text"], "Hello");
  EXPECT_EQ(out[8]["item"]["status"], "completed");
  const ojson& done = out[9]["response"];
  EXPECT_EQ(done["status"], "completed");
  EXPECT_EQ(done["output"][0]["content"][0]["text"], "Hello");
  EXPECT_EQ(done["output"][0]["content"][0]["logprobs"].size(), 1u);
  EXPECT_EQ(done["usage"]["input_tokens"], 4);
  EXPECT_EQ(done["usage"]["output_tokens"], 2);
  EXPECT_EQ(done["usage"]["total_tokens"], 6);

  // Cut by max_output_tokens: incomplete. An answer with no text still opens its message.
  ResponsesEvents cut(call, "m", 50);
  std::vector<ojson> c = Feed(cut, {Chunk({{"role", "assistant"}, {"content", ""}}), Chunk(json::object(), "length")});
  for (ojson& e : cut.Finish(json{{"prompt_tokens", 4}, {"completion_tokens", 0}})) c.push_back(std::move(e));
  EXPECT_EQ(Types(c).back(), "response.incomplete");
  EXPECT_EQ(c.back()["response"]["incomplete_details"]["reason"], "max_output_tokens");
  EXPECT_EQ(c.back()["response"]["output"][0]["content"][0]["text"], "");
  EXPECT_EQ(Types(c)[2], "response.output_item.added");

  // Tool calls: each call's item added with its name, its arguments as deltas, then done item by item.
  ResponsesEvents tools(call, "m", 50);
  std::vector<ojson> t = Feed(tools, {
      Chunk({{"role", "assistant"}, {"content", ""}}),
      Chunk(json::parse(R"({"tool_calls": [{"index": 0, "id": "chatcmpl-tool-a", "type": "function", "function": {"name": "f", "arguments": ""}}]})")),
      Chunk(json::parse(R"({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]})")),
      Chunk(json::parse(R"({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}, {"index": 1, "id": "chatcmpl-tool-b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]})")),
      Chunk(json::object(), "tool_calls")});
  for (ojson& e : tools.Finish(json{{"prompt_tokens", 4}, {"completion_tokens", 9}})) t.push_back(std::move(e));
  EXPECT_EQ(Types(t), (std::vector<std::string>{
                          "response.created", "response.in_progress", "response.output_item.added",
                          "response.function_call_arguments.delta", "response.function_call_arguments.delta",
                          "response.output_item.added", "response.function_call_arguments.delta",
                          "response.function_call_arguments.done", "response.output_item.done",
                          "response.function_call_arguments.done", "response.output_item.done", "response.completed"}));
  ojson item = ojson::parse(R"({"id": "", "type": "function_call", "status": "in_progress",
    "call_id": "chatcmpl-tool-a", "name": "f", "arguments": ""})");
  item["id"] = "fc_" + call.id + "_0";
  EXPECT_EQ(t[2]["item"], item);
  EXPECT_EQ(t[4]["delta"], " 1}");
  EXPECT_EQ(t[5]["output_index"], 1);
  EXPECT_EQ(t[7]["arguments"], "{\"a\": 1}");
  EXPECT_EQ(t[7]["name"], "f");
  EXPECT_EQ(t[10]["item"]["arguments"], "{}");
  EXPECT_EQ(t.back()["response"]["status"], "completed");
  EXPECT_EQ(t.back()["response"]["output"].size(), 2u);
  EXPECT_EQ(t.back()["response"]["output"][0]["arguments"], "{\"a\": 1}");

  // A failure after the start: response.failed with the error.
  ResponsesEvents failing(call, "m", 50);
  std::vector<ojson> f = Feed(failing, {Chunk({{"role", "assistant"}, {"content", ""}})});
  const std::vector<ojson> failed = failing.Failed(HttpError{503, "lost rank 1", "server_error", {}});
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0]["type"], "response.failed");
  EXPECT_EQ(failed[0]["sequence_number"], f.size());
  EXPECT_EQ(failed[0]["response"]["status"], "failed");
  EXPECT_EQ(failed[0]["response"]["error"], ojson::parse(R"({"code": "server_error", "message": "lost rank 1"})"));
}

// The store keeps the most recently used responses up to its capacity; capacity 0 keeps none.
// Background mode: the response before its answer ("queued", "in_progress"), and instead of one
// ("cancelled"; "failed" with OpenAI's error object), in the answer's shape, marked background.
TEST(ResponsesApiTest, BackgroundResponsesHaveTheirStates) {
  const ResponsesCall call = Parse(R"({"input": "x", "background": true, "metadata": {"k": 1}})");
  EXPECT_TRUE(call.background);
  EXPECT_FALSE(Parse(R"({"input": "x"})").background);
  for (const char* status : {"queued", "in_progress", "cancelled"}) {
    const ojson r = ResponseWithStatus(call, "m", 100, status);
    EXPECT_EQ(r["id"], "resp_" + call.id);
    EXPECT_EQ(r["status"], status);
    EXPECT_EQ(r["background"], true);
    EXPECT_EQ(r["output"], ojson::array());
    EXPECT_EQ(r["error"], nullptr);
    EXPECT_EQ(r["metadata"]["k"], 1);
  }
  const HttpError lost{503, "the cluster has no ranks", "server_error", {}};
  const ojson failed = ResponseWithStatus(call, "m", 100, "failed", &lost);
  EXPECT_EQ(failed["error"], (ojson{{"code", "server_error"}, {"message", "the cluster has no ranks"}}));
  EXPECT_EQ(ResponseFromChat(call, ChatAnswer("abc", "stop", true), "m", 100)["background"], true);
}

// The input as GET /v1/responses/{id}/input_items lists it: every item with an id (given ones
// kept), text content as parts; pages by limit, order and after, refusals naming the parameter.
TEST(ResponsesApiTest, InputItemsAreListedInPages) {
  const ResponsesCall text = Parse(R"({"input": "hi"})");
  ASSERT_EQ(text.input_items.size(), 1u);
  EXPECT_EQ(text.input_items[0].dump(),
            ojson({{"id", "msg_" + text.id + "_in0"}, {"type", "message"}, {"role", "user"},
                   {"content", ojson::array({{{"type", "input_text"}, {"text", "hi"}}})}})
                .dump());
  const ResponsesCall items = Parse(R"({"input": [
      {"role": "user", "content": "what is 2 + 2?"},
      {"type": "function_call", "call_id": "c1", "name": "add", "arguments": "{}", "id": "fc_given"},
      {"type": "function_call_output", "call_id": "c1", "output": "4"},
      {"type": "message", "role": "assistant", "content": "4."},
      {"role": "user", "content": [{"type": "input_text", "text": "thanks"}]}]})");
  const ojson& all = items.input_items;
  ASSERT_EQ(all.size(), 5u);
  EXPECT_EQ(all[0]["id"], "msg_" + items.id + "_in0");
  EXPECT_EQ(all[0]["content"][0]["type"], "input_text");
  EXPECT_EQ(all[1]["id"], "fc_given");
  EXPECT_EQ(all[1]["arguments"], "{}");
  EXPECT_EQ(all[2]["id"], "fco_" + items.id + "_in2");
  EXPECT_EQ(all[2]["output"], "4");
  EXPECT_EQ(all[3]["content"][0]["type"], "output_text");  // the assistant's words
  EXPECT_EQ(all[4]["content"], ojson::parse(R"([{"type": "input_text", "text": "thanks"}])"));

  const auto page = [&](InputItemsQuery q) {
    std::variant<ojson, HttpError> r = InputItemsPage(all, q);
    if (auto* e = std::get_if<HttpError>(&r)) ADD_FAILURE() << e->message;
    return std::get_if<ojson>(&r) != nullptr ? std::get<ojson>(r) : ojson();
  };
  const auto ids = [](const ojson& p) {
    std::vector<std::string> out;
    for (const ojson& item : p["data"]) out.push_back(item["id"].get<std::string>());
    return out;
  };
  const ojson newest_first = page({});
  EXPECT_EQ(newest_first["object"], "list");
  EXPECT_EQ(ids(newest_first).front(), all[4]["id"]);
  EXPECT_EQ(ids(newest_first).size(), 5u);
  EXPECT_EQ(newest_first["first_id"], all[4]["id"]);
  EXPECT_EQ(newest_first["last_id"], all[0]["id"]);
  EXPECT_FALSE(newest_first["has_more"].get<bool>());
  const ojson first_two = page({"2", "asc", std::nullopt});
  EXPECT_EQ(ids(first_two), (std::vector<std::string>{all[0]["id"], all[1]["id"]}));
  EXPECT_TRUE(first_two["has_more"].get<bool>());
  const ojson next = page({"2", "asc", first_two["last_id"].get<std::string>()});
  EXPECT_EQ(ids(next), (std::vector<std::string>{all[2]["id"], all[3]["id"]}));
  const ojson last = page({"2", "asc", next["last_id"].get<std::string>()});
  EXPECT_EQ(ids(last), (std::vector<std::string>{all[4]["id"]}));
  EXPECT_FALSE(last["has_more"].get<bool>());
  const ojson none = page({std::nullopt, "desc", all[0]["id"].get<std::string>()});  // nothing after the oldest
  EXPECT_TRUE(none["data"].empty());
  EXPECT_TRUE(none["first_id"].is_null());

  // Each id names one item: a request giving one twice is refused, naming the second.
  std::variant<ResponsesCall, HttpError> twice = ParseResponsesRequest(
      R"({"input": [{"role": "user", "content": "a", "id": "m1"}, {"role": "user", "content": "b", "id": "m1"}]})");
  ASSERT_TRUE(std::holds_alternative<HttpError>(twice));
  EXPECT_EQ(std::get<HttpError>(twice).param, "input[1].id");

  for (const auto& [q, param] : std::vector<std::pair<InputItemsQuery, std::string>>{
           {{"0", std::nullopt, std::nullopt}, "limit"}, {{"101", std::nullopt, std::nullopt}, "limit"},
           {{"x", std::nullopt, std::nullopt}, "limit"}, {{std::nullopt, "up", std::nullopt}, "order"},
           {{std::nullopt, std::nullopt, "msg_nope"}, "after"}}) {
    std::variant<ojson, HttpError> r = InputItemsPage(all, q);
    ASSERT_TRUE(std::holds_alternative<HttpError>(r)) << param;
    EXPECT_EQ(std::get<HttpError>(r).status, 400);
    EXPECT_EQ(std::get<HttpError>(r).param, param);
  }
}

TEST(ResponsesApiTest, StoreDropsTheLeastRecentlyUsedPastItsCapacity) {
  ResponseStore store(2);
  auto put = [&](const std::string& id) { store.Put(id, StoredResponse{ojson{{"id", id}}, ojson::array(), ojson::array()}); };
  put("a");
  put("b");
  ASSERT_TRUE(store.Get("a"));  // a is now the most recently used
  put("c");                      // drops b
  EXPECT_FALSE(store.Get("b"));
  EXPECT_EQ(store.Get("a")->response["id"], "a");
  EXPECT_EQ(store.Get("c")->response["id"], "c");
  EXPECT_EQ(store.size(), 2u);
  put("c");  // again: replaced, not doubled
  EXPECT_EQ(store.size(), 2u);
  EXPECT_TRUE(store.Erase("a"));
  EXPECT_FALSE(store.Erase("a"));
  EXPECT_FALSE(store.Get("a"));
  ResponseStore none(0);
  none.Put("x", StoredResponse{});
  EXPECT_FALSE(none.Get("x"));
}

// Bodies with any field of any type, at any depth: refused with a 400 (404 for another model)
// naming a field, or translated into a chat request that the chat parser then parses or refuses
// the same way; never an exception (this test also runs under AddressSanitizer and UBSan).
TEST(ResponsesApiTest, BodiesWithFieldsOfEveryTypeAreTranslatedOrRefused) {
  const json tool = {{"type", "function"}, {"name", "f"}, {"parameters", {{"type", "object"}}}};
  const std::vector<json> bodies = {
      {{"model", "m"}, {"input", "hi"}},
      {{"input", "hi"}, {"instructions", "be brief"}, {"max_output_tokens", 5}, {"temperature", 0.5}, {"top_p", 0.9},
       {"store", false}, {"stream", true}},
      {{"input", {{{"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "q"}}}}},
                  {{"type", "function_call"}, {"call_id", "c"}, {"name", "f"}, {"arguments", "{}"}},
                  {{"type", "function_call_output"}, {"call_id", "c"}, {"output", "4"}}}},
       {"tools", {tool}}, {"tool_choice", "auto"}},
      {{"input", "x"}, {"text", {{"format", {{"type", "json_schema"}, {"name", "s"}, {"schema", {{"type", "integer"}}}}}}},
       {"background", true}, {"previous_response_id", "resp_1"}}};
  static const char* const kKeys[] = {"input", "instructions", "model", "tools", "tool_choice", "text", "format",
                                      "content", "role", "type", "max_output_tokens", "stream", "background",
                                      "previous_response_id", "reasoning", "include", "metadata"};
  std::mt19937 rng(13);
  const moe::testing::MutationCounts counts =
      moe::testing::ParseMutatedBodies(bodies, kKeys, rng, 3000, [](const json&, const std::string& text, std::mt19937&) {
        std::optional<HttpError> error;
        std::variant<ResponsesCall, HttpError> r = ParseResponsesRequest(text);
        if (auto* e = std::get_if<HttpError>(&r)) {
          error = *e;
        } else {
          auto chat = ParseChatRequest(ChatBody(std::get<ResponsesCall>(r), ojson::array()), "m");
          if (auto* e = std::get_if<HttpError>(&chat)) error = *e;
        }
        if (!error) return true;
        EXPECT_TRUE(error->status == 400 || error->status == 404) << error->status << " " << text;
        EXPECT_FALSE(error->message.empty()) << text;
        return false;
      });
  EXPECT_GT(counts.parsed, 300);  // translated, and the chat request taken
  EXPECT_GT(counts.refused, 300);
}

}  // namespace
}  // namespace moe::openai
