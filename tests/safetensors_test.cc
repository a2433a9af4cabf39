// The safetensors reader against the real golden checkpoint (written by transformers), against the
// test writer, and against deliberately broken files: every error must name the file and tensor.
#include "worker/model/safetensors.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/json_util.h"
#include "tests/support/safetensors_writer.h"

namespace moe {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

const std::string kGoldenDir = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/tiny";

uint32_t F32Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float F32FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

// ---------------------------------------------------------------------------------------------
// The golden checkpoint

TEST(GoldenCheckpoint, EveryIndexedTensorIsGettable) {
  auto ckpt = Checkpoint::Open(kGoldenDir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto index = ReadJsonFile(kGoldenDir + "/model.safetensors.index.json");
  ASSERT_TRUE(index.ok()) << index.status();
  const auto& weight_map = (*index)["weight_map"];
  ASSERT_GT(weight_map.size(), 0u);
  EXPECT_EQ((*ckpt)->Names().size(), weight_map.size());
  for (const auto& [name, file] : weight_map.items()) {
    EXPECT_TRUE((*ckpt)->Has(name)) << name;
    auto t = (*ckpt)->Get(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->name, name);
    EXPECT_THAT(t->file, HasSubstr(file.get<std::string>()));
    EXPECT_EQ(t->nbytes, static_cast<size_t>(t->numel()) * DTypeSize(t->dtype));
  }
}

TEST(GoldenCheckpoint, Shapes) {
  auto ckpt = Checkpoint::Open(kGoldenDir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const std::vector<std::pair<std::string, std::vector<int64_t>>> cases = {
      {"model.embed_tokens.weight", {1024, 128}},
      {"model.layers.0.self_attn.k_proj.weight", {32, 128}},
      {"model.layers.3.block_sparse_moe.experts.7.w2.weight", {128, 256}},
      {"model.layers.0.block_sparse_moe.gate.weight", {8, 128}},
      {"lm_head.weight", {1024, 128}},
  };
  for (const auto& [name, shape] : cases) {
    auto t = (*ckpt)->Get(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->shape, shape) << name;
  }
}

TEST(GoldenCheckpoint, ReadF32OfBf16EqualsRawBits) {
  auto ckpt = Checkpoint::Open(kGoldenDir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const std::string name = "model.layers.3.block_sparse_moe.experts.7.w2.weight";
  auto t = (*ckpt)->Get(name);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->dtype, DType::kBF16);
  std::vector<float> out(t->numel());
  ASSERT_TRUE((*ckpt)->ReadF32(name, t->shape, out.data()).ok());
  int nonzero = 0;
  for (int64_t i = 0; i < t->numel(); ++i) {
    uint16_t bits;
    std::memcpy(&bits, t->data + 2 * i, 2);
    ASSERT_EQ(F32Bits(out[i]), F32Bits(Bf16ToF32(bits))) << i;
    nonzero += out[i] != 0.0f;
  }
  EXPECT_GT(nonzero, t->numel() / 2);  // real weights, not an all-zero buffer
}

// ---------------------------------------------------------------------------------------------
// Conversions

TEST(Conversions, Bf16KnownBits) {
  EXPECT_EQ(Bf16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(Bf16ToF32(0xc020), -2.5f);
  EXPECT_EQ(Bf16ToF32(0x0000), 0.0f);
  EXPECT_TRUE(std::signbit(Bf16ToF32(0x8000)));
  EXPECT_EQ(Bf16ToF32(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
  EXPECT_EQ(Bf16ToF32(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(Bf16ToF32(0xff80), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Bf16ToF32(0x7fc0)));
  EXPECT_TRUE(std::isnan(Bf16ToF32(0x7f81)));
}

TEST(Conversions, F16KnownBits) {
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc100), -2.5f);
  EXPECT_EQ(F16ToF32(0x0000), 0.0f);
  EXPECT_TRUE(std::signbit(F16ToF32(0x8000)));
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(F16ToF32(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToF32(0x03ff), 1023 * std::ldexp(1.0f, -24));  // largest subnormal
  EXPECT_EQ(F16ToF32(0x0400), std::ldexp(1.0f, -14));         // smallest normal
  EXPECT_EQ(F16ToF32(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToF32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7c01)));
}

TEST(Conversions, F16MatchesReferenceForEveryPattern) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    int exp = (h >> 10) & 0x1f;
    int mant = h & 0x3ff;
    float sign = (h & 0x8000) ? -1.0f : 1.0f;
    float got = F16ToF32(static_cast<uint16_t>(h));
    if (exp == 0x1f) {
      if (mant == 0) EXPECT_EQ(got, sign * std::numeric_limits<float>::infinity()) << h;
      else EXPECT_TRUE(std::isnan(got)) << h;
      continue;
    }
    float want = exp == 0 ? sign * std::ldexp(static_cast<float>(mant), -24)
                          : sign * std::ldexp(1.0f + mant / 1024.0f, exp - 15);
    ASSERT_EQ(F32Bits(got), F32Bits(want)) << std::hex << h;
  }
}

TEST(Conversions, F32ToBf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBf16(-2.5f), 0xc020);
  // Exactly halfway: ties go to the even neighbour, down from 0x3f80 and up from 0x3f81.
  EXPECT_EQ(F32ToBf16(F32FromBits(0x3f808000)), 0x3f80);
  EXPECT_EQ(F32ToBf16(F32FromBits(0x3f818000)), 0x3f82);
  EXPECT_EQ(F32ToBf16(F32FromBits(0xbf818000)), 0xbf82);
  // Just off the tie: nearest wins.
  EXPECT_EQ(F32ToBf16(F32FromBits(0x3f808001)), 0x3f81);
  EXPECT_EQ(F32ToBf16(F32FromBits(0x3f807fff)), 0x3f80);
  // Carry into the exponent, and overflow of the largest float to inf.
  EXPECT_EQ(F32ToBf16(F32FromBits(0x3fffffff)), 0x4000);
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(F32ToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  // NaN stays NaN, even one whose payload lives only in the bits that are dropped.
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(F32FromBits(0x7f800001)))));
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(F32FromBits(0xff800001)))));
}

