#include "benchmarks/kernel_trace.h"

#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moe {

std::string ShortKernelName(const std::string& mangled) {
  int status = 0;
  char* d = abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status);
  std::string s = status == 0 && d != nullptr ? d : mangled;
  std::free(d);
  // Cut the parameter list: the last '(' at template depth 0.
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<') ++depth;
    if (s[i] == '>') --depth;
    if (s[i] == '(' && depth == 0 && s.compare(i, 21, "(anonymous namespace)") != 0) {
      s.resize(i);
      break;
    }
  }
  const size_t colon = s.rfind("::", s.find('<'));
  if (colon != std::string::npos) s = s.substr(colon + 2);
  return s;
}

namespace {

// One step's launches and their records.
struct Step {
  std::vector<std::string> names;
  std::vector<uint64_t> times_ns;
};

// The trace's steps: slices of the records when the launches are noted once (a graph), else the
// noted launches cut where the first one comes again. A step's records are put in time order: the
// launches of a step without a graph go to several streams (the cuBLAS experts' SwiGLU runs on each
// expert's stream), so a later launch can pass its wait first; in time order each gap is the time
// until the next kernel on any stream started (it was never negative, which wrapped to ~2^64 ns).
std::vector<Step> SplitSteps(const gpu::KernelTrace& t, int steps) {
  std::vector<Step> out;
  const size_t n = t.names.size();
  if (t.times_ns.size() == n * static_cast<size_t>(steps)) {
    for (int s = 0; s < steps; ++s) {
      out.push_back({t.names, std::vector<uint64_t>(t.times_ns.begin() + static_cast<std::ptrdiff_t>(s * n),
                                                    t.times_ns.begin() + static_cast<std::ptrdiff_t>((s + 1) * n))});
    }
  } else if (t.times_ns.size() == n) {
    for (size_t i = 0; i < n; ++i) {
      if (i == 0 || t.names[i] == t.names[0]) out.emplace_back();
      out.back().names.push_back(t.names[i]);
      out.back().times_ns.push_back(t.times_ns[i]);
    }
  }
  for (Step& st : out) {
    std::vector<size_t> order(st.names.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return st.times_ns[a] < st.times_ns[b]; });
    Step sorted;
    for (size_t i : order) {
      sorted.names.push_back(st.names[i]);
      sorted.times_ns.push_back(st.times_ns[i]);
    }
    st = std::move(sorted);
  }
  return out;
}

// Steps noted one by one (no graph): the steps of the most common launch sequence (first seen wins
// a tie) as one graph-like trace, that sequence's names once and those steps' records in order;
// `steps` becomes how many.
gpu::KernelTrace CommonSteps(const std::vector<Step>& all, int& steps) {
  std::map<std::vector<std::string>, std::vector<const Step*>> by_sequence;
  const std::vector<std::string>* common = nullptr;
  size_t common_count = 0;
  for (const Step& st : all) {
    std::vector<const Step*>& with = by_sequence[st.names];
    with.push_back(&st);
    if (with.size() > common_count) {
      common_count = with.size();
      common = &st.names;
    }
  }
  gpu::KernelTrace u;
  if (common == nullptr) return u;
  u.names = *common;
  for (const Step* st : by_sequence[*common]) u.times_ns.insert(u.times_ns.end(), st->times_ns.begin(), st->times_ns.end());
  steps = static_cast<int>(common_count);
  return u;
}

