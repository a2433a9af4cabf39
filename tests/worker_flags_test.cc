// moe-worker's flags: every malformed flag is an error naming the flag, --device takes cpu or gpu.
#include <gtest/gtest.h>

#include "worker/server/worker_flags.h"

namespace moe {
namespace {

TEST(WorkerFlagsTest, DefaultsAndValues) {
  auto f = ParseWorkerFlags({"--coordinator", "127.0.0.1:5000"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->device, "cpu");
  EXPECT_EQ(f->kv_block_size, 16);
  EXPECT_EQ(f->gpu_memory_utilization, 0.9);
  for (const char* target : {"[::1]:50052", "dns:///coordinator.local:50052", "unix:/tmp/moe.sock", "unix-abstract:moe"}) {
    EXPECT_TRUE(ParseWorkerFlags({"--coordinator", target}).ok()) << target;
  }
  f = ParseWorkerFlags({"--coordinator=h:1", "--gpu-memory-utilization=0.5"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->gpu_memory_utilization, 0.5);
  f = ParseWorkerFlags({"--coordinator=h:1", "--device", "gpu", "--kv-tokens=4096", "--max-batch-tokens", "512"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->device, "gpu");
  EXPECT_EQ(f->kv_tokens, 4096);
  EXPECT_EQ(f->max_batch_tokens, 512);
  EXPECT_FALSE(f->synthetic_seed.has_value());
  EXPECT_TRUE(f->enable_prefix_caching);  // on by default, as in vLLM and TGI
  f = ParseWorkerFlags({"--coordinator=h:1", "--no-enable-prefix-caching"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_FALSE(f->enable_prefix_caching);
  f = ParseWorkerFlags({"--coordinator=h:1", "--no-enable-prefix-caching", "--enable-prefix-caching"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(f->enable_prefix_caching);
  EXPECT_EQ(f->kv_admission, KvAdmission::kOnDemand);
  f = ParseWorkerFlags({"--coordinator=h:1", "--kv-admission", "reserve"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->kv_admission, KvAdmission::kReserve);
  f = ParseWorkerFlags({"--coordinator=h:1", "--kv-admission=on-demand"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->kv_admission, KvAdmission::kOnDemand);
  f = ParseWorkerFlags({"--coordinator=h:1", "--device=gpu", "--synthetic-weights", "0"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->synthetic_seed, 0u);
  f = ParseWorkerFlags({"--coordinator=h:1", "--synthetic-weights=18446744073709551615", "--device", "gpu"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->synthetic_seed, 18446744073709551615ull);
  EXPECT_FALSE(f->enable_peer_exchange);  // off until measured on several GPUs
  EXPECT_EQ(f->device_exchange_experts, "cublas");  // until wgmma is measured on several GPUs
  f = ParseWorkerFlags({"--coordinator=h:1", "--device=gpu", "--enable-peer-exchange"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(f->enable_peer_exchange);
  f = ParseWorkerFlags({"--coordinator=h:1", "--device=gpu", "--enable-peer-exchange", "--no-enable-peer-exchange"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_FALSE(f->enable_peer_exchange);
  f = ParseWorkerFlags({"--coordinator=h:1", "--device=gpu", "--device-exchange-experts", "wgmma"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->device_exchange_experts, "wgmma");
  EXPECT_TRUE(f->coordinator_tls_ca_file.empty()) << "plaintext unless asked";
  f = ParseWorkerFlags({"--coordinator=h:1", "--coordinator-tls-ca-file", "/etc/ca.pem"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->coordinator_tls_ca_file, "/etc/ca.pem");
  EXPECT_TRUE(f->cluster_tls_cert_file.empty()) << "no certificate shown unless given";
  f = ParseWorkerFlags({"--coordinator=h:1", "--coordinator-tls-ca-file", "/etc/ca.pem", "--cluster-tls-cert-file",
                        "/etc/w.pem", "--cluster-tls-key-file=/etc/w.key"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->cluster_tls_cert_file, "/etc/w.pem");
  EXPECT_EQ(f->cluster_tls_key_file, "/etc/w.key");
  f = ParseWorkerFlags({"--coordinator=h:1"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->step_timeout_s, 600);
  f = ParseWorkerFlags({"--coordinator=h:1", "--step-timeout-s", "0"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->step_timeout_s, 0);  // never
  f = ParseWorkerFlags({"--coordinator=h:1", "--step-timeout-s=30"});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->step_timeout_s, 30);
}

TEST(WorkerFlagsTest, ErrorsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {{"--coordinator", "h:1", "--device", "tpu"}, "--device: expected cpu or gpu, got 'tpu'"},
           {{"--coordinator", "h:1", "--coordinator-tls-ca-file="}, "--coordinator-tls-ca-file: empty path"},
           {{"--coordinator", "h:1", "--coordinator-tls-ca-file=ca", "--cluster-tls-cert-file", "w.pem"},
            "--cluster-tls-key-file: required with --cluster-tls-cert-file"},
           {{"--coordinator", "h:1", "--coordinator-tls-ca-file=ca", "--cluster-tls-key-file", "w.key"},
            "--cluster-tls-cert-file: required with --cluster-tls-key-file"},
           {{"--coordinator", "h:1", "--cluster-tls-cert-file", "w.pem", "--cluster-tls-key-file", "w.key"},
            "--cluster-tls-cert-file: needs --coordinator-tls-ca-file"},
           {{"--coordinator", "h:1", "--coordinator-tls-ca-file=ca", "--cluster-tls-key-file="},
            "--cluster-tls-key-file: empty path"},
           {{"--coordinator", "h:1", "--device"}, "--device: missing value"},
           {{"--coordinator", "nohostport"}, "--coordinator: expected HOST:PORT"},
           {{"--coordinator", "127.0.0.1:99999"}, "--coordinator: expected HOST:PORT, got '127.0.0.1:99999'"},
           {{"--coordinator", "127.0.0.1:abc"}, "--coordinator: expected HOST:PORT"},
           {{"--coordinator", ":50052"}, "--coordinator: expected HOST:PORT"},
           {{"--coordinator", "h: 80"}, "--coordinator: expected HOST:PORT"},
           {{"--coordinator", "h:+80"}, "--coordinator: expected HOST:PORT"},
           {{"--coordinator", "h:1", "--kv-tokens", "0"}, "--kv-tokens: must be positive"},
           {{"--coordinator", "h:1", "--gpu-memory-utilization", "0"}, "--gpu-memory-utilization: must be in (0, 1]"},
           {{"--coordinator", "h:1", "--gpu-memory-utilization=1.5"}, "--gpu-memory-utilization: must be in (0, 1]"},
           {{"--coordinator", "h:1", "--gpu-memory-utilization", "most"},
            "--gpu-memory-utilization: expected a number, got 'most'"},
           {{"--coordinator", "h:1", "--bogus", "1"}, "unknown flag '--bogus'"},
           {{"--coordinator", "h:1", "--step-timeout-s", "-1"}, "--step-timeout-s: must be in [0, 2147483648], got -1"},
           {{"--coordinator", "h:1", "--step-timeout-s", "1.5"}, "--step-timeout-s: expected a whole number of seconds"},
           {{"--coordinator", "h:1", "--step-timeout-s=99999999999"}, "--step-timeout-s: must be in [0, "},
           {{"--coordinator", "h:1", "--step-timeout-s=99999999999999999999"}, "--step-timeout-s: must be at most "},
           {{"--coordinator", "h:1", "--step-timeout-s", "5"}, "--step-timeout-s: must be 0 (never) or at least 10 s, got 5"},
           {{"--device", "gpu"}, "--coordinator: required"},
           {{"--coordinator", "h:1", "--synthetic-weights", "1"}, "--synthetic-weights: needs --device gpu"},
           {{"--coordinator", "h:1", "--enable-prefix-caching=yes"}, "--enable-prefix-caching: takes no value"},
           {{"--coordinator", "h:1", "--enable-peer-exchange"}, "--enable-peer-exchange: needs --device gpu"},
           {{"--coordinator", "h:1", "--device=gpu", "--enable-peer-exchange=1"}, "--enable-peer-exchange: takes no value"},
           {{"--coordinator", "h:1", "--kv-admission", "lazy"}, "--kv-admission: expected on-demand or reserve, got 'lazy'"},
           {{"--coordinator", "h:1", "--device=gpu", "--device-exchange-experts=tma"},
            "--device-exchange-experts: expected cublas or wgmma, got 'tma'"},
           {{"--coordinator", "h:1", "--device-exchange-experts", "wgmma"}, "--device-exchange-experts: needs --device gpu"},
           {{"--coordinator", "h:1", "--device", "gpu", "--synthetic-weights", "-1"},
            "--synthetic-weights: expected a non-negative integer seed, got '-1'"},
           {{"--coordinator", "h:1", "--device", "gpu", "--synthetic-weights="},
            "--synthetic-weights: expected a non-negative integer seed, got ''"},
       }) {
    auto f = ParseWorkerFlags(c.args);
    ASSERT_FALSE(f.ok()) << c.message;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(f.status().message()).find(c.message), std::string::npos) << f.status();
  }
}

}  // namespace
}  // namespace moe
