// The HTTP front's request metrics (coordinator/openai/http_metrics.h) against what vLLM's API
// server exposes through prometheus-fastapi-instrumentator: the route templates as handlers, "none"
// for unknown paths, status classes, vLLM's excluded routes, and the histograms' cumulative buckets
// worked out by hand, the size summaries.
#include "coordinator/openai/http_metrics.h"

#include <gtest/gtest.h>

#include <string>

namespace moe::openai {
namespace {

// What moe-openai-server serves exactly (its route list), as the server hands it over.
HttpMetrics ServerMetrics() {
  return HttpMetrics({"/v1/completions", "/v1/chat/completions", "/v1/responses", "/invocations", "/tokenize",
                      "/detokenize", "/v1/models", "/health", "/ping", "/version", "/metrics", "/generate",
                      "/generate_stream", "/info", "/chat_tokenize", "/"});
}

TEST(HttpMetricsTest, HandlersAreRouteTemplates) {
  const HttpMetrics m = ServerMetrics();
  EXPECT_EQ(m.Handler("/v1/completions"), "/v1/completions");
  EXPECT_EQ(m.Handler("/generate_stream"), "/generate_stream");
  EXPECT_EQ(m.Handler("/"), "/");
  EXPECT_EQ(m.Handler("/v1/responses/resp_1"), "/v1/responses/{response_id}");
  EXPECT_EQ(m.Handler("/v1/responses/resp_1/cancel"), "/v1/responses/{response_id}/cancel");
  EXPECT_EQ(m.Handler("/v1/responses/resp_1/input_items"), "/v1/responses/{response_id}/input_items");
  EXPECT_EQ(m.Handler("/v1/models/org/model"), "/v1/models/{model}");
  EXPECT_EQ(m.Handler("/v1/responses/resp_1/other"), "none");
  EXPECT_EQ(m.Handler("/v1/responses/"), "none");
  EXPECT_EQ(m.Handler("/v1/completionsX"), "none");
  EXPECT_EQ(m.Handler("/nope"), "none");
  for (const char* excluded : {"/metrics", "/health", "/ping", "/version"}) {
    EXPECT_EQ(m.Handler(excluded), "") << excluded;
  }
}

TEST(HttpMetricsTest, RendersCountersAndCumulativeHistograms) {
  HttpMetrics m = ServerMetrics();
  EXPECT_EQ(m.Render(), "") << "nothing before a first request";
  m.Observe("/metrics", "GET", 200, 0.001);  // not counted, as vLLM's
  EXPECT_EQ(m.Render(), "");
  m.Observe("/v1/completions", "POST", 200, 0.3);
  m.Observe("/v1/completions", "POST", 400, 0.002);
  m.Observe("/v1/completions", "POST", 200, 2.0);
  m.Observe("/nope", "GET", 404, 0.05);
  const std::string text = m.Render();
  const auto has = [&](const std::string& line) {
    EXPECT_NE(text.find(line + "\n"), std::string::npos) << line << "\nin:\n" << text;
  };
  has("# TYPE http_requests_total counter");
  has("http_requests_total{handler=\"/v1/completions\",method=\"POST\",status=\"2xx\"} 2");
  has("http_requests_total{handler=\"/v1/completions\",method=\"POST\",status=\"4xx\"} 1");
  has("http_requests_total{handler=\"none\",method=\"GET\",status=\"4xx\"} 1");
  has("# TYPE http_request_duration_seconds histogram");
  // 0.002 and 0.3 at or under 0.5; 2.0 only in +Inf.
  has("http_request_duration_seconds_bucket{handler=\"/v1/completions\",method=\"POST\",le=\"0.1\"} 1");
  has("http_request_duration_seconds_bucket{handler=\"/v1/completions\",method=\"POST\",le=\"0.5\"} 2");
  has("http_request_duration_seconds_bucket{handler=\"/v1/completions\",method=\"POST\",le=\"1.0\"} 2");
  has("http_request_duration_seconds_bucket{handler=\"/v1/completions\",method=\"POST\",le=\"+Inf\"} 3");
  has("http_request_duration_seconds_count{handler=\"/v1/completions\",method=\"POST\"} 3");
  has("http_request_duration_seconds_sum{handler=\"/v1/completions\",method=\"POST\"} 2.302");  // 0.3 + 0.002 + 2.0
  // All four requests counted here: 0.002 under 0.01, 0.05 at its bound, 0.3 under 0.5, 2 at its bound.
  has("# TYPE http_request_duration_highr_seconds histogram");
  has("http_request_duration_highr_seconds_bucket{le=\"0.01\"} 1");
  has("http_request_duration_highr_seconds_bucket{le=\"0.05\"} 2");
  has("http_request_duration_highr_seconds_bucket{le=\"0.25\"} 2");
  has("http_request_duration_highr_seconds_bucket{le=\"0.5\"} 3");
  has("http_request_duration_highr_seconds_bucket{le=\"2.0\"} 4");
  // The bounds as vLLM's Python client writes them ("10.0", not "1e+01").
  has("http_request_duration_highr_seconds_bucket{le=\"10.0\"} 4");
  has("http_request_duration_highr_seconds_bucket{le=\"30.0\"} 4");
  has("http_request_duration_highr_seconds_bucket{le=\"60.0\"} 4");
  has("http_request_duration_highr_seconds_bucket{le=\"+Inf\"} 4");
  has("http_request_duration_highr_seconds_count 4");
}

// The size summaries (the instrumentator's, no quantiles): per handler, the requests' and answers'
// Content-Length summed, 0 where there was none (a stream); the excluded routes not counted.
TEST(HttpMetricsTest, SizeSummariesSumTheContentLengths) {
  HttpMetrics m = ServerMetrics();
  m.Observe("/metrics", "GET", 200, 0.001, 0, 5000);
  m.Observe("/v1/completions", "POST", 200, 0.3, 120, 800);
  m.Observe("/v1/completions", "POST", 200, 0.4, 80, 0);  // a stream: no Content-Length
  m.Observe("/v1/models", "GET", 200, 0.01, 0, 300);
  const std::string text = m.Render();
  const auto has = [&](const std::string& line) {
    EXPECT_NE(text.find(line + "\n"), std::string::npos) << line << "\nin:\n" << text;
  };
  has("# TYPE http_request_size_bytes summary");
  has("http_request_size_bytes_count{handler=\"/v1/completions\"} 2");
  has("http_request_size_bytes_sum{handler=\"/v1/completions\"} 200.0");
  has("http_request_size_bytes_sum{handler=\"/v1/models\"} 0.0");
  has("# TYPE http_response_size_bytes summary");
  has("http_response_size_bytes_count{handler=\"/v1/completions\"} 2");
  has("http_response_size_bytes_sum{handler=\"/v1/completions\"} 800.0");
  has("http_response_size_bytes_sum{handler=\"/v1/models\"} 300.0");
  EXPECT_EQ(text.find("handler=\"/metrics\""), std::string::npos);
}

}  // namespace
}  // namespace moe::openai
