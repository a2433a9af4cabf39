// The HTTP front's own request metrics, under the names vLLM's API server exposes them (its
// prometheus-fastapi-instrumentator defaults): http_requests_total{handler, method, status} with
// the status by class ("2xx", "4xx"), the http_request_duration_seconds{handler, method} histogram
// (buckets 0.1, 0.5, 1 s) and http_request_duration_highr_seconds (no labels, 0.01 to 60 s). They
// count what only the front sees: its own refusals (a body it cannot parse, a wrong method, the key
// check) beside the requests that reach the cluster, whose own metrics the coordinator serves.
// `handler` is the route's template ("/v1/completions", "/v1/responses/{response_id}"), "none"
// for a path no route serves; the routes vLLM leaves out (/metrics, /health, /ping, /version) are
// not counted. The request and response size summaries (http_request_size_bytes,
// http_response_size_bytes{handler}) take the Content-Length headers, 0 without one (a stream's
// answer), as the instrumentator does.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace moe::openai {

class HttpMetrics {
 public:
  // `routes`: the paths served exactly (the server's route list); /v1/responses/{response_id} and
  // its /cancel and /input_items are known here.
  explicit HttpMetrics(std::vector<std::string> routes) : routes_(std::move(routes)) {}

  // The handler label of a request path: its route's template, "none", or "" for a route not counted.
  std::string Handler(std::string_view path) const;

  // One finished request: its path, method, HTTP status, time from its first byte to its last, and
  // its and its answer's Content-Length (0 without one).
  void Observe(std::string_view path, std::string_view method, int status, double seconds, int64_t request_bytes = 0,
               int64_t response_bytes = 0);

  // Prometheus' text format, each family with its HELP and TYPE lines (none before a first request).
  std::string Render() const;

 private:
  struct Histogram {
    std::vector<uint64_t> counts;  // per bucket (not cumulative), then +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  static void Add(Histogram& h, const std::vector<double>& bounds, double seconds);

  const std::vector<std::string> routes_;
  mutable std::mutex mu_;
  std::map<std::tuple<std::string, std::string, std::string>, uint64_t> requests_;  // handler, method, status class
  std::map<std::pair<std::string, std::string>, Histogram> duration_;             // handler, method
  Histogram highr_;
  // Per handler: requests counted, their sizes summed (Prometheus summaries without quantiles).
  struct Sizes {
    uint64_t count = 0;
    double request_bytes = 0, response_bytes = 0;
  };
  std::map<std::string, Sizes> sizes_;
};

}  // namespace moe::openai
