// moe-cli as a user meets it: bad input gives a clear message and exit status (never a crash or a
// hang, also under mpirun), seeded sampling repeats exactly on any number of ranks, and generation
// stops at EOS.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/json_util.h"
#include "worker/tokenizer.h"
#include "tests/support/cli_runner.h"
#include "tests/support/engine_fixture.h"
#include "tests/support/random_model.h"
#include "tests/support/safetensors_writer.h"

namespace moe::testing_ref {
namespace {

namespace fs = std::filesystem;

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetMpiTestEnvironment(); }
};

void ExpectError(const CliRun& r, int code, const std::string& needle) {
  EXPECT_EQ(r.exit_code, code) << r.Describe();
  EXPECT_NE(r.err.find(needle), std::string::npos) << "expected '" << needle << "' in\n" << r.Describe();
}

TEST_F(CliTest, BadCommandLinesExit2NamingTheFlag) {
  ExpectError(RunCli(0, {}), 2, "missing command");
  ExpectError(RunCli(0, {"frobnicate"}), 2, "unknown command 'frobnicate'");
  ExpectError(RunCli(0, {"generate", "--prompt", "x", "--max-tokens", "ten"}), 2, "--max-tokens");
  ExpectError(RunCli(0, {"generate", "--prompt", "x", "--temperature", "-1"}), 2, "temperature");
  ExpectError(RunCli(0, {"generate", "--prompt", "x", "--top-p", "1.5"}), 2, "top_p");
  ExpectError(RunCli(0, {"generate", "--prompt", "x", "--greedy", "--temperature", "0.5"}), 2, "--greedy");
  ExpectError(RunCli(0, {"generate", "--token-ids", "1,x,3"}), 2, "--token-ids");
  ExpectError(RunCli(0, {"generate", "--prompt", "x", "--bogus"}), 2, "unknown flag '--bogus'");
  ExpectError(RunCli(0, {"score"}), 2, "--text");
  ExpectError(RunCli(0, {"score", "--text", "x", "--stats"}), 2, "--stats: needs --json");
  ExpectError(RunCli(0, {"generate", "--model", kGoldenDir, "--token-ids", "5,1024"}), 2,
              "token id 1024 at index 1 is outside the vocabulary");
  ExpectError(RunCli(0, {"generate", "--model", kGoldenDir, "--prompt", "hello"}), 2, "tokenizer.model");
  ExpectError(RunCli(0, {"generate", "--model", kGoldenDir, "--token-ids", "5", "--max-tokens", "5000"}), 2,
              "exceed the context of 4096");
}

TEST_F(CliTest, HelpPrintsTheUsageAndExits0) {
  // As the other programs answer --help: the usage on stdout, exit 0 (it was "unknown command", 2).
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--help"}, {"-h"}, {"generate", "--help"}, {"score", "--text", "x", "-h"}}) {
    CliRun r = RunCli(0, args);
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
    EXPECT_NE(r.out.find("moe-cli generate [--model DIR]"), std::string::npos) << r.out;
  }
}

TEST_F(CliTest, BadInputUnderMpirunFailsEveryRankWithoutHanging) {
  // Input 1 (on rank 1 of 3) is outside the vocabulary: every rank exits, rank 0 reports.
  CliRun r = RunCli(3, {"score", "--model", kGoldenDir, "--token-ids", "5,6", "--token-ids", "7,99999", "--json"});
  EXPECT_NE(r.exit_code, 0) << r.Describe();
  EXPECT_NE(r.err.find("99999"), std::string::npos) << r.Describe();
}