TEST(Conversions, RoundTripEveryPattern) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const uint16_t bits = static_cast<uint16_t>(b);
    float bf = Bf16ToF32(bits);
    if (std::isnan(bf)) {
      EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(bf))));
    } else {
      ASSERT_EQ(F32ToBf16(bf), bits) << std::hex << b;
    }
    float hf = F16ToF32(bits);
    if (std::isnan(hf)) {
      EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(hf))));
    } else {
      ASSERT_EQ(F32ToF16(hf), bits) << std::hex << b;
    }
  }
}

TEST(Conversions, F32ToBf16IsNearest) {
  // For assorted values the result is at least as close as both neighbours.
  for (float v : {0.1f, -0.3f, 3.14159f, 1e-30f, -7.7e20f, 65504.0f, 1e-40f}) {
    uint16_t b = F32ToBf16(v);
    double err = std::fabs(double(Bf16ToF32(b)) - v);
    EXPECT_LE(err, std::fabs(double(Bf16ToF32(b + 1)) - v)) << v;
    EXPECT_LE(err, std::fabs(double(Bf16ToF32(b - 1)) - v)) << v;
  }
}

// ---------------------------------------------------------------------------------------------
// Files written by the test writer, and broken ones

class SafetensorsFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/safetensors_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // A subfolder for one checkpoint.
  std::string Sub(const std::string& name) const {
    std::filesystem::create_directories(Path(name));
    return Path(name);
  }

  void WriteText(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
  }

  std::string dir_;
};

std::vector<float> Ramp(int n, float scale) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = scale * (i - n / 2) + 0.0123f * i * i;
  return v;
}