// Steps whose layers launch different kernels (no graph, the experts' launches follow the routing:
// batch 9-16 through cuBLAS): each step's layers start at a kernel launched once a layer (the
// first, in launch order, that most steps launch exactly `layers` times: the attention, where the
// residual kernel runs twice a layer); a layer runs to the next one's start, so the last layer has
// no end of its own and goes with the step's tail, as do the launches before the first start. Per
// kernel name, in order of first appearance, the mean time a layer over the first layers - 1
// layers of the steps with `layers` starts.
nlohmann::json SummariseByLayerStarts(const std::vector<Step>& steps, int64_t layers) {
  std::string anchor;
  int anchor_steps = 0;
  std::vector<std::map<std::string, int64_t>> counts(steps.size());
  for (size_t k = 0; k < steps.size(); ++k) {
    for (const std::string& name : steps[k].names) ++counts[k][name];
  }
  if (!steps.empty()) {
    for (const std::string& name : steps.front().names) {
      int with = 0;
      for (const auto& c : counts) with += c.count(name) != 0 && c.at(name) == layers ? 1 : 0;
      if (with > anchor_steps) {
        anchor = name;
        anchor_steps = with;
      }
    }
  }
  std::vector<std::string> order, outside_order;
  std::map<std::string, double> layer_us, outside_us;
  double span_us = 0;
  int used = 0;
  for (const Step& st : steps) {
    const size_t n = st.names.size();
    std::vector<size_t> starts;
    for (size_t i = 0; i < n; ++i) {
      if (st.names[i] == anchor) starts.push_back(i);
    }
    if (anchor_steps == 0 || static_cast<int64_t>(starts.size()) != layers) continue;
    ++used;
    span_us += (st.times_ns[n - 1] - st.times_ns[0]) / 1e3;
    for (size_t i = 0; i + 1 < n; ++i) {
      const double gap = (st.times_ns[i + 1] - st.times_ns[i]) / 1e3;
      const bool in_layer = i >= starts.front() && i < starts.back();
      auto& sums = in_layer ? layer_us : outside_us;
      auto& names = in_layer ? order : outside_order;
      if (sums.find(st.names[i]) == sums.end()) names.push_back(st.names[i]);
      sums[st.names[i]] += gap;
    }
  }
  if (used == 0 || layers < 2) {
    nlohmann::json first = nlohmann::json::array();  // what the first step launched, to see why
    if (!steps.empty()) {
      for (const std::string& name : steps.front().names) first.push_back(ShortKernelName(name));
    }
    return {{"error", "no kernel launched once a layer (" + std::to_string(layers) + " times a step)"},
            {"first_step", first}};
  }
  nlohmann::json per_layer = nlohmann::json::array(), outside = nlohmann::json::array();
  double layer_total = 0;
  for (const std::string& name : order) {
    const double us = layer_us[name] / (used * static_cast<double>(layers - 1));
    layer_total += us;
    per_layer.push_back({{"kernel", ShortKernelName(name)}, {"us", us}});
  }
  for (const std::string& name : outside_order) {
    outside.push_back({{"kernel", ShortKernelName(name)}, {"us", outside_us[name] / used}});
  }
  return {{"layer", per_layer},
          {"layer_us", layer_total},
          {"layers_averaged", layers - 1},
          {"outside_layers", outside},
          {"outside_note", "the last layer is with the step's tail"},
          {"span_us", span_us / used},
          {"steps", used},
          {"steps_left_out", static_cast<int>(steps.size()) - used}};
}

