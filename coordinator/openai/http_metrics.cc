#include "coordinator/openai/http_metrics.h"

#include <array>
#include <charconv>

namespace moe::openai {
namespace {

// prometheus-fastapi-instrumentator's default buckets.
const std::vector<double> kLowResolution = {0.1, 0.5, 1};
const std::vector<double> kHighResolution = {0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2,
                                             2.5,  3,     3.5,  4,     4.5, 5,    7.5, 10,   30, 60};

constexpr std::array<std::string_view, 4> kNotCounted = {"/health", "/ping", "/version", "/metrics"};  // vLLM's exclusions

// A number as Prometheus' Python client (vLLM's) writes it: the shortest text that reads back as
// `v`, an integral one with ".0" ("0.05", "10.0", not "1e+01"), so bucket bounds (`le`, a string to
// Prometheus) match the series vLLM's own server exposes.
std::string Number(double v) {
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), v);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";  // not 1e-05, inf or nan either
  return s;
}

std::string Escaped(std::string_view s) {  // a label value
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace

std::string HttpMetrics::Handler(std::string_view path) const {
  for (std::string_view n : kNotCounted) {
    if (path == n) return "";
  }
  for (const std::string& r : routes_) {
    if (path == r) return r;
  }
  constexpr std::string_view kModel = "/v1/models/";
  if (path.substr(0, kModel.size()) == kModel && path.size() > kModel.size()) return "/v1/models/{model}";
  constexpr std::string_view kStored = "/v1/responses/";
  if (path.substr(0, kStored.size()) == kStored && path.size() > kStored.size()) {
    const std::string_view rest = path.substr(kStored.size());
    const size_t slash = rest.find('/');
    if (slash == std::string_view::npos) return "/v1/responses/{response_id}";
    const std::string_view tail = rest.substr(slash);
    if (tail == "/cancel" || tail == "/input_items") return "/v1/responses/{response_id}" + std::string(tail);
  }
  return "none";
}

void HttpMetrics::Add(Histogram& h, const std::vector<double>& bounds, double seconds) {
  if (h.counts.empty()) h.counts.assign(bounds.size() + 1, 0);
  size_t i = 0;
  while (i < bounds.size() && seconds > bounds[i]) ++i;
  ++h.counts[i];
  h.sum += seconds;
  ++h.count;
}

void HttpMetrics::Observe(std::string_view path, std::string_view method, int status, double seconds,
                          int64_t request_bytes, int64_t response_bytes) {
  const std::string handler = Handler(path);
  if (handler.empty()) return;
  const std::string status_class = status >= 100 && status <= 599 ? std::to_string(status / 100) + "xx" : "none";
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{handler, std::string(method), status_class}];
  Add(duration_[{handler, std::string(method)}], kLowResolution, seconds);
  Add(highr_, kHighResolution, seconds);
  Sizes& sizes = sizes_[handler];
  ++sizes.count;
  sizes.request_bytes += static_cast<double>(request_bytes);
  sizes.response_bytes += static_cast<double>(response_bytes);
}

std::string HttpMetrics::Render() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (highr_.count == 0) return "";
  std::string out;
  const auto histogram = [&](const std::string& name, const std::string& labels, const Histogram& h,
                             const std::vector<double>& bounds) {
    const std::string sep = labels.empty() ? "" : ",";
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= bounds.size(); ++i) {
      cumulative += h.counts[i];
      const std::string le = i < bounds.size() ? Number(bounds[i]) : "+Inf";
      out += name + "_bucket{" + labels + sep + "le=\"" + le + "\"} " + std::to_string(cumulative) + "\n";
    }
    const std::string braces = labels.empty() ? "" : "{" + labels + "}";
    out += name + "_sum" + braces + " " + Number(h.sum) + "\n";
    out += name + "_count" + braces + " " + std::to_string(h.count) + "\n";
  };
  out += "# HELP http_requests_total Total number of requests by method, status and handler.\n";
  out += "# TYPE http_requests_total counter\n";
  for (const auto& [key, n] : requests_) {
    const auto& [handler, method, status] = key;
    out += "http_requests_total{handler=\"" + Escaped(handler) + "\",method=\"" + Escaped(method) + "\",status=\"" +
           status + "\"} " + std::to_string(n) + "\n";
  }
  out += "# HELP http_request_duration_highr_seconds Latency with many buckets but no API specific labels. "
         "Made for more accurate percentile calculations.\n";
  out += "# TYPE http_request_duration_highr_seconds histogram\n";
  histogram("http_request_duration_highr_seconds", "", highr_, kHighResolution);
  out += "# HELP http_request_duration_seconds Latency with only few buckets by handler. Made to be only used if "
         "aggregation by handler is important.\n";
  out += "# TYPE http_request_duration_seconds histogram\n";
  for (const auto& [key, h] : duration_) {
    histogram("http_request_duration_seconds",
              "handler=\"" + Escaped(key.first) + "\",method=\"" + Escaped(key.second) + "\"", h, kLowResolution);
  }
  const auto summary = [&](const std::string& name, const std::string& help, double Sizes::*bytes) {
    out += "# HELP " + name + " " + help + "\n";
    out += "# TYPE " + name + " summary\n";
    for (const auto& [handler, sizes] : sizes_) {
      const std::string labels = "{handler=\"" + Escaped(handler) + "\"}";
      out += name + "_count" + labels + " " + std::to_string(sizes.count) + "\n";
      out += name + "_sum" + labels + " " + Number(sizes.*bytes) + "\n";
    }
  };
  summary("http_request_size_bytes",
          "Content length of incoming requests by handler. Only value of header is respected. Otherwise ignored. "
          "No percentile calculated. ",
          &Sizes::request_bytes);
  summary("http_response_size_bytes",
          "Content length of outgoing responses by handler. Only value of header is respected. Otherwise ignored. "
          "No percentile calculated. ",
          &Sizes::response_bytes);
  return out;
}

}  // namespace moe::openai