std::vector<float> ReadAll(const Checkpoint& c, const std::string& name,
                           const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> out(n, -999.0f);
  absl::Status s = c.ReadF32(name, shape, out.data());
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST_F(SafetensorsFiles, SingleFileRoundTrip) {
  const std::string dir = Sub("single");
  std::vector<NamedTensor> tensors = {
      {"a.f32", DType::kF32, {3, 4}, Ramp(12, 0.37f)},
      {"b.bf16", DType::kBF16, {5}, Ramp(5, 1.1f)},
      {"c.f16", DType::kF16, {2, 2}, {1.0f, -2.5f, 1e-7f, 1000.3f}},
      {"d.scalar", DType::kF32, {}, {42.0f}},
      {"e.empty", DType::kBF16, {0, 7}, {}},
  };
  ASSERT_TRUE(WriteShardedCheckpoint(dir, {tensors}).ok());
  ASSERT_TRUE(std::filesystem::exists(dir + "/model.safetensors"));
  ASSERT_FALSE(std::filesystem::exists(dir + "/model.safetensors.index.json"));

  auto file = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->tensors().size(), tensors.size());

  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Names(),
            (std::vector<std::string>{"a.f32", "b.bf16", "c.f16", "d.scalar", "e.empty"}));
  EXPECT_EQ(ReadAll(**ckpt, "a.f32", {3, 4}), tensors[0].values);  // F32 exact
  std::vector<float> bf = ReadAll(**ckpt, "b.bf16", {5});
  for (int i = 0; i < 5; ++i) EXPECT_EQ(bf[i], Bf16ToF32(F32ToBf16(tensors[1].values[i])));
  std::vector<float> hf = ReadAll(**ckpt, "c.f16", {2, 2});
  for (int i = 0; i < 4; ++i) EXPECT_EQ(hf[i], F16ToF32(F32ToF16(tensors[2].values[i])));
  EXPECT_EQ(hf[0], 1.0f);
  EXPECT_EQ(hf[1], -2.5f);
  EXPECT_EQ(ReadAll(**ckpt, "d.scalar", {}), std::vector<float>{42.0f});
  auto empty = (*ckpt)->Get("e.empty");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->numel(), 0);
  EXPECT_TRUE((*ckpt)->ReadF32("e.empty", std::vector<int64_t>{0, 7}, nullptr).ok());
}

TEST_F(SafetensorsFiles, ShardedRoundTrip) {
  const std::string dir = Sub("sharded");
  std::vector<std::vector<NamedTensor>> shards = {
      {{"x.0", DType::kF32, {4, 2}, Ramp(8, 0.5f)}, {"x.1", DType::kBF16, {3}, Ramp(3, 0.2f)}},
      {{"y.0", DType::kF32, {7}, Ramp(7, -1.5f)}},
      {{"z.0", DType::kBF16, {2, 3}, Ramp(6, 3.3f)}, {"z.1", DType::kF32, {1}, {-0.0f}}},
  };
  ASSERT_TRUE(WriteShardedCheckpoint(dir, shards).ok());
  for (const char* f : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                        "model-00003-of-00003.safetensors", "model.safetensors.index.json"}) {
    EXPECT_TRUE(std::filesystem::exists(dir + "/" + f)) << f;
  }
  auto index = ReadJsonFile(dir + "/model.safetensors.index.json");
  ASSERT_TRUE(index.ok());
  EXPECT_EQ((*index)["metadata"]["total_size"], 8 * 4 + 3 * 2 + 7 * 4 + 6 * 2 + 4);
  EXPECT_EQ((*index)["weight_map"]["y.0"], "model-00002-of-00003.safetensors");

  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Names().size(), 5u);
  EXPECT_EQ(ReadAll(**ckpt, "x.0", {4, 2}), shards[0][0].values);
  EXPECT_EQ(ReadAll(**ckpt, "y.0", {7}), shards[1][0].values);
  std::vector<float> z = ReadAll(**ckpt, "z.0", {2, 3});
  for (int i = 0; i < 6; ++i) EXPECT_EQ(z[i], Bf16ToF32(F32ToBf16(shards[2][0].values[i])));
  auto t = (*ckpt)->Get("z.1");
  ASSERT_TRUE(t.ok());
  EXPECT_THAT(t->file, HasSubstr("model-00003-of-00003.safetensors"));
}

TEST_F(SafetensorsFiles, ShardsOpenLazily) {
  // A corrupt second shard does not stop tensors of the first from loading; touching it reports it.
  const std::string dir = Sub("lazy");
  ASSERT_TRUE(WriteShardedCheckpoint(dir, {{{"good", DType::kF32, {2}, {1, 2}}},
                                           {{"bad", DType::kF32, {2}, {3, 4}}}})
                  .ok());
  std::filesystem::resize_file(dir + "/model-00002-of-00002.safetensors", 4);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ReadAll(**ckpt, "good", {2}), (std::vector<float>{1, 2}));
  auto bad = (*ckpt)->Get("bad");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(Message(bad.status()), HasSubstr("model-00002-of-00002.safetensors"));
}

