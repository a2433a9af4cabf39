// Fuzz target: an HTTP request body as moe-openai-server parses it, on every route that takes one:
// OpenAI completions, chat completions (then the conversation through Mixtral-8x7B-Instruct's chat
// template, as PrepareChat renders it), the Responses API (then the chat request it amounts to), TGI's
// three generate routes and tokenize. The first byte picks the route, the rest is the body. Bad bodies must
// be a 400 naming what is wrong, never a crash, an exception that escapes or memory corruption.
#include <cstdint>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <variant>

#include "coordinator/openai/chat_prompt.h"
#include "coordinator/openai/openai_protocol.h"
#include "coordinator/openai/responses_api.h"
#include "coordinator/openai/tgi_protocol.h"

namespace {

using namespace moe::openai;

const ChatPrompt* MixtralTemplate() {
  static const ChatPrompt* prompt = []() -> const ChatPrompt* {
    std::ifstream in(std::string(MOE_SOURCE_DIR) + "/tests/data/chat_templates/mistralai-Mixtral-8x7B-Instruct-v0.1.jinja");
    const std::string source((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    absl::StatusOr<ChatPrompt> p = ChatPrompt::Make(source, "<s>", "</s>");
    if (!p.ok()) std::abort();  // the harness's own data: a broken checkout
    return new ChatPrompt(*std::move(p));
  }();
  return prompt;
}

void Chat(const std::string& body) {
  std::variant<ChatCall, HttpError> chat = ParseChatRequest(body, ServedModel("m"), /*auto_marker_id=*/5);
  if (auto* call = std::get_if<ChatCall>(&chat)) {
    if (!call->chat_template) (void)MixtralTemplate()->Render(*call);  // a request's own needs a trust flag
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > 64 * 1024) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 7) {
    case 0:
      (void)ParseCompletionRequest(body, ServedModel("m"));
      break;
    case 1:
      Chat(body);
      break;
    case 2: {
      std::variant<ResponsesCall, HttpError> r = ParseResponsesRequest(body);
      if (auto* call = std::get_if<ResponsesCall>(&r)) Chat(ChatBody(*call, nlohmann::ordered_json::array()));
      break;
    }
    case 3:
      (void)ParseTgiRequest(body, TgiRoute::kGenerate);
      break;
    case 4:
      (void)ParseTgiRequest(body, TgiRoute::kCompat);
      break;
    case 5:
      (void)ParseTgiTokenizeRequest(body);
      break;
    default:
      (void)ParseTgiRequest(body, TgiRoute::kGenerateStream);
      break;
  }
  return 0;
}
