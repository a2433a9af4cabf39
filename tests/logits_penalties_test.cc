// LogitsPenalties worked by hand on small rows: the values each rule gives (float arithmetic as
// Hugging Face's RepetitionPenaltyLogitsProcessor and vLLM's frequency / presence rule compute
// them), which ids each touches, and min_tokens' end ids.
#include "worker/logits_penalties.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace moe {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int32_t kVocab = 16;  // for Validate

TEST(LogitsPenaltiesTest, RepetitionDividesPositiveAndMultipliesNegativeLogitsOfPromptAndOutputIdsOnce) {
  PenaltyParams p;
  p.repetition_penalty = 2.0f;
  // Prompt ids 1 and 3 (3 twice: it still counts once), output id 4 later.
  LogitsPenalties pen(p, std::vector<int32_t>{1, 3, 3}, {});
  std::vector<float> row = {1.0f, 3.0f, -2.0f, -1.5f, 0.5f, 0.0f};
  pen.Apply(row);
  EXPECT_EQ(row, (std::vector<float>{1.0f, 1.5f, -2.0f, -3.0f, 0.5f, 0.0f}));
  pen.Add(4);
  pen.Add(5);  // a zero logit stays zero
  row = {1.0f, 3.0f, -2.0f, -1.5f, 0.5f, 0.0f};
  pen.Apply(row);
  EXPECT_EQ(row, (std::vector<float>{1.0f, 1.5f, -2.0f, -3.0f, 0.25f, 0.0f}));
}

TEST(LogitsPenaltiesTest, FrequencyCountsOutputOccurrencesAndPresenceCountsOnceNotThePrompt) {
  PenaltyParams p;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  LogitsPenalties pen(p, std::vector<int32_t>{0, 1}, {});
  std::vector<float> row = {1.0f, 1.0f, 1.0f, 1.0f};
  pen.Apply(row);
  EXPECT_EQ(row, (std::vector<float>{1.0f, 1.0f, 1.0f, 1.0f})) << "nothing generated yet; the prompt does not count";
  for (int32_t t : {2, 3, 2, 2}) pen.Add(t);
  row = {1.0f, 1.0f, 1.0f, 1.0f};
  pen.Apply(row);
  // id 2: 1 - 0.5 * 3 - 0.25 = -0.75; id 3: 1 - 0.5 - 0.25 = 0.25.
  EXPECT_EQ(row, (std::vector<float>{1.0f, 1.0f, -0.75f, 0.25f}));
}

TEST(LogitsPenaltiesTest, NegativePenaltiesRewardRepeats) {
  PenaltyParams p;
  p.frequency_penalty = -1.0f;
  p.presence_penalty = -2.0f;
  LogitsPenalties pen(p, {}, {});
  pen.Add(1);
  std::vector<float> row = {0.0f, 0.0f};
  pen.Apply(row);
  EXPECT_EQ(row, (std::vector<float>{0.0f, 3.0f}));
}

TEST(LogitsPenaltiesTest, MinTokensHoldsBackTheEndIdsUntilThatManyWereGenerated) {
  PenaltyParams p;
  p.min_tokens = 2;
  LogitsPenalties pen(p, std::vector<int32_t>{5}, {2, 7, 99});  // 99 outside this row: ignored
  const std::vector<float> fresh = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};
  for (int generated = 0; generated < 3; ++generated) {
    std::vector<float> row = fresh;
    pen.Apply(row);
    for (size_t i = 0; i < row.size(); ++i) {
      const bool held = generated < 2 && (i == 2 || i == 7);
      EXPECT_EQ(row[i], held ? kNegInf : fresh[i]) << "id " << i << " after " << generated << " tokens";
    }
    pen.Add(4);
  }
}

TEST(LogitsPenaltiesTest, RulesApplyInVllmsOrderRepetitionThenFrequencyThenPresence) {
  PenaltyParams p;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 1.0f;
  p.presence_penalty = 0.5f;
  LogitsPenalties pen(p, {}, {});
  pen.Add(0);
  std::vector<float> row = {3.0f, -1.0f};
  pen.Apply(row);
  EXPECT_EQ(row[0], 3.0f / 2.0f - 1.0f - 0.5f);  // 0; the other order would give (3 - 1.5) / 2
  EXPECT_EQ(row[1], -1.0f);
}