TEST_F(SafetensorsFiles, TruncatedFileNamesTensorPastTheEnd) {
  const std::string dir = Sub("trunc");
  ASSERT_TRUE(WriteShardedCheckpoint(dir, {{{"first", DType::kF32, {4}, {1, 2, 3, 4}},
                                            {"last.weight", DType::kBF16, {8}, Ramp(8, 1)}}})
                  .ok());
  const std::string path = dir + "/model.safetensors";
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 3);

  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(file.status()), AllOf(HasSubstr(path), HasSubstr("'last.weight'"),
                                            HasSubstr("past the end"), HasSubstr("truncated")));
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(Message(ckpt.status()),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("'last.weight'")));
}

TEST_F(SafetensorsFiles, HeaderOffsetPastTheEnd) {
  const std::string path = Path("offset.safetensors");
  ASSERT_TRUE(WriteRawSafetensors(
                  path, R"({"w.far":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}})", 16)
                  .ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(Message(file.status()), AllOf(HasSubstr("offset.safetensors"), HasSubstr("'w.far'"),
                                            HasSubstr("data_offsets end 32")));
}

TEST_F(SafetensorsFiles, HeaderLengthLargerThanFile) {
  const std::string header = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  for (uint64_t declared : {uint64_t{1000}, uint64_t{header.size() + 5},
                            std::numeric_limits<uint64_t>::max()}) {
    const std::string path = Path("hlen.safetensors");
    ASSERT_TRUE(WriteRawSafetensors(path, header, 4, declared).ok());
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << declared;
    EXPECT_THAT(Message(file.status()),
                AllOf(HasSubstr("hlen.safetensors"), HasSubstr("header length"),
                      HasSubstr("larger than the file")));
  }
}

TEST_F(SafetensorsFiles, FileTooShortOrMissing) {
  WriteText(Path("short.safetensors"), "abc");
  auto s = SafetensorsFile::Open(Path("short.safetensors"));
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(Message(s.status()), HasSubstr("short.safetensors"));
  WriteText(Path("zero.safetensors"), "");
  EXPECT_FALSE(SafetensorsFile::Open(Path("zero.safetensors")).ok());
  auto m = SafetensorsFile::Open(Path("missing.safetensors"));
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(m.status()), HasSubstr("missing.safetensors"));
}

TEST_F(SafetensorsFiles, MalformedJsonHeader) {
  for (const std::string header : {R"({"w": {"dtype": "F32", )", "not json at all", ""}) {
    const std::string path = Path("badjson.safetensors");
    ASSERT_TRUE(WriteRawSafetensors(path, header, 8).ok());
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << header;
    EXPECT_THAT(Message(file.status()),
                AllOf(HasSubstr("badjson.safetensors"), HasSubstr("not valid JSON")));
  }
  {
    // nlohmann stops at a NUL byte: what follows one (the format pads with spaces only) was ignored.
    const std::string path = Path("nul.safetensors");
    ASSERT_TRUE(WriteRawSafetensors(path, std::string("{}\0{\"junk\"", 10), 0).ok());
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok());
    EXPECT_THAT(Message(file.status()), AllOf(HasSubstr("nul.safetensors"), HasSubstr("a NUL byte at offset 2")));
  }
  {
    const std::string path = Path("where.safetensors");  // the reason, and where
    ASSERT_TRUE(WriteRawSafetensors(path, "{\"w\": 1,, }", 0).ok());
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok());
    EXPECT_THAT(Message(file.status()), HasSubstr("header: not valid JSON: parse error at line 1, column 9"));
  }
  const std::string path = Path("array.safetensors");
  ASSERT_TRUE(WriteRawSafetensors(path, "[1, 2]", 0).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(Message(file.status()), HasSubstr("not a JSON object"));
}