TEST_F(CliTest, BrokenModelFoldersExit1NamingTheProblem) {
  ExpectError(RunCli(0, {"score", "--model", "/nonexistent/dir", "--token-ids", "1,2"}), 1,
              "/nonexistent/dir/config.json");
  // A copy of the golden checkpoint whose second shard is cut short.
  const std::string dir = MakeTempDir("moe_cli_truncated");
  for (const auto& f : fs::directory_iterator(kGoldenDir)) fs::copy(f.path(), dir + "/" + f.path().filename().string());
  const std::string shard = dir + "/model-00002-of-00002.safetensors";
  fs::resize_file(shard, fs::file_size(shard) - 1000);
  ExpectError(RunCli(0, {"score", "--model", dir, "--token-ids", "1,2"}), 1, "model-00002-of-00002.safetensors");
  // Under mpirun too: no hang, a non-zero exit.
  CliRun r = RunCli(2, {"score", "--model", dir, "--token-ids", "1,2"});
  EXPECT_NE(r.exit_code, 0) << r.Describe();
  EXPECT_NE(r.err.find("model-00002-of-00002.safetensors"), std::string::npos) << r.Describe();
  fs::remove_all(dir);
}

// A config.json the checkpoint disagrees with is refused by the first tensor it sizes, before the
// size is allocated, or by a tensor the config has no place for (a vocab_size of 2^24 x 128 floats would be 8 GiB; 2^31 was std::bad_alloc,
// naming nothing); a tokenizer with more tokens than the vocabulary is refused as the coordinator
// refuses it (its ids would pass the embedding rows).
TEST_F(CliTest, ModelFoldersThatDisagreeWithThemselvesExit1) {
  const std::string dir = MakeTempDir("moe_cli_disagree");
  for (const auto& f : fs::directory_iterator(kGoldenDir)) fs::copy(f.path(), dir + "/" + f.path().filename().string());
  absl::StatusOr<nlohmann::json> config = ReadJsonFile(dir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  const nlohmann::json original = *config;
  (*config)["vocab_size"] = 1 << 24;
  std::ofstream(dir + "/config.json") << config->dump();
  ExpectError(RunCli(0, {"score", "--model", dir, "--token-ids", "1,2"}), 1,
              "tensor 'model.embed_tokens.weight' in " + dir + "/model-0000");
  // Fewer layers than the checkpoint holds: refused naming the first tensor of a layer past them,
  // where the model was served truncated (vLLM's loader refuses names it has no parameter for).
  (*config)["vocab_size"] = original["vocab_size"];
  (*config)["num_hidden_layers"] = original["num_hidden_layers"].get<int>() - 1;
  std::ofstream(dir + "/config.json") << config->dump();
  ExpectError(RunCli(0, {"score", "--model", dir, "--token-ids", "1,2"}), 1,
              "tensor 'model.layers." + std::to_string(original["num_hidden_layers"].get<int>() - 1) + ".");
  ExpectError(RunCli(0, {"score", "--model", dir, "--token-ids", "1,2"}), 1,
              "is not part of the model config.json describes");
  std::ofstream(dir + "/config.json") << original.dump();
  fs::copy(std::string(MOE_SOURCE_DIR) + "/tests/data/tokenizers/mistral-v1.model", dir + "/tokenizer.model");
  ExpectError(RunCli(0, {"generate", "--model", dir, "--prompt", "To be", "--max-tokens", "2"}), 1,
              "has 32000 tokens, more than config.json's vocab_size of " + original["vocab_size"].dump());
  fs::remove_all(dir);
}

// A weight that is NaN or infinite (a damaged or wrongly converted checkpoint) is refused at load,
// naming the tensor, its file, the value and where it sits, rather than served as NaN answers.
TEST_F(CliTest, NonFiniteWeightsExit1NamingTheTensor) {
  const std::string dir = MakeTempDir("moe_cli_nan_weight");
  for (const auto& f : fs::directory_iterator(kGoldenDir)) fs::copy(f.path(), dir + "/" + f.path().filename().string());
  const std::string expert = "model.layers.1.block_sparse_moe.experts.7.w2.weight";  // [128, 256]
  ASSERT_TRUE(SetCheckpointValue(dir, expert, 300, std::nanf("")).ok());
  ExpectError(RunCli(0, {"score", "--model", dir, "--token-ids", "1,2"}), 1,
              "tensor '" + expert + "' in " + dir + "/model-0000");
  ExpectError(RunCli(0, {"score", "--model", dir, "--token-ids", "1,2"}), 1, "holds nan at [1, 44]");
  // Under mpirun the rank holding that expert fails, and so does the job, without hanging.
  CliRun r = RunCli(2, {"score", "--model", dir, "--token-ids", "1,2"});
  EXPECT_NE(r.exit_code, 0) << r.Describe();
  EXPECT_NE(r.err.find(expert), std::string::npos) << r.Describe();
  // An infinity in a replicated tensor (every rank reads it).
  const std::string o_proj = "model.layers.0.self_attn.o_proj.weight";  // [128, 128]
  ASSERT_TRUE(SetCheckpointValue(dir, expert, 300, 0.5f).ok());
  ASSERT_TRUE(SetCheckpointValue(dir, o_proj, 130, -INFINITY).ok());
  ExpectError(RunCli(0, {"score", "--model", dir, "--token-ids", "1,2"}), 1,
              "tensor '" + o_proj + "' in " + dir + "/model-0000");
  ExpectError(RunCli(0, {"score", "--model", dir, "--token-ids", "1,2"}), 1, "holds -inf at [1, 2]");
  // Restored, the copy loads again: the check refuses only what is not finite.
  ASSERT_TRUE(SetCheckpointValue(dir, o_proj, 130, 0.25f).ok());
  CliRun ok = RunCli(0, {"score", "--model", dir, "--token-ids", "1,2"});
  EXPECT_EQ(ok.exit_code, 0) << ok.Describe();
  fs::remove_all(dir);
}

TEST_F(CliTest, SeededSamplingRepeatsOnAnyNumberOfRanks) {
  const std::vector<std::string> base = {"generate", "--model", kDefaultModelDir, "--prompt", "ROMEO:", "--prompt",
                                         "JULIET:", "--max-tokens", "32", "--temperature", "0.9", "--top-p",
                                         "0.95", "--top-k", "50", "--json"};
  auto with_seed = [&](const std::string& seed) {
    std::vector<std::string> a = base;
    a.insert(a.end(), {"--seed", seed});
    return a;
  };
  CliRun one = RunCli(0, with_seed("7"));
  ASSERT_EQ(one.exit_code, 0) << one.Describe();
  CliRun again = RunCli(0, with_seed("7"));
  CliRun three = RunCli(3, with_seed("7"));
  CliRun other = RunCli(0, with_seed("8"));
  ASSERT_EQ(three.exit_code, 0) << three.Describe();
  EXPECT_EQ(one.result, again.result);
  EXPECT_EQ(one.result["results"], three.result["results"]);
  EXPECT_NE(one.result["results"][0]["token_ids"], other.result["results"][0]["token_ids"]);
  // Sampling really happened: not the greedy continuation.
  CliRun greedy = RunCli(0, {"generate", "--model", kDefaultModelDir, "--prompt", "ROMEO:", "--max-tokens", "32", "--json"});
  EXPECT_NE(one.result["results"][0]["token_ids"], greedy.result["token_ids"]);
}

TEST_F(CliTest, GenerationStopsAtEos) {
  // The golden model with its config's EOS set to the 4th greedy token of prompt 0: generation
  // stops there with finish_reason "stop" (and runs on with --ignore-eos).
  Golden g = Golden::Load();
  const std::string dir = MakeTempDir("moe_cli_eos");
  for (const auto& f : fs::directory_iterator(kGoldenDir)) fs::copy(f.path(), dir + "/" + f.path().filename().string());
  nlohmann::json config = ValueOrThrow(ReadJsonFile(dir + "/config.json"));
  const std::vector<int32_t> greedy = g.greedy(0);
  const int32_t eos = greedy[3];
  config["eos_token_id"] = eos;
  std::ofstream(dir + "/config.json") << config.dump(2);
  const std::vector<std::string> args = {"generate", "--model", dir, "--token-ids", JoinIds(g.prompt(0)),
                                         "--max-tokens", "24", "--json"};
  CliRun r = RunCli(0, args);
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_EQ(r.result["finish_reason"], "stop");
  EXPECT_EQ(r.result["token_ids"].get<std::vector<int32_t>>(),
            std::vector<int32_t>(greedy.begin(), greedy.begin() + 4));
  std::vector<std::string> ignore = args;
  ignore.push_back("--ignore-eos");
  CliRun all = RunCli(0, ignore);
  EXPECT_EQ(all.result["finish_reason"], "length");
  EXPECT_EQ(all.result["token_ids"].get<std::vector<int32_t>>(), greedy);
  fs::remove_all(dir);
}

// A tokenizer whose EOS is not among config.json's end ids (a fine-tune's <|im_end|>) ends
// generation there too, as the server does: here tokenizer_config.json names the piece of the
// 4th greedy token of "ROMEO:" as EOS while config.json keeps </s>.
TEST_F(CliTest, GenerationStopsAtTheTokenizersEos) {
  const std::vector<std::string> greedy_args = {"generate", "--prompt", "ROMEO:", "--max-tokens", "12", "--json"};
  CliRun base = RunCli(0, greedy_args);
  ASSERT_EQ(base.exit_code, 0) << base.Describe();
  const std::vector<int32_t> greedy = base.result["token_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(greedy.size(), 12u);
  const int32_t eos = greedy[3];
  ASSERT_EQ(std::find(greedy.begin(), greedy.begin() + 3, eos), greedy.begin() + 3) << "the id comes earlier";
  const std::unique_ptr<Tokenizer> tok = ValueOrThrow(Tokenizer::Load(kDefaultModelDir));
  const std::string dir = MakeTempDir("moe_cli_tokenizer_eos");
  for (const auto& f : fs::directory_iterator(kDefaultModelDir)) {
    fs::copy(f.path(), dir + "/" + f.path().filename().string());
  }
  nlohmann::json tc = ValueOrThrow(ReadJsonFile(dir + "/tokenizer_config.json"));
  tc["eos_token"] = tok->Piece(eos);
  std::ofstream(dir + "/tokenizer_config.json") << tc.dump(2);
  std::vector<std::string> args = greedy_args;
  args.insert(args.end(), {"--model", dir});
  CliRun r = RunCli(0, args);
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_EQ(r.result["finish_reason"], "stop");
  EXPECT_EQ(r.result["token_ids"].get<std::vector<int32_t>>(), std::vector<int32_t>(greedy.begin(), greedy.begin() + 4));
  // The end id's piece stays out of the text, whole and streamed, as the server leaves it out.
  CliRun three = RunCli(0, {"generate", "--prompt", "ROMEO:", "--max-tokens", "3", "--json"});
  ASSERT_EQ(three.exit_code, 0) << three.Describe();
  EXPECT_EQ(r.result["text"], three.result["text"]);
  CliRun streamed = RunCli(0, {"generate", "--model", dir, "--prompt", "ROMEO:", "--max-tokens", "12"});
  ASSERT_EQ(streamed.exit_code, 0) << streamed.Describe();
  EXPECT_EQ(streamed.out, "ROMEO:" + three.result["text"].get<std::string>() + "\n");
  // Under mpirun with the sequence on rank 1 (the second prompt), and not under --ignore-eos.
  std::vector<std::string> two = args;
  two.insert(two.end(), {"--prompt", "ROMEO:"});
  CliRun r2 = RunCli(2, two);
  ASSERT_EQ(r2.exit_code, 0) << r2.Describe();
  EXPECT_EQ(r2.result["results"][1]["token_ids"].get<std::vector<int32_t>>(),
            std::vector<int32_t>(greedy.begin(), greedy.begin() + 4));
  args.push_back("--ignore-eos");
  CliRun all = RunCli(0, args);
  EXPECT_EQ(all.result["finish_reason"], "length");
  EXPECT_EQ(all.result["token_ids"].get<std::vector<int32_t>>(), greedy);
  fs::remove_all(dir);
}

TEST_F(CliTest, PlainTextOutputStreamsThePrompt) {
  CliRun r = RunCli(0, {"generate", "--prompt", "ROMEO:", "--max-tokens", "48"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  nlohmann::json samples = ValueOrThrow(ReadJsonFile(kDefaultModelDir + "/samples.json"));
  EXPECT_EQ(r.out, samples["greedy_samples"][0]["greedy_text"].get<std::string>() + "\n");
}

}  // namespace
}  // namespace moe::testing_ref