TEST(LogitsPenaltiesTest, LogitBiasAddsToItsIdsEveryStepBeforeTheRepetitionPenalty) {
  PenaltyParams p;
  p.logit_bias = {{0, 2.0f}, {2, -100.0f}, {9, 5.0f}};  // 9 outside this row: ignored
  p.repetition_penalty = 2.0f;
  LogitsPenalties pen(p, std::vector<int32_t>{0}, {});
  std::vector<float> row = {-1.0f, 0.5f, 3.0f};
  pen.Apply(row);
  // id 0: -1 + 2 = 1, then halved (a prompt id); id 2: 3 - 100 = -97, a negative logit of an id not seen.
  EXPECT_EQ(row, (std::vector<float>{0.5f, 0.5f, -97.0f}));
  pen.Add(1);
  row = {-1.0f, 0.5f, 3.0f};
  pen.Apply(row);
  EXPECT_EQ(row, (std::vector<float>{0.5f, 0.25f, -97.0f})) << "the bias again; 1 now penalised as output";
}

// What an engine takes instead of the row (SampleNext::adjust): one entry per id, every rule of that
// id in it; each entry Adjusted gives what Apply gives.
TEST(LogitsPenaltiesTest, AdjustmentsHoldOneEntryPerIdWithEveryRuleOfIt) {
  PenaltyParams p;
  p.logit_bias = {{0, 2.0f}, {3, -1.0f}};
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 1.0f;
  p.presence_penalty = 0.5f;
  LogitsPenalties pen(p, std::vector<int32_t>{0, 1}, {});
  pen.Add(1);
  pen.Add(1);
  std::vector<LogitAdjustment> adjust = pen.Adjustments();
  std::sort(adjust.begin(), adjust.end(), [](const LogitAdjustment& a, const LogitAdjustment& b) { return a.id < b.id; });
  ASSERT_EQ(adjust.size(), 3u);
  EXPECT_EQ(adjust[0].id, 0);
  EXPECT_EQ(adjust[0].bias, 2.0f);
  EXPECT_EQ(adjust[0].repetition, 2.0f);
  EXPECT_EQ(adjust[0].frequency, 0.0f);
  EXPECT_EQ(adjust[1].id, 1);
  EXPECT_EQ(adjust[1].bias, 0.0f);
  EXPECT_EQ(adjust[1].repetition, 2.0f);
  EXPECT_EQ(adjust[1].frequency, 2.0f);  // twice in the output
  EXPECT_EQ(adjust[1].presence, 0.5f);
  EXPECT_EQ(adjust[2].id, 3);
  EXPECT_EQ(adjust[2].repetition, 1.0f);
  const std::vector<float> raw = {-1.0f, 3.0f, 0.25f, 7.0f};
  std::vector<float> applied = raw;
  pen.Apply(applied);
  std::vector<float> adjusted = raw;
  for (const LogitAdjustment& a : adjust) adjusted[static_cast<size_t>(a.id)] = Adjusted(adjusted[static_cast<size_t>(a.id)], a);
  EXPECT_EQ(adjusted, applied);
  EXPECT_EQ(applied, (std::vector<float>{0.5f, 3.0f / 2.0f - 2.0f - 0.5f, 0.25f, 6.0f}));
  LogitsPenalties none(PenaltyParams{.min_tokens = 2}, {}, {2});
  EXPECT_TRUE(none.Adjustments().empty());
}