// Steps of one launch sequence in which every layer launches the same kernels: the layer period P
// (names[1 + l P + j] == names[1 + j] for every layer l) splits every step, the last layer too. An
// empty result when there is no such period, an "error" when the trace is not `steps` such steps.
nlohmann::json SummariseByPeriod(const gpu::KernelTrace& t, int64_t layers, int steps) {
  const int64_t n = static_cast<int64_t>(t.names.size());
  if (steps <= 0 || layers <= 0 || n == 0 || t.dropped != 0 ||
      static_cast<int64_t>(t.times_ns.size()) != n * steps) {
    return {{"error", "trace of " + std::to_string(t.times_ns.size()) + " records for " + std::to_string(n) +
                          " launches x " + std::to_string(steps) + " steps (" + std::to_string(t.dropped) +
                          " dropped)"}};
  }
  // The layer period P: names[1 + l P + j] == names[1 + j] for every layer l.
  int64_t period = 0;
  for (int64_t p = 1; 1 + layers * p <= n && period == 0; ++p) {
    bool ok = true;
    for (int64_t l = 1; l < layers && ok; ++l) {
      for (int64_t j = 0; j < p && ok; ++j) ok = t.names[1 + l * p + j] == t.names[1 + j];
    }
    if (ok) period = p;
  }
  if (period == 0) return nlohmann::json::object();
  // Launches that pass their waits out of launch order (several streams) have no per-launch gaps:
  // the caller then splits the steps in time order.
  for (int64_t i = 0; i + 1 < n * steps; ++i) {
    if ((i + 1) % n != 0 && t.times_ns[i + 1] < t.times_ns[i]) return nlohmann::json::object();
  }

  std::vector<double> layer_us(static_cast<size_t>(period), 0.0), outside_us(static_cast<size_t>(n), 0.0);
  double span_us = 0;
  for (int s = 0; s < steps; ++s) {
    const uint64_t* r = t.times_ns.data() + s * n;
    span_us += (r[n - 1] - r[0]) / 1e3;
    for (int64_t i = 0; i + 1 < n; ++i) {
      const double gap = (r[i + 1] - r[i]) / 1e3;
      if (i >= 1 && i < 1 + layers * period) {
        layer_us[static_cast<size_t>((i - 1) % period)] += gap;
      } else {
        outside_us[static_cast<size_t>(i)] += gap;
      }
    }
  }
  nlohmann::json per_layer = nlohmann::json::array(), outside = nlohmann::json::array();
  double layer_total = 0;
  for (int64_t j = 0; j < period; ++j) {
    const double us = layer_us[static_cast<size_t>(j)] / (steps * layers);
    layer_total += us;
    per_layer.push_back({{"kernel", ShortKernelName(t.names[1 + j])}, {"us", us}});
  }
  for (int64_t i = 0; i < n; ++i) {
    if (i >= 1 && i < 1 + layers * period) continue;
    // The last kernel's time runs to the next step's first record (host time included): not given.
    nlohmann::json k = {{"kernel", ShortKernelName(t.names[i])}};
    if (i + 1 < n) k["us"] = outside_us[static_cast<size_t>(i)] / steps;
    outside.push_back(k);
  }
  return {{"layer", per_layer},
          {"layer_us", layer_total},
          {"outside_layers", outside},
          {"span_us", span_us / steps},
          {"launches_per_step", n},
          {"steps", steps}};
}

}  // namespace

nlohmann::json SummariseDecodeTrace(const gpu::KernelTrace& t, int64_t layers, int steps) {
  if (steps > 1 && t.dropped == 0 && !t.names.empty() && t.times_ns.size() == t.names.size()) {
    // Launches noted step by step (no graph): the steps of the most common launch sequence when its
    // layers repeat, else every step split at its layers' starts.
    const std::vector<Step> split = SplitSteps(t, steps);
    int kept = 0;
    const gpu::KernelTrace common = CommonSteps(split, kept);  // sets kept: not in the call below
    nlohmann::json s = SummariseByPeriod(common, layers, kept);
    if (s.empty() || s.contains("error")) return SummariseByLayerStarts(split, layers);
    s["steps_left_out"] = steps - kept;  // steps of another launch sequence (or past `steps`)
    return s;
  }
  nlohmann::json s = SummariseByPeriod(t, layers, steps);
  return s.empty() ? SummariseByLayerStarts(SplitSteps(t, steps), layers) : s;
}

nlohmann::json SummariseTraceMarks(const gpu::KernelTrace& t) {
  nlohmann::json out = nlohmann::json::array();
  const size_t n = t.names.size();
  if (n == 0 || t.times_ns.empty() || t.marks.empty()) return out;
  std::vector<std::string> kernel(n);  // each launch's short name, demangled once
  for (size_t i = 0; i < n; ++i) kernel[i] = ShortKernelName(t.names[i]);
  // Records in time order, each with its launch (records repeat the launches step after step).
  std::vector<std::pair<uint64_t, size_t>> records;
  for (size_t i = 0; i < t.times_ns.size(); ++i) records.push_back({t.times_ns[i], i % n});
  std::sort(records.begin(), records.end());
  std::map<std::pair<std::string, int>, std::pair<double, int64_t>> sums;  // (kernel, id) -> (us, count)
  for (const gpu::KernelTrace::Mark& m : t.marks) {
    auto after = std::upper_bound(records.begin(), records.end(), std::make_pair(m.time_ns, n));
    if (after == records.begin()) continue;  // before any record
    const auto& [time, launch] = *(after - 1);
    auto& [us, count] = sums[{kernel[launch], m.id}];
    us += (m.time_ns - time) / 1e3;
    ++count;
  }
  for (const auto& [key, value] : sums) {
    out.push_back({{"kernel", key.first},
                   {"mark", key.second},
                   {"us_after_wait", value.first / static_cast<double>(value.second)},
                   {"count", value.second}});
  }
  return out;
}

}  // namespace moe
