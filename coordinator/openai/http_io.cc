#include "coordinator/openai/http_io.h"

#include <algorithm>
#include <ctime>
#include <vector>

#include <civetweb.h>

#include "coordinator/openai/openai_server.h"

namespace moe::openai {

int64_t UnixNow() { return static_cast<int64_t>(std::time(nullptr)); }

std::string CorsHeaders(mg_connection* conn) {
  const auto* server = static_cast<const OpenAiServer*>(mg_get_user_data(mg_get_context(conn)));
  const std::vector<std::string>& allowed = server->allowed_origins();
  if (allowed.empty()) return {};
  if (std::find(allowed.begin(), allowed.end(), "*") != allowed.end()) return "Access-Control-Allow-Origin: *\r\n";
  const char* origin = mg_get_header(conn, "Origin");
  if (origin == nullptr || std::find(allowed.begin(), allowed.end(), origin) == allowed.end()) return {};
  return std::string("Access-Control-Allow-Origin: ") + origin + "\r\nVary: Origin\r\n";
}

const char* RequestIdHeader(mg_connection* conn) {
  const char* id = mg_get_header(conn, "X-Request-Id");
  if (id == nullptr || *id == '\0') return nullptr;
  for (const char* c = id; *c != '\0'; ++c) {
    const auto byte = static_cast<unsigned char>(*c);  // a byte past ASCII is not a header's either
    if (byte < 0x20 || byte >= 0x7f) return nullptr;
  }
  return id;
}

namespace {
thread_local HeadSent head_sent;  // civetweb serves a request on one thread
}  // namespace

HeadSent TakeHeadSent() { return std::exchange(head_sent, HeadSent{}); }

void NoteHeadSent(HeadSent head) { head_sent = head; }

void SendHead(mg_connection* conn, int status, const std::string& content_type, long long length,
              const std::string& extra_headers) {
  head_sent = {status, length};
  const std::string size = length >= 0 ? "Content-Length: " + std::to_string(length) + "\r\n" : "Cache-Control: no-cache\r\n";
  const char* id = RequestIdHeader(conn);
  const std::string echo = id != nullptr ? std::string("X-Request-Id: ") + id + "\r\n" : std::string();
  mg_printf(conn, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s%s%s%sConnection: close\r\n\r\n", status,
            mg_get_response_code_text(conn, status), content_type.c_str(), size.c_str(), CorsHeaders(conn).c_str(),
            echo.c_str(), extra_headers.c_str());
}

void SendJsonText(mg_connection* conn, int status, const std::string& body, const std::string& extra_headers) {
  SendHead(conn, status, "application/json", static_cast<long long>(body.size()), extra_headers);
  mg_write(conn, body.data(), body.size());
}

// Text from the request line (a path, an id or a query value, which error messages echo) is not
// checked for UTF-8 as bodies are by the JSON parser: its bad bytes are written as U+FFFD, where
// dump() would throw.
void SendJson(mg_connection* conn, int status, const nlohmann::json& j, const std::string& extra_headers) {
  SendJsonText(conn, status, j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), extra_headers);
}

bool SendEvent(mg_connection* conn, const std::string& data) {
  const std::string event = "data: " + data + "\n\n";
  return mg_write(conn, event.data(), event.size()) == static_cast<int>(event.size());
}

}  // namespace moe::openai