// allowed_token_ids: every other id gets -inf before the rest applies (here the bias of an allowed id).
TEST(LogitsPenaltiesTest, AllowedTokenIdsMaskEveryOtherId) {
  PenaltyParams p;
  p.allowed_token_ids = {1, 3};
  p.logit_bias = {{3, 1.0f}, {2, 50.0f}};
  EXPECT_TRUE(p.any());
  LogitsPenalties pen(p, {}, {});
  std::vector<float> row = {4.0f, 0.5f, 3.0f, -2.0f};
  pen.Apply(row);
  const float ninf = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(row, (std::vector<float>{ninf, 0.5f, ninf, -1.0f}));
}

// bad_words: a word's last id is masked once the output ends with the ids before it; a word of one
// id always; the prompt does not count.
TEST(LogitsPenaltiesTest, BadWordsMaskTheIdThatWouldCompleteThem) {
  PenaltyParams p;
  p.bad_words = {{2, 3}, {5}, {1, 2, 4}};
  LogitsPenalties pen(p, std::vector<int32_t>{2}, {});
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> row(6, 1.0f);
  pen.Apply(row);
  EXPECT_EQ(row, (std::vector<float>{1, 1, 1, 1, 1, ninf})) << "the prompt's 2 does not start a word";
  pen.Add(2);
  row.assign(6, 1.0f);
  pen.Apply(row);
  EXPECT_EQ(row, (std::vector<float>{1, 1, 1, ninf, 1, ninf}));
  pen.Add(1);
  pen.Add(2);
  row.assign(6, 1.0f);
  pen.Apply(row);
  EXPECT_EQ(row, (std::vector<float>{1, 1, 1, ninf, ninf, ninf})) << "1 2 -> 4 and 2 -> 3";
}

TEST(LogitsPenaltiesTest, ValidateNamesTheBadField) {
  EXPECT_TRUE(PenaltyParams{}.Validate(kVocab).ok());
  EXPECT_FALSE(PenaltyParams{}.any());
  const auto bad = [](PenaltyParams p, const std::string& field) {
    const absl::Status s = p.Validate(kVocab);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(std::string(s.message()).find(field), std::string::npos) << s.message();
  };
  bad({.repetition_penalty = 0.0f}, "repetition_penalty");
  bad({.repetition_penalty = -1.0f}, "repetition_penalty");
  bad({.repetition_penalty = std::nanf("")}, "repetition_penalty");
  bad({.presence_penalty = 2.5f}, "presence_penalty");
  bad({.frequency_penalty = -2.01f}, "frequency_penalty");
  bad({.frequency_penalty = std::nanf("")}, "frequency_penalty");
  EXPECT_TRUE((PenaltyParams{.presence_penalty = -2.0f, .frequency_penalty = 2.0f}).Validate(kVocab).ok());
  EXPECT_TRUE((PenaltyParams{.min_tokens = 1}).any());
  EXPECT_TRUE((PenaltyParams{.logit_bias = {{3, 0.5f}}}).any());
  bad({.logit_bias = {{3, 100.5f}}}, "logit_bias[3]");
  bad({.logit_bias = {{-1, 1.0f}}}, "logit_bias");
  bad({.logit_bias = {{kVocab, 1.0f}}}, "outside the vocabulary [0, 16)");
  bad({.logit_bias = {{3, 1.0f}, {3, 2.0f}}}, "logit_bias[3]: repeated");
  EXPECT_TRUE((PenaltyParams{.logit_bias = {{3, -100.0f}}}).Validate(kVocab).ok());
  bad({.allowed_token_ids = {2, kVocab}}, "allowed_token_ids[1]: token id 16 is outside the vocabulary");
  bad({.allowed_token_ids = {4, 2}}, "allowed_token_ids[1]: 2 is repeated or out of order");
  bad({.allowed_token_ids = {4, 4}}, "allowed_token_ids[1]");
  EXPECT_TRUE((PenaltyParams{.allowed_token_ids = {0, kVocab - 1}}).Validate(kVocab).ok());
  bad({.bad_words = {{1}, {}}}, "bad_words[1]: no token ids");
  bad({.bad_words = {{1, kVocab}}}, "bad_words[0]: token id 16");
  EXPECT_TRUE((PenaltyParams{.bad_words = {{1, 2}}}).any());
}

}  // namespace
}  // namespace moe