TEST_F(SafetensorsFiles, BadHeaderEntries) {
  struct Case {
    std::string entry;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {R"({"dtype":"F32","shape":[4],"data_offsets":[0,12]})", "needs 16 bytes"},
      {R"({"dtype":"BF16","shape":[2,3],"data_offsets":[0,16]})", "needs 12 bytes"},
      {R"({"dtype":"F32","shape":[4],"data_offsets":[16,0]})", "begin > end"},
      {R"({"dtype":"F32","shape":[-4],"data_offsets":[0,16]})", "non-negative integers"},
      {R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,16]})", "non-negative integers"},
      {R"({"dtype":"F32","shape":"4","data_offsets":[0,16]})", "shape"},
      {R"({"dtype":"F32","shape":[4],"data_offsets":[0]})", "data_offsets"},
      {R"({"dtype":"F32","shape":[4],"data_offsets":[-16,0]})", "non-negative"},
      {R"({"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,16]})",
       "too large"},
      {R"({"shape":[4],"data_offsets":[0,16]})", "dtype"},
      {R"({"dtype":"Q4","shape":[4],"data_offsets":[0,16]})", "unknown dtype \"Q4\""},
      {R"([1,2,3])", "not a JSON object"},
  };
  for (const Case& c : cases) {
    const std::string path = Path("entry.safetensors");
    ASSERT_TRUE(WriteRawSafetensors(path, R"({"bad.tensor":)" + c.entry + "}", 64).ok());
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << c.entry;
    EXPECT_THAT(Message(file.status()), AllOf(HasSubstr("entry.safetensors"),
                                              HasSubstr("'bad.tensor'"), HasSubstr(c.expect)))
        << c.entry;
  }
}

// The tensors must tile the data as the format has it (the safetensors library refuses the rest):
// tensors sharing bytes read each other's values; a gap or a tail is a file written wrongly.
TEST_F(SafetensorsFiles, TensorsTileTheData) {
  struct Case {
    std::string header;
    uint64_t data_bytes;
    std::string expect;
  };
  const std::string a = R"("a":{"dtype":"F32","shape":[4],"data_offsets":)";
  const std::string b = R"("b":{"dtype":"F32","shape":[2],"data_offsets":)";
  for (const Case& c : std::vector<Case>{
           {"{" + a + "[0,16]}," + b + "[8,16]}}", 16, "tensor 'b' starts at byte 8 of the data, where 16 was expected (the tensors overlap)"},
           {"{" + a + "[0,16]}," + b + "[24,32]}}", 32, "tensor 'b' starts at byte 24 of the data, where 16 was expected (the tensors leave a gap)"},
           {"{" + a + "[0,16]}}", 24, "the tensors cover 16 of the data's 24 bytes"},
       }) {
    const std::string path = Path("tiles.safetensors");
    ASSERT_TRUE(WriteRawSafetensors(path, c.header, c.data_bytes).ok());
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << c.header;
    EXPECT_THAT(Message(file.status()), AllOf(HasSubstr("tiles.safetensors"), HasSubstr(c.expect))) << c.header;
  }
  const std::string path = Path("tiles.safetensors");  // in any order
  ASSERT_TRUE(WriteRawSafetensors(path, "{" + a + "[8,24]}," + b + "[0,8]}}", 24).ok());
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  // An empty tensor at a full one's start (the safetensors writer makes such files), either name first.
  for (const std::string empty : {"\"0\"", "\"z\""}) {
    ASSERT_TRUE(WriteRawSafetensors(path, "{" + a + "[0,16]}," + empty + R"(:{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})", 16).ok());
    auto with_empty = SafetensorsFile::Open(path);
    EXPECT_TRUE(with_empty.ok()) << empty << ": " << with_empty.status();
  }
}

TEST_F(SafetensorsFiles, UnknownDtypeFailsAtCheckpointOpen) {
  const std::string dir = Sub("q4");
  ASSERT_TRUE(WriteRawSafetensors(dir + "/model.safetensors",
                                  R"({"w.q":{"dtype":"Q4","shape":[2],"data_offsets":[0,1]}})", 1)
                  .ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(Message(ckpt.status()),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("'w.q'"), HasSubstr("Q4")));
}

