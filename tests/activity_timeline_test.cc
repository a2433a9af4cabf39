// moe-bench's activity timeline summary (benchmarks/activity_timeline.h) on records whose idle
// stretches, busy time and per-name sums are worked out by hand: overlapping kernels on two
// streams, a copy, host calls inside and outside the gaps.
#include "benchmarks/activity_timeline.h"

#include <gtest/gtest.h>

#include "benchmarks/kernel_trace.h"

namespace moe {
namespace {

ActivityRecord Device(const char* name, uint32_t stream, uint64_t start_us, uint64_t end_us,
                      ActivityRecord::Kind kind = ActivityRecord::Kind::kKernel) {
  return {kind, name, stream, start_us * 1000, end_us * 1000};
}

ActivityRecord Host(const char* name, uint64_t start_us, uint64_t end_us) {
  return {ActivityRecord::Kind::kHostCall, name, 0, start_us * 1000, end_us * 1000};
}

TEST(ActivityTimelineTest, SummaryFindsIdleStretchesAndSumsPerName) {
  // Device: A [100, 110) s1; B [105, 130) s2 overlapping A, ending later; copy [150, 152);
  // A again [160, 200) s1 and C [170, 180) s2 inside it. Idle: [130, 150) 20 us, [152, 160) 8 us.
  // Host calls: a synchronisation [120, 148) overlapping the first gap by 18 us, a launch
  // [153, 156) inside the second, one at [10, 20) before everything.
  const std::vector<ActivityRecord> records = {
      Host("cudaLaunchKernel", 10, 20),
      Device("A", 1, 100, 110),
      Device("B", 2, 105, 130),
      Host("cudaStreamSynchronize", 120, 148),
      Device("memcpy DtoH", 1, 150, 152, ActivityRecord::Kind::kMemcpy),
      Host("cudaLaunchKernel", 153, 156),
      Device("A", 1, 160, 200),
      Device("C", 2, 170, 180),
  };
  const nlohmann::json s = SummariseTimeline(records, 5);
  EXPECT_DOUBLE_EQ(s["span_us"].get<double>(), 100.0);
  EXPECT_DOUBLE_EQ(s["busy_us"].get<double>(), 72.0);
  EXPECT_DOUBLE_EQ(s["idle_us"].get<double>(), 28.0);
  EXPECT_EQ(s["idle_stretches"].get<size_t>(), 2u);
  const nlohmann::json& gaps = s["largest_idle"];
  ASSERT_EQ(gaps.size(), 2u);
  EXPECT_DOUBLE_EQ(gaps[0]["us"].get<double>(), 20.0);  // largest first
  EXPECT_DOUBLE_EQ(gaps[0]["at_us"].get<double>(), 30.0);
  EXPECT_EQ(gaps[0]["after"], "B");  // the record that ended last before it, not the last to start
  EXPECT_EQ(gaps[0]["before"], "memcpy DtoH");
  EXPECT_DOUBLE_EQ(gaps[0]["host_calls_us"]["cudaStreamSynchronize"].get<double>(), 18.0);
  EXPECT_FALSE(gaps[0]["host_calls_us"].contains("cudaLaunchKernel"));
  EXPECT_DOUBLE_EQ(gaps[1]["us"].get<double>(), 8.0);
  EXPECT_EQ(gaps[1]["after"], "memcpy DtoH");
  EXPECT_EQ(gaps[1]["before"], "A");
  EXPECT_DOUBLE_EQ(gaps[1]["host_calls_us"]["cudaLaunchKernel"].get<double>(), 3.0);
  // Per name, by summed duration: A 10 + 40, B 25, C 10, the copy 2.
  const nlohmann::json& names = s["device_time_by_name"];
  ASSERT_EQ(names.size(), 4u);
  EXPECT_EQ(names[0]["name"], "A");
  EXPECT_EQ(names[0]["count"].get<int64_t>(), 2);
  EXPECT_DOUBLE_EQ(names[0]["us"].get<double>(), 50.0);
  EXPECT_EQ(names[1]["name"], "B");
  EXPECT_EQ(names[3]["name"], "memcpy DtoH");
}

TEST(ActivityTimelineTest, RecordsAreTimedFromTheFirstAndHostOnlyHasNoSummary) {
  const std::vector<ActivityRecord> host_only = {Host("cudaGetDevice", 5, 6)};
  EXPECT_TRUE(SummariseTimeline(host_only).contains("error"));
  const nlohmann::json r = TimelineRecords({Host("cudaLaunchKernel", 10, 14), Device("K", 7, 12, 30)});
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0]["kind"], "host");
  EXPECT_DOUBLE_EQ(r[1]["start_us"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(r[1]["end_us"].get<double>(), 20.0);
  EXPECT_EQ(r[1]["stream"].get<uint32_t>(), 7u);
  EXPECT_EQ(r[1]["kind"], "kernel");
}

TEST(ActivityTimelineTest, ShortKernelNamesDropNamespacesAndParameters) {
  EXPECT_EQ(ShortKernelName("moe::gpu::(anonymous namespace)::SkinnyGemmKernel<1, 3, true>(const float*, int)"),
            "SkinnyGemmKernel<1, 3, true>");
  EXPECT_EQ(ShortKernelName("nvjet_sm90_tst_128x16_64x11_2x1_v_bz_TNT"), "nvjet_sm90_tst_128x16_64x11_2x1_v_bz_TNT");
}

// The summary's list `key` holds these kernels with these times, in this order.
void ExpectKernels(const nlohmann::json& s, const char* key, const std::vector<std::pair<std::string, double>>& want) {
  ASSERT_EQ(s[key].size(), want.size()) << s.dump();
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(s[key][i]["kernel"], want[i].first) << key;
    EXPECT_DOUBLE_EQ(s[key][i]["us"].get<double>(), want[i].second) << key << " " << want[i].first;
  }
}

// The decode trace's per-layer split on hand-worked records: a step is E, two layers of A B C, H, S,
// with gaps E->A 1, A->B 3, B->C 4, C->A 5, C->H 7, H->S 2 us (steps 1000 us apart): A 3, B 4 and
// C (5 + 7) / 2 us a layer. Noted once (a graph replayed three times) or step by step (no graph),
// with a fourth step whose launches differ (an extra X), left out: the same summary.
TEST(ActivityTimelineTest, DecodeTraceSplitsLayersWithAndWithoutGraphs) {
  const std::vector<std::string> step = {"E", "A", "B", "C", "A", "B", "C", "H", "S"};
  const std::vector<uint64_t> offsets_us = {0, 1, 4, 8, 13, 16, 20, 27, 29};
  auto times = [&](int s) {
    std::vector<uint64_t> t;
    for (uint64_t o : offsets_us) t.push_back((1000 * s + o) * 1000);
    return t;
  };
  gpu::KernelTrace graph;
  graph.names = step;
  for (int s = 0; s < 3; ++s) {
    const std::vector<uint64_t> t = times(s);
    graph.times_ns.insert(graph.times_ns.end(), t.begin(), t.end());
  }
  gpu::KernelTrace noted;  // steps 0, 1, then the odd one, then step 2
  for (int s : {0, 1, -1, 2}) {
    if (s < 0) {
      const std::vector<std::string> odd = {"E", "A", "B", "X", "C", "A", "B", "C", "H", "S"};
      noted.names.insert(noted.names.end(), odd.begin(), odd.end());
      for (size_t i = 0; i < odd.size(); ++i) noted.times_ns.push_back((1500 + i) * 1000);
      continue;
    }
    noted.names.insert(noted.names.end(), step.begin(), step.end());
    const std::vector<uint64_t> t = times(s);
    noted.times_ns.insert(noted.times_ns.end(), t.begin(), t.end());
  }
  const nlohmann::json g = SummariseDecodeTrace(graph, 2, 3);
  const nlohmann::json n = SummariseDecodeTrace(noted, 2, 4);
  for (const nlohmann::json* s : {&g, &n}) {
    ASSERT_FALSE(s->contains("error")) << s->dump();
    ASSERT_EQ((*s)["layer"].size(), 3u);
    EXPECT_EQ((*s)["layer"][0]["kernel"], "A");
    EXPECT_DOUBLE_EQ((*s)["layer"][0]["us"].get<double>(), 3.0);
    EXPECT_DOUBLE_EQ((*s)["layer"][1]["us"].get<double>(), 4.0);
    EXPECT_DOUBLE_EQ((*s)["layer"][2]["us"].get<double>(), 6.0);
    EXPECT_DOUBLE_EQ((*s)["layer_us"].get<double>(), 13.0);
    EXPECT_DOUBLE_EQ((*s)["span_us"].get<double>(), 29.0);
    EXPECT_EQ((*s)["steps"].get<int>(), 3);
  }
  EXPECT_EQ(n["steps_left_out"].get<int>(), 1);
}

// Steps whose layers launch different kernels (no graph; the experts' launches follow the
// routing): three layers, each R A B (X) C, R also ending the step (as the residual kernel, twice
// a layer, so not once a layer as A is). Step 0: E0 R1 A2 B5 C9 R12 A14 B17 X19 C21 R24 A26 B29 C33
// R36 H40 S42 us; step 1 (1000 us on) has the X in its first layer instead (... A2 B5 X7 C9 R12 A14
// B17 C21 ...); step 2 has two layers only (A twice), left out. Layers run from A to A: A 3, B (4 +
// 2 + 2 + 4) / 4 = 3, C 3, R 2, X (2 + 2) / 4 = 1 us a layer over the first two; the rest a step:
// E 1, R 1 + 4, A 3, B 4, C 3, H 2 us.
TEST(ActivityTimelineTest, DecodeTraceSplitsLayersThatLaunchDifferentKernels) {
  gpu::KernelTrace t;
  auto add = [&](const std::vector<std::string>& names, const std::vector<uint64_t>& us, uint64_t at) {
    ASSERT_EQ(names.size(), us.size());
    t.names.insert(t.names.end(), names.begin(), names.end());
    for (uint64_t u : us) t.times_ns.push_back((at + u) * 1000);
  };
  add({"E", "R", "A", "B", "C", "R", "A", "B", "X", "C", "R", "A", "B", "C", "R", "H", "S"},
      {0, 1, 2, 5, 9, 12, 14, 17, 19, 21, 24, 26, 29, 33, 36, 40, 42}, 0);
  add({"E", "R", "A", "B", "X", "C", "R", "A", "B", "C", "R", "A", "B", "C", "R", "H", "S"},
      {0, 1, 2, 5, 7, 9, 12, 14, 17, 21, 24, 26, 29, 33, 36, 40, 42}, 1000);
  add({"E", "R", "A", "B", "C", "R", "A", "B", "C", "R", "H", "S"}, {0, 1, 2, 5, 9, 12, 14, 17, 21, 24, 28, 30},
      2000);
  const nlohmann::json s = SummariseDecodeTrace(t, 3, 3);
  ASSERT_FALSE(s.contains("error")) << s.dump();
  ExpectKernels(s, "layer", {{"A", 3.0}, {"B", 3.0}, {"C", 3.0}, {"R", 2.0}, {"X", 1.0}});
  EXPECT_DOUBLE_EQ(s["layer_us"].get<double>(), 12.0);
  EXPECT_EQ(s["layers_averaged"].get<int>(), 2);
  ExpectKernels(s, "outside_layers", {{"E", 1.0}, {"R", 5.0}, {"A", 3.0}, {"B", 4.0}, {"C", 3.0}, {"H", 2.0}});
  EXPECT_DOUBLE_EQ(s["span_us"].get<double>(), 42.0);
  EXPECT_EQ(s["steps"].get<int>(), 2);
  EXPECT_EQ(s["steps_left_out"].get<int>(), 1);
}

// Steps without a graph launch a layer's expert kernels on several streams (the cuBLAS experts'
// SwiGLU on each expert's stream), so a later launch can pass its wait first. Launches E A X Y C A X
// Y C H T, two identical steps 1000 us apart, records E0 A1 Y3 X4 C8 A10 X12 Y13 C15 H20 T22 us (Y
// before X in the first layer): in time order the first layer is A 2, Y 1, X 4, C 2 us; the second
// goes with the tail, E 1, A 2, X 1, Y 2, C 5, H 2 us. Gaps taken in launch order would be negative.
TEST(ActivityTimelineTest, DecodeTraceTakesRecordsInTimeOrderAcrossStreams) {
  gpu::KernelTrace t;
  for (uint64_t at : {0, 1000}) {
    const std::vector<std::string> names = {"E", "A", "X", "Y", "C", "A", "X", "Y", "C", "H", "T"};
    const std::vector<uint64_t> us = {0, 1, 4, 3, 8, 10, 12, 13, 15, 20, 22};
    t.names.insert(t.names.end(), names.begin(), names.end());
    for (uint64_t u : us) t.times_ns.push_back((at + u) * 1000);
  }
  const nlohmann::json s = SummariseDecodeTrace(t, 2, 2);
  ASSERT_FALSE(s.contains("error")) << s.dump();
  ExpectKernels(s, "layer", {{"A", 2.0}, {"Y", 1.0}, {"X", 4.0}, {"C", 2.0}});
  EXPECT_DOUBLE_EQ(s["layer_us"].get<double>(), 9.0);
  ExpectKernels(s, "outside_layers", {{"E", 1.0}, {"A", 2.0}, {"X", 1.0}, {"Y", 2.0}, {"C", 5.0}, {"H", 2.0}});
  EXPECT_DOUBLE_EQ(s["span_us"].get<double>(), 22.0);
  EXPECT_EQ(s["steps"].get<int>(), 2);
}

// The kernel trace's phase marks against hand-worked records: two steps of launches A, B (records at
// 100, 110 us and 200, 210 us); marks taken inside A at +3 us both steps, inside B at +5 and +4 us,
// one before any record (dropped from the summary); A's marks under A whatever the order they were
// taken in.
TEST(ActivityTimelineTest, TraceMarksAreTimedFromTheirKernelsRecord) {
  gpu::KernelTrace t;
  t.names = {"moe::gpu::(anonymous namespace)::A(int)", "B"};
  t.times_ns = {100000, 110000, 200000, 210000};
  t.marks = {{1, 50000}, {2, 115000}, {1, 203000}, {1, 103000}, {2, 214000}};
  const nlohmann::json m = SummariseTraceMarks(t);
  ASSERT_EQ(m.size(), 2u) << m.dump();
  EXPECT_EQ(m[0]["kernel"], "A");
  EXPECT_EQ(m[0]["mark"], 1);
  EXPECT_DOUBLE_EQ(m[0]["us_after_wait"].get<double>(), 3.0);
  EXPECT_EQ(m[0]["count"], 2);
  EXPECT_EQ(m[1]["kernel"], "B");
  EXPECT_EQ(m[1]["mark"], 2);
  EXPECT_DOUBLE_EQ(m[1]["us_after_wait"].get<double>(), 4.5);
  EXPECT_EQ(m[1]["count"], 2);
  EXPECT_TRUE(SummariseTraceMarks(gpu::KernelTrace{}).empty());
}

}  // namespace
}  // namespace moe
