// Writing answers on a civetweb connection, as every endpoint of moe-openai-server writes them: the
// status line and headers (CORS and the request's X-Request-Id echoed), JSON bodies and server-sent
// events.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

struct mg_connection;

namespace moe::openai {

int64_t UnixNow();

// CORS (--allowed-origins): the header that lets a browser page of the request's Origin read the
// answer ("*": any page), or nothing.
std::string CorsHeaders(mg_connection* conn);

// The request's X-Request-Id header (vLLM's: it names the request, and comes back on the answer), or
// null. One with bytes a header cannot carry back counts as none; its length the coordinator checks.
const char* RequestIdHeader(mg_connection* conn);

// The status line and headers of every answer: `length` < 0 for a stream (server-sent events);
// `extra_headers` ("Name: value\r\n" each) beside the usual ones.
void SendHead(mg_connection* conn, int status, const std::string& content_type, long long length,
              const std::string& extra_headers = "");

// The status and Content-Length (-1: none, a stream) of the answer this thread last began with
// SendHead (or NoteHeadSent), then forgotten: status 0 when none was sent since the last call.
// civetweb knows only the status a handler returns, not what an authorization hook sent, nor the
// answer's size (HttpMetrics counts by this). A handler that runs on a thread of its own
// (ServePost's big stack) hands it back to civetweb's thread with NoteHeadSent.
struct HeadSent {
  int status = 0;
  long long length = -1;
};
HeadSent TakeHeadSent();
// For an answer written without SendHead (the CORS preflight's), or on another thread.
void NoteHeadSent(HeadSent head);

// A JSON answer already written out (an ordered_json's, which keeps OpenAI's field order).
void SendJsonText(mg_connection* conn, int status, const std::string& body, const std::string& extra_headers = "");
void SendJson(mg_connection* conn, int status, const nlohmann::json& j, const std::string& extra_headers = "");

// One server-sent event ("data: ...", a blank line); false when the client has gone.
bool SendEvent(mg_connection* conn, const std::string& data);

}  // namespace moe::openai