TEST_F(SafetensorsFiles, BadMetadata) {
  const std::string path = Path("meta.safetensors");
  ASSERT_TRUE(WriteRawSafetensors(path, R"({"__metadata__":{"format":3}})", 0).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(Message(file.status()), AllOf(HasSubstr("meta.safetensors"), HasSubstr("format")));
}

TEST_F(SafetensorsFiles, MissingTensor) {
  const std::string dir = Sub("missing_tensor");
  ASSERT_TRUE(WriteShardedCheckpoint(dir, {{{"w", DType::kF32, {1}, {1}}}}).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  EXPECT_FALSE((*ckpt)->Has("model.nope.weight"));
  auto t = (*ckpt)->Get("model.nope.weight");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(t.status()), AllOf(HasSubstr("'model.nope.weight'"), HasSubstr(dir)));
  float out;
  absl::Status s = (*ckpt)->ReadF32("model.nope.weight", std::vector<int64_t>{1}, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsFiles, IndexedTensorMissingFromShard) {
  const std::string dir = Sub("index_lies");
  ASSERT_TRUE(WriteSafetensors(dir + "/a.safetensors", {{"w.real", DType::kF32, {1}, {1}}}).ok());
  WriteText(dir + "/model.safetensors.index.json",
            R"({"weight_map":{"w.real":"a.safetensors","w.ghost":"a.safetensors"}})");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE((*ckpt)->Get("w.real").ok());
  auto t = (*ckpt)->Get("w.ghost");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(Message(t.status()), AllOf(HasSubstr("'w.ghost'"), HasSubstr("a.safetensors")));
}

TEST_F(SafetensorsFiles, WrongShape) {
  const std::string dir = Sub("shape");
  ASSERT_TRUE(WriteShardedCheckpoint(dir, {{{"w.shape", DType::kBF16, {2, 4}, Ramp(8, 1)}}}).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  std::vector<float> out(8);
  for (const std::vector<int64_t>& shape :
       std::vector<std::vector<int64_t>>{{4, 2}, {8}, {2, 4, 1}, {2, 5}}) {
    absl::Status s = (*ckpt)->ReadF32("w.shape", shape, out.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(s), AllOf(HasSubstr("'w.shape'"), HasSubstr("model.safetensors"),
                                  HasSubstr("[2, 4]")));
  }
  absl::Status s = (*ckpt)->ReadF32("w.shape", std::vector<int64_t>{4, 2}, out.data());
  EXPECT_THAT(Message(s), HasSubstr("expected [4, 2]"));
}

TEST_F(SafetensorsFiles, UnsupportedDtype) {
  const std::string dir = Sub("i64");
  ASSERT_TRUE(WriteShardedCheckpoint(dir, {{{"ids", DType::kI64, {3}, {}},
                                            {"flags", DType::kBool, {5}, {}}}})
                  .ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto t = (*ckpt)->Get("ids");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->dtype, DType::kI64);
  EXPECT_EQ(t->nbytes, 24u);
  std::vector<float> out(5);
  absl::Status s = (*ckpt)->ReadF32("ids", std::vector<int64_t>{3}, out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(s), AllOf(HasSubstr("'ids'"), HasSubstr("model.safetensors"),
                                HasSubstr("dtype I64"), HasSubstr("supported: BF16, F16, F32")));
  s = (*ckpt)->ReadF32("flags", std::vector<int64_t>{5}, out.data());
  EXPECT_THAT(Message(s), HasSubstr("dtype BOOL"));
}

TEST_F(SafetensorsFiles, IndexPointsToMissingShard) {
  const std::string dir = Sub("no_shard");
  ASSERT_TRUE(WriteShardedCheckpoint(dir, {{{"a", DType::kF32, {1}, {1}}},
                                           {{"b", DType::kF32, {1}, {2}}}})
                  .ok());
  std::filesystem::remove(dir + "/model-00002-of-00002.safetensors");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(ckpt.status()), AllOf(HasSubstr("model-00002-of-00002.safetensors"),
                                            HasSubstr("'b'")));
}

// A shard, or the single checkpoint file, that is there but is no file is named as what it is; a
// FIFO is refused, not waited on (opening one blocks until a writer comes).
TEST_F(SafetensorsFiles, ShardThatIsNoFileIsNamedAsSuch) {
  const std::string dir = Sub("shard_dir");
  ASSERT_TRUE(WriteShardedCheckpoint(dir, {{{"a", DType::kF32, {1}, {1}}},
                                           {{"b", DType::kF32, {1}, {2}}}})
                  .ok());
  const std::string shard = dir + "/model-00002-of-00002.safetensors";
  std::filesystem::remove(shard);
  std::filesystem::create_directory(shard);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(ckpt.status()),
              AllOf(HasSubstr("model-00002-of-00002.safetensors"), HasSubstr("is a directory"), HasSubstr("'b'")));
  std::filesystem::remove(shard);
  ASSERT_EQ(::mkfifo(shard.c_str(), 0600), 0);
  ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(Message(ckpt.status()), AllOf(HasSubstr("model-00002-of-00002.safetensors"), HasSubstr("FIFO")));
  auto file = SafetensorsFile::Open(shard);  // opened directly: refused at once
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(Message(file.status()), HasSubstr("not a regular file"));

  const std::string single = Sub("single_dir");
  std::filesystem::create_directory(single + "/model.safetensors");
  ckpt = Checkpoint::Open(single);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(Message(ckpt.status()), AllOf(HasSubstr("model.safetensors"), HasSubstr("is a directory")));

  // Beside an index, whatever else is called model.safetensors is not looked at.
  const std::string beside = Sub("index_beside_dir");
  ASSERT_TRUE(WriteShardedCheckpoint(beside, {{{"a", DType::kF32, {1}, {1}}}, {{"b", DType::kF32, {1}, {2}}}}).ok());
  std::filesystem::create_directory(beside + "/model.safetensors");
  ckpt = Checkpoint::Open(beside);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE((*ckpt)->Has("b"));
}

// ReadTextFile (config.json, tokenizer files, templates, PEM files) reads only regular files.
TEST_F(SafetensorsFiles, ReadTextFileNamesWhatThePathIs) {
  const std::string dir = Sub("text_files");
  EXPECT_EQ(ReadTextFile(dir + "/none.json").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(ReadTextFile(dir + "/none.json").status()), HasSubstr("does not exist"));
  EXPECT_THAT(Message(ReadTextFile(dir).status()), HasSubstr("is a directory"));
  const std::string fifo = dir + "/config.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  absl::StatusOr<nlohmann::json> j = ReadJsonFile(fifo);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(j.status()), AllOf(HasSubstr(fifo), HasSubstr("FIFO")));
  EXPECT_THAT(Message(ReadTextFile("/dev/zero").status()), HasSubstr("not a regular file"));
  EXPECT_EQ(ReadTextFile("/dev/zero").status().code(), absl::StatusCode::kInvalidArgument);
  if (::geteuid() != 0) {  // (root opens any file)
    WriteText(dir + "/secret.json", "{}");
    std::filesystem::permissions(dir + "/secret.json", std::filesystem::perms::none);
    EXPECT_EQ(ReadTextFile(dir + "/secret.json").status().code(), absl::StatusCode::kPermissionDenied);
  }
  std::string big(200'000, 'x');  // longer than one read
  WriteText(dir + "/big.txt", big);
  EXPECT_EQ(ReadTextFile(dir + "/big.txt").value(), big);
  WriteText(dir + "/ok.json", R"({"a": 1})");
  EXPECT_EQ(ReadJsonFile(dir + "/ok.json")->at("a"), 1);
}

TEST_F(SafetensorsFiles, IndexWithPathEscapeIsRefused) {
  for (const std::string f : {"../model.safetensors", "sub/model.safetensors", "..", ""}) {
    const std::string dir = Sub("escape");
    WriteText(dir + "/model.safetensors.index.json",
              R"({"weight_map":{"w.evil":")" + f + R"("}})");
    auto ckpt = Checkpoint::Open(dir);
    ASSERT_FALSE(ckpt.ok()) << f;
    EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(ckpt.status()),
                AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("'w.evil'"),
                      HasSubstr("'" + f + "'")));
  }
}

TEST_F(SafetensorsFiles, MalformedIndex) {
  const std::string dir = Sub("bad_index");
  WriteText(dir + "/model.safetensors.index.json", R"({"metadata": {}})");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(Message(ckpt.status()), AllOf(HasSubstr("index.json"), HasSubstr("weight_map")));
  WriteText(dir + "/model.safetensors.index.json", R"({"weight_map": )");
  ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(Message(ckpt.status()), HasSubstr("index.json"));
}

TEST_F(SafetensorsFiles, EmptyOrMissingDirectory) {
  const std::string dir = Sub("empty");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(ckpt.status()), HasSubstr(dir));
  ckpt = Checkpoint::Open(Path("does_not_exist"));
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsFiles, UnalignedData) {
  // A header whose length is not a multiple of 8 puts 16-bit and 32-bit data at odd addresses.
  std::string header = R"({"h":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})";
  if (header.size() % 2 == 0) header += " ";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  bytes += header;
  bytes += std::string("\x80\x3f\x20\xc0", 4);  // bf16 1.0, -2.5 little-endian
  const std::string dir = Sub("odd");
  WriteText(dir + "/model.safetensors", bytes);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ReadAll(**ckpt, "h", {2}), (std::vector<float>{1.0f, -2.5f}));
}

}  // namespace
}  // namespace moe
